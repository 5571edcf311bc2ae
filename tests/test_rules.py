"""Risky requests against the local policy, with fakes: host paths only under bind roots, drivers and local types
by allow-list, `share` only from listed images and only with named volumes. Each refusal names its policy key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.auth.policy import Policy, SharePolicy, VolumesPolicy
from agent.auth.rules import Rules, host_path_of
from agent.backup.hooks import PRE_HOOK, run_hooks
from agent.dispatch import Dispatcher
from agent.errors import Forbidden, NotFound
from agent.tasks import Tasks
from contracts import (
    CloneRequest,
    ContainerRef,
    ContainerSpec,
    CreateRequest,
    Mount,
    RestoreRequest,
    ShareRequest,
    VolumesFrom,
)

from .fakes import FakeAgent, FakeEngine, MemoryOutcomes, RecordingSink, TrustAll, fake_agent
from .test_backup_logic import at, put_backup

pytestmark = pytest.mark.timeout(10)

SOURCE = "/etc/volume-agent/policy.toml"
BIND_ETC = {"type": "none", "o": "bind", "device": "/etc"}


def rules(bind_roots: list[str] | None = None, **volumes: Any) -> Rules:
    images = volumes.pop("images", [])
    return Rules(Policy(volumes=VolumesPolicy(bind_roots=bind_roots or [], **volumes),
                        share=SharePolicy(images=images)), SOURCE)


def refused(call: Any, *args: Any) -> str:
    with pytest.raises(Forbidden) as exc:
        call(*args)
    return exc.value.message


def test_what_counts_as_a_host_path() -> None:
    assert host_path_of({}) is None
    assert host_path_of({"type": "tmpfs", "device": "tmpfs", "o": "size=8m"}) is None
    assert host_path_of({"type": "nfs", "o": "addr=10.0.0.1", "device": ":/export"}) is None
    assert host_path_of({"type": "cifs", "device": "//fileserver/share"}) is None
    assert host_path_of(BIND_ETC) == "/etc"
    assert host_path_of({"type": "tmpfs", "o": "rbind", "device": "/etc"}) == "/etc"  # the flag wins over the type
    assert host_path_of({"device": "/srv/x"}) == "/srv/x"  # no type: a bind
    assert host_path_of({"type": "ext4", "device": "/dev/sdb1"}) == "/dev/sdb1"
    assert host_path_of({"o": "bind"}) == ""


def test_a_bind_mount_volume_is_refused_by_default_naming_bind_roots() -> None:
    msg = refused(rules().new_volume, "hostroot", "local", BIND_ETC)
    assert msg == ("Volume 'hostroot' would mount the host path /etc, which is not under [volumes] bind_roots in the "
                   f"policy file {SOURCE} (roots: none): add a root that holds it there.")
    assert "a bind mount without a device" in refused(rules().new_volume, "v", "local", {"o": "bind"})


def test_a_host_path_under_a_bind_root_is_allowed_and_nothing_outside_it(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "app").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (root / "escape").symlink_to("/etc")
    r = rules([str(root)])
    r.new_volume("ok", "local", {"type": "none", "o": "bind", "device": str(root / "app")})
    r.new_volume("ok", "local", {"type": "none", "o": "bind", "device": str(root)})
    for device in (f"{root}/../other", f"{root}/escape", f"{root}2", "/etc", "etc", f"/{root}/../../etc"):
        assert "not under [volumes] bind_roots" in refused(r.new_volume, "v", "local", {"o": "bind", "device": device})


def test_a_device_given_as_a_host_path_needs_a_bind_root_too() -> None:
    msg = refused(rules(local_types=["ext4"]).new_volume, "disk", "local", {"type": "ext4", "device": "/dev/sdb1"})
    assert "would mount the host path /dev/sdb1" in msg
    rules(["/dev"], local_types=["ext4"]).new_volume("disk", "local", {"type": "ext4", "device": "/dev/sdb1"})


def test_root_itself_is_never_a_bind_root() -> None:
    with pytest.raises(ValueError, match="not / itself"):
        rules(["/"])
    with pytest.raises(ValueError, match="absolute"):
        rules(["srv"])


def test_drivers_and_local_types_are_allow_lists_with_the_defaults() -> None:
    r = rules()
    msg = refused(r.new_volume, "v", "vieux/sshfs", {"sshcmd": "root@evil:/"})
    assert msg == ("Volume driver 'vieux/sshfs' is not allowed on this host: add it to [volumes] drivers in the "
                   f"policy file {SOURCE} (allowed: local).")
    msg = refused(r.new_volume, "v", "local", {"type": "ext4", "device": "LABEL=data"})
    assert msg == ("The local driver's type 'ext4' is not allowed on this host: add it to [volumes] local_types in the "
                   f"policy file {SOURCE} (allowed: tmpfs, nfs, nfs4, cifs).")
    for opts in ({}, {"type": "tmpfs", "device": "tmpfs"}, {"type": "nfs4", "o": "addr=nas", "device": ":/x"},
                 {"type": "cifs", "device": "//nas/share"}):
        r.new_volume("v", "local", opts)
    rules(drivers=["local", "vieux/sshfs"]).new_volume("v", "vieux/sshfs", {"sshcmd": "u@h:/p"})


def test_share_images_are_an_allow_list_empty_by_default() -> None:
    msg = refused(rules().image, "busybox")
    assert msg == (f"Image 'busybox' is not one share may run on this host: add it to [share] images in the policy "
                   f"file {SOURCE} (allowed: none).")
    r = rules(images=["busybox", "registry.local/tools/backup:2"])
    for same in ("busybox", "busybox:latest", "library/busybox", "docker.io/library/busybox:latest"):
        r.image(same)
    r.image("registry.local/tools/backup:2")
    assert "not one share may run" in refused(r.image, "busybox:musl")
    assert "not one share may run" in refused(r.image, "registry.local/tools/backup")


def test_volumes_from_takes_only_named_volumes() -> None:
    mounts = [{"Type": "volume", "Name": "data", "Destination": "/data"},
              {"Type": "bind", "Source": "/", "Destination": "/host"}]
    msg = refused(rules().only_named_volumes, "rooty", mounts)
    assert msg == ("Container 'rooty' has a bind mount of / at /host: share takes only named volumes from a container "
                   "(volumes_from), and no policy setting allows more.")


# Through the handlers: nothing is made, mounted or written when refused.

@pytest.fixture
def agent(tmp_path: Path) -> FakeAgent:
    r = rules([str(tmp_path / "binds")], images=["busybox"])
    (tmp_path / "binds" / "ok").mkdir(parents=True)
    return fake_agent(FakeEngine(tmp_path / "volumes"), RecordingSink(), host="h1", rules=r)


async def test_create_refuses_the_exploit_and_makes_nothing(agent: FakeAgent, tmp_path: Path) -> None:
    with pytest.raises(Forbidden, match="host path /etc"):
        await agent.volumes.create(CreateRequest(name="hostroot", driver_opts=BIND_ETC))
    assert agent.engine.calls == []
    ok = {"type": "none", "o": "bind", "device": str(tmp_path / "binds" / "ok")}
    assert (await agent.volumes.create(CreateRequest(name="fine", driver_opts=ok))).options == ok


async def test_restore_with_a_bind_spec_or_into_a_host_path_volume_is_refused(agent: FakeAgent) -> None:
    record = await put_backup(agent.stores["local"], "src", "h1", at(1))
    with pytest.raises(Forbidden, match="host path /etc"):
        await agent.restores.restore(RestoreRequest(backup_id=record.backup_id, volume="t1", driver_opts=BIND_ETC))
    with pytest.raises(Forbidden, match="drivers"):
        await agent.restores.restore(RestoreRequest(backup_id=record.backup_id, volume="t2", driver="evil"))
    agent.engine.volumes["etc"] = {"Name": "etc", "Driver": "local", "Options": BIND_ETC, "Mountpoint": "/etc"}
    with pytest.raises(Forbidden, match="Volume 'etc' mounts the host path /etc"):
        await agent.restores.restore(RestoreRequest(backup_id=record.backup_id, volume="etc", overwrite=True))
    assert not [c for c in agent.engine.calls if c.startswith(("create:", "remove:"))]


async def test_clone_of_a_host_path_volume_outside_the_roots_is_refused(agent: FakeAgent) -> None:
    agent.engine.volumes["etc"] = {"Name": "etc", "Driver": "local", "Options": BIND_ETC, "Mountpoint": "/etc"}
    with pytest.raises(Forbidden, match="Volume 'etc' mounts the host path /etc"):
        await agent.restores.clone(CloneRequest(source="etc", target="copy"))
    assert "copy" not in agent.engine.volumes


def share(image: str = "busybox", **kw: Any) -> ShareRequest:
    return ShareRequest(container=ContainerSpec(name="pwn", image=image, start=True), **kw)


async def test_share_refuses_unlisted_images_host_mounts_and_host_path_volumes(agent: FakeAgent) -> None:
    shares = agent.domain.shares
    with pytest.raises(Forbidden, match=r"\[share\] images"):
        await shares.share(share("alpine", mounts=[Mount(volume="data", target="/d")]))
    agent.engine.volumes["hostroot"] = {"Name": "hostroot", "Driver": "local", "Options": BIND_ETC}
    with pytest.raises(Forbidden, match="Volume 'hostroot' mounts the host path /etc"):
        await shares.share(share(mounts=[Mount(volume="hostroot", target="/h")]))
    rooty = agent.engine.add_container("rooty", ["data"])
    rooty["Mounts"].append({"Type": "bind", "Source": "/", "Destination": "/host"})
    with pytest.raises(Forbidden, match="only named volumes"):
        await shares.share(share(volumes_from=[VolumesFrom(container="rooty")]))
    agent.engine.add_container("sly", ["hostroot"])
    with pytest.raises(Forbidden, match="Volume 'hostroot' mounts"):
        await shares.share(share(volumes_from=[VolumesFrom(container="sly")]))
    assert not [c for c in agent.engine.calls if c.startswith(("container_create:", "create:"))]
    with pytest.raises(NotFound):  # allowed: on to Docker (this fake makes no containers)
        await shares.share(share(mounts=[Mount(volume="data", target="/d")]))
    assert "container_create:pwn" in agent.engine.calls


async def test_a_policy_refusal_in_a_handler_is_published_but_not_recorded(agent: FakeAgent) -> None:
    """The policy may change: a retry with the same id must get to run then, not meet a stored refusal."""
    sink, outcomes = RecordingSink(), MemoryOutcomes()
    d = Dispatcher("h1", agent.handlers, outcomes, sink, Tasks(4), TrustAll(), max_body=4096)
    body = msgspec.json.encode({"name": "hostroot", "id": "k1", "driver_opts": BIND_ETC})
    out = await d.execute("create", body, redelivers=lambda o: o.retry)
    assert out.error is not None and out.error.code == "forbidden" and not out.final and not out.retry
    assert outcomes.items == {} and len(sink.results) == 1


async def test_hooks_come_only_from_the_containers_own_labels() -> None:
    """A hook label set by the image (which anyone may build) is ignored: only the container's own counts."""

    class ImageHooks(FakeEngine):
        async def image_inspect(self, name: str) -> dict[str, Any]:
            return {"Config": {"Labels": {PRE_HOOK: "touch /pwned"}}}

    engine = ImageHooks()
    c = engine.add_container("db", ["data"])
    c["Config"]["Labels"] = {PRE_HOOK: "touch /pwned"}  # inherited from the image: the same value
    await run_hooks(engine, [ContainerRef(container="db", id=c["Id"], state="running")], PRE_HOOK, must_succeed=True)
    assert not [call for call in engine.calls if call.startswith("exec:")]
    c["Config"]["Labels"] = {PRE_HOOK: "pg_dump > /data/dump.sql"}  # the container's own
    await run_hooks(engine, [ContainerRef(container="db", id=c["Id"], state="running")], PRE_HOOK, must_succeed=True)
    assert [call for call in engine.calls if call.startswith("exec:")] == [f"exec:{c['Id']}"]
