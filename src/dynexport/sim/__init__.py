"""Simulated devices and utility server for tests and the demo; never wired into the product."""
