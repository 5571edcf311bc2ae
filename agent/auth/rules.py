"""What the local policy allows to be made or mounted at all, whoever asks: host paths, drivers, images.

A volume of Docker's local driver can mount any host path (`type=none`, `o=bind`, `device=/etc`), and a container
that mounts it is root on the host; so host paths are allowed only under `[volumes] bind_roots`, drivers and the
local driver's `type`s only from allow-lists, and `share` only from listed images and only with named volumes.
Every refusal is `Forbidden`, naming the policy key that would allow it (or saying that none does).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import Forbidden
from .policy import Policy

__all__ = ["Rules", "host_path_of"]


def host_path_of(opts: Mapping[str, str]) -> str | None:
    """The host path a local-driver volume with these options would mount (a bind mount, or a device given as a
    host path), or None. A bind mount without a device is "" (nothing allows it)."""
    device = opts.get("device")
    bind = "bind" in (opts.get("o") or "") or ((opts.get("type") or "none") == "none" and device is not None)
    if bind:
        return device or ""
    if device is not None and device.startswith("/") and not device.startswith("//"):  # `//server/share`: CIFS
        return device
    return None


def _image_ref(image: str) -> str:
    """`busybox`, `library/busybox:latest` and `docker.io/library/busybox:latest` are one image."""
    ref = image.removeprefix("docker.io/").removeprefix("library/")
    if "@" not in ref and ":" not in ref.rpartition("/")[2]:
        ref += ":latest"
    return ref


def _listed(items: Iterable[str]) -> str:
    return ", ".join(items) or "none"


class Rules:
    """The `[volumes]` and `[share]` parts of one host's policy, checked where volumes are made or mounted."""

    def __init__(self, policy: Policy, source: Path | str) -> None:
        self.source = str(source)
        v = policy.volumes
        for root in v.bind_roots:
            if not os.path.isabs(root) or os.path.realpath(root) == "/":
                raise ValueError(f"[volumes] bind_roots in the policy file {source} holds {root!r}: each root must "
                                 "be an absolute directory, and not / itself.")
        # Resolved once: a root that is a symlink is where it points.
        self.bind_roots = [os.path.realpath(r) for r in v.bind_roots]
        self.drivers = list(v.drivers)
        self.local_types = list(v.local_types)
        self.images = {_image_ref(i) for i in policy.share.images}
        self._images_listed = list(policy.share.images)

    def adopt(self, other: Rules) -> None:
        """Check against `other`'s rules from now on (the file reread), in one step: the volumes and shares that
        hold this object see the new rules at their next check."""
        self.__dict__.update(other.__dict__)

    def new_volume(self, name: str, driver: str, opts: Mapping[str, str]) -> None:
        """A volume about to be made (create, restore, clone): `Forbidden` unless the policy allows its spec."""
        if driver not in self.drivers:
            raise Forbidden(
                f"Volume driver {driver!r} is not allowed on this host: add it to [volumes] drivers in the policy "
                f"file {self.source} (allowed: {_listed(self.drivers)}).")
        if driver != "local":
            return  # a plugin's options mean what the plugin says: allowing the driver allows them
        kind = opts.get("type") or "none"
        if kind != "none" and kind not in self.local_types:
            raise Forbidden(
                f"The local driver's type {kind!r} is not allowed on this host: add it to [volumes] local_types in "
                f"the policy file {self.source} (allowed: {_listed(self.local_types)}).")
        self._host_path(name, opts, "would mount")

    def existing_volume(self, v: Mapping[str, Any]) -> None:
        """A volume about to be mounted into a container or written into: not one onto a host path outside the roots."""
        if (v.get("Driver") or "local") == "local":
            self._host_path(v["Name"], v.get("Options") or {}, "mounts")

    def image(self, image: str) -> None:
        if _image_ref(image) not in self.images:
            raise Forbidden(
                f"Image {image!r} is not one share may run on this host: add it to [share] images in the policy file "
                f"{self.source} (allowed: {_listed(self._images_listed)}).")

    def only_named_volumes(self, container: str, mounts: list[dict[str, Any]]) -> None:
        """`volumes_from` a container takes all its mounts: only named volumes may be taken."""
        for m in mounts:
            if m.get("Type") != "volume":
                raise Forbidden(
                    f"Container {container!r} has a {m.get('Type')} mount of {m.get('Source') or '?'} at "
                    f"{m.get('Destination') or '?'}: share takes only named volumes from a container (volumes_from), "
                    "and no policy setting allows more.")

    def _host_path(self, name: str, opts: Mapping[str, str], verb: str) -> None:
        path = host_path_of(opts)
        if path is None or self._under_a_root(path):
            return
        what = f"the host path {path}" if path else "a host path (a bind mount without a device)"
        raise Forbidden(
            f"Volume {name!r} {verb} {what}, which is not under [volumes] bind_roots in the policy file "
            f"{self.source} (roots: {_listed(self.bind_roots)}): add a root that holds it there.")

    def _under_a_root(self, path: str) -> bool:
        if not path.startswith("/"):
            return False  # relative to dockerd's working directory: never
        real = os.path.realpath(path)  # symlinks and `..` resolved, as far as this process can see
        return any(real == root or real.startswith(root + "/") for root in self.bind_roots)
