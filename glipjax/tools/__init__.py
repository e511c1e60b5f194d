"""Command-line tools (parity checks, ...)."""
