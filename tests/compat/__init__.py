"""Server compatibility: the core tests against Redis 7.0 (and any other server binary)."""
