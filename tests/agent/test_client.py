"""agent.client.VerifierClient: refuses plain HTTP off loopback; says which failures to retry."""

from __future__ import annotations

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.client import ClientError, VerifierClient
from contract.keys import key_id


def _client(handler: object, url: str = "https://verifier.example") -> VerifierClient:
    return VerifierClient(url, transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def test_plain_http_to_a_remote_host_is_refused() -> None:
    with pytest.raises(ClientError) as err:
        VerifierClient("http://verifier.example")
    assert err.value.code == "insecure_url" and not err.value.transient


@pytest.mark.parametrize("url", ["http://127.0.0.1:8443", "http://localhost:1", "http://[::1]:2"])
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    VerifierClient(url).close()


def test_plain_http_can_be_allowed_explicitly() -> None:
    VerifierClient("http://verifier.example", allow_insecure_http=True).close()


def test_a_verifier_4xx_is_permanent_with_its_stable_code() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"code": "fork", "detail": "second child"})

    with pytest.raises(ClientError) as err:
        _client(handler).submit(b"{}")
    assert (err.value.code, err.value.status, err.value.transient) == ("fork", 409, False)


def test_429_and_5xx_are_transient_and_honour_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "7"}, json={"code": "rate_limited"})

    with pytest.raises(ClientError) as err:
        _client(handler).submit(b"{}")
    assert err.value.transient and err.value.retry_after == 7.0

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="<html>bad gateway</html>")

    with pytest.raises(ClientError) as err:
        _client(broken).submit(b"{}")
    assert err.value.transient and err.value.code == "http_503"


def test_network_errors_are_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ClientError) as err:
        _client(handler).verifier_key()
    assert err.value.transient and err.value.code == "network_error"


def test_signed_calls_carry_the_request_signature_headers() -> None:
    seen: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        return httpx.Response(200, json={"server_time": "x", "pending_challenge": None})

    key = Ed25519PrivateKey.generate()
    _client(handler).checkin(key, key_id(key.public_key()))
    assert seen["x-veu-key-id"] == key_id(key.public_key())
    assert "x-veu-signature" in seen and "x-veu-timestamp" in seen


def test_submit_returns_the_status_and_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.content == b"envelope"
        return httpx.Response(200, json={"result": "jwt", "duplicate": True, "status": "warning"})

    result = _client(handler).submit(b"envelope")
    assert result.status_code == 200 and result.result == "jwt" and result.duplicate
