"""Volume lifecycle over request/reply against a real dockerd: each op and its errors."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from .conftest import Host
from .stack import BUSYBOX_IMAGE

pytestmark = pytest.mark.integration


async def test_create_returns_the_record_and_the_volume_exists_in_docker(host: Host) -> None:
    rec = await host.ok("create", {"name": "data1", "labels": {"team": "a"}})
    assert rec["name"] == "data1" and rec["driver"] == "local" and rec["labels"] == {"team": "a"}
    assert rec["used_by"] == [] and rec["created_at"]
    assert "data1" in host.docker.docker("volume", "ls", "-q").split()


async def test_create_same_spec_twice_is_ok_and_another_spec_is_conflict(host: Host) -> None:
    first = await host.ok("create", {"name": "data1", "labels": {"a": "1"}})
    again = await host.ok("create", {"name": "data1", "labels": {"a": "1"}})
    assert again["created_at"] == first["created_at"]
    code, msg = await host.error("create", {"name": "data1", "labels": {"a": "2"}})
    assert code == "conflict" and "labels" in msg
    code, msg = await host.error("create", {"name": "data1", "labels": {"a": "1"}, "driver_opts": {"type": "tmpfs"}})
    assert code == "conflict" and "driver options" in msg


async def test_create_of_a_volume_made_earlier_lists_the_containers_that_use_it(host: Host) -> None:
    """The agent asks Docker to create without looking first; a volume Docker already had is answered with its
    users, and its labels are still checked."""
    host.docker.docker("volume", "create", "--label", "team=a", "made1")
    host.docker.docker("create", "--name", "user1", "--network", "none", "-v", "made1:/d", BUSYBOX_IMAGE)
    made = host.docker.docker("volume", "inspect", "-f", "{{.CreatedAt}}", "made1").strip()
    # CreatedAt has whole seconds: ask in a later one, as a create long after would.
    later = datetime.fromisoformat(made) + timedelta(seconds=1)
    await asyncio.sleep(max(0.0, (later - datetime.now(UTC)).total_seconds()))
    rec = await host.ok("create", {"name": "made1", "labels": {"team": "a"}})
    assert [(u["container"], u["state"]) for u in rec["used_by"]] == [("user1", "created")]
    code, msg = await host.error("create", {"name": "made1", "labels": {"team": "b"}})
    assert code == "conflict" and "labels" in msg


async def test_tmpfs_volume_is_mounted_as_tmpfs_in_a_container(host: Host) -> None:
    opts = {"type": "tmpfs", "device": "tmpfs", "o": "size=8m"}
    rec = await host.ok("create", {"name": "scratch", "driver_opts": opts})
    assert rec["options"] == opts
    out = host.docker.docker("run", "--rm", "--network", "none", "-v", "scratch:/s", BUSYBOX_IMAGE,
                             "sh", "-c", "df /s | tail -1")
    assert out.startswith("tmpfs")


async def test_bind_volume_shows_the_host_directory(host: Host, tmp_path) -> None:
    (tmp_path / "hello.txt").write_text("from the host")
    opts = {"type": "none", "o": "bind", "device": str(tmp_path)}
    await host.ok("create", {"name": "bound", "driver_opts": opts})
    out = host.docker.docker("run", "--rm", "--network", "none", "-v", "bound:/b", BUSYBOX_IMAGE, "cat", "/b/hello.txt")
    assert out == "from the host"


async def test_inspect_lists_the_containers_that_use_the_volume(host: Host) -> None:
    await host.ok("create", {"name": "data1"})
    host.docker.docker("create", "--name", "user1", "--network", "none", "-v", "data1:/d", BUSYBOX_IMAGE)
    rec = await host.ok("inspect", {"name": "data1"})
    assert [(u["container"], u["state"]) for u in rec["used_by"]] == [("user1", "created")]


async def test_inspect_missing_volume_is_not_found(host: Host) -> None:
    code, msg = await host.error("inspect", {"name": "ghost"})
    assert code == "not_found" and msg == "Volume 'ghost' does not exist on this host."


async def test_list_filters_by_label_driver_and_dangling(host: Host) -> None:
    await host.ok("create", {"name": "a1", "labels": {"team": "a"}})
    await host.ok("create", {"name": "b1", "labels": {"team": "b"}})
    host.docker.docker("create", "--name", "c1", "--network", "none", "-v", "b1:/d", BUSYBOX_IMAGE)

    async def names(filters: dict) -> list[str]:
        return [v["name"] for v in (await host.ok("list", {"filters": filters}))["volumes"]]

    assert await names({}) == ["a1", "b1"]
    assert await names({"label": ["team=a"]}) == ["a1"]
    assert await names({"driver": "local"}) == ["a1", "b1"]
    assert await names({"driver": "nfs-plugin"}) == []
    assert await names({"dangling": True}) == ["a1"]
    assert await names({"dangling": False}) == ["b1"]
    listed = (await host.ok("list"))["volumes"]
    assert listed[1]["used_by"][0]["container"] == "c1"


async def test_remove_deletes_and_a_second_remove_is_not_found(host: Host) -> None:
    await host.ok("create", {"name": "data1"})
    assert await host.ok("remove", {"name": "data1"}) == {"name": "data1", "removed": True}
    assert host.docker.docker("volume", "ls", "-q").split() == []
    code, _ = await host.error("remove", {"name": "data1"})
    assert code == "not_found"


async def test_remove_of_a_used_volume_is_in_use_naming_the_containers_even_with_force(host: Host) -> None:
    await host.ok("create", {"name": "data1"})
    host.docker.docker("create", "--name", "db", "--network", "none", "-v", "data1:/d", BUSYBOX_IMAGE)
    for force in (False, True):
        code, msg = await host.error("remove", {"name": "data1", "force": force})
        assert code == "in_use" and "db (created)" in msg
    assert "data1" in host.docker.docker("volume", "ls", "-q").split()


async def test_prune_dry_run_names_and_removes_nothing_then_prune_removes_only_unused(host: Host) -> None:
    for name, labels in (("old1", {"tier": "tmp"}), ("old2", {}), ("kept", {"tier": "tmp"})):
        await host.ok("create", {"name": name, "labels": labels})
    host.docker.docker("create", "--name", "c1", "--network", "none", "-v", "kept:/d", BUSYBOX_IMAGE)
    dry = await host.ok("prune", {"dry_run": True})
    assert dry == {"dry_run": True, "volumes": ["old1", "old2"]}
    assert sorted(host.docker.docker("volume", "ls", "-q").split()) == ["kept", "old1", "old2"]
    pruned = await host.ok("prune", {"label": ["tier=tmp"]})
    assert pruned == {"dry_run": False, "volumes": ["old1"]}
    assert sorted(host.docker.docker("volume", "ls", "-q").split()) == ["kept", "old2"]


async def test_share_makes_a_data_volume_container_and_volumes_from_sees_its_data(host: Host) -> None:
    made = await host.ok("share", {"container": {"name": "store", "image": BUSYBOX_IMAGE},
                                   "mounts": [{"volume": "appdata", "target": "/data"}]})
    assert made["state"] == "created" and made["volumes"] == ["appdata"] and made["created_volumes"] == ["appdata"]
    host.docker.docker("run", "--rm", "--network", "none", "--volumes-from", "store", BUSYBOX_IMAGE,
                       "sh", "-c", "echo kept > /data/f")
    app = await host.ok("share", {
        "container": {"name": "reader", "image": BUSYBOX_IMAGE, "command": ["cat", "/data/f"], "start": True},
        "volumes_from": [{"container": "store", "readonly": True}],
    })
    assert app["volumes"] == ["appdata"]
    host.docker.docker("wait", "reader")
    assert host.docker.docker("logs", "reader") == "kept\n"
    rec = await host.ok("inspect", {"name": "appdata"})
    assert sorted(u["container"] for u in rec["used_by"]) == ["reader", "store"]


async def test_share_that_fails_leaves_no_container_and_no_volume_behind(host: Host) -> None:
    host.docker.docker("create", "--name", "taken", "--network", "none", BUSYBOX_IMAGE)
    code, msg = await host.error("share", {"container": {"name": "taken", "image": BUSYBOX_IMAGE},
                                           "mounts": [{"volume": "fresh", "target": "/x"}]})
    assert code == "conflict" and "taken" in msg
    assert host.docker.docker("volume", "ls", "-q").split() == []
    # A container that cannot start is removed again too.
    code, _ = await host.error("share", {
        "container": {"name": "bad", "image": BUSYBOX_IMAGE, "command": ["/no/such/binary"], "start": True},
        "mounts": [{"volume": "fresh", "target": "/x"}]})
    assert code in ("invalid", "internal", "not_found")
    assert "bad" not in host.docker.docker("ps", "-a", "--format", "{{.Names}}").split()
    assert host.docker.docker("volume", "ls", "-q").split() == []


async def test_share_with_missing_image_or_source_is_not_found(host: Host) -> None:
    code, msg = await host.error("share", {"container": {"name": "x1", "image": "nope:1"}})
    assert code == "not_found" and "nope:1" in msg
    code, msg = await host.error("share", {"container": {"name": "x1", "image": BUSYBOX_IMAGE},
                                           "volumes_from": [{"container": "ghost"}]})
    assert code == "not_found" and "ghost" in msg


@pytest.mark.parametrize(
    ("op", "body", "needle"),
    [
        ("create", b"{not json", "not valid JSON"),
        ("create", b"\xff\xfe\x00", "not valid JSON"),
        ("create", b"[1, 2]", "Expected `object`"),
        ("create", b'{"name": 5}', "Expected `str`"),
        ("create", b'{"name": "ok1", "surprise": true}', "unknown field `surprise`"),
        ("create", b'{"name": "-leading-dash"}', "$.name"),
        ("create", b'{"name": "a"}', "$.name"),
        ("create", b'{"name": "has space"}', "$.name"),
        ("create", b'{"name": "' + b"x" * 256 + b'"}', "$.name"),
        ("create", b'{"name": "ok1", "id": "' + b"i" * 129 + b'"}', "$.id"),
        ("create", b'{"name": "ok1", "deadline": "tomorrow"}', "$.deadline"),
        ("create", b'{"name": "ok1", "deadline": "2030-01-01T00:00:00"}', "$.deadline"),
        ("remove", b"{}", "missing required field `name`"),
        ("explode", b"{}", "Unknown operation 'explode'"),
        ("create", b'{"name": "big", "labels": {"k": "' + b"v" * 100_000 + b'"}}', "over the limit"),
    ],
)
async def test_bad_input_is_invalid_with_a_sentence_and_changes_nothing(
    host: Host, op: str, body: bytes, needle: str
) -> None:
    reply = await host.req(op, body)
    assert not reply.ok and reply.error is not None
    assert reply.error.code == "invalid"
    assert needle in reply.error.message
    assert "Traceback" not in reply.error.message and "Error(" not in reply.error.message
    assert host.docker.docker("volume", "ls", "-q").split() == []


async def test_error_replies_carry_the_micro_error_headers(host: Host) -> None:
    subject, body = f"vol.req.{host.id}.inspect", b'{"name": "ghost"}'
    assert host.client.signer is not None
    msg = await host.client.nc.request(subject, body, timeout=10, headers=host.client.signer.headers(subject, body))
    assert msg.headers is not None
    assert msg.headers["Nats-Service-Error-Code"] == "404"
    assert msg.headers["Nats-Service-Error"] == "Volume 'ghost' does not exist on this host."
    reply = msgspec.json.decode(msg.data)
    assert reply["error"]["code"] == "not_found" and reply["host"] == host.id and reply["op"] == "inspect"


async def test_expired_deadline_is_not_applied(host: Host) -> None:
    code, msg = await host.error("create", {"name": "late", "deadline": "2020-01-01T00:00:00Z"})
    assert code == "expired" and "deadline" in msg
    assert host.docker.docker("volume", "ls", "-q").split() == []


async def test_fleet_list_is_answered_by_the_agent(host: Host) -> None:
    await host.ok("create", {"name": "data1"})
    replies = await host.client.gather("list", window=1.0)
    mine = [r for r in replies if r.host == host.id]
    assert len(mine) == 1 and mine[0].ok
    assert [v["name"] for v in mine[0].result["volumes"]] == ["data1"]
