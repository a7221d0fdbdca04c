"""relaygate's TOML configuration: frozen dataclasses, one module per section or so."""
