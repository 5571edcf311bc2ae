"""Backups and what is built on them: backup, restore, clone, digest, migrate; the stores and the tar data paths."""
