"""The training loop: set up a run, then per epoch run / evaluate / checkpoint-if-due / stop-if-done.

Determinism: the data order of an epoch is a pure function of (seed, epoch), step randomness
is fold_in(base key, step), and dispatch chunks are aligned to the epoch start, so a run
resumed from any checkpoint replays the uninterrupted run exactly, metrics.jsonl included.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import zoo
from train import data, parallel, report, tasks, workdir as workdirs
from train.sources import stream
from train.sources.stream import Feeder
from zoo.files import write_text_atomic
from train.checkpoint import Checkpointer
from train.config import Config, build_model, tfds_val_size
from train.export import record_device
from train.state import TrainState, create_state, glorot_reinit, make_optimizer, make_schedule
from train.steps import to_input


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last finalized checkpoint is left untouched."""


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint was saved and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def state_tree(state: TrainState) -> dict:
    """The checkpointed part of a TrainState (arrays only)."""
    return {"step": state.step, "params": state.params, "model_state": state.model_state,
            "opt_state": state.opt_state, "rng": state.rng}


class _StopSignals:
    """SIGTERM and SIGINT become a flag checked at dispatch boundaries (main thread only): the
    loop saves a checkpoint there and stops, instead of dying inside an async save."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        try:
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self._old = {}
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def build_optimizer(cfg: Config, total_steps: int, hp: dict | None = None, *, clip: bool = True,
                    decay: bool = True) -> optax.GradientTransformation:
    """The run's optimizer: schedule, update rule, clipping and decay, frozen `train_only` parameters.

    `hp`: a population member's hyperparameters (lr, momentum, weight_decay, clip_norm, b1; scalars,
    traced under vmap) instead of `cfg`'s numbers. Its learning rate is the member's peak times the
    schedule's shape (the schedule at peak 1); `clip`/`decay` False leave clipping/decay out of its
    chain (no member uses them), as a plain run with 0 does.
    """
    if hp is None:
        lr = make_schedule(cfg.schedule, cfg.lr, total_steps, cfg.warmup_steps)
        hp = {"momentum": cfg.momentum, "weight_decay": cfg.weight_decay, "clip_norm": cfg.clip_norm, "b1": cfg.b1}
    else:
        shape = make_schedule(cfg.schedule, 1.0, total_steps, cfg.warmup_steps)
        lr = lambda count: hp["lr"] * shape(count)  # noqa: E731
        hp = {**hp, "weight_decay": hp["weight_decay"] if decay else 0.0, "clip_norm": hp["clip_norm"] if clip else 0.0}
    tx = make_optimizer(cfg.optimizer, lr, momentum=hp["momentum"], weight_decay=hp["weight_decay"],
                        clip_norm=hp["clip_norm"], b1=hp["b1"])
    if cfg.train_only:  # frozen parameters get zero updates (and no optimizer state)
        tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()},
                                   lambda params: zoo.param_labels(params, cfg.train_only))
    return tx


def initial_state(cfg: Config, model, task: tasks.Task, total_steps: int, *, example=None, log=print) -> TrainState:
    """A fresh TrainState for `cfg`: optimizer and schedule, init (default/glorot/init_from).

    `example`: one host input, to initialize a module that has no zoo input spec.
    """
    tx = build_optimizer(cfg, total_steps)
    init_key, state_key, reinit_key = jax.random.split(jax.random.key(cfg.seed), 3)
    if hasattr(model, "input_spec"):
        variables = zoo.init(model, init_key)  # params depend on the input's shape only: the spec's example
    else:
        rngs = dict(zip(("params", "dropout", "noise"), jax.random.split(init_key, 3)))
        variables = jax.jit(model.init)(rngs, to_input(jnp.asarray(example)))
    if cfg.init == "glorot":
        variables = {**variables, "params": glorot_reinit(variables["params"], reinit_key)}
    if cfg.init_from:
        from train.config import class_names_of
        from train.finetune import init_from

        variables = init_from(cfg.init_from, model, variables, log=log, class_names=class_names_of(cfg))
    return create_state(model, variables, tx, state_key, players=task.players)


# ---------------------------------------------------------------- the run's bookkeeping


@dataclasses.dataclass
class Book:
    """What the loop tracks between steps; saved in every checkpoint's meta."""

    epoch: int = 0  # epochs completed
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    finished: bool = False  # early-stopped, or max_steps reached mid-epoch
    # This epoch's per-step train metrics so far, summed in float64 (exact for float32 values
    # at these counts), so a run resumed mid-epoch logs the same epoch means.
    sums: dict = dataclasses.field(default_factory=dict)
    sum_steps: int = 0


@dataclasses.dataclass
class Run:
    """Everything one `fit` works with, built by `setup`."""

    cfg: Config
    task: tasks.Task
    model: object
    workdir: Path
    log: object
    splits: tasks.Splits
    strategy: object
    evaluator: object
    train_data: dict
    val_data: dict
    eval_batch: int
    state: TrainState
    ckpt: Checkpointer
    metrics_log: report.MetricsLog
    steps_per_epoch: int
    total_steps: int
    step: int
    book: Book
    lock: workdirs.Lock
    signals: _StopSignals = dataclasses.field(default_factory=_StopSignals)
    max_in_flight: int = 0  # 0: unbounded

    # The dispatch loop's view of the run (a population, train/population.py, has the same):
    member_axis = False  # per-step metrics have no member axis

    @property
    def books(self) -> list[Book]:
        return [self.book]

    @property
    def checkpoint_steps(self) -> int:
        return self.cfg.checkpoint_steps

    def active(self, member: int) -> bool:
        return True

    def nonfinite(self, member: int, bad_step: int) -> None:
        raise _diverged(self, bad_step, "loss")

    def batches(self, epoch: int) -> np.ndarray:
        order = epoch_batches(self.cfg, self.cfg.seed, epoch, tasks.split_size(self.splits.train), self.steps_per_epoch)
        if isinstance(self.strategy, Feeder):  # a streamed split reads this epoch's order from files
            self.strategy.start_epoch(epoch, order)
        return order

    def label(self, epoch: int) -> str:
        return f"epoch {epoch + 1}/{self.cfg.epochs}"

    def close(self) -> None:
        if isinstance(self.strategy, Feeder):
            self.strategy.stop()
        release(self)


def epoch_batches(cfg: Config, seed: int, epoch: int, n: int, steps_per_epoch: int) -> np.ndarray:
    """The example indices of each step of `epoch`, (steps_per_epoch, batch size), for `seed`."""
    order = np.asarray(data.epoch_order(seed, epoch, n))
    return order[: steps_per_epoch * cfg.batch_size].reshape(steps_per_epoch, cfg.batch_size)


def release(run) -> None:
    """Closes a run's (or a population member's) checkpointer and metrics log, then frees its
    workdir lock, whatever fails first."""
    try:
        run.ckpt.close()
    finally:
        run.metrics_log.close()
        run.lock.release()


def _devices(cfg: Config) -> list:
    devices = jax.devices()
    if cfg.num_devices:
        if cfg.num_devices > len(devices):
            raise ValueError(f"--num-devices {cfg.num_devices}: only {len(devices)} devices exist")
        devices = devices[: cfg.num_devices]
    return devices


def max_in_flight(devices) -> int:
    """Steps that may be queued without a host sync (0: no bound).

    XLA:CPU (jaxlib 0.10) deadlocks in an all-reduce rendezvous once ~90 sharded steps are
    queued over several CPU devices (tests/test_interruptions.py trains a real epoch on 4 devices),
    so on multi-device CPU meshes the loop waits for a step before queueing many more.
    """
    return 8 if devices[0].platform == "cpu" and len(devices) > 1 else 0


def setup(cfg: Config, workdir: Path, *, log=print, model=None, task: tasks.Task | None = None,
          splits: tasks.Splits | None = None) -> Run:
    """Builds the run: data, devices, state (resumed from the newest intact checkpoint)."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    workdirs.check_shared(workdir)
    lock = workdirs.acquire(workdir)
    try:
        return _setup(cfg, workdir, lock, log, model, task, splits)
    except BaseException:
        lock.release()
        raise


@dataclasses.dataclass
class Plan:
    """What a run of `cfg` trains: its task, model, checked data splits, devices and length."""

    task: tasks.Task
    model: object
    splits: tasks.Splits
    devices: list
    mesh: object
    steps_per_epoch: int
    total_steps: int
    cfg: Config | None = None  # the run's config: with --data, it records the data's path and classes


def plan(cfg: Config, *, model=None, task: tasks.Task | None = None, splits=None, log=print) -> Plan:
    """Resolves the task, model and data of a run (loading the data unless given), checks the
    labels (a bad validation label would give a NaN loss) and the batch size against the devices
    and the data, and counts the steps."""
    task = task or tasks.of_model(cfg.model)
    if cfg.data and splits is None:  # the model follows the data (num_classes, vocab): open it first
        cfg, splits = tasks.own_data(task, cfg, model=model, log=log)
    model = model if model is not None else build_model(cfg)
    splits = splits or tasks.load_splits(task, cfg)
    for split_name, split in (("train", splits.train), ("validation", splits.val)):
        split = split if isinstance(split, dict) else split.targets()
        tasks.check_labels(task, split, model, f"{tasks.data_name(cfg)} ({split_name} split)")
    devices = _devices(cfg)
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_size(cfg.batch_size, len(devices))
    n_train = tasks.split_size(splits.train)
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {n_train} training examples")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    return Plan(task, model, splits, devices, mesh, steps_per_epoch, total_steps, cfg)


def _setup(cfg, workdir, lock, log, model, task, splits) -> Run:
    p = plan(cfg, model=model, task=task, splits=splits, log=log)
    cfg, task, model, splits, devices, mesh = p.cfg, p.task, p.model, p.splits, p.devices, p.mesh
    steps_per_epoch, total_steps = p.steps_per_epoch, p.total_steps

    state = initial_state(cfg, model, task, total_steps, example=_example(model, splits.train), log=log)
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=cfg.keep_checkpoints,
                        best_metric=f"val_{task.val_metric}", best_mode=task.mode)
    book = Book()
    replicated = parallel.NamedSharding(mesh, parallel.P())
    metrics_log = report.MetricsLog(workdir)
    if ckpt.latest_step() is not None:
        if (workdir / "config.json").exists():  # before restoring: another architecture would fail on shapes first
            _check_same_run(json.loads((workdir / "config.json").read_text()), cfg)
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state_tree(state))
        restored, saved = ckpt.restore_intact(target, log=log)
        _check_same_run(saved.get("config", {}), cfg)
        _check_loader(saved, splits.train, int(restored["step"]), steps_per_epoch)
        if warning := schedule_change(saved.get("config", {}), cfg):
            log(f"warning: {warning}")
        state = state.replace(**restored)
        book = Book(**{k: saved[k] for k in dataclasses.asdict(book) if k in saved})
        # Re-decided for this run: a larger --epochs/--max-steps continues a completed run;
        # only an early stop stays final.
        book.finished = bool(cfg.early_stop_patience and book.bad_epochs >= cfg.early_stop_patience)
        metrics_log.truncate(int(restored["step"]))  # lines logged after that checkpoint are replayed
        log(f"resumed from step {int(restored['step'])} (epoch {book.epoch}) in {ckpt.directory}")
    if report.is_writer():
        write_text_atomic(workdir / "config.json", json.dumps(cfg.to_json(), indent=2, sort_keys=True) + "\n")
    record_device(workdir, devices)

    strategy = parallel.make_strategy(cfg.strategy, task.train_step(model, cfg), mesh)
    eval_batch = parallel.eval_batch_size(cfg.eval_batch_size, len(devices))
    state = strategy.place_state(state)
    evaluator = parallel.make_evaluator(task.eval_step(model), mesh)
    if isinstance(splits.train, dict):
        train_data = strategy.place_data(splits.train)
    else:  # streamed: batches are read from files per chunk, never the whole split on device
        order_of = functools.partial(epoch_batches, cfg, cfg.seed, n=len(splits.train), steps_per_epoch=steps_per_epoch)
        strategy, train_data = _streamed_strategy(strategy, splits.train, order_of, total_steps), None
    if isinstance(splits.val, dict):
        val_data = jax.tree.map(lambda a: parallel.put_global(a, replicated), splits.val)
    else:
        evaluator, val_data = stream.evaluator(task.eval_step(model), mesh), splits.val
    return Run(
        cfg=cfg, task=task, model=model, workdir=workdir, log=log, splits=splits, strategy=strategy,
        evaluator=evaluator, train_data=train_data, val_data=val_data, eval_batch=eval_batch,
        state=state, ckpt=ckpt, metrics_log=metrics_log, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        step=int(np.asarray(strategy.unreplicate(state).step)), book=book, lock=lock, max_in_flight=max_in_flight(devices),
    )


# ---------------------------------------------------------------- one epoch


def _diverged(run: Run, bad_step: int, what: str) -> TrainingDiverged:
    cfg = run.cfg
    run.ckpt.wait()  # a save in flight holds finite parameters: it is the last good one
    last = run.ckpt.latest_step()
    saved = (f"Last good checkpoint: step {last} in {run.ckpt.directory}." if last is not None
             else "No checkpoint was saved before it.")
    return TrainingDiverged(
        f"non-finite {what} at step {bad_step} (lr={cfg.lr}, optimizer={cfg.optimizer}); not saved. {saved} "
        "The labels and inputs were checked before training, so the optimization diverged: lower --lr or set "
        "--clip-norm."
    )


def run_epoch(run) -> dict:
    """Trains to the end of the current epoch (or `total_steps`); returns timing facts.

    `run`: a Run, or a population (train/population.py), which trains its members' books on a
    vmapped step with the same loop. Per-step metrics stay on device until a sync (every
    `log_every` steps, at the end, before a checkpoint, or when `max_in_flight` steps are queued).
    """
    cfg, books = run.cfg, run.books
    epoch, spe = run.step // run.steps_per_epoch, run.steps_per_epoch
    if epoch_left_unevaluated(run):  # its steps are done: it is evaluated (and logged) now, not skipped
        for book in books:
            book.epoch = epoch
        return {"epoch_s": 0.0, "compile_s": 0.0, "examples_per_s": 0}
    order = run.batches(epoch)
    pos = run.step - epoch * spe
    if pos == 0:
        for book in books:
            book.sums, book.sum_steps = {}, 0
    progress = report.Progress(spe, run.label(epoch), cfg.batch_size * len(books), done=pos)
    per_dispatch = cfg.steps_per_dispatch or parallel.default_steps_per_dispatch(spe)
    pending, t0, compile_s, steps_run = [], time.perf_counter(), None, 0
    while pos < spe and run.step < run.total_steps:
        k = min(per_dispatch, spe - pos, run.total_steps - run.step)
        tc = time.perf_counter()
        run.state, m = run.strategy.run_chunk(run.state, run.train_data, order[pos : pos + k])
        if compile_s is None:
            jax.block_until_ready(m)
            compile_s = time.perf_counter() - tc
        pos, run.step, steps_run = pos + k, run.step + k, steps_run + k
        pending.append(m)
        queued = sum(len(p["loss"]) for p in pending)
        at_end = pos >= spe or run.step >= run.total_steps
        save_due = bool(run.checkpoint_steps and run.step % run.checkpoint_steps < k and not at_end)
        # A checkpoint's book must hold every step before it: sync before any save.
        bounded = bool(run.max_in_flight) and queued >= run.max_in_flight
        if at_end or save_due or run.signals.signum or queued >= cfg.log_every or bounded:
            _sync(run, pending, progress)
            pending = []
        if run.signals.signum:
            _save(run, epoch, None, force=True)
            run.ckpt.wait()
            name = signal.Signals(run.signals.signum).name
            raise Preempted(f"{name}: saved step {run.step} in {run.ckpt.directory}; rerun to resume", run.signals.signum)
        if save_due:
            _save(run, epoch, None)
    progress.close()
    for book in books:
        if pos < spe:  # max_steps ended the run mid-epoch
            book.finished = True
        else:
            book.epoch = epoch + 1
    epoch_s = time.perf_counter() - t0
    return {"epoch_s": epoch_s, "compile_s": compile_s or 0.0,
            "examples_per_s": steps_run * cfg.batch_size / epoch_s if steps_run else 0}


def epoch_left_unevaluated(run) -> bool:
    """Whether the run stands at the end of an epoch it trained but never evaluated: a signal
    during an epoch's last dispatch saves that step and stops before the evaluation, so the
    resumed run must evaluate that epoch before it trains the next one."""
    spe = run.steps_per_epoch
    return run.step > 0 and run.step % spe == 0 and all(book.epoch < run.step // spe for book in run.books)


def _sync(run, pending: list, progress: report.Progress) -> None:
    """Fetches the queued per-step metrics, checks each active member's losses are finite (else
    `run.nonfinite`) and adds its metrics to its book's sums in float64 (exact for float32 values
    at these counts, so a run resumed mid-epoch logs the same epoch means)."""
    fetched = [jax.tree.map(np.asarray, p) for p in pending]
    if not run.member_axis:
        fetched = [jax.tree.map(lambda a: a[:, None], f) for f in fetched]  # (steps, 1 member)
    for i, book in enumerate(run.books):
        if not run.active(i):
            continue
        losses = np.concatenate([f["loss"][:, i] for f in fetched])
        if not np.all(np.isfinite(losses)):
            run.nonfinite(i, run.step - len(losses) + int(np.argmin(np.isfinite(losses))))
            continue
        for f in fetched:
            for key, v in f.items():
                book.sums[key] = book.sums.get(key, 0.0) + float(np.sum(v[:, i], dtype=np.float64))
        book.sum_steps += len(losses)
    shown = next((i for i in range(len(run.books)) if run.active(i)), 0)  # the bar shows one member's loss
    progress.update(sum(len(f["loss"]) for f in fetched), float(fetched[-1]["loss"][-1, shown]))


# ---------------------------------------------------------------- evaluate / checkpoint / stop


def evaluate(run: Run, timing: dict) -> dict:
    """Validation metrics; logs the epoch's record (train means, validation, timing) and returns it."""
    book = run.book
    variables = run.strategy.unreplicate(run.state).variables()
    val = tasks.summarize(run.evaluator(variables, run.val_data, tasks.split_size(run.splits.val), run.eval_batch))
    record = record_epoch(run.task, book, run.step, val, timing)
    run.metrics_log.write(record)
    run.log(f"epoch {book.epoch} step {run.step} " + report.fmt({k: v for k, v in record.items() if k != "epoch_s"})
            + f" time={timing['epoch_s']:.1f}s")
    cfg = run.cfg
    if cfg.sample_every and book.epoch % cfg.sample_every == 0 and run.task.epoch_sample and report.is_writer():
        shown = run.splits.val if isinstance(run.splits.val, dict) else run.splits.val.arrays(64)
        run.task.epoch_sample(run.model, jax.device_get(variables), shown, run.workdir / "samples",
                              book.epoch, cfg.seed, run.log)
    return record


def record_epoch(task: tasks.Task, book: Book, step: int, val: dict, timing: dict) -> dict:
    """The epoch's metrics.jsonl record (train means, validation, timing); updates the book's
    best validation value and its count of epochs without improvement."""
    record = {
        "epoch": book.epoch,
        "step": step,
        **{f"train_{k}": v / book.sum_steps for k, v in book.sums.items()},
        **{f"val_{k}": v for k, v in val.items() if isinstance(v, float)},
        **timing,
    }
    value = val[task.val_metric]
    if task.better(value, book.best):
        book.best, book.best_epoch, book.bad_epochs = value, book.epoch, 0
    else:
        book.bad_epochs += 1
    return record


def checkpoint_meta(book: Book, epoch_done: int, step: int, cfg: Config) -> dict:
    """What a checkpoint records beside the state: the book, the epoch and step, the config."""
    return {**dataclasses.asdict(book), "epoch": epoch_done, "step": step, "config": cfg.to_json()}


def should_stop(run: Run) -> bool:
    """Early stopping, max_steps and the last epoch all end the run."""
    cfg, book = run.cfg, run.book
    if cfg.early_stop_patience and book.bad_epochs >= cfg.early_stop_patience:
        run.log(f"early stop: val_{run.task.val_metric} has not improved for {book.bad_epochs} epochs "
                f"(best {book.best:.4g} at epoch {book.best_epoch})")
        book.finished = True
    if run.step >= run.total_steps:
        book.finished = True
    return book.finished


def checkpoint_if_due(run: Run, record: dict) -> None:
    if run.book.finished or run.book.epoch % run.cfg.checkpoint_every == 0:
        _save(run, run.book.epoch, record)


def _save(run: Run, epoch_done: int, record: dict | None, force: bool = False) -> None:
    tree = state_tree(run.strategy.unreplicate(run.state))
    # Losses are checked only at syncs, and the step that overflows still reports a finite
    # loss: never let non-finite parameters become the "last good" checkpoint.
    if not all_finite((tree["params"], tree["model_state"])):
        raise _diverged(run, run.step, "parameters")
    metric = f"val_{run.task.val_metric}"
    metrics = {metric: record[metric]} if record else None
    meta = checkpoint_meta(run.book, epoch_done, run.step, run.cfg)
    if not isinstance(run.splits.train, dict):
        meta["loader"] = loader_state(run.splits.train, run.step, run.steps_per_epoch)
    run.ckpt.save(run.step, tree, meta, metrics, force=force)


@dataclasses.dataclass
class Result:
    """What `fit` ends with: the last epoch's record ({} if nothing was left to train) and the
    final TrainState (on the host's devices, unreplicated)."""

    record: dict
    state: TrainState
    config: Config | None = None  # the config it trained with (with --data: the data's classes, model fields)


def fit(cfg: Config, workdir: str | Path, *, log=print, model=None, task: tasks.Task | None = None,
        splits: tasks.Splits | None = None, on_epoch=None) -> Result:
    """Trains `cfg.model` (or `model`) in `workdir`, resuming from its newest intact checkpoint.

    `on_epoch(record) -> bool`: called after each epoch's checkpoint; True stops the run there
    (a sweep's pruned trial).

    Raises TrainingDiverged on a non-finite loss and Preempted after a SIGTERM/SIGINT save.
    """
    run = setup(cfg, workdir, log=log, model=model, task=task, splits=splits)
    record: dict = {}
    with run.signals:  # also while close() waits for the last async save
        try:
            while not run.book.finished and (run.step < run.total_steps or epoch_left_unevaluated(run)):
                timing = run_epoch(run)
                record = evaluate(run, timing)
                should_stop(run)
                checkpoint_if_due(run, record)
                if on_epoch is not None and on_epoch(record):
                    break
        finally:
            run.close()
    return Result(record, run.strategy.unreplicate(run.state), run.cfg)


@functools.cache
def _finite_program():
    """The all-finite reduction, compiled fast (it runs once per checkpoint), on first use: the
    backend must not start at import (jax.distributed.initialize comes first)."""
    return jax.jit(lambda leaves: jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves] or [True])),
                   compiler_options=zoo.registry.init_compiler_options())


def all_finite(tree) -> bool:
    """Whether every floating-point leaf of `tree` is finite (one small device reduction)."""
    return bool(_finite_program()([x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]))


def _example(model, split):
    """One host input, for a module without an input spec: the first example."""
    if isinstance(split, dict):
        return split["x"][:1]
    return None if hasattr(model, "input_spec") else split.arrays(1)["x"]


def _streamed_strategy(strategy, split, order_of, total_steps: int) -> Feeder:
    if not hasattr(strategy, "run_batches"):
        raise ValueError(f"--strategy {strategy.name} trains on data held on the devices; a streamed image "
                         "folder (--data) trains with --strategy jit")
    return Feeder(strategy, split, order_of, total_steps)


def loader_state(split, step: int, steps_per_epoch: int) -> dict:
    """Where a streamed split's loader restarts after a checkpoint at `step`: the epoch and the
    step position in it (the order is a pure function of seed and epoch), and the split's size
    and files, so a resumed run refuses a folder that changed."""
    epoch = step // steps_per_epoch
    return {"epoch": epoch, "position": step - epoch * steps_per_epoch, "examples": len(split),
            "files": stream.fingerprint(split)}


def _check_loader(saved: dict, split, step: int, steps_per_epoch: int) -> None:
    if "loader" not in saved or isinstance(split, dict):
        return
    now = loader_state(split, step, steps_per_epoch)
    if saved["loader"] != now:
        raise ValueError(f"the workdir's run read {saved['loader']['examples']} training images (epoch "
                         f"{saved['loader']['epoch']}, step {saved['loader']['position']}) but --data now gives "
                         f"{now['examples']}{' other files' if now['examples'] == saved['loader']['examples'] else ''}; "
                         "resume with the same folder or use a new --workdir")


def _check_same_run(saved: dict, cfg: Config) -> None:
    # Resuming with a different model, data or batch size would silently train something else.
    now = {**cfg.to_json(), "val_size": tfds_val_size(cfg)}
    saved = {**saved, "val_size": tfds_val_size(saved)} if "val_size" in saved else saved
    for key in ("model", "dataset", "data", "batch_size", "seed", "model_overrides", "seq_len", "val_size", "train_limit"):
        if key in saved and saved[key] != now[key]:
            raise ValueError(
                f"the workdir holds a run with {key}={saved[key]!r} but this run has {key}={now[key]!r}; "
                "use a new --workdir or the same settings to resume"
            )


def schedule_change(saved: dict, cfg: Config) -> str | None:
    """A warning when a resumed run's learning-rate schedule is not the one it started with.

    Schedules are functions of the step and of the run length, so resuming with another
    --epochs/--max-steps (or lr, schedule, warmup) makes the rate jump at the resume point.
    """
    keys = ("schedule", "lr", "warmup_steps", "epochs", "max_steps")
    if cfg.schedule == "constant" and saved.get("schedule", "constant") == "constant":
        keys = ("lr",)  # a constant rate does not depend on the run length
    changed = [f"{k} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in keys if k in saved and saved[k] != getattr(cfg, k)]
    if not changed:
        return None
    return ("resuming with " + ", ".join(changed) + f": the {cfg.schedule} learning-rate schedule is recomputed for "
            "this run, so the rate jumps at the resume point instead of following the curve the checkpoint was trained on")
