"""Group commit of accepted snapshots: the committer (threads only) and the batch write (real
databases, SQLite and PostgreSQL through the ``api`` fixture)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest

import server.ingest
from contract.results import verify_result
from server.api.app import create_app
from server.api.errors import http_status
from server.appraise import Rejected
from server.config import ENV_INGEST_BATCH, ENV_INGEST_BATCH_WAIT, ConfigError, Settings
from server.ingest import Ingest, Outcome, Pending
from server.ingest._groupcommit import GroupCommitter
from server.store.audit import verify_audit
from tests.server.builders import HostKit, ago, digest_of

# --------------------------------------------------------------------------- the committer


class Gate:
    """A write function that records its batches and holds the first one until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(10)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


def _wait(futures: Sequence[Future[int]]) -> list[int | BaseException]:
    out: list[int | BaseException] = []
    for f in futures:
        exc = f.exception(timeout=10)
        out.append(exc if exc is not None else f.result())
    return out


def test_what_arrives_during_a_commit_is_committed_together_next() -> None:
    gate = Gate()
    committer: GroupCommitter[int, int] = GroupCommitter(gate, max_batch=32)
    first = committer.submit(0)
    assert gate.entered.wait(10)
    rest = [committer.submit(i) for i in range(2, 12, 2)]
    gate.release.set()
    assert _wait([first, *rest]) == [0, 20, 40, 60, 80, 100]
    assert gate.batches == [[0], [2, 4, 6, 8, 10]]


def test_each_waiter_gets_its_own_result_or_exception() -> None:
    gate = Gate()
    committer: GroupCommitter[int, int] = GroupCommitter(gate)
    first = committer.submit(2)
    assert gate.entered.wait(10)
    futures = [committer.submit(i) for i in (3, 4, 5)]
    gate.release.set()
    results = _wait([first, *futures])
    assert results[0] == 20 and results[2] == 40
    assert isinstance(results[1], ValueError) and str(results[1]) == "odd 3"
    assert isinstance(results[3], ValueError) and str(results[3]) == "odd 5"


def test_batches_are_capped_at_max_batch() -> None:
    gate = Gate()
    committer: GroupCommitter[int, int] = GroupCommitter(gate, max_batch=3)
    first = committer.submit(0)
    assert gate.entered.wait(10)
    rest = [committer.submit(2 * i) for i in range(1, 8)]
    gate.release.set()
    _wait([first, *rest])
    assert [len(b) for b in gate.batches] == [1, 3, 3, 1]


def test_a_failing_write_fails_its_whole_batch_and_the_next_batch_still_runs() -> None:
    calls: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("database gone")
        return list(items)

    committer: GroupCommitter[int, int] = GroupCommitter(write)
    with pytest.raises(RuntimeError, match="database gone"):
        committer.submit(1).result(timeout=10)
    assert committer.submit(2).result(timeout=10) == 2


def test_a_write_answering_the_wrong_number_of_results_fails_the_batch() -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        committer.submit(1).result(timeout=10)


def test_the_writer_thread_ends_when_idle_and_a_new_one_starts_on_demand() -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(
        lambda items: list(items), idle_s=0.05, name="veu-test-commit"
    )

    def writers() -> int:
        return sum(t.name == "veu-test-commit" for t in threading.enumerate())

    assert committer.submit(1).result(timeout=10) == 1
    deadline = time.monotonic() + 10
    while writers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writers() == 0
    assert committer.submit(2).result(timeout=10) == 2


def test_a_waiter_that_gave_up_before_its_turn_is_not_written() -> None:
    gate = Gate()
    committer: GroupCommitter[int, int] = GroupCommitter(gate)
    first = committer.submit(0)
    assert gate.entered.wait(10)
    abandoned = committer.submit(2)
    kept = committer.submit(4)
    assert abandoned.cancel()
    gate.release.set()
    assert _wait([first, kept]) == [0, 40]
    assert gate.batches == [[0], [4]]


def test_a_closed_committer_refuses_new_items_and_finishes_queued_ones() -> None:
    gate = Gate()
    committer: GroupCommitter[int, int] = GroupCommitter(gate)
    first = committer.submit(0)
    assert gate.entered.wait(10)
    queued = committer.submit(2)
    committer.close()
    with pytest.raises(RuntimeError, match="closed"):
        committer.submit(4)
    gate.release.set()
    assert _wait([first, queued]) == [0, 20]


def test_max_batch_must_be_positive_and_linger_not_negative() -> None:
    with pytest.raises(ValueError):
        GroupCommitter(lambda items: list(items), max_batch=0)
    with pytest.raises(ValueError):
        GroupCommitter(lambda items: list(items), linger_s=-0.1)


class Recorder:
    """A write function that records its batches."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        return list(items)


def test_the_writer_waits_for_an_item_being_prepared_and_commits_both_together() -> None:
    record = Recorder()
    committer: GroupCommitter[int, int] = GroupCommitter(record, linger_s=10.0)
    started = threading.Event()
    go = threading.Event()

    def prepare() -> Future[int]:
        with committer.preparing():
            started.set()
            assert go.wait(10)
            return committer.submit(2)

    pool = threading.Thread(target=lambda: results.append(prepare()))
    results: list[Future[int]] = []
    pool.start()
    assert started.wait(10)
    first = committer.submit(1)
    time.sleep(0.1)
    assert not first.done() and record.batches == []  # waiting for the one being prepared
    go.set()
    pool.join(10)
    assert _wait([first, *results]) == [1, 2]
    assert record.batches == [[1, 2]]


def test_an_item_prepared_but_never_submitted_delays_a_batch_by_at_most_the_linger() -> None:
    record = Recorder()
    committer: GroupCommitter[int, int] = GroupCommitter(record, linger_s=0.2)
    with committer.preparing():  # e.g. a snapshot that will be refused
        begun = time.monotonic()
        assert committer.submit(1).result(timeout=10) == 1
        waited = time.monotonic() - begun
    assert 0.15 <= waited < 5, waited  # bounded, not a timing target
    assert record.batches == [[1]]


def test_an_item_with_nothing_being_prepared_is_committed_at_once() -> None:
    record = Recorder()
    committer: GroupCommitter[int, int] = GroupCommitter(record, linger_s=30.0)
    assert committer.submit(1).result(timeout=10) == 1  # would take 30 s if it lingered
    with committer.preparing():
        pass  # announced, then abandoned: nothing is left to wait for
    assert committer.submit(2).result(timeout=10) == 2
    assert record.batches == [[1], [2]]


def test_a_full_batch_does_not_wait_for_items_being_prepared() -> None:
    gate = Gate()
    committer: GroupCommitter[int, int] = GroupCommitter(gate, max_batch=2, linger_s=30.0)
    first = committer.submit(0)
    assert gate.entered.wait(10)
    queued = [committer.submit(2), committer.submit(4)]
    with committer.preparing():
        gate.release.set()
        assert _wait(queued) == [20, 40]  # the batch of two went without waiting
    assert _wait([first]) == [0]
    assert gate.batches == [[0], [2, 4]]


# --------------------------------------------------------------------------- batch writes


def _prepared(api: Any, data: bytes) -> Pending:
    item = api.services.ingest.appraise(data)
    assert isinstance(item, Pending)
    return item


def _audit_ok(api: Any) -> None:
    with api.services.db.read() as s:
        assert verify_audit(s) is None


def _metric(api: Any, name: str) -> float:
    value = api.services.metrics.registry.get_sample_value(name)
    return float(value or 0.0)


def test_a_batch_of_hosts_commits_in_one_transaction(api: Any) -> None:
    kits = [HostKit(api.site_id, index=i) for i in range(5)]
    for kit in kits:
        api.enroll(kit)
    before = api.audit_count()
    items = [_prepared(api, kit.next_envelope()) for kit in kits]
    outcomes = api.services.ingest.commit(items)
    assert [o.digest for o in outcomes] == [i.accepted.digest for i in items]  # type: ignore[union-attr]
    assert all(isinstance(o, Outcome) and not o.duplicate for o in outcomes)
    assert api.counts()["snapshots"] == 5
    assert api.counts()["inventory_accelerators"] == 40
    assert api.audit_count() == before + 5
    assert _metric(api, "veu_ingest_batch_retries_total") == 0
    _audit_ok(api)
    for kit in kits:  # each host's chain goes on from the batch
        assert api.submit(kit.next_envelope()).status_code == 200
    for kit in kits:
        host = api.client.get(f"/v1/hosts/{kit.key_id}", headers=api.as_auditor()).json()
        assert host["chain_head"] == {"seq": 2, "digest": kit.prev}


def _lost_race(api: Any) -> tuple[Pending, Pending]:
    """A snapshot that lost its race before its commit (another child of the same head was
    accepted while it waited), and a bystander snapshot of another host."""
    winner, loser = HostKit(api.site_id, index=1), HostKit(api.site_id, index=2)
    api.enroll(winner)
    api.enroll(loser)
    racing = _prepared(api, loser.next_envelope())
    loser.seq, loser.prev = 0, None
    assert api.submit(loser.next_envelope(now=ago(seconds=5))).status_code == 200
    return racing, _prepared(api, winner.next_envelope())


def test_a_batch_that_loses_a_race_is_retried_one_by_one(api: Any) -> None:
    racing, bystander = _lost_race(api)
    before = api.counts()
    outcomes = api.services.ingest.commit([racing, bystander])
    assert _metric(api, "veu_ingest_batch_retries_total") == 1
    assert isinstance(outcomes[0], Rejected) and outcomes[0].code == "fork"
    assert isinstance(outcomes[1], Outcome)
    assert outcomes[1].digest == bystander.accepted.digest
    assert api.counts()["snapshots"] == before["snapshots"] + 1
    _audit_ok(api)


def test_the_same_envelope_twice_in_a_batch_is_one_row_and_two_identical_answers(
    api: Any,
) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    data = kit.next_envelope()
    a, b = _prepared(api, data), _prepared(api, data)
    first, second = api.services.ingest.commit([a, b])
    assert isinstance(first, Outcome) and isinstance(second, Outcome)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.result == second.result and first.digest == digest_of(data)
    assert api.counts()["snapshots"] == 1
    _audit_ok(api)


def test_two_children_of_one_head_in_a_batch_are_one_accepted_and_one_fork(api: Any) -> None:
    kit = HostKit(api.site_id)
    api.enroll(kit)
    one = _prepared(api, kit.next_envelope())
    kit.seq, kit.prev = 0, None
    two = _prepared(api, kit.next_envelope(now=ago(seconds=5)))
    outcomes = api.services.ingest.commit([one, two])
    kinds = sorted(type(o).__name__ for o in outcomes)
    assert kinds == ["Fork", "Outcome"]
    refused = next(o for o in outcomes if isinstance(o, Rejected))
    assert refused.code == "fork" and http_status(refused) == 409
    assert api.counts()["snapshots"] == 1
    _audit_ok(api)


def test_concurrent_submissions_over_the_async_path_are_all_committed(api: Any) -> None:
    """Through the real ASGI app and its committer thread: every answer is a verifiable signed
    result of a stored snapshot, and the batches add up to the snapshots."""
    kits = [HostKit(api.site_id, index=i) for i in range(12)]
    for kit in kits:
        api.enroll(kit)
    bodies = [kit.next_envelope() for kit in kits]
    app = api.client.app

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://veu") as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/snapshots", content=b, headers={"Content-Type": "application/json"}
                    )
                    for b in bodies
                )
            )

    # Its own thread: a running event loop in this one (left by another test) would refuse.
    box: list[list[httpx.Response]] = []
    runner = threading.Thread(target=lambda: box.append(asyncio.run(go())))
    runner.start()
    runner.join(60)
    (responses,) = box
    assert [r.status_code for r in responses] == [200] * len(bodies)
    for r, b in zip(responses, bodies, strict=True):
        claims = verify_result(r.json()["result"], api.services.key.public_pem())
        assert claims["submods"]["veu-snapshot"]["digest"] == digest_of(b)
    assert api.counts()["snapshots"] == len(bodies)
    assert _metric(api, "veu_ingest_commit_batch_size_sum") == len(bodies)
    _audit_ok(api)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("env", "attr", "default", "good", "bad"),
    [
        (ENV_INGEST_BATCH, "ingest_batch_max", 32, {"4": 4}, ("0", "lots", "-2")),
        (
            ENV_INGEST_BATCH_WAIT,
            "ingest_batch_wait_ms",
            5.0,
            {"0": 0, "2.5": 2.5},
            ("-1", "soon", "1001"),
        ),
    ],
)
def test_the_group_commit_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    env: str,
    attr: str,
    default: float,
    good: dict[str, float],
    bad: tuple[str, ...],
) -> None:
    assert getattr(Settings(), attr) == default
    for raw, value in good.items():
        monkeypatch.setenv(env, raw)
        assert getattr(Settings.from_env(), attr) == value
    for raw in bad:
        monkeypatch.setenv(env, raw)
        with pytest.raises(ConfigError, match=env):
            Settings.from_env()


def test_the_process_committer_uses_the_setting_and_closes(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data", ingest_batch_max=1))
    svc = app.state.veu
    gate = Gate()
    svc.ingest.commit = gate  # what the committer writes with (built on first use)
    committer = svc.ingest.committer()
    assert svc.ingest.committer() is committer  # one per process
    first = committer.submit(0)
    assert gate.entered.wait(10)
    rest = [committer.submit(2), committer.submit(4)]
    gate.release.set()
    assert _wait([first, *rest]) == [0, 20, 40]
    assert gate.batches == [[0], [2], [4]]  # batch limit 1: no batching
    svc.close()
    with pytest.raises(RuntimeError, match="closed"):
        committer.submit(6)
    assert svc.ingest.committer() is not committer  # a new one after close
    svc.close()
    svc.db.dispose()


def test_a_database_failure_fails_each_snapshot_of_the_batch_and_changes_nothing(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kits = [HostKit(api.site_id, index=i) for i in range(3)]
    for kit in kits:
        api.enroll(kit)
    items = [_prepared(api, kit.next_envelope()) for kit in kits]
    before, audit_before = api.counts(), api.audit_count()

    def gone(*args: object, **kwargs: object) -> None:
        raise RuntimeError("connection lost")

    monkeypatch.setattr(server.ingest, "send_accepted", gone)
    outcomes = api.services.ingest.commit(items)
    assert [str(o) for o in outcomes] == ["connection lost"] * 3
    assert _metric(api, "veu_ingest_batch_retries_total") == 1
    assert api.counts() == before and api.audit_count() == audit_before


def test_a_lost_race_whose_security_event_cannot_be_written_fails_alone(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    racing, bystander = _lost_race(api)

    def audit_down(*args: object) -> None:
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(Ingest, "record_rejection", audit_down)
    outcomes = api.services.ingest.commit([racing, bystander])
    assert isinstance(outcomes[0], RuntimeError) and str(outcomes[0]) == "audit log unavailable"
    assert isinstance(outcomes[1], Outcome)  # committed, and told so
    _audit_ok(api)
