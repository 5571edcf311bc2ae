"""The operations an agent accepts: each op's request and result types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import msgspec

from .backups import (
    BackupRecord,
    BackupRequest,
    BackupsRequest,
    BackupsResult,
    CloneRequest,
    CloneResult,
    ForgetRequest,
    ForgetResult,
    RestoreRequest,
    RestoreResult,
)
from .digest import DigestRequest, DigestResult
from .envelope import BaseRequest, Reply
from .inventory import InventoryRequest, InventorySnapshot
from .migrate import MigrateRequest, MigrateResult
from .policies import PoliciesRequest, PoliciesResult
from .share import ShareRequest, ShareResult
from .verify import VerifyRequest, VerifyResult
from .volumes import (
    CreateRequest,
    InspectRequest,
    ListRequest,
    ListResult,
    PruneRequest,
    PruneResult,
    RemoveRequest,
    RemoveResult,
    VolumeRecord,
)

__all__ = ["FLEET_OPS", "OPS", "Op", "result_as"]

T = TypeVar("T", bound=msgspec.Struct)


@dataclass(frozen=True)
class Op:
    name: str
    request: type[BaseRequest]
    result: type[msgspec.Struct]
    mutates: bool
    """Mutating ops are deduplicated by `id`; reads are answered afresh every time."""


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("create", CreateRequest, VolumeRecord, mutates=True),
        Op("inspect", InspectRequest, VolumeRecord, mutates=False),
        Op("list", ListRequest, ListResult, mutates=False),
        Op("remove", RemoveRequest, RemoveResult, mutates=True),
        Op("prune", PruneRequest, PruneResult, mutates=True),
        Op("share", ShareRequest, ShareResult, mutates=True),
        Op("backup", BackupRequest, BackupRecord, mutates=True),
        Op("backups", BackupsRequest, BackupsResult, mutates=False),
        Op("restore", RestoreRequest, RestoreResult, mutates=True),
        Op("clone", CloneRequest, CloneResult, mutates=True),
        Op("forget", ForgetRequest, ForgetResult, mutates=True),
        Op("inventory", InventoryRequest, InventorySnapshot, mutates=False),
        Op("digest", DigestRequest, DigestResult, mutates=False),
        Op("migrate", MigrateRequest, MigrateResult, mutates=True),
        Op("policies", PoliciesRequest, PoliciesResult, mutates=False),
        # A drill writes only a scratch directory, but it is long, records its result and may notify: once per id.
        Op("verify", VerifyRequest, VerifyResult, mutates=True),
    )
}

# Read-only ops that every agent answers on `<prefix>.all.<op>`.
FLEET_OPS: tuple[str, ...] = ("list", "inventory", "backups", "policies")


def result_as(reply: Reply, result_type: type[T]) -> T:
    """A successful reply's `result`, decoded and validated as its op's result type (`OPS[op].result`).

    `ValueError` for an error reply, a reply of an op with another result type, or a result that does not
    match the type.
    """
    if reply.error is not None or reply.result is None:
        why = f"{reply.error.code}: {reply.error.message}" if reply.error else "no result"
        raise ValueError(f"The {reply.op} reply from {reply.host} carries no result ({why}).")
    op = OPS.get(reply.op)
    if op is not None and op.result is not result_type:
        raise ValueError(f"A {reply.op} reply holds a {op.result.__name__}, not a {result_type.__name__}.")
    try:
        return msgspec.convert(reply.result, result_type)
    except msgspec.ValidationError as exc:
        raise ValueError(f"The {reply.op} reply from {reply.host} has an invalid result: {exc}.") from None
