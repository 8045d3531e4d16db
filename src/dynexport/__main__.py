"""Allows ``python -m dynexport``."""

from dynexport.cli import main

raise SystemExit(main())
