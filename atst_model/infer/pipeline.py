"""Background threads joined to the caller by bounded queues: overlap reading, inference and writing.

:class:`Prefetch` runs an iterator in a thread up to ``depth`` items ahead of the caller (slide bands
are read and checked for tissue while the network runs). :class:`Consumer` runs a function in a thread
on the items the caller hands it with :meth:`Consumer.put` (finished rows go to the TIFF writer).

Both queues hold at most ``depth`` items, so memory stays bounded whichever side is slower. An
exception raised in a thread is re-raised in the caller, with its original traceback, at the caller's
next ``next()`` / ``put()`` / ``finish()``. ``close()`` / ``abort()`` stop a thread without waiting for
its queue to drain (they wait only for the item in hand), so an exception or a KeyboardInterrupt in the
caller can clean up promptly.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator

_END = object()
_POLL_S = 0.1  # how often a blocked put/get looks at its stop flag


class Aborted(Exception):
    """Raised inside a :class:`Consumer`'s function when the caller aborts it."""


class _Failure:
    """An exception raised in a :class:`Prefetch` thread, queued for the caller."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` into ``q``, waiting while it is full, unless ``stop`` is set first. True when put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


class Prefetch:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the caller.

    Parameters
    ----------
    items : any iterable; it is consumed only by the thread.
    depth : queue size: items produced but not yet taken.
    name : the thread's name (shows in tracebacks and debuggers).

    Use as an iterator, and call :meth:`close` (or use ``with``) when done or on error.
    """

    def __init__(self, items: Iterable, depth: int = 2, name: str = "prefetch") -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(iter(items),), name=name, daemon=True)
        self._thread.start()

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                if not _put(self._q, item, self._stop):
                    return
            _put(self._q, _END, self._stop)
        except BaseException as exc:  # handed to the caller, never lost
            _put(self._q, _Failure(exc), self._stop)

    def __iter__(self) -> "Prefetch":
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item = self._q.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the thread (after the item it is producing) and wait for it; queued items are dropped."""
        self._stop.set()
        self._done = True
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Consumer:
    """Run ``consume(items)`` in a background thread, where ``items`` yields what the caller :meth:`put`\\ s.

    Parameters
    ----------
    consume : called once, in the thread, with an iterator over the items put; it returns when the
        iterator ends (after :meth:`finish`), and sees :class:`Aborted` raised from it after :meth:`abort`.
    depth : queue size: items put but not yet taken by ``consume``.
    name : the thread's name.
    """

    def __init__(self, consume: Callable[[Iterator], Any], depth: int = 2, name: str = "consumer") -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._abort = threading.Event()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(consume,), name=name, daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise :class:`Aborted` if the caller aborted; for ``consume`` to call between its own steps."""
        if self._abort.is_set():
            raise Aborted("aborted by the caller")

    def _items(self) -> Iterator:
        while True:
            self.check()
            try:
                item = self._q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                return
            yield item

    def _run(self, consume: Callable[[Iterator], Any]) -> None:
        try:
            consume(self._items())
        except BaseException as exc:  # re-raised in the caller
            self._error = exc
        finally:
            self._finished.set()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: Any) -> None:
        """Hand ``item`` to the thread, waiting while the queue is full; re-raises the thread's exception."""
        while True:
            self._raise_if_failed()
            if self._finished.is_set():
                raise RuntimeError(f"{self._thread.name} stopped before taking all its input")
            try:
                self._q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """End the input, wait for ``consume`` to return, and re-raise its exception if it raised one."""
        while not self._finished.is_set():
            try:
                self._q.put(_END, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._raise_if_failed()

    def abort(self) -> None:
        """Make the thread's iterator raise :class:`Aborted` and wait for the thread; its error is dropped."""
        self._abort.set()
        self._thread.join()


__all__ = ["Aborted", "Consumer", "Prefetch"]
