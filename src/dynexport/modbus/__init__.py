"""Modbus transport: trio I/O for TCP and RTU, frames encoded and decoded by pymodbus."""
