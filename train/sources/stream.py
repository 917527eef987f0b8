"""Streaming an image folder with Grain: batches decoded in worker processes, in the loop's order.

The loop's data order stays `loop.epoch_batches` (a pure function of seed and epoch); a run
builds one pipeline over the batches of every step it has left (this epoch's rest, then each
later epoch's order), so its worker processes start once, and a run resumed at any step reads
exactly what the uninterrupted run read. Evaluation decodes in the main process (threads): a
validation pass is too short to pay for starting worker processes. Nothing here holds a whole
split in memory: `StreamedSplit` is a list of rows of a `images.ImageFolderSource`
(train/sources/images.py), with their labels (known without decoding), seen through the task's
view. Grain is imported only when a pipeline is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Iterator

import jax
import numpy as np

MAX_AUTO_WORKERS = 8
# Example positions one training pipeline covers (at least the current epoch's rest; each worker
# gets a copy): a long run on a large dataset starts its workers every few epochs, not every one.
MAX_PIPELINE_POSITIONS = 1 << 22


def default_workers(requested: int) -> int:
    """Decoding processes for `--data-workers` (-1: one per spare CPU core, at most 8)."""
    if requested >= 0:
        return requested
    return max(0, min(MAX_AUTO_WORKERS, (os.cpu_count() or 1) - 1))


def _ignore_interrupts() -> None:
    """In a worker: Ctrl-C reaches the whole process group; the main process stops the workers
    (after saving a checkpoint), so a worker must not die with a KeyboardInterrupt traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _absl_flags_parsed() -> None:
    """Grain's worker start reads absl flags, which fails unless they were parsed (programs not
    run by absl.app): take their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class _Reader:
    """Grain's random-access source over a list of positions of a StreamedSplit (picklable:
    Grain sends it to its worker processes). Item i: the example at `positions[i]`."""

    def __init__(self, source, rows: np.ndarray, labels: np.ndarray, positions: np.ndarray):
        self.source, self.rows, self.labels, self.positions = source, rows, labels, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        j = int(self.positions[i])
        image = np.asarray(self.source[int(self.rows[j])]["image"])
        return {"image": image, "label": self.labels[j], "index": np.int32(j)}


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedSplit:
    """A split read from files: `rows` of `source` with their (possibly relabelled) `labels`,
    turned into model inputs by the task's `view` one batch at a time.

    `workers`: decoding processes (0: the main process)."""

    source: Any
    rows: np.ndarray
    labels: np.ndarray
    view: Callable[[dict], dict]
    workers: int = 0

    @classmethod
    def of(cls, source, view: Callable[[dict], dict], workers: int = 0) -> StreamedSplit:
        labels = np.asarray(source.labels, np.int32)
        return cls(source, np.arange(len(labels)), labels, view, workers)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, sl: slice | np.ndarray, labels: np.ndarray | None = None) -> StreamedSplit:
        """The examples `sl` (a slice or positions), optionally relabelled."""
        rows = self.rows[sl]
        return dataclasses.replace(self, rows=rows, labels=self.labels[sl] if labels is None else labels)

    def targets(self) -> dict:
        """The view's targets of every example ({"y": ...}; {} for tasks without), from the
        labels alone: the view sees 1x1 placeholder images."""
        c = self.source.image_shape[-1]
        out = self.view({"image": np.zeros((len(self), 1, 1, c), np.uint8), "label": self.labels})
        return {k: v for k, v in out.items() if k != "x"}

    def batches(self, positions: np.ndarray) -> Iterator[dict]:
        """The batches of `positions` (steps, batch): each the view's {"x", "y"?} plus "index"
        (the examples' positions in this split), decoded in `workers` processes (0: threads of
        this process), in order. Close the generator to stop the workers at once."""
        import grain

        steps, batch = positions.shape
        reader = _Reader(self.source, self.rows, self.labels, positions.reshape(-1))
        ds = grain.MapDataset.source(reader).batch(batch, drop_remainder=True)
        threads = 2 if self.workers else min(16, os.cpu_count() or 1)
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2))
        if self.workers:
            _absl_flags_parsed()
            # Batches come back through the queue, not shared memory: Grain frees a block only
            # when its array is collected, and blocks alive at exit are reported as leaked.
            no_shm = grain.experimental.DatasetOptions(min_shm_size=2**62)
            ds = grain.experimental.WithOptionsIterDataset(ds, no_shm)
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=2),
                                worker_init_fn=lambda i, n: _ignore_interrupts())
        it = iter(ds)
        try:
            for raw in it:
                yield {**self.view({"image": raw["image"], "label": raw["label"]}), "index": raw["index"]}
        finally:
            if hasattr(it, "close"):
                it.close()  # stops the worker processes now, not at garbage collection

    def arrays(self, n: int) -> dict:
        """The first `n` examples decoded into memory (a sampler's handful)."""
        n = min(n, len(self))
        with contextlib.closing(dataclasses.replace(self, workers=0).batches(np.arange(n)[None])) as batches:
            batch = next(batches)
        return {k: v for k, v in batch.items() if k != "index"}


# ---------------------------------------------------------------- training and evaluation


class Feeder:
    """A strategy's `run_chunk` over a streamed train split: the chunk's indices (from the
    loop's order) name the batches; they are read from one Grain pipeline per run, over every
    step from the first chunk's to `total_steps` (`order_of(epoch)`: the loop's order of an
    epoch), the view applied, and handed to `strategy.run_batches`. `stop()` ends it (the
    loop's `Run.close`)."""

    def __init__(self, strategy, split: StreamedSplit, order_of: Callable[[int], np.ndarray], total_steps: int):
        self.strategy, self.split, self.order_of, self.total_steps = strategy, split, order_of, total_steps
        self._epoch, self._order = 0, None
        self._it: Iterator[dict] | None = None
        self._next = self._end = -1  # the step of the run the pipeline yields next; the step it ends at

    def __getattr__(self, name):  # place_state, unreplicate, mesh, ...: the strategy's
        return getattr(self.strategy, name)

    def start_epoch(self, epoch: int, order: np.ndarray) -> None:
        """The loop's order of `epoch` (steps, batch), whose chunks come next."""
        self._epoch, self._order = epoch, order

    def stop(self) -> None:
        if self._it is not None:
            self._it.close()
        self._it = None

    def run_chunk(self, state, data, idx: np.ndarray):
        step = self._step(idx)
        if self._it is None or step != self._next or step + len(idx) > self._end:
            self.stop()
            rows = self._rows_from(step)
            self._it, self._next, self._end = self.split.batches(rows), step, step + len(rows)
        batches = [next(self._it) for _ in range(len(idx))]
        self._next = step + len(idx)
        for got, want in zip(batches, idx):
            if not np.array_equal(got["index"], want):  # the pipeline must follow the loop's order
                raise RuntimeError("the streamed batches are out of step with the loop's order")
        return self.strategy.run_batches(state, jax.tree.map(lambda *a: np.stack(a), *batches))

    def _rows_from(self, step: int) -> np.ndarray:
        """The batches of steps `step`..`total_steps`: this epoch's rest, then later epochs' orders
        (as many as fit in `MAX_PIPELINE_POSITIONS`)."""
        spe = len(self._order)
        parts, epoch = [self._order[step - self._epoch * spe:]], self._epoch + 1
        while epoch * spe < self.total_steps and (len(parts) + 1) * self._order.size <= MAX_PIPELINE_POSITIONS:
            parts.append(self.order_of(epoch))
            epoch += 1
        return np.concatenate(parts)[: self.total_steps - step]

    def _step(self, idx: np.ndarray) -> int:
        """The step of the run whose batch is `idx[0]`, in the current epoch."""
        base = self._epoch * len(self._order)
        pos = self._next - base
        if 0 <= pos < len(self._order) and np.array_equal(self._order[pos], idx[0]):
            return self._next
        matches = np.flatnonzero((self._order == idx[0]).all(axis=1))
        if not len(matches):
            raise RuntimeError("a chunk's indices are not a step of this epoch's order")
        return base + int(matches[0])


def evaluator(eval_fn: Callable, mesh):
    """`parallel.make_evaluator` for a StreamedSplit: the same fixed-size batches (the last one
    padded with its last example, masked), read through the split's pipeline instead of
    gathered on device, so the sums equal the in-memory evaluator's on the same examples."""
    from train import parallel

    batch_sums = parallel.batch_evaluator(eval_fn, mesh)

    def run(variables, split: StreamedSplit, n: int, batch_size: int):
        nb = -(-n // batch_size)
        flat = np.arange(nb * batch_size)
        mask = (flat < n).astype(np.float32).reshape(nb, batch_size)
        idx = np.minimum(flat, n - 1).reshape(nb, batch_size)
        # Decoded by threads of this process: no worker start-up per evaluation.
        with contextlib.closing(dataclasses.replace(split, workers=0).batches(idx)) as batches:
            return batch_sums(variables, batches, mask)

    return run


def fingerprint(split: StreamedSplit) -> str:
    """A short hash of the split's files (paths, in row order) and labels: a changed folder differs."""
    import hashlib

    h = hashlib.sha256()
    for row in split.rows:  # class folder and file name: the same folder moved elsewhere still matches
        path = split.source.paths[int(row)]
        h.update(f"{path.parent.name}/{path.name}".encode() + b"\0")
    h.update(np.ascontiguousarray(split.labels).tobytes())
    return h.hexdigest()[:16]
