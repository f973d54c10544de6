"""Collectors: one module per source of facts, each run with a timeout.

A collector is a plain function that returns facts or raises :class:`CollectorFailure`. The runner
(:func:`run_collector`) turns a failure, an unexpected exception or a timeout into a
:class:`~contract.CollectorError` entry in the snapshot's ``errors`` — never a crash, never a
silent pass (the verifier says "cannot attest" when a collector failed).
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable
from typing import TypeVar

from contract import CollectorError

log = logging.getLogger(__name__)

T = TypeVar("T")


class CollectorFailure(Exception):
    """A collector could not produce its facts. ``code`` is stable, ``detail`` human."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def run_collector(
    name: str, fn: Callable[[], T], *, timeout_s: float, default: T
) -> tuple[T, list[CollectorError]]:
    """Run ``fn`` in a worker thread; on failure or timeout return ``default`` and an error.

    A timed-out thread cannot be killed in Python; it is abandoned (daemon thread) and its result
    ignored. Collectors therefore must not hold locks the rest of the agent needs.
    """
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix=f"collect-{name}"
    )
    future = pool.submit(fn)
    try:
        return future.result(timeout=timeout_s), []
    except concurrent.futures.TimeoutError:
        log.warning("collector %s timed out after %.1fs", name, timeout_s)
        return default, [
            CollectorError(
                collector=name, code="timeout", detail=f"no answer within {timeout_s:g}s"
            )
        ]
    except CollectorFailure as exc:
        return default, [CollectorError(collector=name, code=exc.code, detail=exc.detail)]
    except Exception as exc:  # a bug or an unforeseen OS error must still become evidence
        log.exception("collector %s failed unexpectedly", name)
        return default, [
            CollectorError(
                collector=name, code="internal_error", detail=f"{type(exc).__name__}: {exc}"
            )
        ]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
