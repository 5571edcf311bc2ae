"""msgspec's validation errors as sentences a person understands.

msgspec says `Expected `str` of length >= 1 - at `$.name``: right, and fine for a program, but a person asked
for a volume, not for `$.name`. `sentence(exc)` names the field as the contract means it and says what it must
be; the agent replies with it (`invalid`), volumectl prints it. An error it does not know keeps msgspec's words.
"""

from __future__ import annotations

import re

import msgspec

from .backups import BACKUP_ID_PATTERN
from .names import AGE_RECIPIENT_PATTERN, VOLUME_NAME_PATTERN

__all__ = ["sentence"]

# What each field is, by its last path element (or the whole path where the last element is ambiguous).
_FIELDS = {
    "name": "the name",
    "volume": "the volume name",
    "source": "the source volume name",
    "target": "the target volume name",
    "backup_id": "the backup id",
    "keep": "keep (how many of the newest backups to keep)",
    "to": "the target host id",
    "driver": "the driver",
    "encrypt_to": "each age recipient",
    "schedule": "the schedule",
    "compression": "the compression",
    "store": "the store",
    "spread_s": "spread_s",
    "chunk": "the chunk",
    "id": "the command id",
    "deadline": "the deadline",
}
# What a pattern means, for the patterns of `contracts.names` and the like.
_PATTERNS = {
    VOLUME_NAME_PATTERN: "2 to 255 characters of letters, digits, '_', '.' and '-', the first a letter or digit "
                         "(Docker's rule for volume names)",
    AGE_RECIPIENT_PATTERN: "an age public key: `age1` and 58 more characters, as `age-keygen -y KEYFILE` prints it",
    "^[A-Za-z0-9_-]{1,64}$": "1 to 64 characters of letters, digits, '_' and '-'",
    BACKUP_ID_PATTERN: "a backup id as `volumectl backups` lists it (VOLUME.TIME.RANDOM)",
}
# Fields whose meaning depends on the op.
_OP_FIELDS = {op: {"name": "the volume name"} for op in ("create", "inspect", "remove")}
_TYPES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
          "object": "an object", "array": "a list", "datetime": "a date and time (RFC 3339)", "null": "null"}

_AT = re.compile(r"^(?P<what>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^Expected `str` of length >= 1$"), "must not be empty"),
    (re.compile(r"^Expected `str` of length >= (\d+)$"), "must be at least {0} characters long"),
    (re.compile(r"^Expected `str` of length <= (\d+)$"), "must be at most {0} characters long"),
    (re.compile(r"^Expected `array` of length >= (\d+)$"), "must hold at least {0} item(s)"),
    (re.compile(r"^Expected `array` of length <= (\d+)$"), "must hold at most {0} items"),
    (re.compile(r"^Expected `(?:int|float)` >= (\S+)$"), "must be at least {0}"),
    (re.compile(r"^Expected `(?:int|float)` > (\S+)$"), "must be more than {0}"),
    (re.compile(r"^Expected `(?:int|float)` <= (\S+)$"), "must be at most {0}"),
    (re.compile(r"^Expected `(?:int|float)` < (\S+)$"), "must be less than {0}"),
    (re.compile(r"^Invalid enum value (.+)$"), "cannot be {0}"),
]


def _field(path: str, op: str | None) -> str:
    """`.selector.hosts[0]` -> "`selector.hosts[0]`", named when the contract's field is known."""
    tail = re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1])
    if path.count(".") == 1 and tail in _OP_FIELDS.get(op or "", {}):
        return _OP_FIELDS[op or ""][tail]
    return _FIELDS.get(tail, f"`{path.lstrip('.')}`")


def _what(text: str) -> str | None:
    if m := re.match(r"^Expected `str` matching regex '(.*)'$", text):
        meant = _PATTERNS.get(m.group(1))
        return f"must be {meant}" if meant else f"must match the pattern {m.group(1)}"
    if m := re.match(r"^Expected `([\w |]+)`, got `(\w+)`$", text):
        want = " or ".join(_TYPES.get(t, t) for t in m.group(1).split(" | ") if t != "null")
        return f"must be {want}, not {_TYPES.get(m.group(2), m.group(2))}"
    for rule, says in _RULES:
        if m := rule.match(text):
            return says.format(*m.groups())
    return None


def sentence(exc: msgspec.ValidationError | str, what: str = "The request", op: str | None = None) -> str:
    """`what` (e.g. "The backup request") and why msgspec refused it, as one sentence ending in a full stop;
    `op`: the op whose request it is (some fields' meaning depends on it)."""
    text = str(exc)
    if m := re.match(r"^Object missing required field `(\w+)`(?: - at `\$(.*)`)?$", text):
        inside = f" in `{m.group(2).lstrip('.')}`" if m.group(2) else ""
        return f"{what} lacks {_field('.' + m.group(1), op)}{inside}, which is required."
    if m := re.match(r"^Object contains unknown field `(\w+)`(?: - at `\$(.*)`)?$", text):
        return (f"{what} has an unknown field `{m.group(1)}` (a typo, or a client newer than the contract it was "
                "sent to?).")
    if (m := _AT.match(text)) is not None:
        field, said = _field(m.group("path"), op), m.group("what")
        says = _what(said)
        return f"{what}: {field} {says}." if says else f"{what}: {field} is not valid ({said})."
    if says := _what(text):  # the whole body
        return f"{what} {says.replace('must be an object', 'must be a JSON object')}."
    return f"{what} is not valid: {text}."
