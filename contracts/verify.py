"""Restore drills: a backup restored into a scratch directory and compared with what it held when it was made.

`verify` (op, role operator) runs one drill of one backup; a policy with `verify` (a schedule) runs one for the
newest backup of each volume it covers. A drill checks, in order:

    stored bytes     the store's own check (size and sha256 of the stored file; `corrupt` if they differ)
    decryption       an encrypted backup needs an identity of one of its recipients here
    members          another host's backup: nothing outside the tree, no devices (as every restore)
    extraction       the whole tar stream extracted by GNU tar into a scratch directory under the agent's data
                     dir (mode 0700), at most the record's size plus a margin (as every restore); never a volume
    content digest   the scratch tree's digest (the `digest` op's, contracts.digest) equals the record's
                     `content_digest`, taken from the tar stream as the backup was written; and its entries
                     equal the record's `files`

The scratch copy is removed whatever the outcome. A backup made before contract 2.2 has no `content_digest`:
its drill checks everything else and says so in `checked`. A drill that fails answers with the error's code
(`corrupt`, `unavailable`, ...) and its sentence; either way the volume's `last_verify` records it.
"""

from __future__ import annotations

import msgspec

from .backups import BackupId
from .envelope import BaseRequest

__all__ = ["LastVerify", "VerifyRequest", "VerifyResult"]


class VerifyRequest(BaseRequest):
    """Run a restore drill of one backup (this module's docstring)."""

    backup_id: BackupId


class VerifyResult(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    backup_id: str
    volume: str
    verified_at: str
    duration_s: float
    checked: list[str]
    """What was checked, in order: `stored bytes`, `decryption`, `members`, `extraction`, `content digest`."""
    content_digest: str | None = None
    """The scratch tree's digest (equal to the record's when it has one)."""
    files: int | None = None
    """Entries of the scratch tree."""
    bytes: int | None = None
    """Content bytes of the scratch tree's regular files."""


class LastVerify(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The last restore drill of a volume's backup on this host (a policy's, or `verify`)."""

    backup_id: str
    verified_at: str
    ok: bool
    error: str | None = None
    """Why it failed, as a sentence."""
    policy: str | None = None
    """The policy whose `verify` schedule ran it (null: the `verify` op)."""
