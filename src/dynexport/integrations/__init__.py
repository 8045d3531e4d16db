"""Integrations beside the control loop: MQTT (with Home Assistant discovery), a price-aware
export limit (Amber Electric) and Prometheus metrics. See docs/integrations.md.

None of them is needed for control: each runs as its own supervised task, reads the app's status
snapshot and, for the limit sources, only ever adds a limit (the most restrictive wins), with an
expiry, so a dead broker or price API can never pin or loosen what the utility asks for.
"""
