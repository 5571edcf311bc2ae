"""Backup policies without services: schedules on a controllable clock, spread offsets, the trust check of
entries, the book (no rollback, no unsigned removal), coverage by selectors and labels, protection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from agent.auth.policy import IdentityEntry, Policy
from agent.policies.book import PolicyBook
from agent.policies.coverage import covered, label_rules, rules_of
from agent.policies.ledger import RunState, protection
from agent.policies.timing import DEFAULT_SPREAD_MAX_S, next_due, offset_s, spread_window_s
from agent.policies.trust import PolicyTrust, Untrusted, Verified
from contracts import BackupPolicy, BackupRecord, Subjects, check_policy
from contracts.cron import CronError, parse_schedule
from contracts.labels import SCHEDULE, SCHEDULE_KEEP
from volumectl.policies import PolicyRefused, sign_entry, valid_policy
from volumectl.signing import Signer, new_user_seed

T0 = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)
S = Subjects("vol")
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def _policy(**kw: object) -> BackupPolicy:
    raw: dict[str, object] = {"name": "nightly", "schedule": "@daily", "keep": {"daily": 7}, **kw}
    return msgspec.convert(raw, BackupPolicy)


# Schedules


def test_a_missed_run_runs_once_for_the_newest_slot_not_once_per_slot() -> None:
    hourly = parse_schedule("@hourly")
    # Last run for 10:00; the agent was down until 13:20: one run, for 13:00, due now.
    due = next_due(hourly, 0, done_through=T0, now=T0 + timedelta(hours=3, minutes=20))
    assert due.slot == T0 + timedelta(hours=3) and due.at <= T0 + timedelta(hours=3, minutes=20) and due.missed
    # Once it ran for 13:00, the next is 14:00, in the future.
    after = next_due(hourly, 0, done_through=due.slot, now=T0 + timedelta(hours=3, minutes=21))
    assert after.slot == T0 + timedelta(hours=4) and not after.missed


def test_a_new_volume_waits_for_its_first_slot_and_the_offset_delays_it() -> None:
    hourly = parse_schedule("@hourly")
    since = T0 + timedelta(minutes=10)
    due = next_due(hourly, 120.0, done_through=since, now=since)
    assert due.slot == T0 + timedelta(hours=1) and due.at == T0 + timedelta(hours=1, minutes=2)
    # At 11:01 the 11:00 slot has come but not its offset: still waiting for 11:02.
    assert next_due(hourly, 120.0, done_through=since, now=due.slot + timedelta(minutes=1)).at == due.at
    assert next_due(hourly, 120.0, done_through=since, now=due.at).at == due.at  # due now


def test_per_second_schedules_and_time_zones() -> None:
    every_second = parse_schedule("* * * * * *")
    assert every_second.interval_s() == 1.0
    due = next_due(every_second, 0, done_through=T0, now=T0 + timedelta(seconds=5, microseconds=300))
    assert due.slot == T0 + timedelta(seconds=5)
    berlin = parse_schedule("30 2 * * *", "Europe/Berlin")
    # 02:30 does not exist on the spring-forward day: cron's rule runs it at the first moment after.
    nxt = berlin.next_after(datetime(2026, 3, 28, 12, tzinfo=UTC))
    assert nxt.astimezone(UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize("expr", ["61 * * * *", "@fortnightly", "* * *", "0 0 31 2 *", ""])
def test_invalid_schedules_are_refused_with_a_sentence(expr: str) -> None:
    with pytest.raises(CronError):
        parse_schedule(expr)


def test_spread_offsets_are_stable_distinct_and_within_the_window() -> None:
    window = spread_window_s(_policy(), 86400)
    assert window == DEFAULT_SPREAD_MAX_S  # a tenth of a day is more than the cap
    assert spread_window_s(_policy(spread_s=30), 86400) == 30
    offsets = [offset_s("nightly", f"host-{i}", "db", window) for i in range(500)]
    assert offsets == [offset_s("nightly", f"host-{i}", "db", window) for i in range(500)]
    assert all(0 <= o < window for o in offsets)
    assert len({round(o, 3) for o in offsets}) > 490  # spread, not clumped
    # Roughly even: every tenth of the window gets some hosts.
    assert {int(o / window * 10) for o in offsets} == set(range(10))
    assert offset_s("nightly", "h", "v", 0) == 0


# Bad policies are refused whole


def test_a_bad_policy_is_refused_whole_naming_every_problem() -> None:
    with pytest.raises(PolicyRefused) as exc:
        valid_policy({"name": "p", "schedule": "61 * * * *", "keep": {"daily": 0},
                      "encrypt_to": [RECIPIENT[:-1] + "q"], "timezone": "Mars/Olympus"})
    msg = str(exc.value)
    assert "schedule" in msg and "keep" in msg and "recipient" in msg and "zone" in msg
    with pytest.raises(PolicyRefused, match="store"):  # any name is a store's (hosts define theirs), not any text
        valid_policy({"name": "p", "schedule": "@daily", "keep": {"last": 1}, "store": "s3 bucket"})
    with pytest.raises(PolicyRefused, match="spread"):
        valid_policy({"name": "p", "schedule": "@hourly", "keep": {"last": 1}, "spread_s": 3600})
    assert check_policy(_policy(encrypt_to=[RECIPIENT])) == []
    with pytest.raises(PolicyRefused, match="containers' labels"):  # never a key of the bucket
        valid_policy({"name": "container:web", "schedule": "@daily", "keep": {"last": 1}})


# Trust


class Keys:
    def __init__(self, tmp: Path) -> None:
        self.signers = {n: Signer(new_user_seed()) for n in ("ops", "viewer", "agent-h", "far", "admin")}
        roles = {"ops": ("operator", None), "viewer": ("reader", None), "agent-h": ("agent", None),
                 "far": ("operator", ["elsewhere"]), "admin": ("admin", None)}
        self.local = Policy(identity=[IdentityEntry(n, s.public_key, roles[n][0], roles[n][1])  # type: ignore[arg-type]
                                      for n, s in self.signers.items()])
        self.now = T0
        self.trust = PolicyTrust(self.local, "policy.toml", host="h", subjects=S,
                                 now_ns=lambda: int(self.now.timestamp() * 1e9))

    def entry(self, who: str, policy: BackupPolicy | None, name: str = "nightly", at: datetime | None = None) -> bytes:
        e = sign_entry(self.signers[who], S, name, policy, now_ns=int((at or self.now).timestamp() * 1e9))
        return msgspec.json.encode(e)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def test_only_operators_and_admins_signatures_are_applied_here(keys: Keys) -> None:
    p = _policy()
    assert keys.trust.verify("nightly", keys.entry("ops", p)).signer == "ops"
    assert keys.trust.verify("nightly", keys.entry("admin", p)).policy == p
    with pytest.raises(Untrusted, match=r"role reader may not set policies.*operator or admin"):
        keys.trust.verify("nightly", keys.entry("viewer", p))
    with pytest.raises(Untrusted, match="role agent may not set policies"):  # a compromised host's own key
        keys.trust.verify("nightly", keys.entry("agent-h", p))
    with pytest.raises(Untrusted, match="add h to `hosts` of identity far"):
        keys.trust.verify("nightly", keys.entry("far", p))
    stranger = sign_entry(Signer(new_user_seed()), S, "nightly", p)
    with pytest.raises(Untrusted, match=r"no \[\[identity\]\]"):
        keys.trust.verify("nightly", msgspec.json.encode(stranger))


def test_a_changed_moved_or_future_entry_is_refused(keys: Keys) -> None:
    raw = msgspec.json.decode(keys.entry("ops", _policy()))
    tampered = {**raw, "body": raw["body"].replace('"daily":7', '"daily":1')}
    with pytest.raises(Untrusted, match="does not match"):
        keys.trust.verify("nightly", msgspec.json.encode(tampered))
    with pytest.raises(Untrusted, match="cannot be moved"):
        keys.trust.verify("other", keys.entry("ops", _policy()))
    with pytest.raises(Untrusted, match="ahead of this host's clock"):
        keys.trust.verify("nightly", keys.entry("ops", _policy(), at=T0 + timedelta(hours=1)))
    with pytest.raises(Untrusted, match="not a signed policy entry"):
        keys.trust.verify("nightly", b'{"name": "nightly"}')
    bad = _policy(schedule="61 * * * *")  # signed by an operator, but not valid: ignored whole
    with pytest.raises(Untrusted, match="not a cron expression"):
        keys.trust.verify("nightly", keys.entry("ops", bad))


def test_the_book_keeps_a_policy_against_rollback_and_unsigned_removal(keys: Keys, tmp_path: Path) -> None:
    book = PolicyBook(keys.trust, tmp_path / "policies")
    v1, v2 = _policy(), _policy(keep={"daily": 3})
    old = keys.entry("ops", v1, at=T0 - timedelta(minutes=5))
    assert book.reconcile({"nightly": old}) and book.accepted["nightly"].policy == v1
    assert book.reconcile({"nightly": keys.entry("ops", v2)}) and book.accepted["nightly"].policy == v2
    # The older signed version written back (a replay): refused, v2 stays.
    assert not book.reconcile({"nightly": old})
    assert book.accepted["nightly"].policy == v2 and "older version is never applied" in book.rejected["nightly"]
    # A bare delete (the key gone from the bucket): v2 stays, and why is said.
    assert not book.reconcile({})
    assert book.accepted["nightly"].policy == v2 and "without a signed removal" in book.rejected["nightly"]
    # A reader's entry under the name: ignored, v2 stays.
    book.reconcile({"nightly": keys.entry("viewer", _policy(keep={"last": 1}), at=T0 + timedelta(seconds=1))})
    assert book.accepted["nightly"].policy == v2 and "role reader" in book.rejected["nightly"]
    # A restart remembers v2 (saved), and still refuses the rollback.
    again = PolicyBook(keys.trust, tmp_path / "policies")
    again.load_saved()
    assert again.accepted["nightly"].policy == v2
    again.reconcile({"nightly": old})
    assert again.accepted["nightly"].policy == v2
    # An operator's signed removal removes it.
    keys.now += timedelta(seconds=10)
    assert again.reconcile({"nightly": keys.entry("ops", None)}) and "nightly" not in again.accepted
    assert "nightly" not in again.rejected


def test_a_fresh_book_applies_the_newest_entry_it_trusts_not_the_buckets_current_one(keys: Keys) -> None:
    """A host that never saw the policy: among the bucket's current entry, the revisions it keeps and other
    agents' copies, the newest that verifies for this host wins. `far` (operator of `elsewhere` only) can
    neither overwrite, roll back nor remove what `ops` set for every host."""
    v1, v2 = _policy(), _policy(keep={"daily": 3})
    first = keys.entry("ops", v1, at=T0 - timedelta(minutes=10))
    second = keys.entry("ops", v2, at=T0 - timedelta(minutes=5))
    theirs = keys.entry("far", _policy(keep={"last": 1}), at=T0 - timedelta(minutes=1))
    gone = keys.entry("far", None, at=T0 - timedelta(minutes=1))
    for current, history in [(theirs, [first, second, theirs]),  # (a) overwritten
                             (first, [first, second, first]),  # (b) an older genuine version written back
                             (gone, [first, second, gone])]:  # (c) a removal signed by far
        book = PolicyBook(keys.trust)
        assert book.reconcile({"nightly": current}, [("nightly", r) for r in history])
        assert (book.accepted["nightly"].policy, book.accepted["nightly"].signer) == (v2, "ops")
        assert "stays in force" in book.rejected["nightly"]
    # On `elsewhere`, far may set it: its newer entry is the one applied there.
    there = PolicyBook(PolicyTrust(keys.local, "policy.toml", host="elsewhere", subjects=S,
                                   now_ns=lambda: int(keys.now.timestamp() * 1e9)))
    there.reconcile({"nightly": theirs}, [("nightly", second)])
    assert there.accepted["nightly"].signer == "far" and there.rejected == {}


def test_copies_restore_what_the_bucket_lost_and_only_signatures_count(keys: Keys) -> None:
    """(d) `far` flooded the key's history (or purged it): only its entries are left in the bucket. Other agents'
    copies hold ops' entries; what a dishonest host stores counts only if an operator signed it for this host."""
    v1, v2 = _policy(), _policy(keep={"daily": 3})
    flood = [("nightly", keys.entry("far", _policy(keep={"last": i + 1}), at=T0 - timedelta(seconds=i)))
             for i in range(16)]
    copies = [("nightly", keys.entry("ops", v1, at=T0 - timedelta(minutes=10))),  # a host that was down a while
              ("nightly", keys.entry("ops", v2, at=T0 - timedelta(minutes=5))),
              ("nightly", keys.entry("agent-h", _policy(keep={"last": 9}), at=T0)),  # a host's own key signed it
              ("nightly", keys.entry("viewer", None, at=T0)),
              ("nightly", msgspec.json.encode({**msgspec.json.decode(keys.entry("ops", None, at=T0)), "body": "{}"})),
              ("nightly", b"junk"), ("other", keys.entry("ops", v1, at=T0))]  # moved to another name: refused
    book = PolicyBook(keys.trust)
    assert book.reconcile({"nightly": flood[-1][1]}, [*flood, *copies])
    assert book.accepted["nightly"].policy == v2 and set(book.accepted) == {"nightly"}
    assert "far" in book.rejected["nightly"] and set(book.rejected) == {"nightly"}  # history and copies: not said
    # A policy the bucket lost entirely (a purge of the key): known from a copy, kept, and said.
    lost = PolicyBook(keys.trust)
    lost.reconcile({}, copies[:2])
    assert lost.accepted["nightly"].policy == v2 and "without a signed removal" in lost.rejected["nightly"]
    # A signed removal newer than every copy of the policy: removed, and an old copy does not bring it back.
    removed = PolicyBook(keys.trust)
    removed.reconcile({}, [*copies[:2], ("nightly", keys.entry("ops", None, at=T0 - timedelta(minutes=1)))])
    assert removed.accepted == {} and [e.body for e in removed.entries()] == [""]
    removed.reconcile({"nightly": copies[1][1]}, copies[:2])
    assert removed.accepted == {} and "older version is never applied" in removed.rejected["nightly"]


def test_an_agent_that_holds_a_version_takes_a_newer_copy_it_missed(keys: Keys, tmp_path: Path) -> None:
    """A host down while ops set v2, and far flooded the key since: the copy brings v2, and it is saved."""
    book = PolicyBook(keys.trust, tmp_path / "policies")
    v1, v2 = _policy(), _policy(keep={"daily": 3})
    book.reconcile({"nightly": keys.entry("ops", v1, at=T0 - timedelta(minutes=10))})
    theirs = keys.entry("far", _policy(keep={"last": 1}))
    assert not book.reconcile({"nightly": theirs})
    assert book.reconcile({"nightly": theirs}, [("nightly", keys.entry("ops", v2, at=T0 - timedelta(minutes=5)))])
    assert book.accepted["nightly"].policy == v2 and "far" in book.rejected["nightly"]
    again = PolicyBook(keys.trust, tmp_path / "policies")
    again.load_saved()
    assert again.accepted["nightly"].policy == v2


def test_each_entry_is_verified_once_and_one_signed_ahead_again_later(keys: Keys) -> None:
    """Reads repeat every minute: a verdict stands while the entry is read again (the local policy file is read
    once), entries older than the version held are not verified at all, and only a clock can change a verdict."""
    calls: list[str] = []
    verify = keys.trust.verify

    def counted(key: str, raw: bytes, *, check_clock: bool = True) -> Verified:
        calls.append(key)
        return verify(key, raw, check_clock=check_clock)

    keys.trust.verify = counted  # type: ignore[method-assign]
    book = PolicyBook(keys.trust)
    history = [("nightly", keys.entry("ops", _policy(keep={"daily": i + 1}), at=T0 - timedelta(minutes=i)))
               for i in range(16)]
    book.reconcile(dict(history[:1]), history)
    assert len(calls) == 1 and book.accepted["nightly"].policy.keep.daily == 1  # the newest verified first
    book.reconcile(dict(history[:1]), history)
    assert len(calls) == 1
    ahead = keys.entry("ops", _policy(keep={"daily": 30}), at=T0 + timedelta(minutes=10))
    book.reconcile({"nightly": ahead}, history)
    assert book.accepted["nightly"].policy.keep.daily == 1 and "ahead of this host's clock" in book.rejected["nightly"]
    keys.now += timedelta(minutes=10)
    assert book.reconcile({"nightly": ahead}, history) and book.accepted["nightly"].policy.keep.daily == 30


def test_the_history_read_gives_current_values_every_kept_value_and_last_revisions() -> None:
    from agent.policies.feed import _current
    from volumectl.kv import Revision

    revs = [Revision("a", b"1", 1), Revision("b", b"x", 2), Revision("a", b"2", 3), Revision("b", None, 4)]
    assert _current(revs) == ({"a": b"2"}, [("a", b"1"), ("b", b"x"), ("a", b"2")], {"a": 3, "b": 4})


# Coverage


def test_selectors_match_hosts_volumes_and_labels(keys: Keys) -> None:
    book = PolicyBook(keys.trust)
    book.reconcile({
        "db": keys.entry("ops", _policy(name="db", selector={"volumes": ["db-*"], "labels": ["tier=gold"]}), "db"),
        "web": keys.entry("ops", _policy(name="web", selector={"hosts": ["web-*"]}), "web"),
        "all": keys.entry("ops", _policy(name="all", selector={"labels": ["backup"]}), "all"),
    })
    rules = rules_of(book.accepted)
    vols = [{"Name": "db-1", "Labels": {"tier": "gold", "backup": ""}}, {"Name": "db-2", "Labels": {"tier": "x"}},
            {"Name": "cache", "Labels": None}]
    on_h = {v: [r.name for r in rs] for v, rs in covered(rules, "h", vols).items()}
    assert on_h == {"db-1": ["all", "db"], "db-2": [], "cache": []}
    on_web = {v: [r.name for r in rs] for v, rs in covered(rules, "web-1", vols).items()}
    assert on_web == {"db-1": ["all", "db", "web"], "db-2": ["web"], "cache": ["web"]}


def test_container_labels_declare_a_policy_of_their_own() -> None:
    mounts = [{"Type": "volume", "Name": "pgdata"}, {"Type": "bind", "Source": "/x"}]
    ok = {"Names": ["/pg"], "Labels": {SCHEDULE: "@daily", SCHEDULE_KEEP["daily"]: "7", SCHEDULE_KEEP["weekly"]: "4"},
          "Mounts": mounts}
    no_keep = {"Names": ["/web"], "Labels": {SCHEDULE: "@hourly"}, "Mounts": mounts}
    bad_cron = {"Names": ["/job"], "Labels": {SCHEDULE: "every day", SCHEDULE_KEEP["last"]: "3"}, "Mounts": mounts}
    rules, rejected = label_rules([ok, no_keep, bad_cron, {"Names": ["/plain"], "Labels": {}}])
    assert [r.name for r in rules] == ["container:pg"]
    assert rules[0].policy.selector.volumes == ["pgdata"] and rules[0].policy.keep.weekly == 4
    assert set(rejected) == {"container:web", "container:job"}
    assert "keep" in rejected["container:web"] and "cron" in rejected["container:job"]


# Protection


def test_protection_says_failing_overdue_pending_or_ok() -> None:
    day = 86400.0
    fresh = RunState(since=T0)
    assert protection(fresh, day, 0, T0 + timedelta(hours=1), running=False) == ("pending", None)
    status, why = protection(fresh, day, 0, T0 + timedelta(days=2, seconds=1), running=False)
    assert status == "overdue" and "No successful backup" in (why or "")
    ok = RunState(since=T0, last_run=T0, last_success=T0, last_slot=T0)
    assert protection(ok, day, 0, T0 + timedelta(days=1), running=False) == ("ok", None)
    assert protection(ok, day, 0, T0 + timedelta(days=3), running=False)[0] == "overdue"
    failing = RunState(since=T0, last_run=T0 + timedelta(days=1), last_success=T0, last_error="disk full")
    assert protection(failing, day, 0, T0 + timedelta(days=1), running=False) == (
        "failing", "The last scheduled backup failed: disk full")
    assert protection(failing, day, 0, T0, running=True) == ("running", None)


@pytest.mark.parametrize(("expr", "expected"), [("0 * * * *", 4), ("*/20 * * * *", 14)])
def test_the_night_the_clocks_go_back_runs_each_slot_once(expr: str, expected: int) -> None:
    """In Europe/Berlin the hour 02:00-03:00 comes twice on 2026-10-25 (CEST, then CET): each slot of it runs
    once, not again and again (local times compare without their fold)."""
    sched = parse_schedule(expr, "Europe/Berlin")
    start, end = datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 3, tzinfo=UTC)
    runs, done, now = [], start, start
    while now < end:
        due = next_due(sched, 0, done_through=done, now=now)
        if due.at <= now:
            runs.append(due.slot)
            done = due.slot
        else:
            now = due.at
    # After 22:00 UTC and before 03:00 UTC: 23:00, 00:00 (02:00 CEST), 01:00 (02:00 CET), 02:00; every 20 minutes
    # 14 slots. Before the fix it was over a hundred runs: the repeated hour never counted as done.
    assert len(runs) == expected and len(set(runs)) == len(runs) and runs == sorted(runs)
    assert all(r.utcoffset() == timedelta(0) for r in runs)


def test_the_preview_counts_the_backup_the_next_run_adds() -> None:
    from volumectl.policies import preview

    def rec(i: int, policy: str | None = "nightly") -> BackupRecord:
        return msgspec.convert({"backup_id": f"v.{i}", "volume": "v", "host": "h", "trigger": "schedule", "size": 1,
                                "stored_size": 1, "sha256": "x", "compression": "zstd", "store": "local",
                                "location": "/x", "created_at": f"2026-11-2{i}T03:00:00+00:00", "duration_s": 0.1,
                                "stopped_containers": [], "policy": policy}, BackupRecord)

    backups = [rec(1), rec(2), rec(3), rec(4, None)]  # the last one made by hand: never counted
    (p,) = preview(_policy(keep={"last": 2}), backups, now=datetime(2026, 11, 29, tzinfo=UTC))
    # Kept after the next run: that run's backup and v.3; v.1 and v.2 go.
    assert (p.host, p.volume, p.kept) == ("h", "v", 1) and [b.backup_id for b in p.forgotten] == ["v.2", "v.1"]


def test_a_changed_schedule_owes_no_slot_that_came_before_the_change(tmp_path: Path) -> None:
    from agent.policies.ledger import Ledger

    ledger = Ledger(tmp_path / "schedule.json")
    daily, hourly = parse_schedule("@daily"), parse_schedule("@hourly")
    state = ledger.get("p", "v", T0 - timedelta(days=3))
    ledger.schedule_is(state, daily, T0)
    state.last_slot = T0 - timedelta(hours=10)  # the last daily run
    ledger.schedule_is(state, daily, T0)  # unchanged: nothing moves
    assert state.last_slot == T0 - timedelta(hours=10)
    # Edited to hourly at 10:00: the 01:00..10:00 slots of the new schedule are not owed (no fleet-wide run now).
    ledger.schedule_is(state, hourly, T0)
    assert state.last_slot == T0
    assert next_due(hourly, 0, done_through=state.last_slot, now=T0 + timedelta(minutes=5)).slot == \
        T0 + timedelta(hours=1)


def test_an_ignored_entry_gone_from_the_bucket_is_no_longer_reported(keys: Keys) -> None:
    book = PolicyBook(keys.trust)
    book.reconcile({"junk": b"not json", "nightly": keys.entry("ops", _policy())})
    assert set(book.rejected) == {"junk"} and set(book.accepted) == {"nightly"}
    book.reconcile({"nightly": keys.entry("ops", _policy())})
    assert book.rejected == {} and set(book.accepted) == {"nightly"}


def test_a_policy_whose_signer_is_revoked_by_a_reload_is_unapplied_at_once(keys: Keys) -> None:
    """SIGHUP rereads the policy file: a signer removed from it no longer keeps its policies in force, and the newest
    entry a signer still trusted made applies at the next read."""
    book = PolicyBook(keys.trust)
    older, newer = _policy(), _policy(keep={"daily": 3})
    by_admin = keys.entry("admin", older, at=T0 - timedelta(minutes=5))
    assert book.reconcile({"nightly": keys.entry("ops", newer)}, [("nightly", by_admin)])
    assert book.accepted["nightly"].signer == "ops"
    revoked = Policy(identity=[i for i in keys.local.identity if i.name != "ops"])
    keys.trust.adopt(revoked, "policy.toml")
    book.trust_changed()
    assert "nightly" not in book.accepted and "no longer applied since the policy file was reread" in \
        book.rejected["nightly"]
    assert book.reconcile({"nightly": keys.entry("ops", newer)}, [("nightly", by_admin)])
    assert book.accepted["nightly"].signer == "admin" and book.accepted["nightly"].policy == older
