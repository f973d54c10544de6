"""Each process's last host judgement per host (server.compliance.hosts.JudgementMemo): answered
again while nothing it was judged from changed, judged afresh when anything did — end to end on
SQLite and PostgreSQL, and against the policy engine's own inputs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from contract import CollectorError, Posture, SnapshotV1
from contract.results import verify_result
from server.compliance.hosts import HostJudgement, JudgementMemo
from server.policy import HostContext, ModelRegistry, PolicySet
from server.policy.engine import host_variables
from server.store.ingest import SiteTerms
from tests.server.builders import HostKit, h100_accelerators, weights_root

TERMS = SiteTerms(country="DE", test_site=False, org_id="org_1", may_store_controlled_weights=False)
ON = date(2026, 3, 1)


def enrolled(api: Any, index: int = 0, site_id: str | None = None) -> HostKit:
    kit = HostKit(site_id or api.site_id, index=index)
    token = api.token(site_id=site_id)
    response = api.client.post("/v1/enroll", json=kit.enroll_body(token))
    assert response.status_code == 200, response.text
    return kit


def findings(api: Any, kit: HostKit, **over: Any) -> list[dict[str, Any]]:
    response = api.submit(kit.next_envelope(**over))
    assert response.status_code == 200, response.text
    claims = verify_result(response.json()["result"], api.services.key.public_pem())
    found: list[dict[str, Any]] = claims["submods"]["veu-snapshot"]["findings"]
    return found


def ids(found: list[dict[str, Any]]) -> set[str]:
    """Condition ids without their pack ("ai-diffusion-2025/host.x" -> "host.x")."""
    return {f["condition_id"].split("/")[-1] for f in found}


def unencrypted_secret_root() -> Any:
    """The builder's weights, one file swapped for an unregistered digest, on plain storage."""
    root = weights_root()
    secret = root.files[0].model_copy(update={"sha256": "ef" * 32})
    return root.model_copy(
        update={
            "encryption": root.encryption.model_copy(update={"status": "unencrypted"}),
            "files": [secret, *root.files[1:]],
        }
    )


# --------------------------------------------------------------------------- end to end


def test_unchanged_facts_are_judged_once_and_answered_the_same(api: Any) -> None:
    memo: JudgementMemo = api.services.ingest.judgements
    kit = enrolled(api)
    first = findings(api, kit)
    misses = memo.misses
    hits = memo.hits
    # New seq, prev, time, nonce-free again, another uptime and posture: same judged facts.
    later = [
        findings(api, kit, posture=Posture(secure_boot=False)),
        findings(api, kit),
    ]
    assert memo.hits == hits + 2 and memo.misses == misses
    assert later == [first, first]


def test_changed_accelerators_storage_or_errors_are_judged_afresh(api: Any) -> None:
    memo: JudgementMemo = api.services.ingest.judgements
    kit = enrolled(api)
    assert "host.accelerator-identified" not in ids(findings(api, kit))
    misses = memo.misses
    unknown = [
        a.model_copy(update={"model": "Mystery Accelerator", "pci_device_id": "0x9999"})
        for a in h100_accelerators(0)
    ]
    seen = ids(findings(api, kit, accelerators=unknown))
    assert memo.misses == misses + 1
    assert "host.accelerator-identified" in seen
    assert seen != ids(findings(api, kit))  # back to the original facts: judged again
    failed = [CollectorError(collector="nvml", code="nvml_unavailable", detail="no driver")]
    with_error = ids(findings(api, kit, errors=failed))
    assert memo.misses == misses + 3
    assert "host.collectors-succeeded" in with_error
    assert with_error != ids(findings(api, kit))


def test_a_model_registration_reaches_the_next_snapshot_of_unchanged_facts(api: Any) -> None:
    memo: JudgementMemo = api.services.ingest.judgements
    kit = enrolled(api)
    root = unencrypted_secret_root()
    before = ids(findings(api, kit, storage=[root]))
    assert "host.controlled-weights-encrypted" not in before  # not registered: not controlled
    assert ids(findings(api, kit, storage=[root])) == before
    hits = memo.hits
    made = api.client.post(
        "/v1/models",
        headers=api.as_admin(),
        json={"name": "frontier-9", "training_ops": 3e26, "digests": ["ef" * 32]},
    )
    assert made.status_code == 201
    after = ids(findings(api, kit, storage=[root]))
    assert memo.hits == hits  # the registry's generation moved: no stale answer
    assert "host.controlled-weights-encrypted" in after


def test_a_change_of_the_sites_terms_reaches_the_next_snapshot(api: Any) -> None:
    kit = enrolled(api)
    made = api.client.post(
        "/v1/models",
        headers=api.as_admin(),
        json={"name": "frontier-8", "training_ops": 3e26, "digests": ["ef" * 32]},
    )
    assert made.status_code == 201
    root = unencrypted_secret_root()
    before = ids(findings(api, kit, storage=[root]))
    assert "host.controlled-weights-authorized-site" in before
    terms = api.client.put(
        f"/v1/sites/{api.site_id}/authorization",
        headers=api.as_admin(),
        json={"may_store_controlled_weights": True},
    )
    assert terms.status_code == 200, terms.text
    after = ids(findings(api, kit, storage=[root]))
    assert "host.controlled-weights-authorized-site" not in after


def test_two_hosts_with_equal_facts_are_remembered_apart(api: Any) -> None:
    memo: JudgementMemo = api.services.ingest.judgements
    a, b = enrolled(api, 0), enrolled(api, 1)
    same = h100_accelerators(0)  # b reports a's GPUs: judged for b, never answered from a
    findings(api, a, accelerators=same)
    misses = memo.misses
    findings(api, b, accelerators=same)
    assert memo.misses == misses + 1


# --------------------------------------------------------------------------- the key


def _snapshot(**over: Any) -> SnapshotV1:
    return HostKit("site_x", index=3).snapshot(**over)


def _key(policy: PolicySet, snap: SnapshotV1, **over: Any) -> tuple[Any, ...]:
    args: dict[str, Any] = {
        "site_id": "site_x",
        "terms": TERMS,
        "generation": 4,
        "on": ON,
    }
    args.update(over)
    return JudgementMemo.key(policy, snap, **args)


@pytest.fixture(scope="module")
def policy() -> PolicySet:
    from server.config import Settings
    from server.policy import load_policy_set

    return load_policy_set(Settings().policies_dir)


def _volatile_changes() -> dict[str, dict[str, Any]]:
    """Every change of a snapshot outside the facts host judgement reads."""
    base = _snapshot()
    return {
        "seq": {"seq": 99},
        "prev": {"prev": "9" * 64},
        "nonce": {"nonce": "a" * 64},
        "time of day": {
            "collected_at": (
                datetime.fromisoformat(base.collected_at.replace("Z", "+00:00"))
                .replace(hour=0, minute=0, second=1)
                .strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            )
        },
        "uptime": {"host": base.host.model_copy(update={"uptime_s": 5})},
        "boot id": {"host": base.host.model_copy(update={"boot_id": "c" * 32})},
        "kernel": {"host": base.host.model_copy(update={"kernel": "6.8.0"})},
        "posture": {"posture": Posture(secure_boot=False, tpm_present=False)},
        "key protection": {"key_protection": "tpm"},
        "extensions": {"extensions": {"future": {"x": 1}}},
    }


@pytest.mark.parametrize("name", sorted(_volatile_changes()))
def test_what_the_key_leaves_out_is_not_read_by_host_judgement(
    policy: PolicySet, name: str
) -> None:
    """If host judgement ever starts reading one of these, this fails: add it to
    server.compliance.settle._JUDGED_FACTS, or the memo would answer stale findings."""
    base = _snapshot()
    changed = base.model_copy(update=_volatile_changes()[name])
    ctx = HostContext(
        site_id="site_x",
        site_country="DE",
        site_is_test=False,
        site_may_store_controlled_weights=False,
        models=ModelRegistry(),
        host_id=base.agent.key_id,
    )
    for pack in policy.active_packs(ON):
        assert host_variables(pack, policy, changed, ctx, ON) == host_variables(
            pack, policy, base, ctx, ON
        )
    assert policy.contribution(changed, ON, country="DE") == policy.contribution(
        base, ON, country="DE"
    )
    assert _key(policy, changed) == _key(policy, base)


@pytest.mark.parametrize(
    "change",
    [
        {"accelerators": h100_accelerators(4)},
        {"accelerators": h100_accelerators(3)[:7]},
        {"storage": [unencrypted_secret_root()]},
        {"errors": [CollectorError(collector="pci", code="timeout", detail="slow")]},
        {"site_id": "site_y"},
        {"host": _snapshot().host.model_copy(update={"hostname": "gpu-other"})},
    ],
    ids=["other gpus", "one gpu fewer", "storage", "errors", "declared site", "hostname"],
)
def test_every_judged_fact_changes_the_key(policy: PolicySet, change: dict[str, Any]) -> None:
    base = _snapshot()
    assert _key(policy, base.model_copy(update=change)) != _key(policy, base)


def test_the_day_the_terms_the_registry_and_the_policy_change_the_key(
    policy: PolicySet,
) -> None:
    snap = _snapshot()
    base = _key(policy, snap)
    assert _key(policy, snap, on=ON + timedelta(days=1)) != base
    assert _key(policy, snap, generation=5) != base
    assert _key(policy, snap, site_id="site_y") != base
    assert _key(policy, snap, terms=replace(TERMS, may_store_controlled_weights=True)) != base
    assert _key(policy, snap, terms=replace(TERMS, country="AE")) != base
    other = PolicySet(policy.packs, "0" * 64)  # the same packs, other files
    assert _key(other, snap) != base


def _judgement(tag: str) -> HostJudgement:
    from server.policy import HostContribution

    return HostJudgement((), tag, "org", "DE", ON, HostContribution({}, 0, ()))


def test_one_entry_per_host_and_a_bound() -> None:
    memo = JudgementMemo(max_entries=2)
    memo.put("k1", ("a",), _judgement("1"))
    memo.put("k1", ("b",), _judgement("1b"))  # replaces k1's entry, not a second one
    assert memo.get("k1", ("a",)) is None
    assert memo.get("k1", ("b",)) == _judgement("1b")
    memo.put("k2", ("c",), _judgement("2"))
    memo.put("k3", ("d",), _judgement("3"))  # a third host: emptied, then kept
    assert memo.get("k1", ("b",)) is None and memo.get("k2", ("c",)) is None
    assert memo.get("k3", ("d",)) == _judgement("3")


def test_without_a_registry_generation_nothing_is_kept(api: Any) -> None:
    from server.compliance import hosts as compliance

    memo = JudgementMemo()
    kit = HostKit(api.site_id, index=0)
    snap = kit.snapshot()
    with api.services.db.read() as s:
        for _ in range(2):
            compliance.judge_host(s, api.services.policy, snap, kit.key_id, api.site_id, memo=memo)
    assert memo.hits == 0 and memo.misses == 0


def test_remembered_judgements_equal_fresh_ones(api: Any) -> None:
    """Across a mix of repeated and changed facts, every memo answer is what judging afresh
    gives."""
    from server.compliance import hosts as compliance

    memo = JudgementMemo()
    kit = HostKit(api.site_id, index=0)
    variants = [
        {},
        {"accelerators": h100_accelerators(0)[:4]},
        {"storage": [unencrypted_secret_root()]},
        {"errors": [CollectorError(collector="nvml", code="x", detail="y")]},
    ]
    now = datetime.now(UTC)
    with api.services.db.read() as s:
        for round_ in range(3):
            for i, over in enumerate(variants):
                snap = kit.snapshot(now=now + timedelta(seconds=round_ * 10 + i), **over)
                args = (s, api.services.policy, snap, kit.key_id, api.site_id)
                remembered = compliance.judge_host(*args, registry_generation=7, memo=memo)
                assert remembered == compliance.judge_host(*args)
    assert memo.hits == 0  # each variant replaces the host's one entry
    with api.services.db.read() as s:
        snap = kit.snapshot(now=now)
        args = (s, api.services.policy, snap, kit.key_id, api.site_id)
        first = compliance.judge_host(*args, registry_generation=7, memo=memo)
        again = compliance.judge_host(*args, registry_generation=7, memo=memo)
    assert memo.hits == 1 and again is first
