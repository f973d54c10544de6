"""The assurance ladder and the snapshot predicate v2 (contract.assurance, contract.snapshot)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from contract import (
    PREDICATE_TYPE_V1,
    PREDICATE_TYPE_V2,
    SchemaError,
    SnapshotV2,
    canonical_bytes,
    parse_statement,
    statement_bytes,
)
from contract.assurance import (
    LADDER,
    accelerator_level,
    at_least,
    parse_level,
    rank,
    strongest,
    weakest,
)
from contract.statement import build_statement
from tests.server.builders import HostKit


def test_the_ladder_is_one_order_weakest_first() -> None:
    assert LADDER == (
        "declared",
        "self-reported",
        "tpm-bound-key",
        "tpm-quoted",
        "tpm-measured-agent",
        "gpu-attested",
        "location-bounded",
    )
    assert [rank(level) for level in LADDER] == list(range(len(LADDER)))
    assert at_least("tpm-quoted", "tpm-bound-key") and not at_least("self-reported", "tpm-quoted")
    assert weakest(["tpm-quoted", "declared", "self-reported"]) == "declared"
    assert strongest(["tpm-quoted", "declared"]) == "tpm-quoted"
    assert weakest([]) is None


def test_unknown_levels_are_refused_naming_the_ladder() -> None:
    with pytest.raises(ValueError, match="the ladder is declared, self-reported"):
        parse_level("tpm-bound")  # v1's reserved word is not a level
    with pytest.raises(ValueError):
        parse_level(3)


def test_an_agent_may_lower_its_claim_but_never_raise_it() -> None:
    assert accelerator_level("inventory-file", "self-reported", "tpm-quoted") == "declared"
    assert accelerator_level("nvml", "declared", "self-reported") == "declared"
    assert accelerator_level("nvml", "hardware-attested", "self-reported") == "self-reported"


def _tpm_evidence() -> dict[str, object]:
    return {
        "tpm": {
            "ak_public": "AAEC",
            "quote": {
                "quoted": "/1RDR4AY",
                "signature": "ABgACw==",
                "bank": "sha256",
                "pcrs": {"0": "00" * 32, "7": "ab" * 32},
            },
        }
    }


def test_v2_round_trips_with_its_evidence_and_v1_keeps_its_type() -> None:
    v1 = HostKit("site-1").snapshot()
    assert parse_statement(statement_bytes(v1))[0].predicateType == PREDICATE_TYPE_V1
    v2 = SnapshotV2.model_validate({**v1.model_dump(mode="json"), "evidence": _tpm_evidence()})
    statement, parsed = parse_statement(statement_bytes(v2))
    assert statement.predicateType == PREDICATE_TYPE_V2
    assert isinstance(parsed, SnapshotV2) and parsed == v2
    assert parsed.evidence is not None and parsed.evidence.tpm is not None
    assert parsed.evidence.tpm.quote is not None and parsed.evidence.tpm.quote.pcrs["7"]


def test_v1_does_not_carry_an_evidence_section() -> None:
    v2 = SnapshotV2.model_validate(
        {**HostKit("site-1").snapshot().model_dump(mode="json"), "evidence": _tpm_evidence()}
    )
    statement = build_statement(v2)
    statement["predicateType"] = PREDICATE_TYPE_V1
    with pytest.raises(SchemaError, match="evidence"):
        parse_statement(canonical_bytes(statement))


@pytest.mark.parametrize(
    "quote_patch",
    [
        {"pcrs": {"24": "00" * 32}},  # no PCR 24
        {"pcrs": {"07": "00" * 32}},  # one spelling per index
        {"pcrs": {"0": "ZZ"}},  # not hex
        {"quoted": "not base64!"},
        {"bank": "md5"},
    ],
)
def test_malformed_tpm_evidence_is_a_schema_error(quote_patch: dict[str, object]) -> None:
    evidence = _tpm_evidence()
    tpm = dict(cast(dict[str, Any], evidence["tpm"]))
    tpm["quote"] = {**tpm["quote"], **quote_patch}
    v1 = HostKit("site-1").snapshot().model_dump(mode="json")
    statement = build_statement(HostKit("site-1").snapshot())
    statement["predicateType"] = PREDICATE_TYPE_V2
    statement["predicate"] = {**v1, "evidence": {"tpm": tpm}}
    with pytest.raises(SchemaError):
        parse_statement(canonical_bytes(statement))
