"""The local operator's identity: on a host whose agent runs its embedded nats-server, `volumectl` connects
with the seed that agent made for it (`<data dir>/auth/local-operator.nk`, root only) without being told."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_DATA_DIR", "LOCAL_OPERATOR_SEED", "local_seed"]

DEFAULT_DATA_DIR = "/var/lib/volume-agent"
"""The agent's default `--data-dir`."""
LOCAL_OPERATOR_SEED = Path("auth", "local-operator.nk")


def local_seed(data_dir: str | Path | None = None) -> Path | None:
    """The local operator's seed file under `data_dir` (default `$VOLUME_AGENT_DATA_DIR`, else
    /var/lib/volume-agent), if it is there and this user may read it; else None."""
    root = Path(data_dir or os.environ.get("VOLUME_AGENT_DATA_DIR") or DEFAULT_DATA_DIR)
    path = root / LOCAL_OPERATOR_SEED
    try:
        return path if path.is_file() and os.access(path, os.R_OK) else None
    except OSError:  # a directory on the way we may not enter
        return None
