"""Least-privilege NATS permissions per identity, and the `authorization` block that holds them.

A pure function of the identity, the subject prefix and the fleet's hosts: `permissions(...)` gives the dict
nats-server reads (publish/subscribe allow and deny lists, `allow_responses`), `render_authorization(...)` the
config text to `include` from nats-server.conf. Every identity connects with the inbox prefix `_INBOX_<name>`
(`contracts.inbox_prefix`) and may subscribe to no other inbox. Deny wins over allow.

The JetStream API subjects below are the ones the agent and volumectl were seen to use (a tracing server, and
the permission violations a restricted one reported), not a guess:

- agent `H`: creates its streams and buckets (STREAM.CREATE; idempotent for an identical config), never updates,
  deletes or purges them, but purges chunks of its own backup bucket (Object Store deletes and failed uploads do
  that); its durable consumer `agent_H` on the command stream, created by name with its filter in the subject
  (CONSUMER.CREATE.<stream>.agent_H.<prefix>.cmd.H.>, so it cannot widen the filter to other hosts' commands),
  pulled (MSG.NEXT) and acked; its host id's lease, written under its own key as its inventory is; KV gets by
  STREAM.MSG.GET (nats-py's KV buckets are made without direct gets; DIRECT.GET is allowed too, in case an admin
  made them with it); reads of the shared catalog and of every host's backup bucket through ephemeral pull
  consumers.
- reader and operator: KV reads of the inventory and the catalog through ephemeral pull consumers
  (volumectl.kv.read_bucket: STREAM.INFO, CONSUMER.CREATE, MSG.NEXT, CONSUMER.DELETE); the history of the audit
  stream and of events through consumers of their own; the agents' command consumers' state (CONSUMER.INFO).
  An operator also reads the command stream's messages (STREAM.MSG.GET).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from contracts import OPS, Subjects, inbox_prefix
from contracts.auth import ROLE_OPS

from .policy import IdentityEntry

__all__ = ["permissions", "render_authorization"]

API = "$JS.API"


def _kv_read(bucket: str) -> list[str]:
    """Publishes that read a KV bucket: whole (an ephemeral pull consumer) or by key."""
    stream = f"KV_{bucket}"
    return [f"{API}.STREAM.INFO.{stream}", f"{API}.CONSUMER.CREATE.{stream}.*.$KV.{bucket}.>",
            f"{API}.CONSUMER.MSG.NEXT.{stream}.*", f"{API}.CONSUMER.DELETE.{stream}.*",
            f"{API}.STREAM.MSG.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>"]


def _objects_read(bucket: str) -> list[str]:
    """Publishes that read an Object Store bucket: object infos and chunks (an ephemeral pull consumer)."""
    stream = f"OBJ_{bucket}"
    return [f"{API}.STREAM.MSG.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>",
            f"{API}.CONSUMER.CREATE.{stream}.*.$O.{bucket}.C.>", f"{API}.CONSUMER.MSG.NEXT.{stream}.*"]


def _stream_read(stream: str) -> list[str]:
    """Publishes that read a stream's history (the audit stream, events) through consumers of the reader's own:
    push (ordered) or pull, with their flow control and acks."""
    return [f"{API}.STREAM.INFO.{stream}", f"{API}.STREAM.MSG.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>",
            f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.INFO.{stream}.>", f"{API}.CONSUMER.MSG.NEXT.{stream}.>",
            f"{API}.CONSUMER.DELETE.{stream}.>", f"$JS.FC.{stream}.>", f"$JS.ACK.{stream}.>"]


def _reader(s: Subjects) -> tuple[list[str], list[str]]:
    """(publish, subscribe) allowed to every caller: read ops, fleet reads, events, inventory, outcomes (live and
    their history: the audit stream answers who did what), and how far each agent is with its commands."""
    reads = sorted(op for op in ROLE_OPS["reader"] if op in OPS)
    pub = [s.req("*", op) for op in reads] + [s.all(">")]
    pub += _kv_read(s.inventory_bucket) + _kv_read(s.catalog_bucket) + _kv_read(s.policies_bucket)
    pub += _kv_read(s.policy_copies_bucket)
    pub += _stream_read(s.res_stream) + _stream_read(s.evt_stream)
    # Which stream holds a subject (nats-py asks when a subscription names no stream).
    pub += [f"{API}.CONSUMER.INFO.{s.cmd_stream}.*", f"{API}.STREAM.NAMES"]
    pub += ["$SRV.>"]  # NATS micro discovery (`nats micro ls|info|stats volume-agent`)
    sub = [f"{s.prefix}.evt.>", s.inv(">"), f"{s.prefix}.res.>"]
    return pub, sub


def _agent(s: Subjects, host: str, hosts: Iterable[str]) -> dict[str, Any]:
    own_bucket, cmd = s.backups_bucket_of(host), s.cmd_stream
    consumer = s.consumer(host)
    pub = [
        # Its own outcomes, events, inventory, records and backups; nobody else's.
        s.res(host, ">"), s.evt(host, ">"), s.inv(host), s.inv(f"{host}.>"),
        # Its inventory: the whole or the pointer under <host>, the head and chunks under <host>.>.
        f"$KV.{s.inventory_bucket}.{host}", f"$KV.{s.inventory_bucket}.{host}.>", f"$KV.{s.outcomes_bucket}.{host}.>",
        f"$KV.{s.catalog_bucket}.{host}.>", f"$O.{own_bucket}.>",
        # Its host id's lease (claim, renew, release), read back by key: one agent per host id (agent/lease.py).
        f"$KV.{s.leases_bucket}.{host}", f"{API}.STREAM.MSG.GET.KV_{s.leases_bucket}",
        f"{API}.DIRECT.GET.KV_{s.leases_bucket}.$KV.{s.leases_bucket}.{host}",
        # Any repository's maintenance lease (agent/backup/maintenance.py): any agent may hold it, so any agent may
        # write it; the worst an agent can do with it is skip or delay maintenance (restic's lock guards prunes).
        f"$KV.{s.maintenance_bucket}.>", *_kv_read(s.maintenance_bucket),
        # Never the policies bucket: it reads the fleet's policies (and makes the bucket), it cannot write one.
        # Its own copies of the signed entries it applies, under its own name (agent/policies/copies.py).
        f"$KV.{s.policy_copies_bucket}.{host}.>",
        # migrate: the restore and the digest on the target host.
        s.req("*", "restore"), s.req("*", "digest"),
        # JetStream: make what it needs (never change, delete or purge it), read what it may.
        f"{API}.STREAM.INFO.*",
        *(f"{API}.STREAM.CREATE.{name}" for name in (
            s.cmd_stream, s.res_stream, s.evt_stream, f"KV_{s.outcomes_bucket}", f"KV_{s.inventory_bucket}",
            f"KV_{s.catalog_bucket}", f"KV_{s.policies_bucket}", f"KV_{s.leases_bucket}", f"KV_{s.maintenance_bucket}",
            f"KV_{s.policy_copies_bucket}", f"OBJ_{own_bucket}")),
        f"{API}.STREAM.PURGE.OBJ_{own_bucket}",
        f"{API}.CONSUMER.CREATE.{cmd}.{consumer}.{s.cmd(host, '>')}",
        f"{API}.CONSUMER.INFO.{cmd}.{consumer}", f"{API}.CONSUMER.MSG.NEXT.{cmd}.{consumer}",
        f"$JS.ACK.{cmd}.{consumer}.>",
        f"{API}.STREAM.MSG.GET.KV_{s.outcomes_bucket}",
        f"{API}.STREAM.MSG.GET.KV_{s.inventory_bucket}",  # its own last head, at start (others' are public anyway)
        f"{API}.DIRECT.GET.KV_{s.outcomes_bucket}.$KV.{s.outcomes_bucket}.{host}.>",
        *_kv_read(s.catalog_bucket), *_kv_read(s.policies_bucket), *_kv_read(s.policy_copies_bucket),
    ]
    for h in sorted({host, *hosts}):
        pub += _objects_read(s.backups_bucket_of(h))
    deny = [f"{API}.STREAM.DELETE.>", f"{API}.STREAM.UPDATE.>", f"{API}.STREAM.MSG.DELETE.>",
            f"{API}.CONSUMER.DELETE.{cmd}.>"]
    # Policy changes as they are written (a signal to read the bucket again).
    sub = [s.req(host, ">"), s.all(">"), "$SRV.>", f"{inbox_prefix(host)}.>", s.policy_subject(">")]
    return {"publish": {"allow": pub, "deny": deny}, "subscribe": {"allow": sub}, "allow_responses": True}


def permissions(identity: IdentityEntry, prefix: str = "vol", *, agents: Sequence[str] = ()) -> dict[str, Any]:
    """The NATS permissions of `identity`; `agents`: every agent's host id (an agent reads their backups)."""
    s = Subjects(prefix)
    if identity.role == "admin":
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    if identity.role == "agent":
        return _agent(s, identity.name, agents)
    pub, sub = _reader(s)
    if identity.role == "operator":
        for h in identity.hosts if identity.hosts is not None else ("*",):
            pub += [s.req(h, ">"), s.cmd(h, ">")]
        # Publishing commands (their acks come to its inbox); reading them back (which commands are pending).
        pub += [f"{API}.STREAM.INFO.{s.cmd_stream}", f"{API}.STREAM.MSG.GET.{s.cmd_stream}"]
        # policy.set / policy.remove: signed entries in the policies bucket (only operators and admins write it).
        pub += [s.policy_subject("*")]
    elif identity.role != "reader":
        raise ValueError(f"unknown role {identity.role!r}")
    return {"publish": {"allow": pub}, "subscribe": {"allow": [*sub, f"{inbox_prefix(identity.name)}.>"]}}


def _list(items: list[str], indent: str) -> str:
    inner = "".join(f'{indent}  "{x}"\n' for x in items)
    return f"[\n{inner}{indent}]"


def _render_user(identity: IdentityEntry, perms: dict[str, Any]) -> str:
    who = identity.role + (f" of {', '.join(identity.hosts)}" if identity.hosts is not None else "")
    out = [f"    # {identity.name}: {who}; connects with inbox prefix {inbox_prefix(identity.name)}",
           "    {", f'      nkey: "{identity.key}"', "      permissions: {"]
    for direction in ("publish", "subscribe"):
        rules = perms[direction]
        out.append(f"        {direction}: {{")
        out += [f"          {kind}: {_list(rules[kind], '          ')}" for kind in ("allow", "deny") if kind in rules]
        out.append("        }")
    if perms.get("allow_responses"):
        out.append("        allow_responses: true")
    out += ["      }", "    }"]
    return "\n".join(out)


def render_authorization(identities: Sequence[IdentityEntry], prefix: str = "vol") -> str:
    """The `authorization { users: [...] }` block for nats-server.conf (`include` it), one nkey user each."""
    agents = [i.name for i in identities if i.role == "agent"]
    users = [_render_user(i, permissions(i, prefix, agents=agents)) for i in identities]
    return "\n".join([
        "# Generated by `volume-agent auth init`: one nkey user per identity, least privilege by role.",
        "# Include it from nats-server.conf (`include nats-auth.conf`) and reload the server after each change.",
        "# Holds public keys only. A client without one of these keys cannot connect.",
        "authorization {",
        "  users: [",
        *users,
        "  ]",
        "}",
        "",
    ])
