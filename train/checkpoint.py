"""Checkpointing that never loses work: a thin, strict wrapper over Orbax's CheckpointManager.

Each step directory holds three Orbax items:
  "state"      the array pytree (StandardSave: OCDBT/zarr, sharding-aware, no pickle),
  "meta"       a JSON dict (epoch, config, data position, ...),
  "checksums"  a JSON {leaf path: uint32 fingerprint} computed on device at save time.
Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it when finalized, so
a crash (even kill -9 mid async save) leaves only an ignored tmp dir, removed on the next
start (`cleanup_tmp_directories`). Retention: the latest `max_to_keep` steps plus the
best one by `best_metric` (Orbax preservation policies; LatestN always keeps the newest).
Restores check the target against the checkpoint's metadata first (clear ValueError
naming the leaf and both shapes) and verify the fingerprints afterwards, because a
flipped byte inside a zstd chunk decodes silently into wrong values (measured, orbax 0.12.8).
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - registers its exit hook before ours (see below)
import dataclasses
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from zoo.files import os_error_of
from zoo.trees import check_tree

log = logging.getLogger(__name__)
STATE, META, CHECKSUMS = "state", "meta", "checksums"


class CheckpointError(ValueError):
    """A checkpoint on disk is missing, truncated or corrupted (message names the step dir)."""


def _brief(e: Exception) -> str:
    # TensorStore errors embed a full JSON spec; the chained exception keeps all of it.
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:300]}"


def _key_str(k) -> str:
    # Orbax metadata turns NamedTuples (optax states) into dicts of their fields, so
    # GetAttrKey("mu") and DictKey("mu") must print the same: "opt_state/0/mu/...".
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flat(tree) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_str(k) for k in path): leaf for path, leaf in leaves}


# ---------------------------------------------------------------- fingerprints
def _dtype(x) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.dtype(jnp.result_type(x))


def _fingerprintable(x) -> bool:
    dt = _dtype(x)
    return dt == jnp.bool_ or (jnp.issubdtype(dt, jnp.number) and not jnp.issubdtype(dt, jnp.complexfloating)
                               and dt.itemsize in (1, 2, 4, 8))


def _leaf_fingerprint(x):
    """sum(word_i * odd_weight_i) mod 2**32 over the leaf's raw bits: any single changed
    word changes it, and uint32 wrap-around sums are exact in any reduction order, so the
    value does not depend on device count or sharding. Iotas (not ravel) keep it shardable."""
    if x.dtype == jnp.bool_:
        u = x.astype(jnp.uint32)
    elif x.dtype.itemsize >= 4:
        u = jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8-byte dtypes gain a trailing dim of 2
    else:
        u = jax.lax.bitcast_convert_type(x, jnp.uint8 if x.dtype.itemsize == 1 else jnp.uint16).astype(jnp.uint32)
    idx, stride = jnp.zeros(u.shape, jnp.uint32), 1
    for d in reversed(range(u.ndim)):
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, u.shape, d) * np.uint32(stride % 2**32)
        stride *= u.shape[d]
    w = (idx * np.uint32(0x9E3779B1) + np.uint32(0x7F4A7C15)) | np.uint32(1)
    return jnp.sum(u * w, dtype=jnp.uint32)


_fingerprints_jit = jax.jit(lambda leaves: [_leaf_fingerprint(x) for x in leaves])


def fingerprints(tree) -> dict[str, int]:
    """{leaf path: uint32 fingerprint} for the numeric leaves of `tree` (blocks on device)."""
    flat = {k: v for k, v in _flat(tree).items() if _fingerprintable(v)}
    values = jax.device_get(_fingerprints_jit([jnp.asarray(v) for v in flat.values()]))
    return {k: int(v) for k, v in zip(flat, values)}


# ---------------------------------------------------------------- manager
_UNFINISHED: set[Checkpointer] = set()  # with an async save in flight (strong refs on purpose)


def _wait_at_exit() -> None:
    for ckpt in list(_UNFINISHED):
        try:
            ckpt.wait()
        except Exception:  # noqa: BLE001 - nothing left to raise to at exit
            log.exception("pending checkpoint save in %s failed at interpreter exit", ckpt.directory)


# An unclosed async save is lost at exit (measured): plain atexit hooks run after
# concurrent.futures has shut its executors down, and the save thread then dies with
# "cannot schedule new futures after interpreter shutdown". threading's exit hooks run
# earlier, last-registered first, so this one (registered after importing
# concurrent.futures.thread above) runs before that shutdown. Private API: fall back.
getattr(threading, "_register_atexit", atexit.register)(_wait_at_exit)


def _handlers() -> dict:
    # Explicit handlers (not just item_names): otherwise a fresh manager cannot read
    # item metadata until it has saved or restored that item once (returns None).
    return {STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler(),
            CHECKSUMS: ocp.JsonCheckpointHandler()}


def _reader_options() -> ocp.CheckpointManagerOptions:
    """Options of a manager that only reads. A manager opened with the writer's options removes
    every `*.orbax-checkpoint-tmp` dir at creation, i.e. the save a live run has in flight.
    Fields are set only where this Orbax has them (read_only and friends vary across releases)."""
    me = jax.process_index()
    wanted = dict(read_only=True, create=False, cleanup_tmp_directories=False, save_root_metadata=False,
                  enable_async_checkpointing=False,
                  multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))
    fields = {f.name for f in dataclasses.fields(ocp.CheckpointManagerOptions)}
    return ocp.CheckpointManagerOptions(**{k: v for k, v in wanted.items() if k in fields})


class Checkpointer:
    """Keeps the latest `max_to_keep` steps plus the best by `metrics[best_metric]`.

    Saves are asynchronous: `save` returns once the arrays are copied off the device; call
    `wait()` before relying on the files, and `close()` (or use `with`) before exiting.
    """

    def __init__(self, directory, *, max_to_keep: int = 3, best_metric: str | None = None,
                 best_mode: str = "max", async_save: bool = True, read_only: bool = False):
        """`read_only`: a reader beside a possibly live run (zoo eval/export, --test): it sees only
        finalized steps, writes, moves and deletes nothing (the writer's tmp dirs included), and
        each process reads on its own (no cross-process barriers)."""
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError("max_to_keep must be >= 1 (the latest step is always kept)")
        self.directory = Path(os.path.abspath(os.fspath(directory)))  # orbax needs absolute paths
        self.best_metric, self.best_mode, self.read_only = best_metric, best_mode, read_only
        self._pending: int | None = None
        self._closed = False
        if read_only:
            if not self.directory.is_dir():
                raise FileNotFoundError(f"no checkpoint in {self.directory} (no such directory)")
            self._mgr = ocp.CheckpointManager(self.directory, options=_reader_options(), item_handlers=_handlers())
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        policies = [ocm.LatestN(n=max_to_keep)]
        if best_metric is not None:
            # keep_checkpoints_without_metrics=False: otherwise every save without metrics
            # would be kept forever. LatestN still protects the newest one.
            policies.append(ocm.BestN(get_metric_fn=self._score, n=1, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            # An explicit policy instead of max_to_keep + best_fn: that legacy combination
            # ranks only by metric and can delete the step just saved. best_fn is still set
            # (it is not exclusive with a policy) because it makes Orbax write the metrics.
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            best_fn=self._score if best_metric is not None else None,
            best_mode="max",  # _score is already "higher is better"
            cleanup_tmp_directories=True,  # tmp dirs of saves killed mid-write
            enable_async_checkpointing=async_save,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())

    def _score(self, metrics) -> float:
        """Higher is better; a missing or non-finite metric ranks last."""
        try:
            v = float(metrics[self.best_metric])
        except (KeyError, TypeError, ValueError):
            return -math.inf
        return (v if self.best_mode == "max" else -v) if math.isfinite(v) else -math.inf

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    # ------------------------------------------------------------ queries
    def all_steps(self) -> list[int]:
        """Finalized steps, ascending. An async save still in flight is not listed: its
        directory only gets its final name when Orbax commits it."""
        return sorted(s for s in self._mgr.all_steps()
                      if s != self._pending or self._step_dir(s).is_dir())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """Best finalized step by `best_metric` (None without one or without any metrics)."""
        if self.best_metric is None:
            return None
        scored = [(self._score(m), s) for s in self.all_steps() if (m := self._mgr.metrics(s)) is not None]
        scored = [(v, s) for v, s in scored if v > -math.inf]
        return max(scored)[1] if scored else None  # ties: the later step

    # ------------------------------------------------------------ save
    def save(self, step: int, tree, meta: dict, metrics: dict | None = None, *, force: bool = False) -> bool:
        """Starts saving `tree` (arrays) and `meta` (JSON) as `step`; True if a save started.

        Saving a step that already exists is a no-op (repeat calls are safe). A step older
        than the latest raises, since Orbax would silently skip it, unless force=True.
        """
        step = int(step)
        if self.read_only:
            raise ValueError(f"{self.directory} was opened read-only; it cannot save step {step}")
        if step in self._mgr.all_steps():
            log.info("checkpoint step %d already exists in %s; not saved again", step, self.directory)
            return False
        latest = self._mgr.latest_step()
        if latest is not None and step < latest and not force:
            raise ValueError(f"step {step} is older than the latest checkpoint {latest} in "
                             f"{self.directory}; pass force=True to save it anyway")
        sums = fingerprints(tree)
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(tree), META: ocp.args.JsonSave(dict(meta)),
                                     CHECKSUMS: ocp.args.JsonSave(sums)})
        # force=True: the save decision is ours (the loop's interval), not Orbax's.
        self.wait()  # as Orbax's save would, but a failure of the previous save is named as that step
        self._pending = step
        _UNFINISHED.add(self)
        try:
            return self._mgr.save(step, args=args, metrics=dict(metrics) if metrics is not None else None, force=True)
        except ValueError as e:  # a synchronous save (or the previous async one) failed writing
            if (error := self._os_error(e)) is None:
                raise
            raise error from e

    def _os_error(self, error: ValueError) -> OSError | None:
        """A failed write (a full disk) as an OSError naming the step and this directory."""
        step = f"step {self._pending} " if self._pending is not None else ""
        return os_error_of(error, f"cannot save checkpoint {step}in {self.directory}")

    def wait(self) -> None:
        """Blocks until pending async saves are finalized (re-raises their errors; a failed
        write as OSError, e.g. ENOSPC when the disk is full)."""
        try:
            self._mgr.wait_until_finished()
        except ValueError as e:
            if (error := self._os_error(e)) is None:
                raise
            raise error from e
        finally:
            self._pending = None
            _UNFINISHED.discard(self)

    def close(self) -> None:
        if not self._closed:
            self.wait()
            self._mgr.close()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ restore
    def _resolve(self, step: int | None) -> int:
        self.wait()  # a restore sees every save made before it, and no deletion races it
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no finalized checkpoint in {self.directory}")
        if step not in self.all_steps():
            raise FileNotFoundError(f"no finalized checkpoint for step {step} in {self.directory} "
                                    f"(available: {self.all_steps()})")
        return step

    def restore(self, target=None, step: int | None = None) -> tuple[Any, dict]:
        """Restores into `target` (ShapeDtypeStruct leaves with .sharding, or arrays whose
        sharding is reused; None: the tree as saved, on one device), so a checkpoint written
        on N devices loads onto M. Returns
        (tree, meta). Raises ValueError if `target` does not match the checkpoint's
        structure, shapes or dtypes, CheckpointError if the checkpoint is damaged."""
        step = self._resolve(step)
        step_dir = self._step_dir(step)
        try:
            tree = self._mgr.item_metadata(step)[STATE].tree
        except Exception as e:
            raise CheckpointError(f"cannot read the array metadata of checkpoint {step_dir}: {_brief(e)}") from e
        if target is None:  # as saved, on one device
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
        target = jax.tree.map(self._abstract_leaf, target)
        # Compared before restoring: Orbax's own errors (if any) do not name the leaf.
        check_tree(_flat(target), _flat(tree), f"checkpoint {step_dir} does not match the restore target "
                                               f"(different architecture or config?)")
        has_sums = (step_dir / CHECKSUMS).is_dir()  # absent in checkpoints from other writers
        items = {STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}
        if has_sums:
            items[CHECKSUMS] = ocp.args.JsonRestore()
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(**items))
            tree, meta = out[STATE], dict(out[META])
        except Exception as e:  # tensorstore/json errors on missing or truncated files
            raise CheckpointError(f"checkpoint {step_dir} is damaged or incomplete: {_brief(e)}") from e
        if has_sums:
            expected, got = dict(out[CHECKSUMS]), fingerprints(tree)
            bad = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
            if bad:
                raise CheckpointError(f"checkpoint {step_dir} is corrupted: restored values differ from the "
                                      f"fingerprints written at save time for {', '.join(bad[:10])}")
        return tree, meta

    def restore_intact(self, target, *, log=print) -> tuple[Any, dict]:
        """Restores the newest step that reads back intact, like `restore(target)`.

        A damaged step (truncated, emptied, missing or flipped files, garbled JSON, ...) is moved
        aside to `<directory>.damaged/` (never deleted) with a warning, and the next older step
        is tried. Raises CheckpointError, naming every damaged step, when none is intact; a
        target that does not match (another architecture) raises ValueError as `restore` does.
        """
        damaged = []
        for step in reversed(self.all_steps()):
            try:
                return self.restore(target, step)
            except CheckpointError as e:
                moved = self._move_aside(step)
                damaged.append(f"step {step} ({e}) -> {moved}")
                log(f"warning: checkpoint step {step} is damaged, moved to {moved}; trying an older one ({e})")
        raise CheckpointError(f"no intact checkpoint in {self.directory}; damaged: " + "; ".join(damaged)
                              + ". Start afresh with a new --workdir (the damaged steps were kept).")

    def _move_aside(self, step: int) -> Path:
        if self.read_only:  # a reader never changes a run (it may be live): it reports instead
            raise CheckpointError(f"checkpoint {self._step_dir(step)} is damaged; resume the run to move it aside")
        aside = self.directory.with_name(self.directory.name + ".damaged")
        aside.mkdir(exist_ok=True)
        dest = aside / str(step)
        n = 1
        while dest.exists():
            dest, n = aside / f"{step}.{n}", n + 1
        os.rename(self._step_dir(step), dest)
        self._mgr.reload()
        return dest

    @staticmethod
    def _abstract_leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            if x.sharding is None:  # default: this process's first device, rather than an Orbax error
                one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
                return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one)
            return x
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x  # numpy leaves restore as numpy
