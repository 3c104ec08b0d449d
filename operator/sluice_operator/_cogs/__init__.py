"""Low-level helpers with no I/O: settings, naming, hashing, conditions."""
