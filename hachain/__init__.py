"""hachain: a hardware-watchdog-backed high-availability supervision chain for Linux."""

__version__ = "0.1.0"
