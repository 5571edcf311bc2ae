"""Backup policies: read from the bus, verified, scheduled, retained (issue 10)."""
