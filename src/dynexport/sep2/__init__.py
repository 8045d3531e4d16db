"""The utility link: IEEE 2030.5 (SEP2) with the CSIP-AUS profile."""
