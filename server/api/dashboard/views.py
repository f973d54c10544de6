"""The dashboard's routes: server-rendered pages for compliance users signed in with an API key.

Reading needs the auditor or admin role; "attest now" needs admin. Pages redirect to the sign-in
form when there is no session; the two small JSON endpoints answer 401/403 instead. Every
state-changing request carries the session's CSRF token (on top of the SameSite=Strict cookie).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import select

from contract import format_timestamp
from contract.display import visible_value
from contract.keys import public_from_raw, public_pem
from server import reports
from server.api.dashboard import queries, session
from server.api.dashboard.session import SessionUser
from server.api.deps import Services, services
from server.api.routes_log import bundle_of
from server.compliance.assurance import host_levels, level_of
from server.findings import PACK_STATUSES
from server.policy import PolicySet
from server.policy.distribution import Distribution, distribution
from server.store import repo
from server.store.compliance_models import HostState, SiteState
from server.store.models import ChainHead, Host, Organization, Site

router = APIRouter(prefix="/dashboard", include_in_schema=False)

TEMPLATES = Path(__file__).parent / "templates"


def _shown(value: Any) -> Any:
    """Every value a page shows: agent-controlled text with its control and bidi characters as
    visible escapes (contract/display.py); markup the templates built is already shown."""
    return value if isinstance(value, Markup) else visible_value(value)


_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=_shown,
)

STATUS = {
    "affirming": ("✓", "Compliant", "ok"),
    "warning": ("!", "Warning", "warn"),
    "none": ("?", "Cannot attest", "unknown"),
    "contraindicated": ("✗", "Violation", "bad"),
}
SEVERITY = {
    "violation": ("✗", "Violation", "bad"),
    "cannot_attest": ("?", "Cannot attest", "unknown"),
    "warning": ("!", "Warning", "warn"),
    "info": ("i", "Info", "ok"),
}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REPORT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_PERIOD = re.compile(r"^\d{4}H[12]$")
#: The largest id or sequence number a cursor may name (a signed 64-bit integer column).
MAX_CURSOR = 2**63 - 1
#: The earliest ``since`` an attest-status poll may give.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _tpp(value: float | int | None) -> str:
    return f"{int(value or 0):,}"


def _ts(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


_env.filters.update(
    dur=_duration, tpp=_tpp, ts=_ts, pct=_pct, bytes=_bytes, short=lambda s: (s or "")[:12]
)
_env.globals.update(STATUS=STATUS, SEVERITY=SEVERITY, SEVERITIES=queries.SEVERITIES)


# --------------------------------------------------------------------------- plumbing


def max_host_age(svc: Services) -> timedelta:
    """The verifier's staleness bound, as the compliance judgement uses it."""
    return svc.compliance.max_host_age


def policy_of(request: Request) -> PolicySet:
    """The packs in force (reloaded in place by ``POST /v1/policy/reload``)."""
    return services(request).policy


def _render(
    request: Request, name: str, user: SessionUser | None, status_code: int = 200, **ctx: Any
) -> HTMLResponse:
    svc = services(request)
    body = _env.get_template(name).render(
        user=user,
        csrf=session.csrf_token(svc, user) if user else "",
        path=request.url.path,
        now=svc.now(),
        **ctx,
    )
    resp = HTMLResponse(body, status_code=status_code)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'"
    )
    return resp


def _unauthenticated() -> JSONResponse:
    """The answer of a download route to a request without a session."""
    return JSONResponse({"code": "unauthenticated", "detail": "sign in"}, status_code=401)


def _settled(svc: Services) -> tuple[datetime, timedelta]:
    """Judge the sites with evidence not yet settled, then: now and the staleness bound."""
    svc.settle()
    return svc.now(), max_host_age(svc)


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/dashboard/login?next={quote(target, safe='')}", status_code=303)


def _page_user(request: Request) -> SessionUser | None:
    return session.current_user(services(request), request)


def _not_found(request: Request, user: SessionUser, what: str) -> HTMLResponse:
    return _render(request, "error.html", user, 404, title="Not found", message=what)


def _qs(base: dict[str, Any], **changes: Any) -> str:
    merged = {k: v for k, v in {**base, **changes}.items() if v not in (None, "")}
    return urlencode(merged)


# --------------------------------------------------------------------------- sign in


@router.get("", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/dashboard/", status_code=307)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = Query("/dashboard/", max_length=500)) -> Response:
    return _login_page(request, next=_safe_next(next), error=None)


def _login_page(
    request: Request, *, next: str, error: str | None, status_code: int = 200
) -> HTMLResponse:
    """The sign-in form, its CSRF token bound to a fresh pre-session cookie."""
    svc = services(request)
    nonce = session.new_login_nonce()
    resp = _render(
        request,
        "login.html",
        None,
        status_code,
        next=next,
        error=error,
        login_csrf=session.login_csrf_token(svc, nonce),
    )
    resp.set_cookie(
        session.LOGIN_COOKIE,
        nonce,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/dashboard",
    )
    return resp


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _safe_next(target: str) -> str:
    return target if target.startswith("/dashboard/") and "//" not in target else "/dashboard/"


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    api_key: str = Form("", max_length=300),
    next: str = Form("/dashboard/", max_length=500),
    csrf: str = Form("", max_length=200),
) -> Response:
    svc = services(request)
    if not session.login_csrf_ok(svc, request.cookies.get(session.LOGIN_COOKIE), csrf):
        return _login_page(
            request,
            next=_safe_next(next),
            error="The sign-in form expired; please try again.",
            status_code=403,
        )
    key = api_key.strip()
    row_id = None
    if key and len(key) <= 200:
        with svc.db.read() as s:
            row = repo.lookup_api_key(s, key)
            row_id = row.id if row is not None else None
    if row_id is None:
        return _login_page(
            request,
            next=_safe_next(next),
            error="That API key is not valid (or was revoked).",
            status_code=401,
        )
    resp = RedirectResponse(_safe_next(next), status_code=303)
    resp.set_cookie(
        session.COOKIE,
        session.issue(svc, row_id),
        max_age=session.LIFETIME_S,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/dashboard",
    )
    resp.delete_cookie(session.LOGIN_COOKIE, path="/dashboard")
    return resp


@router.post("/logout")
def logout(request: Request, csrf: str = Form("", max_length=200)) -> Response:
    """End the session (server-side: a copy of the cookie stops working too)."""
    user = _page_user(request)
    svc = services(request)
    if user is not None:
        if not session.csrf_ok(svc, user, csrf):
            return _render(
                request,
                "error.html",
                user,
                403,
                title="Forbidden",
                message="The form expired; reload the page and sign out again.",
            )
        session.end(svc, user)
    resp = RedirectResponse("/dashboard/login", status_code=303)
    resp.delete_cookie(session.COOKIE, path="/dashboard")
    return resp


# --------------------------------------------------------------------------- pages


@router.get("/", response_class=HTMLResponse)
def overview(
    request: Request,
    after: str | None = Query(None, max_length=100),
    proposed: bool = Query(False, description="count findings of proposed packs too"),
) -> Response:
    user = _page_user(request)
    if user is None:
        return _login_redirect(request)
    svc = services(request)
    now, age = _settled(svc)
    with svc.db.read() as s:
        totals = queries.fleet_totals(s, now, age, include_proposed=proposed)
        orgs = queries.org_rows(s)
        sites = queries.site_rows(s, now, age, after=after, include_proposed=proposed)
    return _render(
        request,
        "overview.html",
        user,
        title="Fleet overview",
        totals=totals,
        orgs=orgs,
        sites=sites,
        max_age=age,
        after=after,
        proposed=proposed,
        log=svc.log.latest(),
    )


@router.get("/orgs/{org_id}", response_class=HTMLResponse)
def org_page(
    request: Request,
    org_id: str,
    after: str | None = Query(None, max_length=100),
    report: str | None = Query(None, max_length=200),
) -> Response:
    user = _page_user(request)
    if user is None:
        return _login_redirect(request)
    svc = services(request)
    now, age = _settled(svc)
    with svc.db.read() as s:
        found = queries.org_rows(s, org_id=org_id[:40])
        if not found:
            return _not_found(request, user, "No organization with that id.")
        org = found[0]
        sites = queries.site_rows(s, now, age, org_id=org.id, after=after)
        org_findings = queries.open_findings_for(s, org_id=org.id)
    dist = distribution(
        policy_of(request),
        {k: int(v) for k, v in org.aggregate.get("tpp_by_country", {}).items()},
        veu=org.veu,
        hq_country=org.hq_country,
        on=now.date(),
        org_id=org.id,
    )
    report_file = report if report and _REPORT_NAME.match(report) else None
    return _render(
        request,
        "org.html",
        user,
        title=org.name,
        org=org,
        sites=sites,
        dist=dist,
        findings=org_findings,
        chart=_chart(dist),
        periods=_periods(now.date()),
        report_file=report_file,
        after=after,
    )


def _periods(today: date) -> list[str]:
    half = 1 if today.month <= 6 else 2
    out, year = [], today.year
    for _ in range(4):
        out.append(f"{year}H{half}")
        year, half = (year, 1) if half == 2 else (year - 1, 2)
    return out


def _chart(dist: Distribution) -> dict[str, Any]:
    """Geometry of the inline SVG bar chart: one bar per country, thresholds as lines."""
    width, label_w, bar_h, gap = 560, 110, 22, 8
    span = width - label_w - 70
    bars: list[dict[str, Any]] = []
    rows = [
        ("Tier 1 total", dist.tier1_share, True, dist.tier1_ok),
        *[(c.code, c.share, c.tier1, c.ok) for c in dist.countries],
    ]
    for i, (code, share, tier1, ok) in enumerate(rows):
        bars.append(
            {
                "y": 30 + i * (bar_h + gap),
                "w": max(1.0, share * span),
                "code": code,
                "share": share,
                "tier1": tier1,
                "ok": ok,
            }
        )
    height = 30 + len(bars) * (bar_h + gap) + 30
    return {
        "width": width,
        "height": height,
        "x0": label_w,
        "span": span,
        "bar_h": bar_h,
        "bars": bars,
        "lines": [
            {"x": label_w + dist.non_tier1_max * span, "label": f"{dist.non_tier1_max:.0%}"},
            *(
                [{"x": label_w + dist.us_min * span, "label": f"U.S. {dist.us_min:.0%}"}]
                if dist.us_min is not None
                else []
            ),
            {"x": label_w + dist.tier1_min * span, "label": f"Tier 1 {dist.tier1_min:.0%}"},
        ],
    }


@router.get("/sites/{site_id}", response_class=HTMLResponse)
def site_page(
    request: Request,
    site_id: str,
    after: str | None = Query(None, max_length=64),
    proposed: bool = Query(False, description="count findings of proposed packs too"),
) -> Response:
    user = _page_user(request)
    if user is None:
        return _login_redirect(request)
    svc = services(request)
    now, age = _settled(svc)
    with svc.db.read() as s:
        rows = queries.site_rows(s, now, age, site_ids=[site_id[:40]], include_proposed=proposed)
        if not rows.items:
            return _not_found(request, user, "No site with that id.")
        site = rows.items[0]
        state = s.get(SiteState, site.id)
        agg = queries._aggregate(state.aggregate if state else None)
        hosts = queries.host_rows(s, site.id, after=after)
        groups, controlled = queries.weight_storage(s, site.id)
        ships = queries.shipments(s, site.id)
        site_findings = queries.open_findings_for(s, site_id=site.id)
        auth = queries.authorization(s, site.id)
        auth_ref = s.scalar(select(Site.authorization_ref).where(Site.id == site.id))
        by_level = host_levels(s, site.id)
        level = level_of(by_level)
    policy = policy_of(request)
    models = []
    for chip_id, (count, tpp, cls) in sorted(agg.get("models", {}).items()):
        models.append(
            {
                "chip": chip_id,
                "name": _chip_name(policy, chip_id),
                "count": count,
                "tpp": tpp,
                "classification": cls,
            }
        )
    return _render(
        request,
        "site.html",
        user,
        title=site.name,
        site=site,
        hosts=hosts,
        models=models,
        groups=groups,
        controlled=controlled,
        shipments=ships,
        findings=site_findings,
        findings_by_pack=_by_pack(site_findings),
        proposed=proposed,
        authorization=auth,
        authorization_ref=auth_ref,
        assurance=level,
        hosts_by_assurance=by_level,
        cutoff=now - age,
        max_age=age,
        after=after,
    )


def _chip_name(policy: PolicySet, chip_id: str) -> str:
    for pack in policy.packs:
        for chip in pack.catalog.chips:
            if chip.id == chip_id:
                return chip.title
    return chip_id


@router.get("/hosts/{key_id}", response_class=HTMLResponse)
def host_page(
    request: Request, key_id: str, before: int | None = Query(None, ge=0, le=MAX_CURSOR)
) -> Response:
    user = _page_user(request)
    if user is None:
        return _login_redirect(request)
    if not _HEX64.match(key_id):
        return _not_found(request, user, "No host with that id.")
    svc = services(request)
    now, age = _settled(svc)
    with svc.db.read() as s:
        host = s.get(Host, key_id)
        if host is None:
            return _not_found(request, user, "No host with that id.")
        site = s.get(Site, host.site_id)
        head = s.get(ChainHead, key_id)
        state = s.get(HostState, key_id)
        timeline = queries.timeline(s, key_id, before=before)
        accelerators, weights = repo.host_inventory(s, key_id)
        chain = queries.chain_findings(s, key_id)
        rejected = queries.rejections(s, key_id)
        open_host = queries.findings(s, queries.FindingFilter(scope_id=key_id), limit=100)
    latest = timeline.items[0] if timeline.items and before is None else None
    stale = state is not None and state.collected_at < now - age
    return _render(
        request,
        "host.html",
        user,
        title=host.hostname or key_id[:16],
        host=host,
        site=site,
        head=head,
        state=state,
        timeline=timeline,
        accelerators=accelerators[:500],
        weights=weights[:500],
        chain=chain,
        rejected=rejected,
        latest=latest,
        stale=stale,
        findings=open_host.items,
        max_age=age,
        before=before,
    )


@router.get("/hosts/{key_id}/key.pem")
def host_key_pem(request: Request, key_id: str) -> Response:
    """The host's public key (PEM), to re-verify its envelopes with ``veu-agent verify``."""
    user = _page_user(request)
    if user is None:
        return _unauthenticated()
    svc = services(request)
    with svc.db.read() as s:
        host = s.get(Host, key_id) if _HEX64.match(key_id) else None
        raw = bytes(host.public_key) if host is not None else None
    if raw is None:
        return JSONResponse({"code": "not_found", "detail": "no such host"}, status_code=404)
    return Response(
        public_pem(public_from_raw(raw)),
        media_type="application/x-pem-file",
        headers={"Content-Disposition": f'attachment; filename="{key_id}.pub.pem"'},
    )


@router.get("/snapshots/{digest}/envelope")
def envelope(request: Request, digest: str) -> Response:
    user = _page_user(request)
    if user is None:
        return _unauthenticated()
    svc = services(request)
    with svc.db.read() as s:
        row = repo.snapshot_by_digest(s, digest)
        pruned = row.pruned_at if row is not None else None
        data = bytes(row.envelope) if row is not None and pruned is None else None
    if pruned is not None:
        return _render(
            request,
            "error.html",
            user,
            410,
            title="Envelope pruned",
            message=f"This snapshot's signed envelope was pruned by the retention setting on "
            f"{pruned:%Y-%m-%d}; its digest and signed result are kept "
            f"(GET /v1/results/{digest}).",
        )
    if data is None:
        return JSONResponse({"code": "not_found", "detail": "no such snapshot"}, status_code=404)
    return Response(
        data,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{digest}.dsse.json"'},
    )


@router.get("/snapshots/{digest}/log-proof")
def log_proof(request: Request, digest: str) -> Response:
    """The snapshot's transparency-log bundle (leaf, index, inclusion proof, signed checkpoint)
    as a file: what an auditor checks with ``contract.tlog.verify_bundle`` and the log key."""
    user = _page_user(request)
    if user is None:
        return _unauthenticated()
    svc = services(request)
    found = bundle_of(svc, digest) if _HEX64.match(digest) else None
    if found is None:
        return JSONResponse(
            {"code": "not_found", "detail": "no such snapshot in the log (yet: about a second)"},
            status_code=404,
        )
    body = {"digest": digest, "log_key": svc.log.key.verifier_key, "log": found}
    return JSONResponse(
        body, headers={"Content-Disposition": f'attachment; filename="{digest}.log-proof.json"'}
    )


@router.get("/findings", response_class=HTMLResponse)
def findings_page(
    request: Request,
    site: str | None = Query(None, max_length=40),
    org: str | None = Query(None, max_length=40),
    severity: str | None = Query(None, max_length=20),
    condition: str | None = Query(None, max_length=200),
    subject: str | None = Query(None, max_length=500),
    state: str = Query("open", pattern="^(open|closed|all)$"),
    pack_status: str | None = Query(None, max_length=32),
    after: int | None = Query(None, ge=0, le=MAX_CURSOR),
) -> Response:
    user = _page_user(request)
    if user is None:
        return _login_redirect(request)
    svc = services(request)
    svc.settle()  # judge sites with evidence not yet settled
    flt = queries.FindingFilter(
        site=site or None,
        org=org or None,
        severity=severity or None,
        condition=condition or None,
        subject=subject or None,
        state=state,
        pack_status=pack_status or None,
    )
    with svc.db.read() as s:
        page = queries.findings(s, flt, after=after)
        conditions = queries.condition_ids(s)
    base = {
        "site": site,
        "org": org,
        "severity": severity,
        "condition": condition,
        "subject": subject,
        "state": state,
        "pack_status": pack_status,
    }
    next_url = f"?{_qs(base, after=page.next_after)}" if page.next_after else None
    return _render(
        request,
        "findings.html",
        user,
        title="Findings",
        page=page,
        flt=flt,
        conditions=conditions,
        pack_statuses=PACK_STATUSES,
        next_url=next_url,
        first_url=f"?{_qs(base)}" if after else None,
    )


def _by_pack(rows: list[Any]) -> list[dict[str, Any]]:
    """Open findings counted per pack, with the pack's status (appraisal findings as "-")."""
    out: dict[str, dict[str, Any]] = {}
    for f in rows:
        key = f.condition_id.split("/", 1)[0] if f.pack_status else "-"
        entry = out.setdefault(
            key,
            {"pack": key, "version": f.pack_version, "status": f.pack_status or "appraisal",
             "counts": {}},
        )  # fmt: skip
        entry["counts"][f.severity] = entry["counts"].get(f.severity, 0) + 1
    return [out[k] for k in sorted(out)]


# --------------------------------------------------------------------------- attest now


def _api_user(request: Request, *, admin: bool) -> SessionUser | JSONResponse:
    user = _page_user(request)
    if user is None:
        return _unauthenticated()
    if admin and not user.is_admin:
        return JSONResponse(
            {"code": "forbidden", "detail": "this needs the role admin"}, status_code=403
        )
    return user


@router.post("/sites/{site_id}/attest")
async def attest_now(request: Request, site_id: str) -> Response:
    """Ask every active host of the site for fresh, nonce-bound evidence (admin)."""
    found = _api_user(request, admin=True)
    if isinstance(found, JSONResponse):
        return found
    svc = services(request)
    if not session.csrf_ok(svc, found, request.headers.get("x-csrf-token")):
        return JSONResponse({"code": "csrf", "detail": "missing or wrong CSRF token"}, 403)
    from server.api.auth import User
    from server.api.routes_agents import AdminChallengeRequest, issue_for_admin

    now = svc.now()
    req = AdminChallengeRequest(site=site_id[:40])
    out = await run_in_threadpool(issue_for_admin, svc, req, User(found.key_id, found.role))
    out["requested_at"] = format_timestamp(now)
    return JSONResponse(out)


@router.get("/sites/{site_id}/attest-status")
def attest_status(
    request: Request, site_id: str, since: str = Query(..., max_length=40)
) -> Response:
    found = _api_user(request, admin=False)
    if isinstance(found, JSONResponse):
        return found
    try:
        moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)
        if moment < _EPOCH:
            raise OverflowError
    except (ValueError, OverflowError):
        return JSONResponse(
            {"code": "invalid_request", "detail": "since: an RFC 3339 time after 1970"}, 422
        )
    svc = services(request)
    with svc.db.read() as s:
        answers = queries.attest_answers(s, site_id[:40], moment - timedelta(seconds=1))
    return JSONResponse(
        {
            "hosts": [
                {
                    "host_id": a.key_id,
                    "hostname": visible_value(a.hostname),
                    "answered": a.answered,
                    "answered_at": format_timestamp(a.answered_at) if a.answered_at else None,
                }
                for a in answers
            ],
            "answered": sum(1 for a in answers if a.answered),
            "total": len(answers),
        }
    )


# --------------------------------------------------------------------------- reports


def reports_dir(svc: Services) -> Path:
    path = svc.settings.data_dir / "reports"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


#: How long a report file (and its signature) stays downloadable.
REPORT_TTL = timedelta(days=7)
#: Reports one process makes at once; each user makes one at a time.
REPORTS_AT_ONCE = 2
_report_lock = threading.Lock()
_reports_running: set[str] = set()


@contextmanager
def report_slot(key_id: str) -> Iterator[bool]:
    """Whether this API key may make a report now (one at a time per key, a few per process);
    the slot is held for the block."""
    with _report_lock:
        free = key_id not in _reports_running and len(_reports_running) < REPORTS_AT_ONCE
        if free:
            _reports_running.add(key_id)
    try:
        yield free
    finally:
        if free:
            with _report_lock:
                _reports_running.discard(key_id)


def expire_reports(directory: Path, now: datetime, ttl: timedelta = REPORT_TTL) -> int:
    """Delete report files older than ``ttl``; how many were deleted."""
    cutoff = (now - ttl).timestamp()
    gone = 0
    for path in directory.iterdir():
        with suppress(OSError):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                gone += 1
    return gone


@router.post("/orgs/{org_id}/reports")
async def make_report(
    request: Request,
    org_id: str,
    period: str = Form(..., max_length=10),
    format: str = Form("pdf", pattern="^(pdf|csv|json)$"),
    csrf: str = Form("", max_length=200),
) -> Response:
    user = _page_user(request)
    if user is None:
        return _login_redirect(request)
    svc = services(request)
    if not session.csrf_ok(svc, user, csrf):
        return _render(
            request,
            "error.html",
            user,
            403,
            title="Forbidden",
            message="The form expired; reload the page and try again.",
        )
    if not _PERIOD.match(period):
        return _render(
            request,
            "error.html",
            user,
            422,
            title="Bad period",
            message="A period looks like 2026H1 or 2026H2.",
        )
    policy = policy_of(request)
    await run_in_threadpool(svc.settle)
    with svc.db.read() as s:
        org = s.get(Organization, org_id[:40])
    if org is None:
        return _not_found(request, user, "No organization with that id.")
    with report_slot(user.key_id) as free:
        if not free:
            busy = _render(
                request,
                "error.html",
                user,
                429,
                title="A report is being made",
                message="A report you asked for (or two of others') is still being made; "
                "wait for it, then try again.",
            )
            busy.headers["Retry-After"] = "30"
            return busy
        directory = reports_dir(svc)
        await run_in_threadpool(expire_reports, directory, svc.now())
        written = await run_in_threadpool(
            reports.write_signed,
            svc.db,
            policy,
            svc.key,
            org.id,
            period,
            format,
            directory,
            svc.now(),
            log=svc.log if format == "json" else None,
        )
    return RedirectResponse(
        f"/dashboard/orgs/{quote(org.id)}?report={quote(written.name)}#reports", status_code=303
    )


@router.get("/reports/{name}")
def download_report(request: Request, name: str) -> Response:
    user = _page_user(request)
    if user is None:
        return _login_redirect(request)
    svc = services(request)
    if not _REPORT_NAME.match(name) or name.startswith("."):
        return _not_found(request, user, "No such report.")
    path = reports_dir(svc) / name
    if not path.is_file():
        return _not_found(request, user, "No such report.")
    media = {
        ".pdf": "application/pdf",
        ".csv": "text/csv",
        ".json": "application/json",
        ".sig": "application/json",
    }.get(path.suffix, "application/octet-stream")
    return FileResponse(path, media_type=media, filename=name)
