"""The model registry as ingest and settling read it: the registered models of a set of weight
digests, its generation (bumped by every registry change), and each process's cache of its
answers (:class:`RegistryCache`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from server.policy import (
    ModelRecord,
    ModelRegistry,
)
from server.store.compliance_models import (
    ModelFile,
    RegisteredModel,
    RegistryState,
)
from server.store.sqllist import values_in

_MODEL_FILES = cast(Table, ModelFile.__table__)
_MODELS = cast(Table, RegisteredModel.__table__)
#: The registered models of a set of digests, built once (the list bound as one parameter).
_MODELS_OF_DIGESTS = (
    select(_MODEL_FILES.c.digest, _MODELS)
    .select_from(_MODEL_FILES.join(_MODELS, _MODELS.c.id == _MODEL_FILES.c.model_id))
    .where(values_in(_MODEL_FILES.c.digest, "digests"))
)


def model_registry(session: Session, digests: Iterable[str]) -> ModelRegistry:
    wanted = sorted({d.lower() for d in digests if d})
    if not wanted:
        return ModelRegistry()
    registry = ModelRegistry()
    registry.by_digest.update(_registered(session, wanted))
    return registry


def _registered(session: Session, digests: Sequence[str]) -> dict[str, ModelRecord]:
    return {
        row.digest: model_record(row, (row.digest,))
        for row in session.connection().execute(_MODELS_OF_DIGESTS, {"digests": digests})
    }


_REGISTRY_STATE = cast(Table, RegistryState.__table__)


def bump_registry(session: Session) -> None:
    """Mark the model registry changed (call in the transaction that changes it)."""
    session.execute(
        update(_REGISTRY_STATE)
        .where(_REGISTRY_STATE.c.id == 1)
        .values(generation=_REGISTRY_STATE.c.generation + 1)
    )


class RegistryCache:
    """One process's memory of the model registry's answers (registered or not) per weight digest.

    Every snapshot's judgement asks the registry about each of the host's weight files; hosts
    report the same files snapshot after snapshot, so a per-snapshot query mostly re-reads the
    same rows. The answers are kept as long as the registry's generation (read with the
    snapshot's lookup, no extra query) is the one they were read under; any change empties the
    cache. Bounded: a host reporting endless new digests empties it; it never holds more than
    ``max_entries`` plus one snapshot's digests.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._known: dict[str, ModelRecord | None] = {}

    def registry(
        self, session: Session, digests: Iterable[str], generation: int | None
    ) -> ModelRegistry:
        """The registry's records of ``digests``; ``generation``: read in this transaction
        (None, e.g. a database not migrated yet: ask the database every time)."""
        wanted = sorted({d.lower() for d in digests if d})
        if generation is None:
            return model_registry(session, wanted)
        with self._lock:
            if generation != self._generation:
                self._generation, self._known = generation, {}
            known = self._known
        answers = {d: known[d] for d in wanted if d in known}
        missing = [d for d in wanted if d not in answers]
        if missing:
            found = _registered(session, missing)
            fetched = {d: found.get(d) for d in missing}
            answers.update(fetched)
            with self._lock:
                # Read under this generation: kept only if it is still the current one.
                if self._generation == generation:
                    if len(self._known) + len(fetched) > self.max_entries:
                        self._known = {}
                    self._known.update(fetched)
        registry = ModelRegistry()
        registry.by_digest.update({d: r for d, r in answers.items() if r is not None})
        return registry


def model_record(model: Any, digests: tuple[str, ...]) -> ModelRecord:
    """From a :class:`RegisteredModel` or a row with the same column names."""
    return ModelRecord(
        name=model.name,
        training_ops=model.training_ops,
        published=model.published,
        derived_from=model.derived_from,
        derived_from_published=model.derived_from_published,
        added_training_ops=model.added_training_ops,
        less_capable_than_published=model.less_capable_than_published,
        digests=digests,
    )
