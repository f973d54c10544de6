"""ECCN 4E091 classification and dated country groups."""

from __future__ import annotations

from datetime import date

from server.policy import ModelRecord, PolicySet, classify_model

ON = date(2026, 2, 1)


def test_models_at_or_above_1e26_operations_are_controlled(policy: PolicySet) -> None:
    result = classify_model(ModelRecord("m", 1e26), policy, ON)
    assert (result.classification, result.controlled) == ("4E091", True)
    assert "E" in result.confidence
    assert classify_model(ModelRecord("m", 9.9e25), policy, ON).controlled is False


def test_published_and_less_capable_models_are_not_controlled(policy: PolicySet) -> None:
    assert "published" in classify_model(ModelRecord("m", 1e27, published=True), policy, ON).reason
    less = ModelRecord("m", 1e27, less_capable_than_published=True)
    assert classify_model(less, policy, ON).controlled is False


def test_derivative_rule_uses_the_higher_of_the_floor_and_25_percent(policy: PolicySet) -> None:
    small = ModelRecord(
        "ft", 2e26, derived_from="base", derived_from_published=True, added_training_ops=4e25
    )
    result = classify_model(small, policy, ON)
    assert result.controlled is False  # 4e25 <= max(2.5e25, 25% of 2e26 = 5e25)
    assert "5e+25" in result.reason
    big = ModelRecord(
        "ft", 2e26, derived_from="base", derived_from_published=True, added_training_ops=6e25
    )
    assert classify_model(big, policy, ON).classification == "4E091"


def test_unknown_training_compute_is_treated_as_controlled(policy: PolicySet) -> None:
    result = classify_model(ModelRecord("m", None), policy, ON)
    assert (result.classification, result.controlled) == ("unknown", True)


def test_d5_membership_changes_over_time(policy: PolicySet) -> None:
    countries = policy.packs[0].countries
    # Cambodia left D:5 effective 2025-11-07; Sudan is D:5 throughout (RULES-2026.md §6).
    assert countries.in_group("KH", "d5", date(2025, 11, 6))
    assert not countries.in_group("KH", "d5", date(2025, 11, 7))
    assert countries.in_group("SD", "d5", date(2025, 3, 1))
    assert countries.in_group("SD", "d5", date(2026, 8, 1))
    assert countries.in_group("MO", "d5", ON)  # treated with China
    assert countries.in_group("TW", "tier1", ON) and not countries.in_group("IN", "tier1", ON)
