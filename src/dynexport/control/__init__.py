"""Limits and the control law: pure functions of readings, limits and time."""
