"""Readable log lines on stderr; on the appliance stderr goes to the journal.

Each domain logs under its own logger name (``dynexport.modbus``, ``dynexport.sunspec``,
``dynexport.sep2`` ...), so one domain can be made verbose without drowning the others.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import ClassVar

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_JOURNAL_FORMAT = "<%(levelno_journal)s>%(name)s: %(message)s"


class _JournalLevel(logging.Filter):
    """Adds the syslog priority prefix that journald reads from stderr lines."""

    _MAP: ClassVar[dict[int, int]] = {
        logging.CRITICAL: 2,
        logging.ERROR: 3,
        logging.WARNING: 4,
        logging.INFO: 6,
        logging.DEBUG: 7,
    }

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno_journal = self._MAP.get(record.levelno, 6)
        return True


def setup_logging(verbosity: int = 0) -> None:
    """Sends log lines to stderr: INFO by default, DEBUG with ``-v``.

    Under systemd (``JOURNAL_STREAM`` set) lines carry a priority prefix and no
    timestamp, since the journal adds its own.
    """
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.addFilter(_JournalLevel())
        handler.setFormatter(logging.Formatter(_JOURNAL_FORMAT))
    else:
        handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pymodbus logs every malformed frame at ERROR; our transport reports those itself.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL if verbosity < 2 else logging.DEBUG)
