"""Configuration, logging, atomic storage and systemd integration."""
