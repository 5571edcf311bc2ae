"""The stores a host defines: `local` and `nats` always, and more by name in its stores file (TOML).

    [offsite]                          the store's name, as requests, policies and records give it
    kind = "restic"                    a restic repository (agent/backup/restic_store.py)
    repository = "sftp:backup@nas:/srv/restic"   anything `restic -r` takes: a path, rest:, sftp:, s3:, rclone:
    password_file = "/etc/volume-agent/offsite.pass"   mode 600: restic reads it, the agent never does
    env_file = "/etc/volume-agent/offsite.env"   optional, mode 600: KEY=VALUE lines (AWS_ACCESS_KEY_ID=...)
                                       given to restic's environment only
    compression = "auto"               auto | off | max (restic's --compression)
    limit_upload = 10240               KiB/s (restic's --limit-upload), and limit_download
    options = { "sftp.connections" = "2" }   restic's -o key=value
    init = false                       true: `restic init` the repository when it does not exist yet
    shared = true                      false: only this host holds the key; its own snapshots are restored
                                       without the member check (as the local store's are)
    cache_dir = "/var/cache/restic"    optional: restic's --cache-dir
    maintenance = { prune = "0 3 * * 0", check = "0 4 * * *", check_subset = "5%" }
                                       optional: repository maintenance, once for the fleet at each slot (cron,
                                       UTC; agent/backup/maintenance.py): `restic prune`, and `restic check
                                       --read-data-subset=<check_subset>` (n/t, a percentage or a size: 500M)

Like the policy file, it is read once at start and nothing on the bus changes it. Secrets stay in the files it
names (the password, backend credentials), which must be readable by their owner alone, as the age identity must:
they never enter the agent, its logs or the bus. A repository URL with a password in it (`rest:https://u:p@host/`)
makes the stores file itself a secret: then it must be mode 600 too.
"""

from __future__ import annotations

import re
import shutil
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from contracts import STORE_NAME_PATTERN
from contracts.cron import CronError, parse_schedule

__all__ = ["BUILT_IN", "DEFAULT_STORES", "RESTIC", "Maintenance", "ResticConfig", "StoreConfig", "env_of",
           "load_stores"]

DEFAULT_STORES = "/etc/volume-agent/stores.toml"
BUILT_IN = ("local", "nats")
RESTIC = "restic"
"""The restic binary (Debian: `apt-get install restic`; tested with 0.14), found on PATH."""
_ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_URL_PASSWORD = re.compile(r"://[^/@\s:]*:[^/@\s]*@")
# restic's --read-data-subset: n/t (the n-th of t parts), x% (a random share), or a size (500M, 2G).
_SUBSET = re.compile(r"^(?:(?P<n>[0-9]+)/(?P<t>[0-9]+)|(?P<pct>[0-9]+(?:\.[0-9]+)?)%|(?P<size>[0-9]+)[KMGT])$")


class Maintenance(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A restic store's repository maintenance: each on its own schedule, by one host of the fleet per slot."""

    prune: str | None = None
    """`restic prune` (drops the data no snapshot refers to any more): a cron expression, UTC."""
    check: str | None = None
    """`restic check --read-data-subset=<check_subset>`: a cron expression, UTC."""
    check_subset: str = "5%"


class ResticConfig(msgspec.Struct, tag="restic", tag_field="kind", forbid_unknown_fields=True, frozen=True):
    """A restic repository as a store."""

    repository: Annotated[str, msgspec.Meta(min_length=1)]
    password_file: Annotated[str, msgspec.Meta(min_length=1)]
    env_file: str | None = None
    compression: Literal["auto", "off", "max"] = "auto"
    limit_upload: Annotated[int, msgspec.Meta(ge=1)] | None = None
    limit_download: Annotated[int, msgspec.Meta(ge=1)] | None = None
    options: dict[str, str] = {}
    init: bool = False
    shared: bool = True
    cache_dir: str | None = None
    maintenance: Maintenance | None = None


StoreConfig = ResticConfig
"""Every kind a stores file may define (one for now; a tagged union on `kind` as kinds are added)."""


def _private(path: Path, what: str) -> None:
    """`ValueError` unless `path` is a file only its owner may read or write (a secret)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {path} is not a file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{what} {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")


def env_of(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of an env file (blank lines and `#` comments skipped); `ValueError` naming the line,
    never quoting it (it holds secrets)."""
    env = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _ENV_LINE.match(line.removeprefix("export "))
        if m is None:
            raise ValueError(f"line {number} of {path} is not KEY=VALUE")
        value = m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[m.group(1)] = value
    return env


def load_stores(path: Path) -> dict[str, StoreConfig]:
    """The stores `path` defines, by name; `ValueError` with a sentence (the file, the store, what is wrong) if
    the agent must not start with it."""
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except OSError as exc:
        raise ValueError(f"cannot read the stores file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"the stores file {path} is not valid TOML: {exc}") from exc
    stores: dict[str, StoreConfig] = {}
    for name, entry in data.items():
        where = f"store {name!r} in {path}"
        if name in BUILT_IN:
            raise ValueError(f"{where}: `local` and `nats` are built in; give this store another name")
        if not re.match(STORE_NAME_PATTERN, name):
            raise ValueError(f"{where}: a store's name is letters, digits, '_' and '-' (at most 64)")
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a table ([{name}] with kind = \"restic\" and its settings)")
        try:
            cfg = msgspec.convert(entry, StoreConfig)
        except msgspec.ValidationError as exc:
            raise ValueError(f"{where} is not valid: {exc}") from None
        _private(Path(cfg.password_file), f"{where}: its password_file")
        if cfg.env_file is not None:
            _private(Path(cfg.env_file), f"{where}: its env_file")
            env_of(Path(cfg.env_file))
        if cfg.maintenance is not None:
            _check_maintenance(cfg.maintenance, where)
        if _URL_PASSWORD.search(cfg.repository):
            _private(path, f"{where} has a password in its repository URL, so the stores file")
        stores[name] = cfg
    if stores and shutil.which(RESTIC) is None:
        raise ValueError(f"the stores file {path} defines restic stores, and the restic tool is not installed: "
                         "apt-get install restic")
    return stores


def _check_maintenance(m: Maintenance, where: str) -> None:
    """`ValueError` with a sentence unless `m`'s schedules are cron expressions and its subset is one restic takes."""
    for task, expr in (("prune", m.prune), ("check", m.check)):
        if expr is None:
            continue
        try:
            parse_schedule(expr)
        except CronError as exc:
            raise ValueError(f"{where}: its maintenance {task} schedule {expr!r} is not a schedule ({exc}); give a "
                             "cron expression (5 fields, or 6 with seconds first) or @daily, @weekly, ...") from None
    if m.prune is None and m.check is None:
        raise ValueError(f"{where}: its maintenance table sets neither `prune` nor `check`; give either a cron "
                         "schedule, or remove the table")
    sub = _SUBSET.match(m.check_subset)
    ok = sub is not None and (
        (sub["n"] is not None and 1 <= int(sub["n"]) <= int(sub["t"]))
        or (sub["pct"] is not None and 0 < float(sub["pct"]) <= 100)
        or (sub["size"] is not None and int(sub["size"]) > 0))
    if not ok:
        raise ValueError(f"{where}: its maintenance check_subset {m.check_subset!r} is none restic reads; give n/t "
                         "(1/7: the first of 7 parts), a percentage (5%) or a size (500M)")
