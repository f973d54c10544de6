"""ECCN 4E091: is a model's weight file controlled? Decided from the registry, never from the file.

A weight file does not reveal its training compute, so the compliance team keeps a registry
(model, training operations, published or not, what it was derived from, file digests) and this
module classifies each record. The rules, in the order they are applied:

1. Published (open) weights are not controlled.
2. Self-classified or BIS-confirmed "less capable than the most capable published model": not
   controlled.
3. Derived from a published model: not controlled unless the added training exceeds the higher of
   2.5e25 operations and 25% of the total (constant tagged E; one secondary source says 2e25).
4. Trained with at least 1e26 operations: controlled (4E091). Fewer: not controlled.
5. Training operations unknown: "unknown", treated as controlled — unknown is not compliant.

Thresholds come from the pack (``parameters`` in conditions.yaml), with their tags.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Literal, Protocol

ModelClass = Literal["4E091", "not-controlled", "unknown"]


@dataclass(frozen=True)
class ModelRecord:
    name: str
    training_ops: float | None  # total, including any base model and fine-tuning
    published: bool = False
    derived_from: str | None = None
    derived_from_published: bool = False
    added_training_ops: float | None = None  # training on top of the base model
    less_capable_than_published: bool = False
    digests: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelThresholds:
    """The pack's ECCN 4E091 figures (``model_*`` parameters; no defaults here)."""

    training_ops: float
    derivative_floor_ops: float
    derivative_share: float
    confidence: tuple[str, ...]


@dataclass(frozen=True)
class ModelClassification:
    classification: ModelClass
    controlled: bool
    reason: str
    confidence: tuple[str, ...] = ()


class _HasThresholds(Protocol):
    def model_thresholds(self, on: date) -> ModelThresholds: ...


def classify_model(record: ModelRecord, policy: _HasThresholds, on: date) -> ModelClassification:
    t = policy.model_thresholds(on)
    tags = t.confidence
    if record.published:
        return ModelClassification(
            "not-controlled", False, "published weights are outside 4E091", tags
        )
    if record.less_capable_than_published:
        return ModelClassification(
            "not-controlled",
            False,
            "classified as less capable than the most capable published model",
            tags,
        )
    if record.derived_from is not None and record.derived_from_published:
        total = record.training_ops
        added = record.added_training_ops
        if added is None or total is None:
            return ModelClassification(
                "unknown",
                True,
                f"derived from published {record.derived_from!r} but the added or total training "
                "operations are not recorded; treated as controlled",
                tags,
            )
        limit = max(t.derivative_floor_ops, t.derivative_share * total)
        if added <= limit:
            return ModelClassification(
                "not-controlled",
                False,
                f"derived from published {record.derived_from!r} with {added:.3g} added operations "
                f"<= {limit:.3g} (higher of {t.derivative_floor_ops:.3g} and "
                f"{t.derivative_share:.0%} of {total:.3g})",
                tags,
            )
        if total >= t.training_ops:
            return ModelClassification(
                "4E091",
                True,
                f"derived from published {record.derived_from!r} but {added:.3g} added operations "
                f"exceed {limit:.3g}, and {total:.3g} total >= {t.training_ops:.3g}",
                tags,
            )
    if record.training_ops is None:
        return ModelClassification(
            "unknown", True, "training operations not recorded; treated as controlled", tags
        )
    if record.training_ops >= t.training_ops:
        return ModelClassification(
            "4E091",
            True,
            f"trained with {record.training_ops:.3g} operations >= {t.training_ops:.3g}",
            tags,
        )
    return ModelClassification(
        "not-controlled",
        False,
        f"trained with {record.training_ops:.3g} operations < {t.training_ops:.3g}",
        tags,
    )


@dataclass
class ModelRegistry:
    """The compliance team's registry: file digest -> model record."""

    by_digest: dict[str, ModelRecord] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Iterable[ModelRecord]) -> ModelRegistry:
        reg = cls()
        for record in records:
            for digest in record.digests:
                reg.by_digest[digest.lower()] = record
        return reg

    def lookup(self, digest: str | None) -> ModelRecord | None:
        return None if digest is None else self.by_digest.get(digest.lower())
