"""What the agent does on Docker's events: the watch and its cursor, volume news, backup on stop, the inventory."""
