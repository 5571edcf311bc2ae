"""`volume-agent auth init` and the NATS permissions it generates, without a server (but `nats-server -t`)."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.auth.cli import main as auth_main
from agent.auth.permissions import permissions, render_authorization
from agent.auth.policy import IdentityEntry, load_policy
from agent.daemon import main as daemon_main
from agent.denials import denied_subject
from volumectl.signing import Signer, new_user_seed

from .stack import venv_bin

KEY = "U" + "A" * 55


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def allowed(perms: dict[str, Any], direction: str, subject: str) -> bool:
    """What nats-server decides: some allow matches and no deny does (deny wins)."""
    rules = perms[direction]
    return any(matches(p, subject) for p in rules.get("allow", [])) and \
        not any(matches(p, subject) for p in rules.get("deny", []))


def ident(name: str, role: str, hosts: list[str] | None = None) -> IdentityEntry:
    return IdentityEntry(name=name, key=KEY, role=role, hosts=hosts)  # type: ignore[arg-type]


AGENTS = ["web-1", "web-2"]


def test_an_agent_publishes_only_its_own_and_reads_every_hosts_backups() -> None:
    p = permissions(ident("web-1", "agent"), agents=AGENTS)
    own = ["vol.res.web-1.create", "vol.evt.web-1.volume.created", "vol.inv.web-1", "$KV.vol_inventory.web-1",
           "vol.inv.web-1.head", "vol.inv.web-1.chunk.7", "$KV.vol_inventory.web-1.head",
           "$KV.vol_inventory.web-1.chunk.63", "$JS.API.STREAM.MSG.GET.KV_vol_inventory",
           "$KV.vol_outcomes.web-1.abc", "$KV.vol_backup_catalog.web-1.dm9s", "$O.vol_backups_web-1.C.nuid",
           "$O.vol_backups_web-1.M.bmFtZQ==", "vol.req.web-2.restore", "vol.req.web-2.digest",
           "$JS.API.STREAM.CREATE.VOL_CMD", "$JS.API.STREAM.CREATE.OBJ_vol_backups_web-1",
           "$JS.API.STREAM.PURGE.OBJ_vol_backups_web-1", "$JS.API.STREAM.INFO.VOL_RES",
           "$JS.API.CONSUMER.CREATE.VOL_CMD.agent_web-1.vol.cmd.web-1.>",
           "$JS.API.CONSUMER.MSG.NEXT.VOL_CMD.agent_web-1", "$JS.ACK.VOL_CMD.agent_web-1.1.2.3.4.5",
           "$JS.API.STREAM.MSG.GET.KV_vol_outcomes", "$JS.API.STREAM.MSG.GET.OBJ_vol_backups_web-2",
           "$JS.API.CONSUMER.CREATE.OBJ_vol_backups_web-2.eph.$O.vol_backups_web-2.C.nuid",
           "$JS.API.CONSUMER.MSG.NEXT.OBJ_vol_backups_web-2.eph",
           "$JS.API.CONSUMER.CREATE.KV_vol_backup_catalog.kvread_1.$KV.vol_backup_catalog.>",
           "$KV.vol_policy_copies.web-1.nightly", "$JS.API.STREAM.CREATE.KV_vol_policy_copies",
           "$JS.API.CONSUMER.CREATE.KV_vol_policy_copies.kvread_1.$KV.vol_policy_copies.>"]
    others = ["$KV.vol_policy_copies.web-2.nightly", "$KV.vol_policy_copies.nightly", "$KV.vol_policies.nightly",
              "$JS.API.STREAM.PURGE.KV_vol_policy_copies", "$JS.API.STREAM.MSG.DELETE.KV_vol_policy_copies",
              "$JS.API.STREAM.UPDATE.KV_vol_policy_copies",
              "vol.res.web-2.create", "vol.evt.web-2.x", "vol.inv.web-2", "$KV.vol_inventory.web-2",
              "vol.inv.web-2.head", "$KV.vol_inventory.web-2.head", "$KV.vol_inventory.web-2.chunk.0",
              "$KV.vol_inventory.web-1x.head",
              "$KV.vol_outcomes.web-2.abc", "$KV.vol_backup_catalog.web-2.dm9s", "$KV.vol_backup_catalog.dm9s",
              "$O.vol_backups_web-2.C.nuid", "$O.vol_backups.C.nuid", "vol.req.web-2.create", "vol.req.web-2.remove",
              "vol.cmd.web-2.create", "$JS.API.STREAM.DELETE.KV_vol_inventory", "$JS.API.STREAM.PURGE.VOL_RES",
              "$JS.API.STREAM.PURGE.OBJ_vol_backups_web-2", "$JS.API.STREAM.UPDATE.VOL_CMD",
              "$JS.API.STREAM.CREATE.OBJ_vol_backups_web-2", "$JS.API.STREAM.MSG.DELETE.VOL_CMD",
              "$JS.API.CONSUMER.MSG.NEXT.VOL_CMD.agent_web-2", "$JS.ACK.VOL_CMD.agent_web-2.1.2.3.4.5",
              "$JS.API.CONSUMER.CREATE.VOL_CMD.agent_web-1.vol.cmd.>",
              "$JS.API.CONSUMER.CREATE.VOL_CMD.agent_web-2.vol.cmd.web-2.>",
              "$JS.API.CONSUMER.DURABLE.CREATE.VOL_CMD.agent_web-1", "$JS.API.CONSUMER.CREATE.VOL_CMD",
              "$JS.API.CONSUMER.DELETE.VOL_CMD.agent_web-2", "$JS.API.STREAM.MSG.GET.VOL_CMD",
              "$JS.API.DIRECT.GET.KV_vol_outcomes.$KV.vol_outcomes.web-2.abc", "_INBOX_web-2.x.y"]
    assert [s for s in own if not allowed(p, "publish", s)] == []
    assert [s for s in others if allowed(p, "publish", s)] == []
    assert p["allow_responses"] is True
    for s in ("vol.req.web-1.create", "vol.all.list", "$SRV.PING.volume-agent", "_INBOX_web-1.abc.1"):
        assert allowed(p, "subscribe", s), s
    for s in ("vol.req.web-2.create", "vol.req.*.create", "vol.cmd.web-1.create", "_INBOX_web-2.abc.1",
              "_INBOX.abc", "vol.evt.web-2.x", ">"):
        assert not allowed(p, "subscribe", s), s


def test_an_agent_claims_renews_and_releases_the_lease_of_its_own_host_id_only() -> None:
    """One host id, one agent (agent/lease.py): another host's agent cannot take over, renew or delete web-1's lease,
    and no reader or operator may write a lease."""
    p = permissions(ident("web-1", "agent"), agents=AGENTS)
    for s in ("$KV.vol_leases.web-1", "$JS.API.STREAM.CREATE.KV_vol_leases", "$JS.API.STREAM.INFO.KV_vol_leases",
              "$JS.API.STREAM.MSG.GET.KV_vol_leases", "$JS.API.DIRECT.GET.KV_vol_leases.$KV.vol_leases.web-1"):
        assert allowed(p, "publish", s), s
    for s in ("$KV.vol_leases.web-2", "$KV.vol_leases.>", "$KV.vol_leases.web-1.x",
              "$JS.API.STREAM.PURGE.KV_vol_leases", "$JS.API.STREAM.DELETE.KV_vol_leases",
              "$JS.API.STREAM.UPDATE.KV_vol_leases", "$JS.API.STREAM.MSG.DELETE.KV_vol_leases",
              "$JS.API.DIRECT.GET.KV_vol_leases.$KV.vol_leases.web-2"):
        assert not allowed(p, "publish", s), s
    for who in (ident("ops", "operator"), ident("far", "operator", ["web-1"]), ident("viewer", "reader")):
        assert not allowed(permissions(who, agents=AGENTS), "publish", "$KV.vol_leases.web-1"), who.name


def test_a_reader_asks_for_reads_only_and_listens_to_the_fleet() -> None:
    p = permissions(ident("grafana", "reader"), agents=AGENTS)
    for s in ("vol.req.web-1.inspect", "vol.req.web-2.list", "vol.req.x.backups", "vol.req.x.inventory",
              "vol.req.x.digest", "vol.all.list", "$JS.API.STREAM.INFO.KV_vol_inventory",
              "$JS.API.CONSUMER.CREATE.KV_vol_inventory.kvread_1.$KV.vol_inventory.>",
              "$JS.API.CONSUMER.MSG.NEXT.KV_vol_backup_catalog.kvread_1"):
        assert allowed(p, "publish", s), s
    for s in ("vol.req.web-1.create", "vol.req.web-1.restore", "vol.req.web-1.migrate", "vol.cmd.web-1.create",
              "$KV.vol_inventory.web-1", "$JS.API.STREAM.DELETE.VOL_CMD", "$JS.API.CONSUMER.MSG.NEXT.VOL_CMD.agent_x",
              "$JS.API.CONSUMER.CREATE.VOL_CMD.x.vol.cmd.>", "vol.res.web-1.create"):
        assert not allowed(p, "publish", s), s
    for s in ("vol.evt.web-1.backup.progress", "vol.inv.web-1", "vol.res.web-1.create", "_INBOX_grafana.x"):
        assert allowed(p, "subscribe", s), s
    for s in ("vol.req.web-1.create", "_INBOX_alice.x", "_INBOX.x", "vol.all.list"):
        assert not allowed(p, "subscribe", s), s
    assert "allow_responses" not in p


def test_an_operator_runs_every_op_on_its_hosts_only() -> None:
    bob = permissions(ident("bob", "operator", ["web-1"]), agents=AGENTS)
    for s in ("vol.req.web-1.create", "vol.cmd.web-1.remove", "vol.req.web-2.inspect", "$JS.API.STREAM.INFO.VOL_CMD"):
        assert allowed(bob, "publish", s), s
    for s in ("vol.req.web-2.create", "vol.cmd.web-2.create", "vol.cmd.web-2.inspect", "$JS.API.STREAM.PURGE.VOL_CMD"):
        assert not allowed(bob, "publish", s), s
    # It writes the fleet's policies (agents apply only what it may set for their host), never an agent's copies.
    assert allowed(bob, "publish", "$KV.vol_policies.nightly")
    assert allowed(bob, "publish", "$JS.API.CONSUMER.MSG.NEXT.KV_vol_policy_copies.kvread_1")
    assert not allowed(bob, "publish", "$KV.vol_policy_copies.web-1.nightly")
    alice = permissions(ident("alice", "operator"), agents=AGENTS)
    assert allowed(alice, "publish", "vol.req.any-host.create") and allowed(alice, "publish", "vol.cmd.web-9.prune")
    assert not allowed(alice, "publish", "$JS.API.STREAM.DELETE.VOL_CMD")
    assert allowed(alice, "subscribe", "_INBOX_alice.x") and not allowed(alice, "subscribe", "_INBOX_bob.x")


def test_an_admin_may_do_everything_and_a_prefix_names_everything() -> None:
    p = permissions(ident("ops", "admin"))
    assert allowed(p, "publish", "$JS.API.STREAM.DELETE.VOL_CMD") and allowed(p, "subscribe", "vol.req.x.y")
    a = permissions(ident("h1", "agent"), "acme.vol", agents=["h1"])
    assert allowed(a, "publish", "$JS.API.STREAM.CREATE.ACME_VOL_CMD")
    assert allowed(a, "publish", "$KV.acme_vol_inventory.h1") and allowed(a, "publish", "acme.vol.res.h1.create")
    assert allowed(a, "subscribe", "acme.vol.req.h1.create") and not allowed(a, "subscribe", "vol.req.h1.create")
    with pytest.raises(ValueError):
        permissions(ident("x", "nobody"))


def test_the_rendered_authorization_is_a_config_nats_server_accepts(tmp_path: Path) -> None:
    ids = [IdentityEntry(name=name, key=Signer(new_user_seed()).public_key, role=role, hosts=hosts)  # type: ignore[arg-type]
           for name, role, hosts in [("web-1", "agent", None), ("bob", "operator", ["web-1"]),
                                     ("grafana", "reader", None), ("ops", "admin", None)]]
    text = render_authorization(ids)
    (tmp_path / "nats-auth.conf").write_text(text)
    (tmp_path / "nats.conf").write_text("port: -1\ninclude nats-auth.conf\n")
    out = subprocess.run([venv_bin("nats-server"), "-c", str(tmp_path / "nats.conf"), "-t"], capture_output=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert text.count("nkey:") == 4 and text.count("allow_responses: true") == 1
    assert '"_INBOX_bob.>"' in text and '"vol.cmd.web-1.>"' in text


def _init(d: Path, *args: str) -> int:
    return auth_main(["init", str(d), *args])


def test_auth_init_writes_seeds_a_registry_the_nats_users_and_the_policy(tmp_path: Path, capsys) -> None:
    d = tmp_path / "auth"
    assert daemon_main(["auth", "init", str(d), "--host", "web-1", "--host", "web-2", "--operator", "alice",
                        "--operator", "bob:web-1,web-2", "--reader", "grafana", "--admin", "ops"]) == 0
    out = capsys.readouterr()
    seeds = {p.stem: p for p in (d / "seeds").iterdir()}
    assert set(seeds) == {"web-1", "web-2", "alice", "bob", "grafana", "ops"}
    assert stat.S_IMODE((d / "seeds").stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in seeds.values())
    for p in seeds.values():  # never printed
        assert p.read_text().strip() not in out.out + out.err
    assert not re.search(r"\bSU[A-Z2-7]{50,}", out.out + out.err)  # no seed at all (public keys start with U)
    registry = json.loads((d / "identities.json").read_text())
    by_name = {i["name"]: i for i in registry["identities"]}
    assert by_name["bob"]["hosts"] == ["web-1", "web-2"] and by_name["alice"]["hosts"] is None
    assert by_name["web-1"]["role"] == "agent" and registry["prefix"] == "vol"
    policy = load_policy(d / "policy.toml")
    assert {(i.name, i.role, tuple(i.hosts or ())) for i in policy.identity} == {
        (n, i["role"], tuple(i["hosts"] or ())) for n, i in by_name.items()}
    conf = (d / "nats-auth.conf").read_text()
    assert all(i["key"] in conf for i in by_name.values())
    assert "include nats-auth.conf" in out.out and "--nats-nkey-seed" in out.out


def test_auth_init_again_adds_names_and_keeps_keys_seeds_and_policy_settings(tmp_path: Path, capsys) -> None:
    d = tmp_path / "auth"
    assert _init(d, "--host", "web-1", "--operator", "alice:web-1") == 0
    seed = (d / "seeds" / "web-1.nk").read_bytes()
    key = json.loads((d / "identities.json").read_text())["identities"][0]["key"]
    policy = (d / "policy.toml").read_text().replace("bind_roots = []", 'bind_roots = ["/srv/data"]')
    (d / "policy.toml").write_text(policy)
    assert _init(d, "--host", "web-2", "--operator", "alice:web-1,web-2") == 0
    assert (d / "seeds" / "web-1.nk").read_bytes() == seed
    ids = {i["name"]: i for i in json.loads((d / "identities.json").read_text())["identities"]}
    assert ids["web-1"]["key"] == key and set(ids) == {"web-1", "web-2", "alice"}
    assert ids["alice"]["hosts"] == ["web-1", "web-2"]
    p = load_policy(d / "policy.toml")
    assert p.volumes.bind_roots == ["/srv/data"] and {i.name for i in p.identity} == {"web-1", "web-2", "alice"}
    assert "$O.vol_backups_web-2.C.>" in (d / "nats-auth.conf").read_text()  # web-1 may now read web-2's backups
    capsys.readouterr()
    # Another role for a known name is refused, and nothing is written.
    before = (d / "identities.json").read_bytes()
    assert _init(d, "--reader", "alice", "--host", "web-3") == 2
    assert "already in identities.json as operator" in capsys.readouterr().err
    assert (d / "identities.json").read_bytes() == before and not (d / "seeds" / "web-3.nk").exists()


def test_revoking_an_identity_is_removing_it_from_the_registry_and_running_again(tmp_path: Path, capsys) -> None:
    d = tmp_path / "auth"
    assert _init(d, "--host", "web-1", "--reader", "grafana") == 0
    registry = json.loads((d / "identities.json").read_text())
    gone = next(i for i in registry["identities"] if i["name"] == "grafana")
    registry["identities"].remove(gone)
    (d / "identities.json").write_text(json.dumps(registry))
    capsys.readouterr()
    assert _init(d) == 0
    assert gone["key"] not in (d / "nats-auth.conf").read_text()
    assert [i.name for i in load_policy(d / "policy.toml").identity] == ["web-1"]
    assert "seeds/grafana.nk is no identity's" in capsys.readouterr().out


@pytest.mark.parametrize("args, why", [
    (["--host", "all"], "cannot be a host id"),
    (["--host", "a.b"], "not a valid name"),
    (["--host", "x", "--reader", "x"], "named twice"),
    (["--operator", "bob:"], "no host after"),
    (["--operator", "bob:we b"], "not a valid host id"),
    ([], "Name at least one identity"),
])
def test_auth_init_refuses_bad_names(tmp_path: Path, capsys, args: list[str], why: str) -> None:
    assert _init(tmp_path / "auth", *args) == 2
    assert why in capsys.readouterr().err
    assert not (tmp_path / "auth" / "identities.json").exists()


def test_a_permissions_violation_names_its_subject() -> None:
    assert denied_subject('nats: permissions violation for publish to "$js.api.stream.update.vol_cmd"') == \
        ("publish", "$js.api.stream.update.vol_cmd")
    assert denied_subject("nats: Permissions Violation for Subscription to \"vol.req.b.>\"") == \
        ("subscription", "vol.req.b.>")
    assert denied_subject("nats: stale connection") is None
