"""The web server: setup, dashboard and JSON API."""
