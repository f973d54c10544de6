"""A corpus of hostile inputs, each sent end to end to a running `veu-server serve`.

For every input: the answer is a 4xx with a stable code and a JSON body, the evidence tables hold
exactly the rows they held before (the audit log grows by one row only when a valid signature of
an enrolled key came with the bad evidence), and the server still answers /healthz.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from contract import canonical_bytes, format_timestamp, pae, statement_bytes
from server.store import repo
from server.store.db import make_engine
from server.store.models import EVIDENCE_TABLES
from tests.server.builders import HostKit
from tests.server.conftest import Fleet, make_fleet, start_server, stop_server

INJECTION = "'; DROP TABLE snapshots; -- ../../../../etc/passwd \x00 %s%n {{7*7}}"


@dataclass
class Env:
    fleet: Fleet
    engine: Any

    @property
    def url(self) -> str:
        return self.fleet.server.url

    def kit(self) -> HostKit:
        kit = HostKit(self.fleet.site_id)
        self.fleet.enroll(kit)
        return kit

    def accept(self, kit: HostKit, **over: Any) -> bytes:
        data = kit.next_envelope(**over)
        response = _submit(self.url, data)
        assert response.status_code == 200, response.text
        return data

    def sql(self, statement: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(statement), params)

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            from sqlalchemy.orm import Session

            with Session(bind=conn) as session:
                return repo.row_counts(session, [*EVIDENCE_TABLES, "audit_log"])

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.fleet.admin_key}"}


@dataclass
class Req:
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


def _submit(url: str, data: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(
        f"{url}/v1/snapshots", content=data, headers={"Content-Type": content_type}, timeout=60
    )


def snap(body: bytes) -> Req:
    return Req("POST", "/v1/snapshots", body)


def _envelope_dict(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    assert isinstance(value, dict)
    return value


def _resign(kit: HostKit, payload: bytes) -> bytes:
    sig = base64.b64encode(kit.key.sign(pae("application/vnd.in-toto+json", payload))).decode()
    return json.dumps(
        {
            "payloadType": "application/vnd.in-toto+json",
            "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": kit.key_id, "sig": sig}],
        }
    ).encode()


# --------------------------------------------------------------------------- the corpus


def tampered_payload(env: Env) -> Req:
    kit = env.kit()
    env_ = _envelope_dict(kit.next_envelope(advance=False))
    payload = base64.b64decode(env_["payload"]).replace(b"H100", b"H200", 1)
    env_["payload"] = base64.b64encode(payload).decode()
    return snap(json.dumps(env_).encode())


def tampered_signature(env: Env) -> Req:
    kit = env.kit()
    env_ = _envelope_dict(kit.next_envelope(advance=False))
    sig = bytearray(base64.b64decode(env_["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    env_["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return snap(json.dumps(env_).encode())


def unknown_key(env: Env) -> Req:
    return snap(HostKit(env.fleet.site_id).next_envelope())


def revoked_key(env: Env) -> Req:
    kit = env.kit()
    assert httpx.post(f"{env.url}/v1/hosts/{kit.key_id}/revoke", headers=env.admin()).is_success
    return snap(kit.next_envelope())


def wrong_payload_type(env: Env) -> Req:
    kit = env.kit()
    env_ = _envelope_dict(kit.next_envelope(advance=False))
    env_["payloadType"] = "application/json"
    return snap(json.dumps(env_).encode())


def replay(env: Env) -> Req:
    kit = env.kit()
    env.accept(kit)
    env.accept(kit)
    kit.seq -= 1
    return snap(kit.next_envelope(advance=False, posture=_posture()))


def fork(env: Env) -> Req:
    kit = env.kit()
    env.accept(kit)
    return snap(kit.next_envelope(advance=False, prev="e" * 64))


def rollback(env: Env) -> Req:
    kit = env.kit()
    for _ in range(3):
        env.accept(kit)
    kit.seq, kit.prev = 0, None
    return snap(kit.next_envelope(advance=False, posture=_posture()))


def _nonce(env: Env, kit: HostKit) -> str:
    response = httpx.post(
        f"{env.url}/v1/challenges", headers=kit.signed_headers("POST", "/v1/challenges")
    )
    assert response.status_code == 200, response.text
    return str(response.json()["nonce"])


def reused_nonce(env: Env) -> Req:
    kit = env.kit()
    nonce = _nonce(env, kit)
    env.accept(kit, nonce=nonce)
    return snap(kit.next_envelope(nonce=nonce))


def expired_nonce(env: Env) -> Req:
    kit = env.kit()
    nonce = _nonce(env, kit)
    past = datetime.now(UTC) - timedelta(seconds=1)
    env.sql("UPDATE nonces SET expires_at = :t WHERE nonce = :n", t=_db_time(env, past), n=nonce)
    return snap(kit.next_envelope(nonce=nonce))


def nonce_of_another_host(env: Env) -> Req:
    kit, other = env.kit(), env.kit()
    return snap(kit.next_envelope(nonce=_nonce(env, other)))


def unknown_nonce(env: Env) -> Req:
    return snap(env.kit().next_envelope(nonce="f" * 64))


def future_timestamp(env: Env) -> Req:
    later = datetime.now(UTC) + timedelta(hours=1)
    return snap(env.kit().next_envelope(collected_at=format_timestamp(later)))


def ancient_timestamp(env: Env) -> Req:
    return snap(env.kit().next_envelope(collected_at="2001-01-01T00:00:00Z"))


def body_20_mib(env: Env) -> Req:
    return snap(b'{"payload": "' + b"A" * (20 * 1024 * 1024) + b'"}')


def nesting_100k(env: Env) -> Req:
    return snap(b"[" * 100_000 + b"]" * 100_000)


def duplicate_keys(env: Env) -> Req:
    data = env.kit().next_envelope(advance=False)
    return snap(data[:-1] + b',"payloadType":"application/vnd.in-toto+json"}')


def invalid_utf8(env: Env) -> Req:
    return snap(b'{"payloadType": "\xff\xfe", "payload": "", "signatures": []}')


def nan_value(env: Env) -> Req:
    return snap(b'{"payloadType": NaN, "payload": "", "signatures": []}')


def huge_number(env: Env) -> Req:
    return snap(b'{"payloadType": 1' + b"0" * 400 + b', "payload": "", "signatures": []}')


def non_base64_payload(env: Env) -> Req:
    kit = env.kit()
    env_ = _envelope_dict(kit.next_envelope(advance=False))
    env_["payload"] = "not*base64!"
    return snap(json.dumps(env_).encode())


def empty_signatures(env: Env) -> Req:
    env_ = _envelope_dict(env.kit().next_envelope(advance=False))
    env_["signatures"] = []
    return snap(json.dumps(env_).encode())


def too_many_signatures(env: Env) -> Req:
    env_ = _envelope_dict(env.kit().next_envelope(advance=False))
    env_["signatures"] = env_["signatures"] * 17
    return snap(json.dumps(env_).encode())


def injection_in_key_id(env: Env) -> Req:
    env_ = _envelope_dict(env.kit().next_envelope(advance=False))
    env_["signatures"][0]["keyid"] = INJECTION
    return snap(json.dumps(env_).encode())


def injection_in_site_id(env: Env) -> Req:
    return snap(env.kit().next_envelope(site_id=INJECTION))


def injection_in_machine_id(env: Env) -> Req:
    kit = env.kit()
    host = kit.snapshot().host.model_copy(update={"machine_id": INJECTION})
    return snap(kit.next_envelope(host=host))


def injection_in_nonce(env: Env) -> Req:
    return snap(env.kit().next_envelope(nonce=INJECTION))


def non_canonical_payload(env: Env) -> Req:
    kit = env.kit()
    statement = json.loads(statement_bytes(kit.snapshot()))
    return snap(_resign(kit, json.dumps(statement, indent=2).encode()))


def key_mismatch(env: Env) -> Req:
    kit, other = env.kit(), HostKit(env.fleet.site_id)
    snapshot = kit.snapshot(agent=other.snapshot().agent)
    return snap(_resign(kit, statement_bytes(snapshot)))


def schema_invalid(env: Env) -> Req:
    kit = env.kit()
    statement = json.loads(statement_bytes(kit.snapshot()))
    del statement["predicate"]["accelerators"]
    return snap(_resign(kit, canonical_bytes(statement)))


def array_body(env: Env) -> Req:
    return snap(b"[]")


def empty_body(env: Env) -> Req:
    return snap(b"")


def wrong_content_type(env: Env) -> Req:
    return Req("POST", "/v1/snapshots", env.kit().next_envelope(), {"Content-Type": "text/plain"})


def enroll_used_token(env: Env) -> Req:
    token = env.fleet.token()
    env.fleet.enroll_with(HostKit(env.fleet.site_id), token)
    return Req(
        "POST", "/v1/enroll", json.dumps(HostKit(env.fleet.site_id).enroll_body(token)).encode()
    )


def enroll_expired_token(env: Env) -> Req:
    token = env.fleet.token()
    past = datetime.now(UTC) - timedelta(seconds=1)
    env.sql(
        "UPDATE enroll_tokens SET expires_at = :t WHERE token_hash = :h",
        t=_db_time(env, past),
        h=repo.hash_secret(token),
    )
    return Req(
        "POST", "/v1/enroll", json.dumps(HostKit(env.fleet.site_id).enroll_body(token)).encode()
    )


def enroll_injection_token(env: Env) -> Req:
    body = HostKit(env.fleet.site_id).enroll_body(INJECTION)
    return Req("POST", "/v1/enroll", json.dumps(body).encode())


def api_without_key(env: Env) -> Req:
    return Req("GET", "/v1/hosts", headers={})


def api_wrong_key(env: Env) -> Req:
    return Req("GET", "/v1/hosts", headers={"Authorization": "Bearer " + INJECTION[:40]})


def api_wrong_role(env: Env) -> Req:
    kit = env.kit()
    auditor = {"Authorization": f"Bearer {env.fleet.auditor_key}"}
    return Req("POST", f"/v1/hosts/{kit.key_id}/revoke", headers=auditor)


def path_traversal_digest(env: Env) -> Req:
    return Req(
        "GET",
        "/v1/snapshots/..%2F..%2F..%2Fetc%2Fpasswd",
        headers={"Authorization": f"Bearer {env.fleet.auditor_key}"},
    )


def injection_in_host_id(env: Env) -> Req:
    return Req(
        "GET",
        "/v1/hosts/%27%3B%20DROP%20TABLE%20hosts%3B--",
        headers={"Authorization": f"Bearer {env.fleet.auditor_key}"},
    )


@dataclass(frozen=True)
class Hostile:
    build: Callable[[Env], Req]
    status: int
    code: str
    audited: bool = False  # a valid signature of an enrolled key came with it


CORPUS: list[Hostile] = [
    Hostile(tampered_payload, 401, "bad_signature"),
    Hostile(tampered_signature, 401, "bad_signature"),
    Hostile(unknown_key, 401, "unknown_key"),
    Hostile(revoked_key, 403, "revoked_key", audited=True),
    Hostile(wrong_payload_type, 400, "bad_payload_type"),
    Hostile(replay, 409, "replay", audited=True),
    Hostile(fork, 409, "fork", audited=True),
    Hostile(rollback, 409, "rollback", audited=True),
    Hostile(reused_nonce, 409, "nonce_reused", audited=True),
    Hostile(expired_nonce, 409, "nonce_expired", audited=True),
    Hostile(nonce_of_another_host, 409, "nonce_wrong_host", audited=True),
    Hostile(unknown_nonce, 409, "nonce_unknown", audited=True),
    Hostile(future_timestamp, 422, "clock_skew", audited=True),
    Hostile(ancient_timestamp, 422, "evidence_too_old", audited=True),
    Hostile(body_20_mib, 413, "too_large"),
    Hostile(nesting_100k, 400, "json_too_deep"),
    Hostile(duplicate_keys, 400, "duplicate_key"),
    Hostile(invalid_utf8, 400, "bad_encoding"),
    Hostile(nan_value, 400, "malformed_json"),
    Hostile(huge_number, 400, "number_out_of_range"),
    Hostile(non_base64_payload, 400, "bad_base64"),
    Hostile(empty_signatures, 401, "no_signature"),
    Hostile(too_many_signatures, 400, "bad_envelope"),
    Hostile(injection_in_key_id, 401, "unknown_key"),
    Hostile(injection_in_site_id, 403, "site_mismatch", audited=True),
    Hostile(injection_in_machine_id, 403, "host_mismatch", audited=True),
    Hostile(injection_in_nonce, 409, "nonce_unknown", audited=True),
    Hostile(non_canonical_payload, 400, "non_canonical_payload", audited=True),
    Hostile(key_mismatch, 422, "key_mismatch", audited=True),
    Hostile(schema_invalid, 422, "schema_invalid", audited=True),
    Hostile(array_body, 400, "bad_envelope"),
    Hostile(empty_body, 400, "malformed_json"),
    Hostile(wrong_content_type, 415, "unsupported_media_type"),
    Hostile(enroll_used_token, 401, "token_used"),
    Hostile(enroll_expired_token, 401, "token_expired"),
    Hostile(enroll_injection_token, 401, "invalid_token"),
    Hostile(api_without_key, 401, "unauthenticated"),
    Hostile(api_wrong_key, 401, "invalid_api_key"),
    Hostile(api_wrong_role, 403, "forbidden"),
    Hostile(path_traversal_digest, 404, "not_found"),
    Hostile(injection_in_host_id, 404, "not_found"),
]


def _posture() -> Any:
    from contract import Posture

    return Posture(secure_boot=False, tpm_present=False)


def _db_time(env: Env, moment: datetime) -> Any:
    if env.engine.dialect.name == "sqlite":
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def hostile_env(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg_database_factory: Callable[[], str],
) -> Iterator[Env]:
    data_dir: Path = tmp_path_factory.mktemp("hostile") / "data"
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'veu.sqlite3'}"
    else:
        url = pg_database_factory()
    server = start_server(data_dir, url)
    engine = make_engine(url)
    try:
        yield Env(make_fleet(server), engine)
    finally:
        engine.dispose()
        stop_server(server)


def test_the_corpus_holds_at_least_thirty_hostile_inputs() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("case", CORPUS, ids=[c.build.__name__ for c in CORPUS])
def test_hostile_input_is_refused_with_a_stable_code_and_changes_no_evidence(
    hostile_env: Env, case: Hostile
) -> None:
    env = hostile_env
    req = case.build(env)
    before = env.counts()
    response = httpx.request(
        req.method,
        f"{env.url}{req.path}",
        content=req.body or None,
        headers=req.headers,
        timeout=60,
    )
    assert response.status_code == case.status, response.text[:300]
    body = response.json()
    assert set(body) == {"code", "detail"} and body["code"] == case.code, body
    after = env.counts()
    audit_growth = after.pop("audit_log") - before.pop("audit_log")
    assert after == before
    assert audit_growth == (1 if case.audited else 0)
    assert httpx.get(f"{env.url}/healthz").json() == {"status": "ok"}


def test_injection_strings_inside_valid_evidence_are_stored_verbatim_as_data(
    hostile_env: Env,
) -> None:
    env = hostile_env
    kit = env.kit()
    base = kit.snapshot()
    host = base.host.model_copy(update={"hostname": INJECTION, "os": INJECTION})
    long_text = INJECTION * 20  # wider than any derived column
    accelerators = [
        a.model_copy(update={"model": long_text, "serial": long_text, "pci_bus_id": INJECTION})
        for a in base.accelerators
    ]
    root = base.storage[0]
    files = [
        f.model_copy(update={"path": f"/srv/models/{INJECTION}/{i}"})
        for i, f in enumerate(root.files)
    ]
    storage = [root.model_copy(update={"files": files})]
    data = kit.next_envelope(host=host, accelerators=accelerators, storage=storage)
    response = _submit(env.url, data)
    assert response.status_code == 200
    raw = httpx.get(
        f"{env.url}/v1/snapshots/{response.json()['digest']}",
        headers={"Authorization": f"Bearer {env.fleet.auditor_key}"},
    )
    assert raw.content == data
    detail = httpx.get(
        f"{env.url}/v1/hosts/{kit.key_id}",
        headers={"Authorization": f"Bearer {env.fleet.auditor_key}"},
    ).json()
    assert len(detail["accelerators"]) == 8 and len(detail["weights"]) == 4


# --------------------------------------------------------------------------- connection bounds
#
# Against a real `veu-server serve` with short deadlines, over raw sockets: what one client may
# hold or send before its request reaches a route (server/api/limits.py).

BOUNDS = {
    "VEU_HEADER_TIMEOUT": "1",
    "VEU_BODY_TIMEOUT": "2",
    "VEU_MAX_CONNECTIONS": "24",
    "VEU_MAX_REQUESTS_PER_CONNECTION": "3",
}
#: How long a test waits for the server to act on a 1-2 s deadline (a bound, never a timing).
PATIENCE_S = 30.0


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    data_dir: Path = tmp_path_factory.mktemp("bounded") / "data"
    server = start_server(
        data_dir, f"sqlite:///{data_dir / 'veu.sqlite3'}", "--log-level", "info", env_extra=BOUNDS
    )
    try:
        yield make_fleet(server)
    finally:
        stop_server(server)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=PATIENCE_S)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (raises TimeoutError if it never does)."""
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out.extend(chunk)


def _healthy(url: str) -> bool:
    return bool(httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"})


def test_an_idle_socket_is_closed_by_the_head_deadline(bounded: Fleet) -> None:
    with _connect(bounded.server.url) as sock:
        assert _read_until_closed(sock) == b""
    assert _healthy(bounded.server.url)


def test_a_head_sent_one_byte_at_a_time_is_cut_off(bounded: Fleet) -> None:
    with _connect(bounded.server.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.settimeout(0.5)
        deadline = time.monotonic() + PATIENCE_S
        answer = b""
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"a")
                answer = sock.recv(4096)
                if answer == b"" or answer.startswith(b"HTTP/1.1 408"):
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            pytest.fail("the server kept a dripping request head open")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert _healthy(bounded.server.url)


def test_a_huge_header_is_refused_after_the_head_cap_not_parsed(bounded: Fleet) -> None:
    with _connect(bounded.server.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 128 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_until_closed(sock)
    # What the client got into the server's socket before it was cut off: the head cap (64 KiB)
    # and the kernel's buffers, nowhere near the 128 MiB offered.
    assert sent < 32 * 1024 * 1024, sent
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert _healthy(bounded.server.url)


def test_too_many_header_fields_are_refused(bounded: Fleet) -> None:
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(150))
    with _connect(bounded.server.url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_a_slow_body_is_cut_off_by_the_body_deadline(bounded: Fleet) -> None:
    with _connect(bounded.server.url) as sock:
        sock.sendall(
            b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        sock.settimeout(0.5)
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            try:
                sock.sendall(b" ")
                if sock.recv(4096) == b"":
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            pytest.fail("the server kept a dripping body open")
    assert _healthy(bounded.server.url)


def test_connections_beyond_the_limit_are_refused_and_the_server_stays_up(bounded: Fleet) -> None:
    url = bounded.server.url
    held = [_connect(url) for _ in range(40)]
    try:
        # Each held socket is either refused at once (503 and closed) or closed by the head
        # deadline; none is kept, and the server answers others afterwards.
        answers = [_read_until_closed(sock) for sock in held]
    finally:
        for sock in held:
            sock.close()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    assert refused, "no connection over the limit of 24 was refused"
    assert all(a == b"" or a.startswith(b"HTTP/1.1 503") for a in answers)
    assert _healthy(url)


def test_a_keep_alive_connection_carries_a_bounded_number_of_requests(bounded: Fleet) -> None:
    with _connect(bounded.server.url) as sock:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request * 5)
        answer = _read_until_closed(sock)
    assert answer.count(b"HTTP/1.1 200") == 3, answer
    assert answer.lower().count(b"connection: close") == 1


def _stream_chunked(
    url: str, path: str, total: int, headers: bytes = b"", method: str = "POST"
) -> tuple[int, bytes]:
    """Send ``total`` bytes of JSON-ish body in chunks; how many bytes the server let in, and
    its answer."""
    sent = 0
    with _connect(url) as sock:
        sock.sendall(
            method.encode() + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n" + headers + b"\r\n"
        )
        chunk = b"a" * (1024 * 1024)
        framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        sock.sendall(b"1\r\n[\r\n")
        try:
            while sent < total:
                sock.sendall(framed)
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        try:
            answer = _read_until_closed(sock)
        except TimeoutError:
            answer = b"(no answer)"
    return sent, answer


@pytest.mark.parametrize(("path", "status"), [("/v1/enroll", b"413"), ("/healthz", b"405")])
def test_a_256_mib_body_is_not_read_past_its_cap(bounded: Fleet, path: str, status: bytes) -> None:
    sent, answer = _stream_chunked(bounded.server.url, path, 256 * 1024 * 1024)
    # The server read the route's cap (16 KiB for enroll, nothing for a route that answers
    # without a body) and closed; the rest never got past the kernel's socket buffers.
    assert sent < 32 * 1024 * 1024, sent
    assert answer == b"" or status in answer.split(b"\r\n")[0], answer[:200]
    assert _healthy(bounded.server.url)


def test_a_declared_oversize_body_is_refused_unread_on_every_route(bounded: Fleet) -> None:
    url = bounded.server.url
    for method, path in [
        ("POST", "/v1/enroll"),
        ("POST", "/v1/challenges"),
        ("POST", "/v1/hosts/x/revoke"),
        ("POST", "/v1/no-such-route"),
        ("POST", "/dashboard/login"),
        ("PUT", "/v1/sites/x/authorization"),
    ]:
        response = httpx.request(
            method,
            f"{url}{path}",
            content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        assert response.status_code == 413, (path, response.text[:200])
        assert response.json()["code"] == "too_large"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/models", {"name": 5, "digests": "nope"}),
        ("POST", "/v1/shipments", {"shipped_on": "yesterday"}),
        ("PUT", "/v1/sites/x/authorization", {"allowed_models": 7}),
    ],
)
def test_admin_json_routes_authenticate_before_reading_the_body(
    bounded: Fleet, method: str, path: str, body: dict[str, Any]
) -> None:
    url = bounded.server.url
    anonymous = httpx.request(method, f"{url}{path}", json=body, timeout=30)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.json()["code"] == "unauthenticated"  # no field-level details
    auditor = {"Authorization": f"Bearer {bounded.auditor_key}"}
    assert httpx.request(method, f"{url}{path}", json=body, headers=auditor).status_code == 403
    # A large body from an anonymous client is answered 401 without being read.
    sent, answer = _stream_chunked(url, path, 256 * 1024 * 1024, method=method)
    assert sent < 32 * 1024 * 1024, sent
    assert answer == b"" or b"401" in answer.split(b"\r\n")[0], answer[:200]


def test_enrolled_host_facts_are_bounded(bounded: Fleet) -> None:
    kit = HostKit(bounded.site_id)
    body = kit.enroll_body(bounded.token())
    body["host"]["os"] = "x" * 4000
    response = httpx.post(f"{bounded.server.url}/v1/enroll", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"


def test_an_out_of_range_findings_cursor_is_4xx(bounded: Fleet) -> None:
    response = httpx.get(
        f"{bounded.server.url}/v1/findings",
        params={"after": "99999999999999999999999"},
        headers={"Authorization": f"Bearer {bounded.auditor_key}"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"


def test_a_client_that_disconnects_mid_body_is_one_quiet_log_line(bounded: Fleet) -> None:
    log = bounded.server.log
    before = log.read_text().count("client_disconnected")
    for path in ("/v1/snapshots", "/v1/enroll"):
        with _connect(bounded.server.url) as sock:
            sock.sendall(
                b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                b'Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n{"a": 1'
            )
    deadline = time.monotonic() + PATIENCE_S
    while log.read_text().count("client_disconnected") < before + 2:
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    assert _healthy(bounded.server.url)
    text = log.read_text()
    assert text.count("client_disconnected") == before + 2
    assert "Traceback" not in text and "Exception in ASGI application" not in text


def test_auditors_get_host_keys_to_reverify_envelopes_without_the_host(
    bounded: Fleet, tmp_path: Path
) -> None:
    from agent.cli import main as agent_main

    url = bounded.server.url
    kit = HostKit(bounded.site_id)
    bounded.enroll(kit)
    accepted = _submit(url, kit.next_envelope())
    assert accepted.status_code == 200, accepted.text
    auditor = {"Authorization": f"Bearer {bounded.auditor_key}"}
    assert httpx.get(f"{url}/v1/hosts/{kit.key_id}/key").status_code == 401
    record = httpx.get(f"{url}/v1/hosts/{kit.key_id}/key", headers=auditor).json()
    assert record["key_id"] == kit.key_id and record["alg"] == "Ed25519"
    assert record["enrollment"]["details"]["site"] == bounded.site_id
    assert len(record["enrollment"]["hash"]) == 64
    envelope = httpx.get(f"{url}/v1/snapshots/{accepted.json()['digest']}", headers=auditor)
    (tmp_path / "host.pub.pem").write_text(record["public_key_pem"])
    (tmp_path / "envelope.json").write_bytes(envelope.content)
    code = agent_main(
        ["verify", str(tmp_path / "envelope.json"), "--pubkey", str(tmp_path / "host.pub.pem")]
    )
    assert code == 0


def _rejection_row(env: Env, key: str) -> Any:
    with env.engine.connect() as conn:
        return conn.execute(
            text("SELECT count, code FROM repeated_rejections WHERE key = :k"), {"k": key}
        ).first()


def test_a_resent_rejected_envelope_is_one_audit_row_with_a_count(hostile_env: Env) -> None:
    env = hostile_env
    kit = env.kit()
    env.accept(kit)
    forked = kit.next_envelope(advance=False, prev="e" * 64)
    before = env.counts()["audit_log"]
    for _ in range(4):
        assert _submit(env.url, forked).status_code == 409
    assert env.counts()["audit_log"] == before + 1
    assert _submit(env.url, forked).json()["code"] == "fork"
    digest = hashlib.sha256(base64.b64decode(_envelope_dict(forked)["payload"])).hexdigest()
    row = _rejection_row(env, digest)
    assert row is not None and row[0] == 5 and row[1] == "fork"


def test_a_revoked_keys_attempts_are_audited_once_an_hour_and_counted(hostile_env: Env) -> None:
    env = hostile_env
    kit = env.kit()
    assert httpx.post(f"{env.url}/v1/hosts/{kit.key_id}/revoke", headers=env.admin()).is_success
    before = env.counts()["audit_log"]
    for _ in range(4):
        assert _submit(env.url, kit.next_envelope()).status_code == 403
    assert env.counts()["audit_log"] == before + 1
    row = _rejection_row(env, f"revoked:{kit.key_id}")
    assert row is not None and row[0] == 4


def test_a_hosts_weight_files_come_in_pages(bounded: Fleet) -> None:
    url = bounded.server.url
    kit = HostKit(bounded.site_id)
    bounded.enroll(kit)
    assert _submit(url, kit.next_envelope()).status_code == 200
    auditor = {"Authorization": f"Bearer {bounded.auditor_key}"}
    first = httpx.get(f"{url}/v1/hosts/{kit.key_id}", params={"limit": 3}, headers=auditor)
    page = first.json()
    assert len(page["weights"]) == 3 and page["weights_next_cursor"] is not None
    rest = httpx.get(
        f"{url}/v1/hosts/{kit.key_id}",
        params={"limit": 3, "cursor": page["weights_next_cursor"]},
        headers=auditor,
    ).json()
    assert len(rest["weights"]) == 1 and rest["weights_next_cursor"] is None
    paths = {w["path"] for w in page["weights"]} | {w["path"] for w in rest["weights"]}
    assert len(paths) == 4
    too_many = httpx.get(f"{url}/v1/hosts/{kit.key_id}", params={"limit": 5000}, headers=auditor)
    assert too_many.status_code == 422
