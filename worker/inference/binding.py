"""How a session runs a batch: as given (CPU), or padded to a few bucket shapes, warmed up at
load and fed through IOBinding with preallocated buffers (CUDA).

Why, on CUDA
------------
The CNN sees batches of any size from 1 to ``Settings.batch_max_size`` (16 by default; the
pipeline's chunks, and saliency's occluded copies). On the CUDA provider the first run of each
new input shape pays for cuDNN's convolution algorithm search and for the arena growing, and
that cost lands in the latency of whichever event brought the shape. So on CUDA:

* **Buckets.** A batch of N rows is padded with zeros up to the smallest *bucket* that holds it,
  the powers of two below the maximum batch and the maximum itself
  (:func:`bucket_sizes`: 1, 2, 4, 8, 16), and the outputs are sliced back to N rows. A batch
  larger than the maximum is run in chunks of the maximum (:func:`bucket_plan`). Only these
  few shapes ever reach the session. Every row of both models is computed on its own (no
  batch statistics), so the padding rows change nothing; the tests check it.
* **Warm-up.** :meth:`BatchRunner.warm_up` runs every bucket shape once at load
  (:meth:`worker.inference.ModelSet.load`), so the algorithm search happens at start, not in
  an event.
* **IOBinding.** Each bucket has its own ``IOBinding`` with preallocated buffers: a host numpy
  buffer the rows are copied into (zeros after them), a device ``OrtValue`` of the bucket's
  shape that the host buffer is copied to (``update_inplace``), and device ``OrtValue``
  outputs; ``run_with_iobinding`` then runs without allocating inputs or outputs, and
  ``copy_outputs_to_cpu`` brings back the (small) outputs. The host buffers are ordinary
  (pageable) numpy memory, not pinned memory. One lock per bucket guards its buffers, so the
  model set stays safe to call from several threads.

On the CPU provider nothing of this is done by default (mode ``"plain"``: exactly
``session.run`` on the batch as given), since there is no algorithm search to hide and padding
would only cost time. The modes ``"bucketed"`` and ``"bound"`` can be asked for on the CPU too
(``ModelSet.load(run_mode=...)``); that is how the tests check, on the CPU, that both give the
same outputs as ``"plain"``.

Not run on a GPU here: this was written and tested on a machine without a GPU, where only the
CPU provider exists. The CUDA path uses the same code with ``device="cuda"``; whether it is
faster, and by how much, has not been measured (``scanstream bench --stage inference`` on a
CUDA machine reports it, with ``cuda_iobinding`` and the warm-up shapes).

>>> bucket_sizes(16), bucket_plan(21, bucket_sizes(16))
((1, 2, 4, 8, 16), [(0, 16, 16), (16, 21, 8)])
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from worker.errors import ModelError
from worker.inference.cards import ModelCard

#: ``"plain"``: ``session.run`` on the batch as given; ``"bucketed"``: padded to a bucket, then
#: ``session.run``; ``"bound"``: padded to a bucket, through IOBinding; ``"auto"``: ``"bound"``
#: on the CUDA provider, else ``"plain"``.
RunMode = Literal["auto", "plain", "bucketed", "bound"]
RUN_MODES: Final = ("auto", "plain", "bucketed", "bound")
#: The default of ``Settings.batch_max_size``: the largest bucket.
DEFAULT_MAX_BATCH: Final = 16
CUDA: Final = "CUDAExecutionProvider"


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes a bucketed session sees: powers of two below ``max_batch``, then it.

    >>> bucket_sizes(16), bucket_sizes(12), bucket_sizes(1)
    ((1, 2, 4, 8, 16), (1, 2, 4, 8, 12), (1,))
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be positive, got {max_batch}")
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return (*sizes, max_batch)


def bucket_plan(n: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(start, stop, bucket)`` chunks covering ``n`` rows: whole chunks of the largest bucket,
    then the rest padded up to the smallest bucket that holds it.

    >>> bucket_plan(3, (1, 2, 4, 8, 16))
    [(0, 3, 4)]
    >>> bucket_plan(32, (1, 2, 4, 8, 16))
    [(0, 16, 16), (16, 32, 16)]
    >>> bucket_plan(0, (1, 2, 4))
    []
    """
    if n < 0:
        raise ValueError(f"n must not be negative, got {n}")
    if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
        raise ValueError(f"buckets must be positive and strictly increasing, got {buckets}")
    largest, out, start = buckets[-1], [], 0
    while n - start >= largest:
        out.append((start, start + largest, largest))
        start += largest
    if start < n:
        out.append((start, n, next(b for b in buckets if b >= n - start)))
    return out


def _float_shape(meta: Any, rows: int) -> tuple[int, ...] | None:
    """An output's shape for ``rows`` rows when the graph fixes all its other dims (float)."""
    rest = meta.shape[1:]
    if meta.type != "tensor(float)" or not all(isinstance(d, int) for d in rest):
        return None
    return (rows, *rest)


@dataclass(eq=False)
class _Bound:
    """One bucket's IOBinding and the buffers bound to it."""

    host: npt.NDArray[np.float32]
    device_input: Any  # ort.OrtValue; None on the CPU, where it wraps ``host`` itself
    binding: Any  # ort.IOBinding
    lock: threading.Lock
    outputs: list[Any]  # the preallocated output OrtValues, held as long as the binding


class BatchRunner:
    """Runs one session's input on batches ``(N, *sample)`` and returns the named outputs, each
    with N rows, the same in every mode (see the module's docstring).

    >>> from worker.inference import list_models
    >>> card = next(c for c in list_models() if c.input_kind == "features")
    >>> session = ort.InferenceSession(str(card.path), providers=["CPUExecutionProvider"])
    >>> run = BatchRunner(session, card.input_name, ["probability"], (len(card.feature_names),),
    ...                   mode="bound", max_batch=4)
    >>> run.warm_up()
    ((1, 28), (2, 28), (4, 28))
    >>> [p] = run(np.zeros((5, 28), np.float32)); p.shape
    (5,)
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        input_name: str,
        output_names: Sequence[str],
        sample_shape: Sequence[int | None],
        mode: RunMode = "plain",
        max_batch: int = DEFAULT_MAX_BATCH,
        name: str = "",
    ) -> None:
        if mode not in RUN_MODES:
            raise ValueError(f"mode must be one of {RUN_MODES}, got {mode!r}")
        on_cuda = session.get_providers()[0] == CUDA
        fixed = None not in sample_shape  # a dynamic dim (other than N) cannot be bucketed
        if mode == "auto":
            mode = "bound" if on_cuda and fixed else "plain"
        elif mode != "plain" and not fixed:
            raise ValueError(f"mode {mode!r} needs a fixed sample shape, got {sample_shape}")
        self.mode: RunMode = mode
        self.name, self.device = name, "cuda" if on_cuda else "cpu"
        self._session, self._input, self._outputs = session, input_name, list(output_names)
        self._sample = tuple(d or 0 for d in sample_shape)
        self.buckets: tuple[int, ...] = () if self.mode == "plain" else bucket_sizes(max_batch)
        self._bound = {b: self._bind(b) for b in self.buckets} if self.mode == "bound" else {}
        #: The input shapes run at :meth:`warm_up`.
        self.warmed: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def for_card(
        cls, session: ort.InferenceSession, card: ModelCard, mode: RunMode, max_batch: int
    ) -> BatchRunner:
        """The runner of a model card's session: its probability and score outputs."""
        outputs = [card.outputs["probability"], card.outputs["score"]]
        return cls(
            session, card.input_name, outputs, card.input_shape[1:], mode, max_batch, card.name
        )

    def _bind(self, rows: int) -> _Bound:
        host = np.zeros((rows, *self._sample), np.float32)
        binding = self._session.io_binding()
        device_input = None
        if self.device == "cpu":  # the OrtValue wraps the numpy buffer: no copy needed
            binding.bind_ortvalue_input(self._input, ort.OrtValue.ortvalue_from_numpy(host))
        else:
            device_input = ort.OrtValue.ortvalue_from_numpy(host, self.device, 0)
            binding.bind_ortvalue_input(self._input, device_input)
        metas, outputs = {o.name: o for o in self._session.get_outputs()}, []
        for name in self._outputs:
            shape = _float_shape(metas[name], rows)
            if shape is None:  # not fully known: onnxruntime allocates it on each run
                binding.bind_output(name, self.device, 0)
            else:
                value = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, self.device, 0)
                binding.bind_ortvalue_output(name, value)
                outputs.append(value)
        return _Bound(host, device_input, binding, threading.Lock(), outputs)

    def warm_up(self) -> tuple[tuple[int, ...], ...]:
        """Run every bucket shape once (nothing in mode ``"plain"``); the shapes run. Fails
        with :class:`~worker.errors.ModelError` naming the model and the shape."""
        for b in self.buckets:
            try:
                self._run_bucket(np.zeros((b, *self._sample), np.float32), b)
            except Exception as exc:  # onnxruntime raises its own, unexported exception types
                raise ModelError(
                    f"{self.name or 'model'}: warm-up of shape {(b, *self._sample)} "
                    f"({self.mode}, {self.device}) failed: {exc}"
                ) from exc
        self.warmed = tuple((b, *self._sample) for b in self.buckets)
        return self.warmed

    def __call__(self, x: npt.NDArray[np.float32]) -> list[np.ndarray]:
        """The outputs (each N rows) for ``x`` (N, *sample) float32, C-contiguous."""
        if self.mode == "plain" or len(x) == 0:
            return list(self._session.run(self._outputs, {self._input: x}))
        parts = [self._run_bucket(x[a:b], size) for a, b, size in bucket_plan(len(x), self.buckets)]
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(self._outputs))]

    def _run_bucket(self, rows: npt.NDArray[np.float32], bucket: int) -> list[np.ndarray]:
        n = len(rows)
        if self.mode == "bucketed":
            padded = rows
            if n < bucket:
                padded = np.zeros((bucket, *self._sample), np.float32)
                padded[:n] = rows
            outs = self._session.run(self._outputs, {self._input: padded})
            return [np.asarray(o)[:n] for o in outs]
        bound = self._bound[bucket]
        with bound.lock:
            bound.host[:n] = rows
            bound.host[n:] = 0.0
            if bound.device_input is not None:
                bound.device_input.update_inplace(bound.host)
            self._session.run_with_iobinding(bound.binding)
            outs = bound.binding.copy_outputs_to_cpu()
        return [np.asarray(o)[:n] for o in outs]


def describe(runners: Sequence[BatchRunner]) -> dict[str, Any]:
    """``cuda_iobinding`` (whether any model runs through IOBinding on CUDA), each model's run
    mode, and the input shapes each warmed up at load (for the benchmark's JSON)."""
    return {
        "cuda_iobinding": any(r.mode == "bound" and r.device == "cuda" for r in runners),
        "run_modes": {r.name: r.mode for r in runners},
        "warmup_shapes": {r.name: [list(s) for s in r.warmed] for r in runners},
    }
