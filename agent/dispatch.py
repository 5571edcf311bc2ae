"""One command, whichever path it came by: decode, deduplicate, check the deadline, apply, record, reply."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from contracts import OPS, BaseRequest, ErrorBody, Reply
from contracts.bounds import MAX_DEPTH, check_bounds

from .errors import AgentError, Conflict, Expired, Forbidden, Internal, Invalid, Transient, Unavailable, is_final
from .outcomes import StoredOutcome
from .tasks import Tasks
from .typing import Metrics, OutcomeStore, ResultSink, Verifier

__all__ = ["Dispatcher", "Handler", "Outcome"]

log = structlog.get_logger(__name__)

_DECODERS = {name: msgspec.json.Decoder(op.request) for name, op in OPS.items()}
# Room for the headers a reply carries (the service error headers) within the server's max payload.
REPLY_HEADROOM = 1024
_ASK_FOR_LESS = {
    "inventory": "ask for it chunk by chunk (`chunk`: 0, then each up to the `chunks` its reply gives; volumectl "
                 "inventory does), or read it from the inventory bucket (volumectl fleet)",
    "list": "narrow it with filters",
}
_ENCODER = msgspec.json.Encoder()
_FINGERPRINT_ENCODER = msgspec.json.Encoder(order="sorted")


class _IdOnly(msgspec.Struct):
    id: str | None = None


_MAX_ID = 128  # CommandId's max_length: a longer id is refused when the body is decoded, never used as a key


_ID_ONLY = msgspec.json.Decoder(_IdOnly)


class _Code(msgspec.Struct):
    code: str


class _Status(msgspec.Struct):
    error: _Code | None = None


_STATUS = msgspec.json.Decoder(_Status)


@dataclass(frozen=True)
class Outcome:
    """A command's encoded reply, and what to do with it, decided by the error's type."""

    reply: bytes
    error: ErrorBody | None = None
    final: bool = True
    """Recorded under the command's id: a success or a final failure (not a transient one, not a bug)."""
    retry: bool = False
    """A transient failure (`errors.Transient`): a durable command is delivered again."""
    published: bool = True
    """False if a final outcome could not be put on the audit stream: the durable path does not ack then."""


Handler = Callable[[Any], Awaitable[msgspec.Struct]]
Responder = Callable[[Outcome], Awaitable[None]]
Redelivers = Callable[[Outcome], bool]


async def _tell(early: Responder | None, outcome: Outcome) -> None:
    """Hand the outcome to the early responder; a failed reply must not lose the record."""
    if early is None:
        return
    try:
        await early(outcome)
    except Exception:  # the caller went away or NATS hiccupped: the outcome is still recorded
        log.warning("reply.failed", exc_info=True)


class Dispatcher:
    """Turns request bytes into a recorded, published outcome."""

    def __init__(
        self, host: str, handlers: Mapping[str, Handler], outcomes: OutcomeStore, results: ResultSink, tasks: Tasks,
        verifier: Verifier, *, max_body: int, max_reply: int | None = None, metrics: Metrics | None = None,
    ) -> None:
        """`max_reply`: the NATS server's max payload; a larger reply would be dropped by NATS, so it is refused."""
        self.host = host
        self.max_reply = max_reply
        self.verifier = verifier
        self.outcomes = outcomes
        self.results = results
        self.tasks = tasks
        self.max_body = max_body
        self.metrics = metrics
        self._handlers = handlers

    def command_id(self, data: bytes, fallback_id: str | None = None) -> str:
        """The id a command will run under (its body's `id`, else `fallback_id`, else a new one): the key of
        its task in `Tasks`. Pass it on to `execute` as `new_id`. Never raises: a body that cannot be read is
        refused by `execute`, under a new id."""
        try:
            check_bounds(data, max_bytes=self.max_body)
            given = _ID_ONLY.decode(data.strip() or b"{}").id
        except (msgspec.DecodeError, RecursionError):
            given = None
        if given is not None and len(given) > _MAX_ID:
            given = None
        return given or fallback_id or _new_id()

    async def execute(
        self, op: str, data: bytes, *, subject: str = "", headers: Mapping[str, str] | None = None,
        fallback_id: str | None = None, new_id: str | None = None, early: Responder | None = None,
        redelivers: Redelivers | None = None,
    ) -> Outcome:
        """Apply one command; return its outcome once it is recorded and published.

        `subject` and `headers` are the message's: its signature is checked first (`Verifier.caller`), and a
        refused command is answered and published, never applied nor recorded.
        `fallback_id` (a durable command's Nats-Msg-Id) names the command when its body carries no id;
        `new_id` names it when neither does (it is new: no recorded outcome is looked up).
        `early` is given the outcome as soon as it is known, before it is recorded: the request path
        replies then, the durable path acks only after this returns. Never raises but for cancellation.
        `redelivers` marks the durable path and is its redelivery decision: an outcome it will deliver again
        is not final and is not published, and a command whose outcome is recorded publishes it again (the
        stream keeps one copy), in case the delivery that recorded it died before publishing it.
        """
        refusal: Forbidden | None = None
        caller: str | None
        started = time.perf_counter()
        try:
            try:
                caller = self.verifier.caller(op, subject, headers, data, durable=redelivers is not None).name
            except Forbidden as exc:
                caller, refusal = exc.caller, exc
            with structlog.contextvars.bound_contextvars(caller=caller):
                outcome = await self._execute(op, data, refusal, fallback_id, new_id or _new_id(), early, redelivers)
        except Exception:  # a bug below: still one answer, never an escaped exception
            cmd_id = fallback_id or new_id or _new_id()
            log.exception("command.crashed", cmd_id=cmd_id, op=op)
            outcome = self._crashed(op, cmd_id)
            await _tell(early, outcome)
        self._count(op, outcome, time.perf_counter() - started)
        return outcome

    def _count(self, op: str, outcome: Outcome, seconds: float) -> None:
        """Every command answered, refusals included, counted and timed by op and code."""
        if self.metrics is None:
            return
        code: str
        if outcome.error is not None:
            code = outcome.error.code
        else:  # an outcome answered from the record carries its code in its bytes only
            try:
                error = _STATUS.decode(outcome.reply).error
            except msgspec.DecodeError:  # not a reply: never written by this agent
                error = _Code("unknown")
            code = error.code if error is not None else "ok"
        self.metrics.request(op if op in OPS else "unknown", code, seconds)  # any subject is an op: bound the labels

    async def _execute(
        self, op: str, data: bytes, refusal: Forbidden | None, fallback_id: str | None, new_id: str,
        early: Responder | None, redelivers: Redelivers | None,
    ) -> Outcome:
        try:
            if refusal is not None:
                raise refusal
            req = self.decode(op, data)
        except (Forbidden, Invalid) as exc:
            log.info("command.refused", cmd_id=fallback_id or new_id, op=op, code=exc.code, message=exc.message)
            outcome = self._error(op, fallback_id or new_id, exc)
            await _tell(early, outcome)
            return await asyncio.shield(self._audit(op, outcome, redelivers))
        given_id = req.id or fallback_id
        cmd_id = given_id or new_id
        with structlog.contextvars.bound_contextvars(cmd_id=cmd_id, op=op, volume=_volume_of(req)):
            if not OPS[op].mutates:
                outcome = await self._apply(op, cmd_id, req)
                await _tell(early, outcome)
                if redelivers is None or not redelivers(outcome):
                    await self._publish(op, outcome, durable=False)
                return outcome
            fingerprint = _fingerprint(op, req)
            running = self.tasks.claimed(cmd_id)
            if running is not None:
                # The same id again while it runs or is being recorded: one application, one outcome.
                if running.fingerprint != fingerprint:
                    outcome = self._reused(op, cmd_id)
                else:
                    outcome = await asyncio.shield(running.outcome)
                await _tell(early, outcome)
                if redelivers is not None:  # not published by this delivery: ack it when it comes again
                    return replace(outcome, published=False)
                return outcome
            claim = self.tasks.claim(cmd_id, fingerprint)
            try:
                outcome, applied = await self._resolve(op, cmd_id, req, fingerprint, seen=given_id is not None)
                claim.outcome.set_result(outcome)  # duplicates that arrive from now on get it without waiting
                await _tell(early, outcome)
                # Record and publish even when shutdown cancels us now: the change already happened.
                if applied:
                    return await asyncio.shield(self._record(op, cmd_id, fingerprint, outcome, redelivers))
                if outcome.error is not None or redelivers is not None:
                    # A refusal is published, never stored over the original; a durable command publishes
                    # its recorded outcome again (the stream drops it if it has it).
                    return await asyncio.shield(self._audit(op, outcome, redelivers))
                return outcome
            finally:
                self.tasks.release(cmd_id, claim)

    def interrupted(self, op: str, data: bytes) -> Outcome:
        """The reply for a command cut short by shutdown: its outcome is unknown."""
        cmd_id = self.command_id(data)
        return self._error(op, cmd_id, Unavailable(
            f"The agent stopped before {op} finished; its outcome is unknown. Retry with the same id."))

    def decode(self, op: str, data: bytes) -> BaseRequest:
        """The typed request, or `Invalid` with a sentence saying what is wrong."""
        if op not in _DECODERS:
            raise Invalid(f"Unknown operation {op!r}; known: {', '.join(sorted(OPS))}.")
        if len(data) > self.max_body:
            raise Invalid(f"The body is {len(data)} bytes, over the limit of {self.max_body} (--max-body).")
        try:
            check_bounds(data, max_bytes=self.max_body)
        except msgspec.DecodeError:
            raise Invalid(f"The body nests deeper than {MAX_DEPTH} levels; no request does.") from None
        try:
            req: BaseRequest = _DECODERS[op].decode(data.strip() or b"{}")
        except msgspec.ValidationError as exc:
            raise Invalid(f"Invalid {op} request: {exc}.") from None
        except msgspec.DecodeError as exc:
            raise Invalid(f"The body is not valid JSON: {exc}.") from None
        except RecursionError:  # out of reach within the depth bound; one answer all the same
            raise Invalid(f"The body nests deeper than {MAX_DEPTH} levels; no request does.") from None
        return req

    async def _resolve(
        self, op: str, cmd_id: str, req: BaseRequest, fingerprint: str, *, seen: bool
    ) -> tuple[Outcome, bool]:
        """The outcome for this id, and whether it was applied just now.

        A client-given id (`seen`) may have an outcome already: the same command gets it back, another
        command under that id is `conflict`. A generated id is new by construction.
        """
        if seen:
            try:
                stored = await self.outcomes.get(self.host, cmd_id)
            except AgentError as exc:
                return self._error(op, cmd_id, exc), False
            if stored is not None and stored.fingerprint != fingerprint:
                return self._reused(op, cmd_id), False
            if stored is not None:
                log.info("command.duplicate")
                return Outcome(bytes(stored.reply)), False
        return await self._apply(op, cmd_id, req), True

    async def local(self, op: str, cmd_id: str, run: Callable[[], Awaitable[msgspec.Struct]], *, caller: str
                    ) -> Outcome:
        """An operation the agent starts itself (a scheduled backup): applied, then published on the audit stream
        as any command's outcome is, under `cmd_id`, with `caller` (e.g. `policy:nightly`) as who asked. Not
        recorded for deduplication: nobody sends its id again."""
        with structlog.contextvars.bound_contextvars(caller=caller, cmd_id=cmd_id, op=op):
            outcome = await self._run(op, cmd_id, run)
            return await asyncio.shield(self._audit(op, outcome, None))

    async def _apply(self, op: str, cmd_id: str, req: BaseRequest) -> Outcome:
        return await self._run(op, cmd_id, lambda: self._handlers[op](req), deadline=req.deadline)

    async def _run(
        self, op: str, cmd_id: str, run: Callable[[], Awaitable[msgspec.Struct]], *, deadline: datetime | None = None
    ) -> Outcome:
        started = time.perf_counter()
        try:
            if deadline is not None and deadline <= datetime.now(UTC):
                raise Expired(f"The command's deadline {deadline.isoformat()} passed before it was applied.")
            result = await run()
        except AgentError as exc:
            log.info("command.failed", code=exc.code, message=exc.message)
            return self._error(op, cmd_id, exc)
        except Exception:
            log.exception("command.crashed")
            return self._crashed(op, cmd_id)
        log.info("command.done", duration_ms=round((time.perf_counter() - started) * 1000, 2))
        reply = Reply(id=cmd_id, host=self.host, op=op, ok=True, result=msgspec.to_builtins(result), caller=_caller())
        data = _ENCODER.encode(reply)
        if self.max_reply is not None and len(data) > self.max_reply - REPLY_HEADROOM and op in OPS \
                and not OPS[op].mutates:
            # Never a reply NATS drops on the way: the caller would hear nothing at all. (A read only: a change
            # that happened is its outcome, whatever its size.)
            log.warning("command.reply_too_large", bytes=len(data), max_payload=self.max_reply)
            return self._error(op, cmd_id, Invalid(
                f"The reply to {op} is {len(data):,} bytes, over the NATS server's max payload of "
                f"{self.max_reply:,} (its `max_payload` setting): {_ASK_FOR_LESS.get(op, 'ask for less')}."))
        return Outcome(data)

    async def _record(
        self, op: str, cmd_id: str, fingerprint: str, outcome: Outcome, redelivers: Redelivers | None
    ) -> Outcome:
        # Recorded first: a delivery that dies in between is answered from the record, never applied twice.
        await self._store(cmd_id, fingerprint, outcome)
        return await self._audit(op, outcome, redelivers)

    async def _audit(self, op: str, outcome: Outcome, redelivers: Redelivers | None) -> Outcome:
        """Publish `outcome` on the audit stream, unless the durable path will deliver the command again.
        Only final outcomes go there; the returned outcome says whether this one did."""
        if redelivers is not None and redelivers(outcome):
            return outcome
        return outcome if await self._publish(op, outcome, durable=True) else replace(outcome, published=False)

    async def _store(self, cmd_id: str, fingerprint: str, outcome: Outcome) -> None:
        if not outcome.final:
            return
        try:
            await self.outcomes.put(self.host, cmd_id, StoredOutcome(fingerprint, msgspec.Raw(outcome.reply)))
        except AgentError:
            log.exception("outcome.not_recorded")

    async def _publish(self, op: str, outcome: Outcome, *, durable: bool) -> bool:
        """False if NATS failed for longer than a leader election takes (another try may succeed)."""
        try:
            await self.results.result(op, outcome.reply, durable=durable)
        except Transient as exc:
            log.warning("outcome.not_published", error=exc.message)
            return False
        except AgentError:  # it never will be: not worth delivering the command again
            log.exception("outcome.not_published")
        return True

    def _reused(self, op: str, cmd_id: str) -> Outcome:
        return self._error(op, cmd_id, Conflict(f"Command id {cmd_id!r} was already used for a different command."))

    def _crashed(self, op: str, cmd_id: str) -> Outcome:
        return self._error(op, cmd_id, Internal(
            f"The agent failed unexpectedly on {op}; its log has the details under id {cmd_id}."))

    def _error(self, op: str, cmd_id: str, exc: AgentError) -> Outcome:
        error = exc.body()
        reply = Reply(id=cmd_id, host=self.host, op=op, ok=False, error=error, caller=_caller())
        return Outcome(_ENCODER.encode(reply), error, final=is_final(exc), retry=isinstance(exc, Transient))


def _caller() -> str | None:
    """Who sent the command being run (bound by `execute`): named in its reply and outcome."""
    name = structlog.contextvars.get_contextvars().get("caller")
    return name if isinstance(name, str) else None


def _new_id() -> str:
    return uuid.uuid4().hex


def _volume_of(req: BaseRequest) -> str | None:
    return getattr(req, "name", None) or getattr(req, "volume", None)


def _fingerprint(op: str, req: BaseRequest) -> str:
    body = msgspec.structs.replace(req, id=None, deadline=None)
    return hashlib.sha256(op.encode() + b"\0" + _FINGERPRINT_ENCODER.encode(body)).hexdigest()
