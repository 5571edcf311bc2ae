"""Encryption at rest with age: a backup encrypted to public keys on its way to the store, decrypted only in a
restore's pipe, with an identity from the restoring host's own config.

- Backup: `tar | zstd | age -r R1 -r R2 > file`. The agent needs no secret to back up; the stored bytes (and so
  the record's sha256 and size, and the nats store's spool file) are ciphertext.
- Restore: `age -d -i IDENTITY | zstd -d | tar -x`. The identity file is `--age-identity`, read by age itself:
  its keys never enter the agent, its logs or the bus. Plaintext exists only in the pipes between processes.
- Before a restore makes or empties its target, age decrypts the backup's first chunk (`probe`): it reads the
  header and unwraps the file key first, so an identity that is none of the recipients fails at once.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from contracts import BackupRecord
from contracts.policies import valid_age_recipient

from ..errors import Corrupt, Forbidden, Invalid, ToolFailed, Unavailable
from .pipes import Procs, decompressor

__all__ = ["AGE", "AGE_HEADER", "AgeIdentity", "encryptor", "require_age"]

AGE = "age"
"""The age binary (Debian: `apt-get install age`), found on PATH."""
AGE_HEADER = b"age-encryption.org/v1"
"""The first line of every age file."""
IDENTITY_SETTING = "--age-identity FILE (or VOLUME_AGENT_AGE_IDENTITY)"
_INSTALL = "install it (Debian and Ubuntu: apt-get install age; elsewhere: https://age-encryption.org)"
# age's words when none of the identities unwraps the file key (age 1.x).
_NO_MATCH = "no identity matched"


def require_age(doing: str) -> None:
    """`Unavailable` naming the missing tool and how to get it, before anything is written."""
    if shutil.which(AGE) is None:
        raise Unavailable(f"{doing[:1].upper()}{doing[1:]} needs the age tool, which is not installed on this "
                          f"host: {_INSTALL}. Nothing was written.")


def encryptor(recipients: list[str], volume: str) -> list[str] | None:
    """The process that encrypts the compressed stream to `recipients` (None: none asked for), checked before
    anything is written: each recipient's checksum (`invalid`), and the age tool (`unavailable`)."""
    if not recipients:
        return None
    bad = [r for r in recipients if not valid_age_recipient(r)]
    if bad:
        are = "is not a valid age recipient" if len(bad) == 1 else "are not valid age recipients"
        raise Invalid(f"{', '.join(map(repr, bad))} {are} (the checksum does not hold): copy the public key again "
                      "from `age-keygen -y KEYFILE`. Nothing was written.")
    require_age(f"the encrypted backup of volume {volume!r}")
    return [AGE, "--encrypt", *(arg for r in dict.fromkeys(recipients) for arg in ("--recipient", r))]


def _named(recipients: list[str]) -> str:
    shown = ", ".join(recipients[:3])
    return shown + (f" and {len(recipients) - 3} more" if len(recipients) > 3 else "")


class AgeIdentity:
    """What this host can decrypt: the identity file of `--age-identity` (None: nothing)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def decryptor(self, record: BackupRecord) -> list[str] | None:
        """The process that decrypts the stored bytes (None: not encrypted); `Forbidden`, naming the setting
        that allows it, when this agent has no identity."""
        if not record.encrypted_to:
            return None
        if self.path is None:
            raise Forbidden(
                f"Backup {record.backup_id!r} is encrypted (age, to {_named(record.encrypted_to)}), and this agent "
                f"has no identity to decrypt it: start it with {IDENTITY_SETTING} naming a file that holds the "
                "secret key (AGE-SECRET-KEY-1...) of one of them. Nothing was written to the volume.")
        require_age(f"restoring the encrypted backup {record.backup_id!r}")
        return [AGE, "--decrypt", "--identity", str(self.path)]

    def tar_stream(self, record: BackupRecord) -> list[list[str]]:
        """The processes that turn the stored bytes back into the tar stream: decrypt, then decompress."""
        return [argv for argv in (self.decryptor(record), decompressor(record.compression)) if argv]

    async def probe(self, path: Path, record: BackupRecord) -> None:
        """Decrypt the stored backup's first chunk (or its end), and stop: `Forbidden` if no identity of this host
        is one of its recipients, `Corrupt` if the bytes are no age file for them. Nothing is written anywhere:
        age writes a chunk to the pipe only once it is authenticated, and the pipe is read here and dropped."""
        argv = self.decryptor(record)
        if argv is None:
            return
        procs = Procs()
        try:
            with open(path, "rb") as stored:  # noqa: ASYNC230 - a local file, opened once and handed to the child
                await procs.chain([argv], stdin=stored, stdout=asyncio.subprocess.PIPE)
            out = procs.last.stdout
            assert out is not None
            if await out.read(1):
                return  # the header opened with our key and the first chunk authenticated
            await procs.wait(f"decrypting backup {record.backup_id}")
        except ToolFailed as exc:
            raise self._refusal(record, exc) from exc
        finally:
            await procs.reap()

    def _refusal(self, record: BackupRecord, exc: ToolFailed) -> Exception:
        if exc.status < 0:  # killed: says nothing about the backup or the key
            return exc
        said = exc.stderr_tail.removeprefix("age: error: ")
        if _NO_MATCH in said:
            return Forbidden(
                f"This agent's age identity file ({self.path}) holds no key for backup {record.backup_id!r}, which "
                f"is encrypted to {_named(record.encrypted_to)}: put the secret key of one of them in the file "
                f"that {IDENTITY_SETTING} names, and restart the agent. Nothing was written to the volume.")
        if said.startswith("reading ") or str(self.path) in said:
            return Unavailable(f"This agent's age identity file ({self.path}) cannot be used now: {said}. "
                               "Nothing was written to the volume.")
        return Corrupt(f"Backup {record.backup_id!r} cannot be decrypted as its record says it can (age: {said}); "
                       "nothing was written to the volume. Restore another backup.")
