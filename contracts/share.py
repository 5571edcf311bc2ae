"""Sharing volumes between containers (`docker run --volumes-from`, data volume containers)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from .envelope import BaseRequest
from .names import VolumeName

__all__ = ["ContainerSpec", "Mount", "ShareRequest", "ShareResult", "VolumesFrom"]

ContainerName = Annotated[
    str,
    msgspec.Meta(pattern="^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$", max_length=255, description="A Docker container name."),
]
MountTarget = Annotated[str, msgspec.Meta(pattern="^/", max_length=4096, description="An absolute path.")]


class ContainerSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: ContainerName
    image: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    command: list[str] | None = None
    env: dict[str, str] = {}
    start: bool = False


class VolumesFrom(msgspec.Struct, forbid_unknown_fields=True):
    container: ContainerName
    readonly: bool = False


class Mount(msgspec.Struct, forbid_unknown_fields=True):
    volume: VolumeName
    target: MountTarget
    readonly: bool = False


class ShareRequest(BaseRequest):
    """Create (and with `start`, start) a container that takes the volumes of other containers
    and/or mounts named volumes. With `mounts` and no `start`: a data volume container."""

    container: ContainerSpec
    volumes_from: list[VolumesFrom] = []
    mounts: list[Mount] = []


class ShareResult(msgspec.Struct, forbid_unknown_fields=True):
    container: str
    id: str
    state: str
    volumes: list[str]
    created_volumes: list[str]
