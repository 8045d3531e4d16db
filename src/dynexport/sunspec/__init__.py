"""SunSpec: model definitions, decoding, discovery, polling plans and inverter commands."""
