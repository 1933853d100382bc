"""Shared kernel: the exchange calendar, atomic file writes, IBKR costs and the typed records (see README.md)."""
