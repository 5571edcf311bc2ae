"""The stores file's maintenance settings: schedules and the check subset validated at start, with sentences."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.backup.store_config import Maintenance, load_stores


def stores_file(tmp_path: Path, maintenance: str) -> Path:
    pw = tmp_path / "pass"
    pw.write_text("x\n")
    os.chmod(pw, 0o600)
    path = tmp_path / "stores.toml"
    path.write_text(f'[off]\nkind = "restic"\nrepository = "{tmp_path}/repo"\npassword_file = "{pw}"\n'
                    f"maintenance = {maintenance}\n")
    return path


@pytest.mark.parametrize("subset", ["5%", "0.5%", "100%", "1/7", "7/7", "500M", "2G"])
def test_schedules_and_subsets_restic_reads_are_accepted(tmp_path: Path, subset: str) -> None:
    cfg = load_stores(stores_file(tmp_path, f'{{ prune = "0 3 * * 0", check = "@daily", check_subset = "{subset}" }}'))
    assert cfg["off"].maintenance == Maintenance(prune="0 3 * * 0", check="@daily", check_subset=subset)


@pytest.mark.parametrize(("table", "said"), [
    ('{ prune = "0 3 * *" }', "maintenance prune schedule '0 3 * *' is not a schedule"),
    ('{ check = "@sometimes" }', "maintenance check schedule '@sometimes' is not a schedule"),
    ('{ check = "@daily", check_subset = "0%" }', "check_subset '0%' is none restic reads"),
    ('{ check = "@daily", check_subset = "8/7" }', "check_subset '8/7' is none restic reads"),
    ('{ check = "@daily", check_subset = "lots" }', "give n/t (1/7: the first of 7 parts)"),
    ("{ }", "sets neither `prune` nor `check`"),
    ('{ prune = "@daily", when = "never" }', "is not valid"),
])
def test_maintenance_settings_restic_cannot_use_stop_the_start_with_a_sentence(
    tmp_path: Path, table: str, said: str
) -> None:
    with pytest.raises(ValueError, match="store 'off' in ") as exc:
        load_stores(stores_file(tmp_path, table))
    assert said in str(exc.value)
