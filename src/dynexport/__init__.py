"""dynexport: keeps a solar site within its utility's dynamic export limits."""

__version__ = "0.1.0"
