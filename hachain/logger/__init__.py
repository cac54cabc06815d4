"""The chain's logger: a small process that owns the services' output pipes and writes
size-bounded log files (docs/logs.md)."""
