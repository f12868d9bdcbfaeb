"""Dynamic micro-batching across events, as Triton's dynamic batcher does it.

Frames from different events are queued; a background thread runs one batched inference as
soon as ``max_batch_size`` frames wait, or ``max_delay_ms`` after the *first* waiting frame
arrived, whichever comes first. A lone frame therefore waits at most ``max_delay_ms``, while a
busy stream gets full batches. Every frame is computed independently by both models, so a
result does not depend on which batch it rode in (tests check this to 1e-5).

>>> import numpy as np
>>> from worker.inference.models import ModelSet
>>> models = ModelSet.load()
>>> with MicroBatcher(models, max_batch_size=8, max_delay_ms=2.0) as batcher:
...     future = batcher.submit(np.zeros((64, 64), np.float32),
...                             np.zeros(models.feature_count, np.float32))
...     prediction, timings = future.result(timeout=30)
>>> 0.0 <= prediction.cnn_probability <= 1.0, timings["batch_size"]
(True, 1.0)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt

from worker.inference.models import CNN_SIZE, ModelSet, Prediction

Result = tuple[Prediction, dict[str, float]]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    image: npt.NDArray[np.float32]
    features: npt.NDArray[np.float32]
    future: Future[Result]
    queued_at: float


class MicroBatcher:
    """Thread-safe batcher in front of a :class:`ModelSet`.

    ``submit`` returns a future of ``(Prediction, timings)``; ``timings`` holds the batch's
    model times in ms (``"cnn"``, ``"svm"``), this frame's queue wait (``"queue"``, ms) and the
    batch size (``"batch_size"``). ``on_batch(batch_size, timings)`` is called once per batch
    from the batching thread (for metrics). ``close()`` stops accepting frames, runs every frame
    still queued, and joins the thread.
    """

    def __init__(
        self,
        models: ModelSet,
        max_batch_size: int,
        max_delay_ms: float,
        on_batch: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_delay_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_delay_ms >= 0")
        self._models = models
        self._max_batch = max_batch_size
        self._max_delay = max_delay_ms / 1e3
        self._on_batch = on_batch
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._flush = False
        self._thread = threading.Thread(target=self._run, name="scanstream-batcher", daemon=True)
        self._thread.start()

    def submit(
        self, cnn_input: npt.NDArray[np.float32], features: npt.NDArray[np.float32]
    ) -> Future[Result]:
        """Queue one frame: its (64, 64) CNN input and its (F,) feature vector."""
        if cnn_input.shape != (CNN_SIZE, CNN_SIZE):
            raise ValueError(f"cnn_input must be (64, 64), got {cnn_input.shape}")
        if features.shape != (self._models.feature_count,):
            raise ValueError(
                f"features must be ({self._models.feature_count},), got {features.shape}"
            )
        future: Future[Result] = Future()
        item = _Item(
            np.asarray(cnn_input, np.float32),
            np.asarray(features, np.float32),
            future,
            time.perf_counter(),
        )
        with self._cond:
            if self._closed:
                raise RuntimeError("MicroBatcher is closed")
            self._queue.append(item)
            # Wake the thread only when it may have to act now: first item or a full batch.
            if len(self._queue) == 1 or len(self._queue) >= self._max_batch:
                self._cond.notify()
        return future

    def flush(self) -> None:
        """Run what is queued now instead of waiting out ``max_delay_ms``.

        For a caller that knows no more frames are coming soon (the consumer loop, once it has
        submitted every frame of a poll): the delay only pays when more frames may still arrive.
        """
        with self._cond:
            if self._queue:
                self._flush = True
                self._cond.notify()

    def close(self) -> None:
        """Stop accepting frames, finish every queued one, and join the batching thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _next_batch(self) -> list[_Item] | None:
        """Block until a batch is due; None once closed and drained."""
        with self._cond:
            while True:
                if self._queue:
                    deadline = self._queue[0].queued_at + self._max_delay
                    remaining = deadline - time.perf_counter()
                    due = remaining <= 0 or self._closed or self._flush
                    if len(self._queue) >= self._max_batch or due:
                        n = min(self._max_batch, len(self._queue))
                        batch = [self._queue.popleft() for _ in range(n)]
                        if not self._queue:
                            self._flush = False
                        return batch
                    self._cond.wait(remaining)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            # A caller may have cancelled its future while it waited; skip those frames.
            live = [it for it in batch if it.future.set_running_or_notify_cancel()]
            if live:
                self._infer(live)

    def _infer(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        try:
            preds, timings = self._models.predict(
                np.stack([it.image for it in batch]), np.stack([it.features for it in batch])
            )
        except BaseException as exc:  # noqa: BLE001 - every waiter must learn of the failure
            for it in batch:
                it.future.set_exception(exc)
            return
        stats = {**timings, "batch_size": float(len(batch))}
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch), dict(stats))
            except Exception:  # a metrics hook must not lose the batch's predictions
                log.exception("on_batch callback failed")
        for it, pred in zip(batch, preds, strict=True):
            it.future.set_result((pred, {**stats, "queue": (started - it.queued_at) * 1e3}))
