"""How volumectl shows replies to a person: tables and one-line summaries (`--json` prints the envelope)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from contracts.retention import Kept

from .fleet import FleetRow, human_age

__all__ = ["backups_table", "fleet_table", "human", "inventory_text", "keep_table", "progress_line", "show_volumes",
           "size", "table"]


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    return "\n".join("   ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
                     for r in [header, *rows])


def show_volumes(volumes: list[dict[str, Any]], host: str | None = None) -> list[list[str]]:
    rows = []
    for v in volumes:
        users = ",".join(f"{u['container']}({u['state']})" for u in v["used_by"]) or "-"
        labels = ",".join(f"{k}={val}" for k, val in sorted(v["labels"].items())) or "-"
        rows.append(([host] if host else []) + [v["name"], v["driver"], users, labels])
    return rows


def size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def duration(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_line(kind: str, volume: str, done: int, total: int | None, elapsed_s: float) -> str:
    """`backup web-data: 1.2 GiB of ~3.4 GiB (35%), 120.0 MiB/s, about 0:18 left`; without a total, bytes and rate.
    The agent's total is an estimate for a backup (its last size): past it, the percent stays at 99."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    line = f"{kind} {volume}: {size(done)}"
    if total:
        line += f" of ~{size(total)} ({min(99, done * 100 // total)}%)"
    if rate > 0:
        line += f", {size(int(rate))}/s"
        if total and total > done:
            line += f", about {duration((total - done) / rate)} left"
    return line


def backups_table(backups: list[dict[str, Any]]) -> str:
    rows = [[b["backup_id"], b["host"], b["store"], b["created_at"][:19], size(b["size"]), size(b["stored_size"]),
             b["trigger"] + (f" ({b['container']})" if b.get("container") else "")] for b in backups]
    return table(rows, ["BACKUP ID", "HOST", "STORE", "CREATED", "SIZE", "STORED", "TRIGGER"])


def keep_table(kept: Sequence[Kept]) -> list[str]:
    """`backups VOLUME --explain-keep`: each backup and the rules that keep it (`contracts.retention`)."""
    rows = [[k.record.backup_id, k.record.created_at[:19], ", ".join(k.reasons) or "forget at next run"]
            for k in kept]
    return table(rows, ["BACKUP_ID", "CREATED_AT", "KEPT BY"]).split("\n")


def inventory_text(s: dict[str, Any]) -> str:
    e = s["engine"]
    head = (f"host {s['host']}  agent {s['agent_version']}  docker {e['version']} (API {e['api_version']}, "
            f"{e['storage_driver']})  drivers: {', '.join(s['plugins']) or '-'}  taken {s['taken_at'][:19]}"
            f"  sizes {(s.get('sizes_at') or 'not measured')[:19]}")
    rows = [[v["name"], v["driver"], "-" if v.get("size") is None else size(v["size"]),
             ",".join(f"{u['container']}({u['state']})" for u in v["used_by"]) or "-",
             (v["last_backup"] or {}).get("created_at", "never")[:19]] for v in s["volumes"]]
    warn = "".join(f"INSECURE (--insecure): {w}\n" for w in s.get("insecure") or [])
    return head + "\n" + warn + table(rows, ["NAME", "DRIVER", "SIZE", "USED BY", "LAST BACKUP"])


def human(op: str, result: dict[str, Any]) -> str:
    match op:
        case "list":
            return table(show_volumes(result["volumes"]), ["NAME", "DRIVER", "USED BY", "LABELS"])
        case "inspect" | "create":
            lines = [f"{k}: {result[k]}" for k in ("name", "driver", "mountpoint", "scope", "created_at")]
            lines.append("labels: " + (", ".join(f"{k}={v}" for k, v in result["labels"].items()) or "-"))
            lines.append("options: " + (", ".join(f"{k}={v}" for k, v in result["options"].items()) or "-"))
            lines.append("used by: " + (", ".join(f"{u['container']} ({u['state']})"
                                                  for u in result["used_by"]) or "-"))
            return "\n".join(lines)
        case "remove":
            backup = result.get("backup")
            return str(result["name"]) + (f" (final backup {backup['backup_id']})" if backup else "")
        case "backup":
            return (f"{result['backup_id']}  {size(result['size'])} -> {size(result['stored_size'])} "
                    f"{result['compression']}{' + age' if result.get('encrypted_to') else ''} in "
                    f"{result['duration_s']:.1f} s\n{result['location']}")
        case "backups":
            return backups_table(result["backups"])
        case "migrate":
            return (f"{result['volume']} -> {result['to']}:{result['target']}  {size(result['size'])} verified "
                    f"(sha256 {result['sha256'][:12]}) in {result['duration_s']:.1f} s; backup {result['backup_id']}"
                    + ("; source removed" if result["source_removed"] else ""))
        case "digest":
            return f"{result['sha256']}  {result['entries']} entries, {size(result['bytes'])}"
        case "inventory":
            return inventory_text(result)
        case "restore" | "clone":
            target = result.get("volume") or result.get("target")
            return f"{target}: {size(result['size'])} in {result['duration_s']:.1f} s"
        case "forget":
            return str(result["backup_id"])
        case "verify":
            return (f"{result['backup_id']}: verified in {result['duration_s']:.1f} s ({', '.join(result['checked'])})"
                    f"; {result.get('files')} entries, {size(result.get('bytes') or 0)}")
        case "prune":
            verb = "would remove" if result["dry_run"] else "removed"
            return "\n".join([f"{verb} {len(result['volumes'])} volume(s)", *result["volumes"]])
        case "share":
            return f"{result['container']} {result['id'][:12]} {result['state']} volumes: " + (
                ", ".join(result["volumes"]) or "-")
    return msgspec.json.encode(result).decode()


def fleet_table(rows: list[FleetRow], *, why: bool = False) -> str:
    """Every row; with `why`, the reason each is listed (`fleet --unprotected`)."""
    lines = []
    for r in rows:
        host_age = f"STALE {r.host_age}" if r.stale else r.host_age
        if r.volume is None:
            lines.append([r.host, host_age, "-", "-", "-"])
            continue
        users = ",".join(f"{u.container}({u.state})" for u in r.volume.used_by) or "-"
        last = "never" if r.last_backup_age is None or r.volume.last_backup is None else \
            f"{human_age(r.last_backup_age)} ago ({r.volume.last_backup.store})"
        lines.append([r.host, host_age, r.volume.name, users, last, *([r.why] if why else [])])
    return table(lines, ["HOST", "AGE", "VOLUME", "USED BY", "LAST BACKUP", *(["WHY"] if why else [])])
