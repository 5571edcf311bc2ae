"""The contract: schema is current, subjects are right, and no input can crash the decoding."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.dispatch import Dispatcher
from agent.errors import Invalid
from agent.tasks import Tasks
from contracts import OPS, BaseRequest, Subjects, policy_copy_key, policy_copy_key_parts, valid_host_id
from contracts.schema import MARKDOWN_PATH, SCHEMA_PATH, build, render
from contracts.schema_markdown import render_markdown

from .fakes import FakeEngine, MemoryOutcomes, RecordingSink, TrustAll, fake_handlers


def test_checked_in_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text() == render(), "run `python -m contracts.schema`"


def test_schema_check_command_fails_on_a_stale_schema(tmp_path: Path) -> None:
    """Run in a copy of the package (`-m` finds it first in the working directory): the checked-in
    schema.json is only ever read. The copy's schema fails the check once changed, so the copy is what ran."""
    shutil.copytree(SCHEMA_PATH.parent, tmp_path / "contracts", ignore=shutil.ignore_patterns("__pycache__"))
    copy = tmp_path / "contracts" / "schema.json"

    def check() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "contracts.schema", "--check"], cwd=tmp_path,
                              capture_output=True)

    out = check()
    assert out.returncode == 0, out.stderr
    copy.write_text(copy.read_text().replace('"create"', '"make"', 1))
    out = check()
    assert out.returncode == 1 and b"stale" in out.stderr


def test_checked_in_reference_page_is_current_and_names_every_type_and_field() -> None:
    """docs/reference/schema.md is generated from the schema: every type a section, every field a row."""
    schema = build()
    page = MARKDOWN_PATH.read_text()
    assert page == render_markdown(schema), "run `python -m contracts.schema`"
    for name, node in schema["$defs"].items():
        section = page.split(f"\n### {name}\n", 1)[1].split("\n### ", 1)[0]
        for field in node.get("properties", {}):
            assert f"| `{field}` |" in section, (name, field)
    for op in OPS:
        assert f"| `{op}` |" in page


def test_schema_check_command_fails_on_a_stale_reference_page(tmp_path: Path) -> None:
    """In a checkout (mkdocs.yml beside the package) `--check` checks the page too, and `--markdown` names it."""
    shutil.copytree(SCHEMA_PATH.parent, tmp_path / "contracts", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "mkdocs.yml").write_text("site_name: copy\n")

    def schema(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "contracts.schema", *args], cwd=tmp_path, capture_output=True)

    assert schema("--check").returncode == 1  # no page yet
    assert schema().returncode == 0
    page = tmp_path / "docs" / "reference" / "schema.md"
    assert page.read_text() == MARKDOWN_PATH.read_text()
    assert schema("--check").returncode == 0
    page.write_text(page.read_text().replace("| `create` |", "| `make` |"))
    out = schema("--check")
    assert out.returncode == 1 and b"schema.md is stale" in out.stderr
    elsewhere = tmp_path / "other.md"
    assert schema("--markdown", str(elsewhere)).returncode == 0 and elsewhere.read_text() == MARKDOWN_PATH.read_text()


def test_contracts_import_alone_without_the_agent() -> None:
    code = "import sys, contracts; assert not any(m.startswith(('agent', 'nats', 'aiodocker')) for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_subjects() -> None:
    s = Subjects("vol")
    assert s.req("h1", "create") == "vol.req.h1.create"
    assert s.cmd("h1", "remove") == "vol.cmd.h1.remove"
    assert s.res("h1", "list") == "vol.res.h1.list"
    assert s.all("list") == "vol.all.list"
    assert s.evt("h1", "volume.created") == "vol.evt.h1.volume.created"
    assert s.stream_name("cmd") == "VOL_CMD" and Subjects("acme.vol").stream_name("res") == "ACME_VOL_RES"
    assert s.policy_copies_bucket == "vol_policy_copies" and policy_copy_key("web-1", "nightly") == "web-1.nightly"
    assert policy_copy_key_parts("web-1.nightly") == ("web-1", "nightly")
    assert policy_copy_key_parts("nightly") is None and policy_copy_key_parts("all.nightly") is None
    with pytest.raises(ValueError):
        Subjects("vol.>")


@pytest.mark.parametrize(("host", "ok"), [("h1", True), ("web-01_a", True), ("all", False), ("a.b", False),
                                          ("", False), ("x" * 65, False), ("x" * 64, True)])
def test_host_ids(host: str, ok: bool) -> None:
    assert valid_host_id(host) is ok


_DISPATCHER = Dispatcher("h1", fake_handlers(FakeEngine(), RecordingSink()), MemoryOutcomes(), RecordingSink(),
                         Tasks(8), TrustAll(), max_body=1024 * 1024)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
plausible_bodies = st.fixed_dictionaries(
    {},
    optional={"name": st.text(max_size=30) | st.integers(), "id": st.text(max_size=140),
              "labels": st.dictionaries(st.text(max_size=5), st.text(max_size=5) | st.integers(), max_size=3),
              "deadline": st.text(max_size=30), "force": json_values, "filters": json_values,
              "container": json_values, "mounts": json_values, "extra": json_values},
)


def _decodes_or_invalid(op: str, data: bytes) -> None:
    try:
        req = _DISPATCHER.decode(op, data)
    except Invalid as exc:
        assert exc.code == "invalid" and exc.message.endswith(".")
        assert "Traceback" not in exc.message
        return
    assert isinstance(req, OPS[op].request) and isinstance(req, BaseRequest)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(sorted(OPS)), data=st.binary(max_size=300))
def test_arbitrary_bytes_are_a_valid_command_or_invalid(op: str, data: bytes) -> None:
    _decodes_or_invalid(op, data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(sorted(OPS)), value=json_values)
def test_arbitrary_json_is_a_valid_command_or_invalid(op: str, value: object) -> None:
    _decodes_or_invalid(op, msgspec.json.encode(value))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(op=st.sampled_from(sorted(OPS)), body=plausible_bodies)
def test_plausible_but_wrong_bodies_are_a_valid_command_or_invalid(op: str, body: dict) -> None:
    _decodes_or_invalid(op, msgspec.json.encode(body))


def test_unknown_op_is_invalid() -> None:
    with pytest.raises(Invalid, match="Unknown operation"):
        _DISPATCHER.decode("drop-tables", b"{}")


def test_volumectls_parser_takes_store_names_as_the_contract_does() -> None:
    """The parser keeps a copy of the pattern to start fast; it must not drift."""
    from contracts import STORE_NAME_PATTERN
    from volumectl import args

    assert args.STORE_NAME_PATTERN == STORE_NAME_PATTERN


def test_the_contract_page_names_the_current_version() -> None:
    """The reference page says which version it describes: the one the code has."""
    from pathlib import Path

    from contracts import CONTRACT_VERSION

    page = (Path(__file__).resolve().parents[1] / "docs" / "contract.md").read_text()
    assert f"Contract version **{CONTRACT_VERSION}**" in page
