"""relaygate tests (run with trial; not installed)."""
