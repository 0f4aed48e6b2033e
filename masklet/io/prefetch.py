"""Run an iterator in a background thread, at most `depth` items ahead of its consumer.

Decoding overlaps with the model this way, while memory stays bounded by the queue depth (plus the
item the producer is making and the one the consumer holds) whatever the length of the stream.
An exception in the producer is re-raised in the consumer; closing stops and joins the thread, so
an early `break` leaks nothing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_S = 0.05  # how often a producer blocked on a full queue checks whether it was stopped


class _End:
    """Marks the end of the stream in the queue."""


class _Failure:
    """Carries the producer's exception to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _nothing() -> Iterator[T]:
    return iter(())


class Prefetcher(Generic[T]):
    """Iterate `make()` in a daemon thread started on first iteration; iterate once, then close."""

    def __init__(self, make: Callable[[], Iterator[T]], depth: int, name: str = "masklet-prefetch") -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._make = make
        self._queue: queue.Queue[T | _End | _Failure] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)

    def __iter__(self) -> Iterator[T]:
        if self._thread.ident is not None or self._stop.is_set():
            raise RuntimeError("a prefetched stream can be iterated only once")
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the producer and wait for its thread to end; safe to call more than once. The items still
        queued and the producer (often a bound method of this prefetcher's owner: a reference cycle) are
        let go, so what they hold (decoded frames, a decoder) is freed now, not at a garbage collection."""
        self._stop.set()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join()
            while not self._queue.empty():
                self._queue.get_nowait()
        self._make = _nothing

    def _produce(self) -> None:
        try:
            iterator = self._make()
            try:
                for item in iterator:
                    if not self._put(item):
                        return
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            self._put(_End())
        except BaseException as exc:  # every failure, even KeyboardInterrupt, must reach the consumer
            self._put(_Failure(exc))

    def _put(self, item: T | _End | _Failure) -> bool:
        """Queue `item` unless the consumer has gone; False once stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False
