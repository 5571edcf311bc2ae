"""How volumectl connects: with the seed it is given, or on a host whose agent runs its embedded nats-server,
with the local operator's seed that agent made (`<data dir>/auth/local-operator.nk`, root only); over TLS from the
first byte when the URL says tls:// or a CA is given."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_DATA_DIR", "LOCAL_OPERATOR_SEED", "connect_options", "local_seed"]

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


def connect_options(urls: list[str], seed: Path | None, tls_ca: str | None) -> dict[str, Any]:
    """nats-py's connect options for this identity: its seed (NATS authentication), and TLS from the first byte
    whenever TLS is asked for (nats-py otherwise goes on in the clear with a server that does not ask for TLS)."""
    kw: dict[str, Any] = {}
    if seed is not None:
        kw["nkeys_seed"] = str(seed)
    if tls_ca or any(u.startswith("tls://") for u in urls):
        kw["tls"] = ssl.create_default_context(cafile=tls_ca)
        kw["tls_handshake_first"] = True
    return kw
