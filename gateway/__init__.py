"""roadside gateway daemon: serial links, SQLite queue, HTTP uplinks (docs/ARCHITECTURE.md)."""
