"""contracts.retention: which backups the keep rules keep (restic/borg semantics), against answers worked out by
hand, and properties that hold for any backup set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import BackupRecord, Keep, Kept, retain, to_forget
from volumectl.render import keep_table


def rec(at: str, backup_id: str | None = None) -> BackupRecord:
    """A backup made at `at` (UTC, `YYYY-MM-DDTHH:MM[:SS]`), its id `v.<at>` unless given."""
    created = datetime.fromisoformat(at).replace(tzinfo=UTC).isoformat()
    return BackupRecord(backup_id=backup_id or f"v.{at}", volume="v", host="h", trigger="schedule", size=1,
                        stored_size=1, sha256="0" * 64, compression="zstd", store="local",
                        location=f"/b/{at}", created_at=created, duration_s=0.1, stopped_containers=[])


def why(kept: list[Kept]) -> dict[str, tuple[str, ...]]:
    """backup_id -> reasons, for the kept ones only."""
    return {k.record.backup_id: k.reasons for k in kept if k.reasons}


def ids(records: list[BackupRecord]) -> list[str]:
    return [r.backup_id for r in records]


def test_last_3_of_10_keeps_the_three_newest() -> None:
    records = [rec(f"2026-03-28T0{h}:00") for h in (4, 0, 9, 2, 7, 1, 8, 3, 6, 5)]
    kept = retain(records, Keep(last=3))
    assert why(kept) == {
        "v.2026-03-28T09:00": ("last 1/3", "newest"),
        "v.2026-03-28T08:00": ("last 2/3",),
        "v.2026-03-28T07:00": ("last 3/3",),
    }
    assert ids(to_forget(kept)) == ["v.2026-03-28T06:00", "v.2026-03-28T05:00", "v.2026-03-28T04:00",
                                    "v.2026-03-28T03:00", "v.2026-03-28T02:00", "v.2026-03-28T01:00",
                                    "v.2026-03-28T00:00"]


def test_unsorted_input_comes_back_newest_first() -> None:
    records = [rec("2026-03-02T00:00"), rec("2026-03-05T00:00"), rec("2026-03-01T00:00"), rec("2026-03-04T00:00")]
    assert [k.record.backup_id for k in retain(records, Keep(last=1))] == [
        "v.2026-03-05T00:00", "v.2026-03-04T00:00", "v.2026-03-02T00:00", "v.2026-03-01T00:00"]


def test_daily_7_keeps_the_newest_of_each_of_the_last_7_days_that_have_backups() -> None:
    """Three backups a day from 03-20 to 03-28, none on 03-25: that day does not count, so 03-21 is the 7th."""
    days = ["2026-03-20", "2026-03-21", "2026-03-22", "2026-03-23", "2026-03-24", "2026-03-26", "2026-03-27",
            "2026-03-28"]
    records = [rec(f"{d}T{t}") for d in days for t in ("01:00", "12:00", "23:00")]
    kept = retain(records, Keep(daily=7))
    assert why(kept) == {
        "v.2026-03-28T23:00": ("daily 2026-03-28 (1/7)", "newest"),
        "v.2026-03-27T23:00": ("daily 2026-03-27 (2/7)",),
        "v.2026-03-26T23:00": ("daily 2026-03-26 (3/7)",),
        "v.2026-03-24T23:00": ("daily 2026-03-24 (4/7)",),
        "v.2026-03-23T23:00": ("daily 2026-03-23 (5/7)",),
        "v.2026-03-22T23:00": ("daily 2026-03-22 (6/7)",),
        "v.2026-03-21T23:00": ("daily 2026-03-21 (7/7)",),
    }
    assert len(to_forget(kept)) == 24 - 7


def test_hourly_24_keeps_the_newest_of_each_of_the_last_24_hours() -> None:
    """Backups at :15 and :45 from 03-27 20:00 to 03-28 21:59 (26 hours): the :45 of the last 24 stay."""
    hours = [f"2026-03-27T{h}" for h in ("20", "21", "22", "23")] + [f"2026-03-28T{h:02d}" for h in range(22)]
    records = [rec(f"{h}:{m}") for h in hours for m in ("15", "45")]
    kept = retain(records, Keep(hourly=24))
    assert why(kept) == {
        "v.2026-03-28T21:45": ("hourly 2026-03-28 21 (1/24)", "newest"),
        "v.2026-03-28T20:45": ("hourly 2026-03-28 20 (2/24)",),
        "v.2026-03-28T19:45": ("hourly 2026-03-28 19 (3/24)",),
        "v.2026-03-28T18:45": ("hourly 2026-03-28 18 (4/24)",),
        "v.2026-03-28T17:45": ("hourly 2026-03-28 17 (5/24)",),
        "v.2026-03-28T16:45": ("hourly 2026-03-28 16 (6/24)",),
        "v.2026-03-28T15:45": ("hourly 2026-03-28 15 (7/24)",),
        "v.2026-03-28T14:45": ("hourly 2026-03-28 14 (8/24)",),
        "v.2026-03-28T13:45": ("hourly 2026-03-28 13 (9/24)",),
        "v.2026-03-28T12:45": ("hourly 2026-03-28 12 (10/24)",),
        "v.2026-03-28T11:45": ("hourly 2026-03-28 11 (11/24)",),
        "v.2026-03-28T10:45": ("hourly 2026-03-28 10 (12/24)",),
        "v.2026-03-28T09:45": ("hourly 2026-03-28 09 (13/24)",),
        "v.2026-03-28T08:45": ("hourly 2026-03-28 08 (14/24)",),
        "v.2026-03-28T07:45": ("hourly 2026-03-28 07 (15/24)",),
        "v.2026-03-28T06:45": ("hourly 2026-03-28 06 (16/24)",),
        "v.2026-03-28T05:45": ("hourly 2026-03-28 05 (17/24)",),
        "v.2026-03-28T04:45": ("hourly 2026-03-28 04 (18/24)",),
        "v.2026-03-28T03:45": ("hourly 2026-03-28 03 (19/24)",),
        "v.2026-03-28T02:45": ("hourly 2026-03-28 02 (20/24)",),
        "v.2026-03-28T01:45": ("hourly 2026-03-28 01 (21/24)",),
        "v.2026-03-28T00:45": ("hourly 2026-03-28 00 (22/24)",),
        "v.2026-03-27T23:45": ("hourly 2026-03-27 23 (23/24)",),
        "v.2026-03-27T22:45": ("hourly 2026-03-27 22 (24/24)",),
    }
    forgotten = ids(to_forget(kept))
    assert len(forgotten) == 52 - 24
    assert "v.2026-03-27T21:45" in forgotten and "v.2026-03-28T21:15" in forgotten


def test_weekly_across_an_iso_year_boundary_counts_week_53() -> None:
    """One backup a day at noon, 2026-12-21 (Mon) to 2027-01-10 (Sun). 2026-12-28..2027-01-03 is 2026-W53: New
    Year's Day starts no new week."""
    days = [f"2026-12-{d}" for d in range(21, 32)] + [f"2027-01-{d:02d}" for d in range(1, 11)]
    records = [rec(f"{d}T12:00") for d in days]
    kept = retain(records, Keep(weekly=3))
    assert why(kept) == {
        "v.2027-01-10T12:00": ("weekly 2027-W01 (1/3)", "newest"),
        "v.2027-01-03T12:00": ("weekly 2026-W53 (2/3)",),
        "v.2026-12-27T12:00": ("weekly 2026-W52 (3/3)",),
    }


def test_monthly_across_month_ends_and_the_new_year() -> None:
    records = [rec("2025-12-15T12:00"), rec("2025-12-31T23:00"), rec("2026-01-01T00:30"), rec("2026-01-31T12:00"),
               rec("2026-02-01T00:00"), rec("2026-02-28T23:59"), rec("2026-03-01T00:00")]
    assert why(retain(records, Keep(monthly=3))) == {
        "v.2026-03-01T00:00": ("monthly 2026-03 (1/3)", "newest"),
        "v.2026-02-28T23:59": ("monthly 2026-02 (2/3)",),
        "v.2026-01-31T12:00": ("monthly 2026-01 (3/3)",),
    }
    # Only four months have backups: monthly 5 keeps four.
    assert why(retain(records, Keep(monthly=5))) == {
        "v.2026-03-01T00:00": ("monthly 2026-03 (1/5)", "newest"),
        "v.2026-02-28T23:59": ("monthly 2026-02 (2/5)",),
        "v.2026-01-31T12:00": ("monthly 2026-01 (3/5)",),
        "v.2025-12-31T23:00": ("monthly 2025-12 (4/5)",),
    }


def test_monthly_follows_the_zones_calendar() -> None:
    """In Berlin 2026-02-28 23:59 UTC is 1 March 00:59 and 2025-12-31 23:00 UTC is New Year's Day 00:00."""
    records = [rec("2025-12-15T12:00"), rec("2025-12-31T23:00"), rec("2026-01-01T00:30"), rec("2026-01-31T12:00"),
               rec("2026-02-01T00:00"), rec("2026-02-28T23:59"), rec("2026-03-01T00:00")]
    assert why(retain(records, Keep(monthly=4), zone="Europe/Berlin")) == {
        "v.2026-03-01T00:00": ("monthly 2026-03 (1/4)", "newest"),
        "v.2026-02-01T00:00": ("monthly 2026-02 (2/4)",),
        "v.2026-01-31T12:00": ("monthly 2026-01 (3/4)",),
        "v.2025-12-15T12:00": ("monthly 2025-12 (4/4)",),
    }


def test_yearly() -> None:
    records = [rec("2023-06-01T00:00"), rec("2024-01-01T00:00"), rec("2024-12-31T23:59:59"), rec("2025-07-01T00:00"),
               rec("2026-01-01T00:00"), rec("2026-03-28T01:30")]
    kept = retain(records, Keep(yearly=3))
    assert why(kept) == {
        "v.2026-03-28T01:30": ("yearly 2026 (1/3)", "newest"),
        "v.2025-07-01T00:00": ("yearly 2025 (2/3)",),
        "v.2024-12-31T23:59:59": ("yearly 2024 (3/3)",),
    }
    assert ids(to_forget(kept)) == ["v.2026-01-01T00:00", "v.2024-01-01T00:00", "v.2023-06-01T00:00"]


def test_a_backup_kept_by_several_rules_lists_each_reason() -> None:
    """last 2 + daily 3 + weekly 2. 03-30 is a Monday (2026-W14); 03-27..03-29 are in W13, 03-21/22 in W12."""
    records = [rec("2026-03-21T20:00"), rec("2026-03-22T20:00"), rec("2026-03-27T20:00"), rec("2026-03-28T20:00"),
               rec("2026-03-29T20:00"), rec("2026-03-30T08:00"), rec("2026-03-30T10:00")]
    kept = retain(records, Keep(last=2, daily=3, weekly=2))
    assert [(k.record.backup_id, k.reasons) for k in kept] == [
        ("v.2026-03-30T10:00", ("last 1/2", "daily 2026-03-30 (1/3)", "weekly 2026-W14 (1/2)", "newest")),
        ("v.2026-03-30T08:00", ("last 2/2",)),
        ("v.2026-03-29T20:00", ("daily 2026-03-29 (2/3)", "weekly 2026-W13 (2/2)")),
        ("v.2026-03-28T20:00", ("daily 2026-03-28 (3/3)",)),
        ("v.2026-03-27T20:00", ()),
        ("v.2026-03-22T20:00", ()),
        ("v.2026-03-21T20:00", ()),
    ]


# 2026-03-29, Europe/Berlin springs forward at 01:00 UTC (02:00 CET -> 03:00 CEST): local 02:xx never happens.
SPRING = [rec("2026-03-28T22:30"), rec("2026-03-28T23:30"), rec("2026-03-29T00:30"), rec("2026-03-29T01:30")]


def test_spring_forward_hours_are_local_hours() -> None:
    """22:30, 23:30, 00:30, 01:30 UTC are 23:30 CET (28th), 00:30 and 01:30 CET, 03:30 CEST (29th)."""
    assert why(retain(SPRING, Keep(hourly=10), zone="Europe/Berlin")) == {
        "v.2026-03-29T01:30": ("hourly 2026-03-29 03 (1/10)", "newest"),
        "v.2026-03-29T00:30": ("hourly 2026-03-29 01 (2/10)",),
        "v.2026-03-28T23:30": ("hourly 2026-03-29 00 (3/10)",),
        "v.2026-03-28T22:30": ("hourly 2026-03-28 23 (4/10)",),
    }


def test_a_backup_at_2330_utc_counts_for_the_next_local_day() -> None:
    assert why(retain(SPRING, Keep(daily=2), zone="Europe/Berlin")) == {
        "v.2026-03-29T01:30": ("daily 2026-03-29 (1/2)", "newest"),
        "v.2026-03-28T22:30": ("daily 2026-03-28 (2/2)",),
    }
    assert why(retain(SPRING, Keep(daily=2))) == {
        "v.2026-03-29T01:30": ("daily 2026-03-29 (1/2)", "newest"),
        "v.2026-03-28T23:30": ("daily 2026-03-28 (2/2)",),
    }


# 2026-10-25, Europe/Berlin falls back at 01:00 UTC (03:00 CEST -> 02:00 CET): local 02:00-03:00 happens twice.
FALL = [rec("2026-10-24T23:30"), rec("2026-10-25T00:30"), rec("2026-10-25T01:30"), rec("2026-10-25T02:30")]


def test_fall_back_the_repeated_local_hour_is_one_hourly_bucket() -> None:
    """00:30 UTC is 02:30 CEST and 01:30 UTC is 02:30 CET: both `2026-10-25 02`, so hourly keeps only the later,
    as restic does (it buckets by the local wall clock)."""
    kept = retain(FALL, Keep(hourly=24), zone="Europe/Berlin")
    assert why(kept) == {
        "v.2026-10-25T02:30": ("hourly 2026-10-25 03 (1/24)", "newest"),
        "v.2026-10-25T01:30": ("hourly 2026-10-25 02 (2/24)",),
        "v.2026-10-24T23:30": ("hourly 2026-10-25 01 (3/24)",),
    }
    assert ids(to_forget(kept)) == ["v.2026-10-25T00:30"]
    # In UTC the four are four hours.
    assert len(why(retain(FALL, Keep(hourly=24)))) == 4


def test_the_newest_stays_even_when_every_rule_keeps_nothing() -> None:
    records = [rec("2026-03-27T00:00"), rec("2026-03-28T00:00"), rec("2026-03-26T00:00")]
    for keep in (Keep(), Keep(last=0, hourly=0, daily=0, weekly=0, monthly=0, yearly=0)):
        kept = retain(records, keep)
        assert why(kept) == {"v.2026-03-28T00:00": ("newest",)}
        assert ids(to_forget(kept)) == ["v.2026-03-27T00:00", "v.2026-03-26T00:00"]


def test_no_backups_nothing_kept_nothing_forgotten() -> None:
    assert retain([], Keep(last=3, daily=7)) == []
    assert to_forget([]) == []


def test_same_created_at_the_greater_backup_id_counts_as_newer() -> None:
    records = [rec("2026-03-28T01:30", "v.a"), rec("2026-03-28T01:30", "v.c"), rec("2026-03-28T01:30", "v.b")]
    kept = retain(records, Keep(last=1, daily=1))
    assert [(k.record.backup_id, k.reasons) for k in kept] == [
        ("v.c", ("last 1/1", "daily 2026-03-28 (1/1)", "newest")),
        ("v.b", ()),
        ("v.a", ()),
    ]


def test_created_at_is_compared_as_an_instant_not_as_text() -> None:
    """`...:00+00:00` and `...:00.5+00:00`, or a stamp with `Z`: ordered by time."""
    a, b = rec("2026-03-28T01:30", "v.a"), rec("2026-03-28T01:30", "v.b")
    a.created_at, b.created_at = "2026-03-28T01:30:00.500000Z", "2026-03-28T01:30:00+00:00"
    assert retain([b, a], Keep(last=1))[0].record.backup_id == "v.a"


def test_keep_table_names_the_rules_or_says_forget() -> None:
    kept = retain([rec("2026-03-28T10:00"), rec("2026-03-28T09:00"), rec("2026-03-27T09:00")], Keep(daily=2))
    assert keep_table(kept) == [
        "BACKUP_ID            CREATED_AT            KEPT BY",
        "v.2026-03-28T10:00   2026-03-28T10:00:00   daily 2026-03-28 (1/2), newest",
        "v.2026-03-28T09:00   2026-03-28T09:00:00   forget at next run",
        "v.2026-03-27T09:00   2026-03-27T09:00:00   daily 2026-03-27 (2/2)",
    ]


counts = st.one_of(st.none(), st.integers(min_value=0, max_value=6))
keeps = st.builds(Keep, last=counts, hourly=counts, daily=counts, weekly=counts, monthly=counts, yearly=counts)
# Minutes since 2025-12-20 over about 16 months: hours, days, ISO weeks, months and a year boundary all occur;
# few distinct ids so that equal instants and equal ids' neighbours both turn up.
stamps = st.lists(st.tuples(st.integers(min_value=0, max_value=700_000), st.integers(min_value=0, max_value=40)),
                  max_size=40, unique_by=lambda p: p[1])
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]


@settings(max_examples=200, deadline=None)
@given(stamps, keeps, st.sampled_from(ZONES))
def test_any_backup_set(points: list[tuple[int, int]], keep: Keep, zone: str) -> None:
    """Kept by the rules is a superset of kept by `last` alone; the newest stays; kept and forgotten partition."""
    base = datetime(2025, 12, 20, tzinfo=UTC)
    records = [rec((base + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M"), f"v.{i:03d}") for m, i in points]
    kept = retain(records, keep, zone)
    forgotten = to_forget(kept)

    kept_ids = {k.record.backup_id for k in kept if k.reasons}
    forgotten_ids = set(ids(forgotten))
    assert kept_ids.isdisjoint(forgotten_ids)
    assert kept_ids | forgotten_ids == set(ids(records))
    assert len(kept) == len(records)

    by_last = {k.record.backup_id for k in retain(records, Keep(last=keep.last), zone) if k.reasons}
    assert by_last <= kept_ids
    if records:
        newest = max(records, key=lambda r: (datetime.fromisoformat(r.created_at), r.backup_id))
        assert kept[0].record.backup_id == newest.backup_id
        assert kept[0].reasons[-1] == "newest"
        assert newest.backup_id not in forgotten_ids
    for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        n = getattr(keep, rule) or 0
        assert sum(r.startswith(rule + " ") for k in kept for r in k.reasons) <= n
