"""Group commit: one writer thread per process commits whatever is waiting in one transaction.

A database commit has a fixed cost that does not depend on how much it writes: the round trips
of BEGIN and COMMIT, a durable flush of the log (``fsync`` on SQLite with ``synchronous=FULL``,
the WAL flush on PostgreSQL), and for accepted evidence the claim of the single audit-log head
row, which every writer on every worker queues for. Under load, many snapshots are ready to be
written at once; writing them in one transaction pays that cost once for all of them.

The scheme is the classic one of database engines: no target batch size. Items are queued; a
single writer thread takes everything queued (up to ``max_batch``) and commits it, and whatever
arrives meanwhile is the next batch. Callers wait on a :class:`concurrent.futures.Future` that
is resolved only after the commit (so a 2xx still means "durably stored"), or with the item's
own exception.

Items announced as being prepared (:meth:`GroupCommitter.preparing`: a snapshot under
appraisal) are waited for, up to ``linger_s``, before a batch is taken: in a process whose CPU
is the bound, commits are fast next to appraisals, so without waiting nearly every batch held
one snapshot and paid the whole fixed cost of a commit (docs/decisions.md, 15). Nothing waits
for an item nobody announced: an item alone, with nothing being prepared, is committed at once,
so a lightly loaded verifier answers as fast as before.

What a batch means is the caller's business (``write``): it receives the items and answers one
result or exception per item, in order. The thread starts on the first item and ends after
``idle_s`` without work, so an idle process (or a test that builds many apps) keeps no thread.

Written here because it is twenty lines of a threading ``Condition``: no library offers group
commit on top of SQLAlchemy sessions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Generic, TypeVar

log = logging.getLogger("veu.groupcommit")

T = TypeVar("T")
R = TypeVar("R")


class GroupCommitter(Generic[T, R]):
    def __init__(
        self,
        write: Callable[[Sequence[T]], Sequence[R | BaseException]],
        *,
        max_batch: int = 32,
        linger_s: float = 0.0,
        idle_s: float = 5.0,
        name: str = "veu-commit",
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if linger_s < 0:
            raise ValueError("linger_s must not be negative")
        self._write = write
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._preparing = 0
        self._idle_s = idle_s
        self._name = name
        self._on_batch = on_batch
        self._queue: deque[tuple[T, Future[R]]] = deque()
        self._cv = threading.Condition()
        self._running = False
        self._closed = False

    def submit(self, item: T) -> Future[R]:
        """Queue ``item``; the future resolves after the transaction holding it commits."""
        future: Future[R] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the committer is closed")
            self._queue.append((item, future))
            if self._running:
                self._cv.notify()
            else:
                self._running = True
                threading.Thread(target=self._run, name=self._name, daemon=True).start()
        return future

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Announce an item being prepared in this block (submitted in it, or not at all): the
        writer waits for it, up to ``linger_s``, before taking its next batch."""
        with self._cv:
            self._preparing += 1
        try:
            yield
        finally:
            with self._cv:
                self._preparing -= 1
                self._cv.notify()

    def close(self) -> None:
        """Refuse new items; the writer finishes what is queued, then ends."""
        with self._cv:
            self._closed = True
            self._cv.notify()

    def _next_batch(self) -> list[tuple[T, Future[R]]] | None:
        """The next batch (empty if every waiter in it gave up), or None: this thread ends."""
        with self._cv:
            if not self._queue and not self._closed:
                self._cv.wait(self._idle_s)
            if not self._queue:
                self._running = False  # under the lock: the next submit starts a new thread
                return None
            self._linger()
            batch: list[tuple[T, Future[R]]] = []
            while self._queue and len(batch) < self._max_batch:
                item, future = self._queue.popleft()
                # From here on the waiter can no longer cancel. One that already gave up (its
                # client went away) is dropped unwritten: nobody was told it was stored.
                if future.set_running_or_notify_cancel():
                    batch.append((item, future))
            return batch

    def _linger(self) -> None:
        """Wait (lock held, released while waiting) for items being prepared, at most
        ``linger_s``: until none is, the batch is full, or the committer closes."""
        if self._linger_s <= 0:
            return
        deadline = time.monotonic() + self._linger_s
        while self._preparing and len(self._queue) < self._max_batch and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cv.wait(remaining)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            if self._on_batch is not None:
                self._on_batch(len(batch))
            try:
                results = list(self._write([item for item, _ in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for {len(batch)} items")
            except BaseException as exc:  # every waiter learns of it; the thread goes on
                log.exception("group commit of %d item(s) failed", len(batch))
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
