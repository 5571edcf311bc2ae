"""Signed commands against the local policy, with fakes: who may run what, and every way a message is refused."""

from __future__ import annotations

import msgspec
import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from agent.auth.policy import IdentityEntry, Policy, SignaturePolicy
from agent.auth.verify import Verifier
from agent.dispatch import Dispatcher
from agent.errors import Forbidden
from agent.tasks import Tasks
from contracts import Reply
from contracts.auth import HEADER_KEY, HEADER_SIG, HEADER_TIME
from volumectl.signing import Signer, new_user_seed

from .fakes import FakeEngine, MemoryOutcomes, RecordingSink, fake_handlers

pytestmark = pytest.mark.timeout(10)

NOW = 1_800_000_000 * 10**9
S = 10**9
POLICY_FILE = "/etc/volume-agent/policy.toml"
REQ, CMD = "vol.req.h1.create", "vol.cmd.h1.create"
BODY = b'{"name": "v1"}'

ALICE, BOB, CAROL, PEER = (Signer(new_user_seed()) for _ in range(4))
STRANGER = Signer(new_user_seed())


def policy(**signatures: float) -> Policy:
    return Policy(
        identity=[
            IdentityEntry("alice", ALICE.public_key, "operator"),
            IdentityEntry("bob", BOB.public_key, "reader"),
            IdentityEntry("carol", CAROL.public_key, "operator", hosts=["h2", "h3"]),
            IdentityEntry("peer", PEER.public_key, "agent"),
        ],
        signatures=SignaturePolicy(**signatures),
    )


class Clock:
    def __init__(self) -> None:
        self.ns = NOW

    def __call__(self) -> int:
        return self.ns


def verifier(clock: Clock | None = None, *, cache_size: int = 1000, **signatures: float) -> Verifier:
    """A verifier whose process started a day before NOW (see the test of requests from before a restart)."""
    clock = clock or Clock()
    clock.ns -= 86400 * S
    v = Verifier(policy(**signatures), POLICY_FILE, host="h1", now_ns=clock, cache_size=cache_size)
    clock.ns += 86400 * S
    return v


def refusal(v: Verifier, op: str, subject: str, headers: dict[str, str] | None, body: bytes = BODY,
            *, durable: bool = False) -> str:
    with pytest.raises(Forbidden) as exc:
        v.caller(op, subject, headers, body, durable=durable)
    return exc.value.message


def test_a_good_signature_names_the_caller_from_the_policy() -> None:
    caller = verifier().caller("create", REQ, ALICE.headers(REQ, BODY, now_ns=NOW), BODY, durable=False)
    assert (caller.name, caller.role, caller.key) == ("alice", "operator", ALICE.public_key)


def test_an_unsigned_message_is_refused_and_told_how_to_sign() -> None:
    msg = refusal(verifier(), "create", REQ, None)
    assert "not signed" in msg and HEADER_KEY in msg and POLICY_FILE in msg and "--seed" in msg
    headers = ALICE.headers(REQ, BODY, now_ns=NOW)
    del headers[HEADER_SIG]
    assert f"no {HEADER_SIG} header" in refusal(verifier(), "create", REQ, headers)


def test_an_unknown_key_is_refused_naming_the_policy_file() -> None:
    msg = refusal(verifier(), "create", REQ, STRANGER.headers(REQ, BODY, now_ns=NOW))
    assert msg == (f"Key {STRANGER.public_key} is not in the policy file {POLICY_FILE}: "
                   "add an [[identity]] for it there.")


def test_a_signature_by_another_key_is_refused() -> None:
    forged = {**STRANGER.headers(REQ, BODY, now_ns=NOW), HEADER_KEY: ALICE.public_key}
    assert "does not match key" in refusal(verifier(), "create", REQ, forged)


def test_a_signature_for_another_subject_is_refused() -> None:
    """Signed for host h2 (or for the durable path), replayed at h1's request subject."""
    for signed_for in ("vol.req.h2.create", CMD, "vol.req.h1.remove"):
        msg = refusal(verifier(), "create", REQ, ALICE.headers(signed_for, BODY, now_ns=NOW))
        assert "does not match key" in msg and "(alice)" in msg


def test_a_changed_body_or_message_id_is_refused() -> None:
    assert "does not match" in refusal(verifier(), "create", REQ, ALICE.headers(REQ, BODY, now_ns=NOW),
                                       b'{"name": "v2"}')
    headers = {**ALICE.headers(CMD, BODY, "id-1", now_ns=NOW), "Nats-Msg-Id": "id-2"}
    assert "does not match" in refusal(verifier(), "create", CMD, headers, durable=True)


def test_malformed_time_or_signature_headers_are_refused() -> None:
    headers = ALICE.headers(REQ, BODY, now_ns=NOW)
    assert "malformed" in refusal(verifier(), "create", REQ, {**headers, HEADER_TIME: "soon"})
    assert "malformed" in refusal(verifier(), "create", REQ, {**headers, HEADER_SIG: "!!!"})


def test_a_request_signed_outside_the_skew_window_is_stale() -> None:
    clock = Clock()
    v = verifier(clock, max_skew_s=120)
    old = ALICE.headers(REQ, BODY, now_ns=NOW - 121 * S)
    msg = refusal(v, "create", REQ, old)
    assert msg.startswith("The request was signed 121 s ago") and "[signatures] max_skew_s = 120" in msg
    ahead = ALICE.headers(REQ, BODY, now_ns=NOW + 121 * S)
    assert "ahead of this host's clock" in refusal(v, "create", REQ, ahead)
    assert v.caller("create", REQ, ALICE.headers(REQ, BODY, now_ns=NOW - 119 * S), BODY, durable=False)


def test_a_replayed_request_is_refused_but_a_fresh_signature_of_the_same_body_is_not() -> None:
    v = verifier()
    headers = ALICE.headers(REQ, BODY, now_ns=NOW)
    v.caller("create", REQ, headers, BODY, durable=False)
    msg = refusal(v, "create", REQ, headers)
    assert "seen before (a replay)" in msg and "max_skew_s" in msg
    v.caller("create", REQ, ALICE.headers(REQ, BODY, now_ns=NOW + 1), BODY, durable=False)


def test_a_replay_is_refused_even_after_the_cache_is_full() -> None:
    """Forgetting the oldest signature raises the floor: what it could have been is refused, never let through."""
    v = verifier(cache_size=2)
    first = ALICE.headers(REQ, BODY, now_ns=NOW - 3)
    for headers in (first, ALICE.headers(REQ, BODY, now_ns=NOW - 2), ALICE.headers(REQ, BODY, now_ns=NOW - 1)):
        v.caller("create", REQ, headers, BODY, durable=False)
    assert "replay cache is full" in refusal(v, "create", REQ, first)
    v.caller("create", REQ, ALICE.headers(REQ, BODY, now_ns=NOW), BODY, durable=False)


def test_a_request_signed_before_the_agent_started_is_refused_whatever_the_skew_allows() -> None:
    """The replay cache lives in memory: a request captured before a restart must not be applied after it."""
    clock = Clock()
    v = Verifier(policy(max_skew_s=120), POLICY_FILE, host="h1", now_ns=clock)
    clock.ns += 5 * S
    msg = refusal(v, "create", REQ, ALICE.headers(REQ, BODY, now_ns=NOW - 1 * S))
    assert msg.startswith("The request was signed 1.0 s before this agent started") and "sign it anew" in msg
    assert v.caller("create", REQ, ALICE.headers(REQ, BODY, now_ns=NOW + 1 * S), BODY, durable=False)
    durable = {"Nats-Msg-Id": "m1", **ALICE.headers(CMD, BODY, "m1", now_ns=NOW - 60 * S)}  # they wait for the agent
    assert v.caller("create", CMD, durable, BODY, durable=True)


def test_a_replay_outside_the_window_is_stale_and_the_cache_forgets_it() -> None:
    clock = Clock()
    v = verifier(clock, max_skew_s=10)
    headers = ALICE.headers(REQ, BODY, now_ns=NOW)
    v.caller("create", REQ, headers, BODY, durable=False)
    clock.ns += 11 * S
    assert "signed 11 s ago" in refusal(v, "create", REQ, headers)
    v.caller("create", REQ, ALICE.headers(REQ, BODY, now_ns=clock.ns), BODY, durable=False)
    assert len(v._seen._seen) == 1  # the first one is gone


def test_a_durable_command_may_be_older_than_the_skew_but_not_than_max_command_age() -> None:
    v = verifier(max_skew_s=120, max_command_age_s=3600)
    day_old = ALICE.headers(CMD, BODY, "c1", now_ns=NOW - 3601 * S)
    msg = refusal(v, "create", CMD, {**day_old, "Nats-Msg-Id": "c1"}, durable=True)
    assert "signed 3601 s ago" in msg and "[signatures] max_command_age_s = 3600" in msg and "publish it anew" in msg
    hour_old = {**ALICE.headers(CMD, BODY, "c2", now_ns=NOW - 3000 * S), "Nats-Msg-Id": "c2"}
    assert v.caller("create", CMD, hour_old, BODY, durable=True).name == "alice"
    # A redelivery is the same message: not a replay on the durable path (the command id deduplicates it).
    assert v.caller("create", CMD, hour_old, BODY, durable=True).name == "alice"


def test_roles_allow_their_ops_and_refusals_name_the_role_key() -> None:
    v = verifier()
    assert v.caller("inspect", "vol.req.h1.inspect", BOB.headers("vol.req.h1.inspect", BODY, now_ns=NOW), BODY,
                    durable=False).role == "reader"
    with pytest.raises(Forbidden) as exc:
        v.caller("create", REQ, BOB.headers(REQ, BODY, now_ns=NOW), BODY, durable=False)
    assert exc.value.message == (f"Identity bob has role reader, which may not run create: its `role` in the policy "
                                 f"file {POLICY_FILE} would have to be operator or admin.")
    assert exc.value.caller == "bob"  # signed: the audit names who tried
    restore = "vol.req.h1.restore"
    assert v.caller("restore", restore, PEER.headers(restore, BODY, now_ns=NOW), BODY, durable=False).role == "agent"
    assert "role agent, which may not run create" in refusal(v, "create", REQ, PEER.headers(REQ, BODY, now_ns=NOW))


def test_fleet_reads_are_signed_and_checked_like_requests() -> None:
    subject = "vol.all.list"
    assert verifier().caller("list", subject, BOB.headers(subject, b"{}", now_ns=NOW), b"{}", durable=False)
    assert "not signed" in refusal(verifier(), "list", subject, {}, b"{}")


def test_an_identity_limited_to_other_hosts_is_refused_here() -> None:
    msg = refusal(verifier(), "create", REQ, CAROL.headers(REQ, BODY, now_ns=NOW))
    assert msg == (f"Identity carol may act only on hosts h2, h3, not on h1: add h1 to `hosts` of identity carol "
                   f"in the policy file {POLICY_FILE}.")
    on_h2 = Verifier(policy(), POLICY_FILE, host="h2", now_ns=Clock())
    subject = "vol.req.h2.create"
    assert on_h2.caller("create", subject, CAROL.headers(subject, BODY, now_ns=NOW), BODY, durable=False)


# The dispatcher with the real verifier: refusals are answered and published, never applied nor recorded.

def dispatcher(v: Verifier) -> tuple[Dispatcher, FakeEngine, RecordingSink, MemoryOutcomes]:
    engine, sink, outcomes = FakeEngine(), RecordingSink(), MemoryOutcomes()
    return Dispatcher("h1", fake_handlers(engine, sink), outcomes, sink, Tasks(8), v, max_body=4096), engine, sink, \
        outcomes


async def test_a_refused_command_is_published_but_not_applied_nor_recorded() -> None:
    d, engine, sink, outcomes = dispatcher(verifier(Clock()))
    body = b'{"name": "v1", "id": "k1"}'
    out = await d.execute("create", body, subject=REQ, headers=STRANGER.headers(REQ, body))
    assert out.error is not None and out.error.code == "forbidden" and not out.retry
    assert engine.calls == [] and outcomes.items == {}
    published = msgspec.json.decode(sink.results[0][1], type=Reply)
    assert published.error is not None and published.error.code == "forbidden" and published.caller is None


async def test_a_refusal_never_replaces_the_recorded_outcome_of_its_id() -> None:
    """A reader reusing an operator's command id is refused; the operator's outcome stays the record."""
    d, engine, _, outcomes = dispatcher(Verifier(policy(), POLICY_FILE, host="h1"))
    body = b'{"name": "v1", "id": "k1"}'
    first = await d.execute("create", body, subject=REQ, headers=ALICE.headers(REQ, body))
    assert first.error is None and msgspec.json.decode(first.reply, type=Reply).caller == "alice"
    stored = dict(outcomes.items)
    refused = await d.execute("create", body, subject=REQ, headers=BOB.headers(REQ, body))
    assert refused.error is not None and refused.error.code == "forbidden"
    assert msgspec.json.decode(refused.reply, type=Reply).caller == "bob"
    assert outcomes.items == stored and engine.calls.count("create:v1") == 1


async def test_the_caller_is_in_the_reply_and_in_the_log_context() -> None:
    d, _, sink, _ = dispatcher(Verifier(policy(), POLICY_FILE, host="h1"))
    with capture_logs(processors=[merge_contextvars]) as logs:
        out = await d.execute("create", BODY, subject=REQ, headers=ALICE.headers(REQ, BODY))
    assert msgspec.json.decode(out.reply, type=Reply).caller == "alice"
    assert msgspec.json.decode(sink.results[0][1], type=Reply).caller == "alice"
    done = next(e for e in logs if e["event"] == "command.done")
    assert done["caller"] == "alice" and done["op"] == "create"
