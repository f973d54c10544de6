"""Evidence in (``POST /v1/snapshots``) and evidence out (raw envelopes, signed results).

Ingest is the thin shell around :mod:`server.appraise`: read the body under a cap, preparse, look up
the trusted state, appraise, then commit the snapshot, the new chain head, the spent nonce, the
host's inventory and the audit row in ONE transaction, and answer 2xx only after that commit.
Under load that transaction holds several hosts' snapshots (group commit, docs/decisions.md, 15):
each one's rows still commit atomically, and a batch that fails is retried one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api import auth
from server.api.deps import Services, SvcDep, services
from server.api.errors import APIError, known_error_response
from server.appraise import Accepted, Fork, NonceReused, Rejected, appraise, preparse
from server.compliance import settle as compliance
from server.findings import Finding, condensed, status_of
from server.results import sign_result
from server.store import audit, repo
from server.store.ingest import (
    AlreadyStored,
    HeadMoved,
    NonceSpent,
    Write,
    accepted_event,
    audit_rejection,
    lookup,
    prepare_write,
    send_accepted,
    snapshot_races,
)
from server.store.pipeline import Pipeline

log = logging.getLogger("veu.ingest")
router = APIRouter(prefix="/v1", tags=["evidence"])

ACCEPTED_TYPES = ("application/json", "application/vnd.dsse.envelope.v1+json")
DIGEST = Path(pattern=r"^[0-9a-f]{64}$", description="envelope digest (hex SHA-256 of payload)")


class SubmitResponse(BaseModel):
    digest: str
    status: str
    duplicate: bool
    result: str


class ResultResponse(BaseModel):
    digest: str
    status: str
    result: str


@dataclass(frozen=True)
class IngestOutcome:
    digest: str
    status: str
    result: str
    duplicate: bool

    def body(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "status": self.status,
            "duplicate": self.duplicate,
            "result": self.result,
        }


async def read_capped(request: Request, cap: int) -> bytes:
    """The body, refusing (413) a declared or streamed size over ``cap`` without buffering it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(400, "bad_request", "Content-Length is not a number") from None
        if size > cap:
            raise APIError(413, "too_large", f"the body is {size} bytes; the limit is {cap}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > cap:
            raise APIError(413, "too_large", f"the body is over the limit of {cap} bytes")
    return bytes(body)


@router.post(
    "/snapshots",
    response_model=SubmitResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def submit(svc: SvcDep, request: Request) -> JSONResponse:
    """Appraise one DSSE snapshot envelope; answer the signed attestation result."""
    return await _submit(svc, request)


async def _submit(svc: Services, request: Request) -> JSONResponse:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ACCEPTED_TYPES:
        raise APIError(
            415,
            "unsupported_media_type",
            f"send the envelope as one of {', '.join(ACCEPTED_TYPES)}",
        )
    data = await read_capped(request, svc.settings.max_body_bytes)
    started = time.perf_counter()
    try:
        # A few at a time per process (Settings.ingest_concurrency): the rest queue here, in
        # order, instead of contending for the GIL and the database in the threadpool. An
        # accepted snapshot is handed to the writer from the thread (the limiter is then free
        # for the next appraisal while this one waits for its group commit).
        answer = await anyio.to_thread.run_sync(
            appraise_and_submit, svc, data, limiter=svc.ingest_limiter()
        )
        if isinstance(answer, Future):
            outcome: IngestOutcome = await asyncio.wrap_future(answer)
        else:
            outcome = answer
    finally:
        svc.metrics.ingest_seconds.observe(time.perf_counter() - started)
    # Built directly: the shape is fixed, and re-validating it costs more than building it.
    return JSONResponse(outcome.body())


class IngestFastPath:
    """ASGI middleware: ``POST /v1/snapshots`` goes straight to :func:`_submit`.

    Ingest is the one hot route (every host, every interval). FastAPI's routing, dependency
    solving and exception middleware cost about a tenth of a snapshot's server CPU, for a route
    that needs none of them; this skips them and answers exactly what the declared route (kept
    for OpenAPI, and the same code) answers. Errors the API raises on purpose get the same JSON
    answers as the exception handlers give; anything else propagates to the app's
    ``ServerErrorMiddleware`` (the generic 500), as from the route.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/snapshots":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await _submit(services(request), request)
        except Exception as exc:
            known = known_error_response(exc)
            if known is None:
                raise
            response = known
        await response(scope, receive, send)


@dataclass(frozen=True)
class Pending:
    """An accepted snapshot, judged, its result signed and its rows built, waiting for its
    transaction (the writer thread only executes statements)."""

    accepted: Accepted
    raw: bytes
    status: str
    result: str
    write: Write
    host: compliance.HostUpdate
    event: audit.Event

    def outcome(self) -> IngestOutcome:
        return IngestOutcome(self.accepted.digest, self.status, self.result, False)


def appraise_and_submit(svc: Services, data: bytes) -> IngestOutcome | Future[IngestOutcome]:
    """Appraise; an accepted snapshot goes to this process's group committer, and its future
    resolves after the commit. The committer knows an appraisal is running, and waits for it
    (briefly) before committing what is queued (server/ingest/_groupcommit.py)."""
    committer = svc.ingest_committer(lambda batch: write_batch(svc, batch))
    with committer.preparing():
        prepared = appraise_body(svc, data)
        if isinstance(prepared, Pending):
            future: Future[IngestOutcome] = committer.submit(prepared)
            return future
    return prepared


def appraise_body(svc: Services, data: bytes) -> IngestOutcome | Pending:
    """Everything before the write: the stored answer for an envelope already accepted, or the
    accepted snapshot with its judgement and signed result. Raises APIError for every refusal."""
    policy = svc.policy  # one pack set for the whole appraisal, even if a reload happens now
    try:
        parsed = preparse(data, svc.verify)
        with svc.db.lookup() as session:
            state = lookup(session, parsed.key_ids, parsed.digest, parsed.nonce)
            stored = (
                IngestOutcome(state.stored.digest, state.stored.status, state.stored.result, True)
                if state.stored is not None
                else None
            )
            now = svc.now()
            verdict = appraise(
                parsed,
                host=state.host,
                head=state.head,
                nonce=state.nonce,
                already_accepted=stored is not None,
                now=now,
                config=svc.verify,
            )
            if not isinstance(verdict, Accepted):
                assert stored is not None
                svc.metrics.duplicates.inc()
                return stored
            assert state.host is not None
            # Judged before the write transaction: CPU work (CEL) never holds a write lock.
            judged = compliance.judge_host(
                session,
                policy,
                verdict.snapshot,
                verdict.key_id,
                state.host.site_id,
                state.site,
                models=svc.models,
                registry_generation=state.registry_generation,
                memo=svc.judgements,
            )
    except Rejected as exc:
        _rejected(svc, exc, data)
        raise APIError(exc.http_status, exc.code, exc.detail) from None
    findings: tuple[Finding, ...] = verdict.findings + judged.findings
    status = status_of(findings)
    # Signed with the policy digest. The site and organization are judged when the site
    # settles (about a second later, or before any compliance read): server.compliance.settle.
    result = sign_result(
        svc.key,
        verifier_id=svc.settings.verifier_id,
        issued_at=now,
        findings=condensed(findings),
        status=status,
        digest=verdict.digest,
        host_key_id=verdict.key_id,
        site_id=judged.site_id,
        seq=verdict.seq,
        nonce=verdict.nonce,
        policy_digest=policy.digest,
    )
    return Pending(
        accepted=verdict,
        raw=data,
        status=status,
        result=result,
        write=prepare_write(
            verdict,
            site_id=judged.site_id,
            head=state.head,
            raw=data,
            status=status,
            findings=findings,
            result=result,
            now=now,
            inventory_digest=state.inventory_digest,
        ),
        host=compliance.host_update(
            key_id=verdict.key_id,
            snapshot=verdict.snapshot,
            digest=verdict.digest,
            judgement=judged,
            findings=findings,
            now=now,
        ),
        event=accepted_event(verdict, status=status, findings=findings, now=now),
    )


def _write(session: Session, items: Sequence[Pending]) -> None:
    """Snapshots, chain heads, nonces, inventories, host states and audit rows of accepted
    snapshots of distinct hosts, in host order (two workers' batches lock host rows in one
    order), the audit rows last with one claim of the audit head.

    Four round trips on PostgreSQL whatever the batch holds (server.store.pipeline): the
    evidence rows with the hosts' stored states; the host states with the audit claim (the
    claim waits for the findings' sync when a host's open findings changed); the audit rows;
    the commit.
    """
    ordered = sorted(items, key=lambda item: item.accepted.key_id)
    hosts = [item.host for item in ordered]
    events = [item.event for item in ordered]
    pipe = Pipeline(session)
    with snapshot_races(pipe), pipe.batch():
        sent = send_accepted(pipe, [item.write for item in ordered])
        prior = compliance.host_states(pipe, hosts)
    sent.check()
    plan = compliance.plan_hosts(hosts, prior.fetchall())
    with pipe.batch():
        compliance.write_hosts(pipe, plan)
        claimed = None if plan.resync else audit.claim(pipe, len(events))
    if claimed is None:
        compliance.resync_findings(session, plan)
        session.flush()
        claimed = audit.claim(pipe, len(events))
    audit.append_claimed(pipe, events, claimed.fetchone())


def write_batch(svc: Services, batch: Sequence[Pending]) -> list[IngestOutcome | BaseException]:
    """Commit accepted snapshots: all in one transaction when nothing conflicts, else each alone.

    Any failure of the whole (a racing duplicate, a second child of a head, a spent nonce, a
    deadlock) rolls it all back, and each snapshot is then committed in its own transaction,
    which settles its race exactly as a lone commit would; so are batches that hold two
    snapshots of one host (they race each other).
    """
    if len(batch) > 1 and len({item.accepted.key_id for item in batch}) == len(batch):
        try:
            with svc.db.write() as session:
                _write(session, batch)
        except Exception as exc:
            svc.metrics.batch_retries.inc()
            log.info(
                "group commit of %d snapshots retried one by one (%s)",
                len(batch),
                type(exc).__name__,
            )
        else:
            svc.metrics.accepted.inc(len(batch))
            return [item.outcome() for item in batch]
    return [_commit_one(svc, item) for item in batch]


def _commit_one(svc: Services, item: Pending) -> IngestOutcome | BaseException:
    """One accepted snapshot in its own transaction; a lost race answers as the race ended."""
    accepted = item.accepted
    try:
        try:
            with svc.db.write() as session:
                _write(session, [item])
        except (AlreadyStored, HeadMoved):
            # A racing worker committed first. Which constraint fires first is up to the
            # database, so ask: if this very envelope is stored, answer its result; otherwise
            # the head moved.
            with svc.db.read() as session:
                row = repo.snapshot_by_digest(session, accepted.digest)
                if row is not None:
                    svc.metrics.duplicates.inc()
                    return IngestOutcome(row.digest, row.status, row.result, True)
            raise Fork(
                f"seq {accepted.seq} lost a race: another snapshot of this host was accepted as "
                "the child of the same head first",
                authenticated=True,
                key_id=accepted.key_id,
            ) from None
        except NonceSpent:
            raise NonceReused(
                f"nonce {str(accepted.nonce)[:40]} was consumed by a concurrent snapshot",
                authenticated=True,
                key_id=accepted.key_id,
            ) from None
    except Rejected as exc:
        try:
            _rejected(svc, exc, item.raw)
        except Exception as failure:  # its audit row could not be written: this request fails
            return failure
        return APIError(exc.http_status, exc.code, exc.detail)
    except Exception as exc:  # the database is gone, say: this request fails, the next may not
        return exc
    svc.metrics.accepted.inc()
    return item.outcome()


def _rejected(svc: Services, exc: Rejected, data: bytes) -> None:
    svc.metrics.rejected.labels(exc.code, str(exc.authenticated).lower()).inc()
    if exc.authenticated and exc.key_id:
        digest = None
        with contextlib.suppress(Rejected):
            digest = preparse(data, svc.verify).digest
        with svc.db.write() as session:
            audit_rejection(
                session,
                key_id=exc.key_id,
                code=exc.code,
                detail=exc.detail,
                digest=digest,
                now=svc.now(),
            )
        log.warning("security event: rejected signed evidence code=%s key=%s", exc.code, exc.key_id)
    else:
        log.info("rejected unauthenticated evidence code=%s", exc.code)


@router.get(
    "/snapshots/{digest}",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}, "description": "the raw envelope"}},
)
def raw_envelope(svc: SvcDep, request: Request, digest: str = DIGEST) -> Response:
    """The envelope exactly as received, so anyone can verify it again."""
    auth.reader(svc, request)
    with svc.db.read() as session:
        row = repo.snapshot_by_digest(session, digest)
        if row is None:
            raise APIError(404, "not_found", "no accepted snapshot with that digest")
        if row.pruned_at is not None:
            raise APIError(
                410,
                "envelope_pruned",
                f"the raw envelope was pruned by the retention setting on {row.pruned_at:%Y-%m-%d};"
                " its digest and signed result are kept (GET /v1/results/{digest})",
            )
        data = bytes(row.envelope)
    return Response(content=data, media_type="application/json")


@router.get("/results/{digest}", response_model=ResultResponse)
def result(svc: SvcDep, request: Request, digest: str = DIGEST) -> Any:
    """The signed attestation result the verifier gave for that snapshot."""
    auth.reader(svc, request)
    with svc.db.read() as session:
        row = repo.snapshot_by_digest(session, digest)
        if row is None:
            raise APIError(404, "not_found", "no accepted snapshot with that digest")
        return ResultResponse(digest=row.digest, status=row.status, result=row.result)


def findings_of(row_findings: str) -> list[dict[str, Any]]:
    value = json.loads(row_findings)
    return value if isinstance(value, list) else []
