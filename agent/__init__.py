"""volume-agent: manage a Docker host's volumes from NATS."""

__version__ = "0.1.0"
