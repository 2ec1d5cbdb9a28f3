"""Batching: length buckets, prefetched preparation, OOM back-off, and a micro-batcher.

:class:`BatchRunner` is what :class:`~embeddings.embedder.TorchEmbedder` calls synchronously:
it orders the payloads by length (longest first, so padding is spent only within similar
lengths and an out-of-memory error shows up on the first batch), prepares batch ``k + 1``
(tokenising, pinning) in a worker thread while batch ``k`` runs, halves the batch size when
the device runs out of memory, and puts the rows back in the caller's order.

:class:`MicroBatcher` is for callers with a stream of single payloads (a request path): it
gathers them into batches of up to ``max_batch_size`` or ``max_wait_s`` seconds.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from embeddings.errors import EmbeddingOutOfMemoryError
from embeddings.preprocessing import Batch

__all__ = ["BatchRunner", "MicroBatcher", "bucket_order", "is_out_of_memory"]


def bucket_order(lengths: np.ndarray | None, n: int) -> np.ndarray:
    """Indices of the items longest first (stable), or ``0..n-1`` when ``lengths`` is None."""
    if lengths is None:
        return np.arange(n)
    if len(lengths) != n:
        raise ValueError(f"lengths has {len(lengths)} entries for {n} items")
    return np.argsort(-np.asarray(lengths), kind="stable")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory error (CUDA's, or a backend's RuntimeError)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _take(items: Sequence[Any] | np.ndarray, index: np.ndarray) -> Any:
    if isinstance(items, np.ndarray):
        return items[index]
    return [items[i] for i in index]


class BatchRunner:
    """Run items through ``prepare`` and ``forward`` in batches, with OOM back-off.

    Parameters
    ----------
    max_batch_size : int, default 64
        Largest batch; the starting size.
    min_batch_size : int, default 1
        The floor: out of memory at this size raises
        :class:`~embeddings.errors.EmbeddingOutOfMemoryError`.
    prefetch : int, default 2
        Batches prepared ahead in a worker thread (0: prepare in the calling thread).
    on_out_of_memory : callable, optional
        Called after an out-of-memory error, before retrying (``torch.cuda.empty_cache``).

    Notes
    -----
    After an out-of-memory error at batch size :math:`b` the same rows are retried at
    :math:`\\max(\\lfloor b/2 \\rfloor, b_{min})`, and the smaller size is kept for later batches
    and later calls (memory that ran out once will run out again); :meth:`reset` restores
    ``max_batch_size``.
    """

    def __init__(
        self,
        *,
        max_batch_size: int = 64,
        min_batch_size: int = 1,
        prefetch: int = 2,
        on_out_of_memory: Callable[[], None] | None = None,
    ) -> None:
        for name, value, low in (
            ("max_batch_size", max_batch_size, 1),
            ("min_batch_size", min_batch_size, 1),
            ("prefetch", prefetch, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if min_batch_size > max_batch_size:
            raise ValueError(
                f"min_batch_size ({min_batch_size}) must not exceed max_batch_size "
                f"({max_batch_size})"
            )
        self.max_batch_size = max_batch_size
        self.min_batch_size = min_batch_size
        self.prefetch = prefetch
        self._on_out_of_memory = on_out_of_memory
        self._batch_size = max_batch_size

    def __repr__(self) -> str:
        return (
            f"BatchRunner(max_batch_size={self.max_batch_size}, "
            f"min_batch_size={self.min_batch_size}, prefetch={self.prefetch})"
        )

    @property
    def batch_size(self) -> int:
        """The batch size in use (``max_batch_size`` until memory ran out)."""
        return self._batch_size

    def reset(self) -> None:
        """Go back to ``max_batch_size``."""
        self._batch_size = self.max_batch_size

    def run(
        self,
        items: Sequence[Any] | np.ndarray,
        *,
        prepare: Callable[[Any], Batch],
        forward: Callable[[Batch], Mapping[str, np.ndarray]],
        lengths: np.ndarray | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Outputs of ``forward`` for every item, rows in the order of ``items``.

        ``prepare`` turns a list (or array) of items into a :class:`Batch`; ``forward`` turns
        a batch into named ``(len(batch), d)`` arrays. ``lengths`` buckets items of similar
        cost together.
        """
        n = len(items)
        order = bucket_order(lengths, n)
        planned = 0
        pending: collections.deque[tuple[np.ndarray, Future[Batch] | None]] = collections.deque()
        executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftline-embed-prepare")
            if self.prefetch
            else None
        )

        def plan() -> None:
            # Chunks are cut with the batch size current when they are planned; chunks planned
            # before an out-of-memory error are sliced to the new size when they run.
            nonlocal planned
            if planned >= n:
                return
            index = order[planned : planned + self._batch_size]
            planned += len(index)
            job = executor.submit(prepare, _take(items, index)) if executor else None
            pending.append((index, job))

        results: dict[str, np.ndarray] = {}
        try:
            for _ in range(self.prefetch + 1):
                plan()
            while pending:
                index, job = pending.popleft()
                batch = job.result() if job is not None else prepare(_take(items, index))
                plan()  # keep the worker busy while this batch runs
                start = 0
                while start < len(index):
                    size = min(self._batch_size, len(index) - start)
                    part = batch if size == len(index) else batch.slice(start, start + size)
                    outputs = self._forward(forward, part)
                    if outputs is None:  # out of memory: retry these rows at the smaller size
                        continue
                    _store(results, outputs, index[start : start + size], n)
                    start += size
                    if on_progress is not None:
                        on_progress(size)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        return results

    def _forward(
        self, forward: Callable[[Batch], Mapping[str, np.ndarray]], part: Batch
    ) -> Mapping[str, np.ndarray] | None:
        message = ""
        try:
            return forward(part)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # Out of memory. Handled outside the except block: the traceback keeps the failed
        # pass's activations alive, and they must be freed before the retry.
        size = len(part)
        if size <= self.min_batch_size:
            raise EmbeddingOutOfMemoryError(
                f"out of device memory at batch size {size}, the floor (min_batch_size="
                f"{self.min_batch_size}): {message}. Use a smaller model or max_length, "
                "a lower precision, or a device with more memory",
                batch_size=size,
            )
        self._batch_size = max(size // 2, self.min_batch_size)
        if self._on_out_of_memory is not None:
            self._on_out_of_memory()
        return None


def _store(
    results: dict[str, np.ndarray], outputs: Mapping[str, np.ndarray], rows: np.ndarray, n: int
) -> None:
    for name, values in outputs.items():
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[0] != len(rows):
            raise ValueError(
                f"forward returned {name!r} of shape {values.shape} for a batch of {len(rows)}"
            )
        if name not in results:
            results[name] = np.empty((n, values.shape[1]), dtype=np.float32)
        results[name][rows] = values


_STOP = object()


class MicroBatcher:
    """Gathers single payloads into batches of ``max_batch_size`` or ``max_wait_s``.

    Parameters
    ----------
    embed : callable
        Embeds a list of payloads into an ``(n, d)`` array (e.g. ``TorchEmbedder.embed``).
        Called from one worker thread only.
    max_batch_size : int, default 64
        A batch is run as soon as it holds this many payloads.
    max_wait_s : float, default 0.005
        ... or when its oldest payload has waited this long.

    Notes
    -----
    When ``embed`` raises for a batch, its payloads are retried one by one, so a bad payload
    fails only its own future.

    Examples
    --------
    >>> import numpy as np
    >>> with MicroBatcher(lambda p: np.ones((len(p), 2), np.float32)) as batcher:
    ...     future = batcher.submit("some text")
    ...     future.result().shape
    (2,)
    """

    def __init__(
        self,
        embed: Callable[[list[Any]], np.ndarray],
        *,
        max_batch_size: int = 64,
        max_wait_s: float = 0.005,
    ) -> None:
        if (
            isinstance(max_batch_size, bool)
            or not isinstance(max_batch_size, int)
            or (max_batch_size < 1)
        ):
            raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        if not isinstance(max_wait_s, (int, float)) or not 0 <= max_wait_s < float("inf"):
            raise ValueError(f"max_wait_s must be a finite number >= 0, got {max_wait_s!r}")
        self._embed = embed
        self.max_batch_size = max_batch_size
        self.max_wait_s = float(max_wait_s)
        self.batch_sizes: list[int] = []  # sizes of the batches run so far (for inspection)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._work, name="driftline-microbatcher", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, payload: Any) -> Future[np.ndarray]:
        """Queue one payload; the future resolves to its ``(d,)`` row."""
        future: Future[np.ndarray] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("MicroBatcher is closed")
            self._queue.put((payload, future))
        return future

    def embed(self, payloads: Sequence[Any]) -> np.ndarray:
        """Submit every payload and wait for all: ``(n, d)`` float32."""
        futures = [self.submit(p) for p in payloads]
        return np.stack([f.result() for f in futures]).astype(np.float32, copy=False)

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._run([(p, f) for p, f in batch if f.set_running_or_notify_cancel()])

    def _run(self, batch: list[tuple[Any, Future[np.ndarray]]]) -> None:
        if not batch:
            return
        self.batch_sizes.append(len(batch))
        try:
            rows = np.asarray(self._embed([p for p, _ in batch]))
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            for item in batch:  # isolate the payload at fault
                self._run([item])
            return
        for row, (_, future) in zip(rows, batch, strict=True):
            future.set_result(row)
