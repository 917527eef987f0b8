"""Populations: K runs of one architecture trained together, in one jit-compiled program.

The members of a population may differ only in values that can live in arrays (ARRAY_FIELDS:
lr, weight_decay, b1, momentum, clip_norm and seed, which seeds init, data order and step
randomness); everything else (batch size, epochs, optimizer kind, schedule, model fields, ...)
is shared. The train state gains a leading member axis; each member starts from exactly the
state `train.loop.fit` builds for its config, and the step is the task's own pure train step
under `jax.vmap` over (state, hyperparameters, batch). The optimizer is rebuilt inside the
vmapped step from the member's hyperparameters (arrays, not Python constants), so its state
has the structure a separate run's has and each member's final checkpoint is an ordinary one.
Each member reads its own epoch order (`data.epoch_order(seed, epoch)`) and folds its own
base key with the step and batch index, so it reproduces a separate `zoo train` run.

The epochs run through `loop.run_epoch`, the loop of a single run, over the vmapped step.
Devices: the jit/NamedSharding strategy of train/parallel.py with the member axis replicated:
every device holds all K states and its share of every member's batch ((K, B) batches sharded
on B), and XLA all-reduces the gradients. The batch size must split over the devices as for
`zoo train`.

Each member writes its own run folder: config.json, metrics.jsonl (the records `loop.fit`
writes) and checkpoints on `loop.fit`'s schedule (every `checkpoint_every` epochs and the
last), so `zoo eval --workdir`, `zoo export` and `zoo train` (resume) read it as any run.
A member that is pruned, early-stopped or diverges stops logging and saving; its slot keeps
computing until the whole population is done (its results are discarded), which keeps one
compiled program for all members.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from train import loop, parallel, report, tasks, workdir as workdirs
from train.checkpoint import Checkpointer
from train.config import Config
from train.state import TrainState
from zoo.files import write_text_atomic

# Config fields whose per-member values live in arrays; every other field is static (shared).
ARRAY_FIELDS = ("lr", "weight_decay", "b1", "momentum", "clip_norm", "seed")


def static_key(cfg: Config) -> str:
    """The config without ARRAY_FIELDS, as JSON text: configs with equal keys can share a population."""
    return json.dumps({k: v for k, v in cfg.to_json().items() if k not in ARRAY_FIELDS}, sort_keys=True)


def group(cfgs: list[Config]) -> list[list[int]]:
    """Indices of `cfgs` grouped by `static_key`, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(static_key(cfg), []).append(i)
    return list(groups.values())


def _check_members(cfgs: list[Config], workdirs_: list) -> None:
    if not cfgs:
        raise ValueError("a population needs at least one member config, got none")
    if len(workdirs_) != len(cfgs):
        raise ValueError(f"a population needs one workdir per member: {len(cfgs)} configs, {len(workdirs_)} workdirs")
    if cfgs[0].strategy != "jit":
        raise ValueError(f"a population trains under the jit strategy (member axis replicated, batches sharded); "
                         f"got --strategy {cfgs[0].strategy}")
    first = json.loads(static_key(cfgs[0]))
    for i, cfg in enumerate(cfgs[1:], 1):
        other = json.loads(static_key(cfg))
        if other != first:
            diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise ValueError(f"population member {i} differs from member 0 in {', '.join(diff)}; members may differ "
                             f"only in {', '.join(ARRAY_FIELDS)} (group configs with train.population.group)")


def hyperparameters(cfgs: list[Config]) -> dict[str, np.ndarray]:
    """The members' optimizer values as (K,) float32 arrays."""
    return {k: np.asarray([getattr(c, k) for c in cfgs], np.float32)
            for k in ("lr", "weight_decay", "b1", "momentum", "clip_norm")}


@dataclasses.dataclass
class Member:
    """One member's run folder and bookkeeping."""

    cfg: Config
    workdir: Path
    book: loop.Book
    metrics_log: report.MetricsLog
    ckpt: Checkpointer
    lock: workdirs.Lock
    opt_treedef: object  # a separate run's optimizer-state structure (for its checkpoints)
    status: str = "running"  # running, complete, pruned, early_stopped, diverged
    record: dict = dataclasses.field(default_factory=dict)
    error: str = ""

    @property
    def active(self) -> bool:
        return self.status == "running"

    def close(self) -> None:
        loop.release(self)


@dataclasses.dataclass
class Result:
    """What `fit_population` ends with: per member its status ("complete", "pruned",
    "early_stopped", "diverged"), last record and error text, and the final stacked state
    (a dict of arrays with a leading member axis, `loop.state_tree`'s keys)."""

    members: list[Member]
    state: dict

    def variables(self, i: int) -> dict:
        """Member `i`'s final variables ({"params": ..., **model_state})."""
        tree = jax.tree.map(lambda a: a[i], {"params": self.state["params"], **self.state["model_state"]})
        return jax.device_get(tree)


def _open_member(cfg: Config, workdir, task: tasks.Task, opt_treedef) -> Member:
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    workdirs.check_shared(workdir)
    lock = workdirs.acquire(workdir)
    try:
        ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=cfg.keep_checkpoints,
                            best_metric=f"val_{task.val_metric}", best_mode=task.mode)
        if ckpt.latest_step() is not None:
            ckpt.close()
            raise ValueError(f"{workdir} already holds a checkpoint; population members start fresh "
                             "(resume it with zoo train, or use a new workdir)")
        if report.is_writer():
            write_text_atomic(workdir / "config.json", json.dumps(cfg.to_json(), indent=2, sort_keys=True) + "\n")
        return Member(cfg, workdir, loop.Book(), report.MetricsLog(workdir), ckpt, lock, opt_treedef)
    except BaseException:
        lock.release()
        raise


def _stack(trees: list):
    return jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *trees)


@dataclasses.dataclass
class _Population:
    """The members as `loop.run_epoch` drives them: a Run's loop fields, one book per member.

    The state is the vmapped step's carry: (stacked state tree, stacked hyperparameters)."""

    cfgs: list[Config]
    task: tasks.Task
    model: object
    splits: tasks.Splits
    strategy: parallel.JitStrategy
    evaluator: Callable
    state: tuple
    train_data: dict
    val_data: dict
    eval_batch: int
    steps_per_epoch: int
    total_steps: int
    max_in_flight: int
    log: Callable
    members: list[Member] = dataclasses.field(default_factory=list)
    step: int = 0
    signals: loop._StopSignals = dataclasses.field(default_factory=loop._StopSignals)  # never entered
    checkpoint_steps = 0  # members save at epoch ends only
    member_axis = True

    @property
    def cfg(self) -> Config:
        return self.cfgs[0]

    @property
    def books(self) -> list[loop.Book]:
        return [m.book for m in self.members]

    def active(self, member: int) -> bool:
        return self.members[member].active

    def nonfinite(self, member: int, bad_step: int) -> None:
        m = self.members[member]
        _stop(m, "diverged", self.log, f"non-finite loss at step {bad_step} (lr={m.cfg.lr}); not saved")

    def batches(self, epoch: int) -> np.ndarray:
        n = len(self.splits.train["x"])
        return np.stack([loop.epoch_batches(self.cfg, c.seed, epoch, n, self.steps_per_epoch) for c in self.cfgs],
                        axis=1)  # (steps, K, B)

    def label(self, epoch: int) -> str:
        return f"population of {len(self.cfgs)}: epoch {epoch + 1}/{self.cfg.epochs}"


def fit_population(cfgs: list[Config], workdirs_: list, *, log: Callable = print, model=None,
                   task: tasks.Task | None = None, splits: tasks.Splits | None = None,
                   on_epoch: Callable[[int, dict], bool] | None = None) -> Result:
    """Trains `cfgs` (configs that differ only in ARRAY_FIELDS) together, member i in `workdirs_[i]`.

    Args:
      cfgs: the members' configs.
      workdirs_: one fresh run folder per member (a folder with a checkpoint is refused).
      log: progress lines.
      model, task, splits: as `loop.fit` (built from cfgs[0] when None).
      on_epoch: `(member index, record) -> bool`, called after each of an active member's
        epochs (after its checkpoint); True stops that member (a sweep's pruned trial).

    Returns:
      Result. A non-finite loss marks that member "diverged" (no checkpoint of non-finite
      parameters is saved) and the others go on.
    """
    _check_members(cfgs, workdirs_)
    pop, treedefs = _build(cfgs, log, model, task, splits)
    try:
        for c, w, treedef in zip(cfgs, workdirs_, treedefs):
            pop.members.append(_open_member(c, w, pop.task, treedef))
        while (pop.step < pop.total_steps or loop.epoch_left_unevaluated(pop)) and any(m.active for m in pop.members):
            timing = loop.run_epoch(pop)
            _epoch_end(pop, timing, on_epoch)
    finally:
        errors = []
        for m in pop.members:
            try:
                m.close()
            except Exception as e:  # every member's files are closed; the first error is raised
                errors.append(e)
        if errors:
            raise errors[0]
    return Result(pop.members, pop.state[0])


def _build(cfgs: list[Config], log: Callable, model, task, splits) -> tuple[_Population, list]:
    """The population's data, stacked initial state and vmapped step, and each member's
    optimizer-state structure as a separate run has it."""
    cfg = cfgs[0]
    if cfg.data:
        raise ValueError("--population trains on registry datasets; search your own data (--data) without "
                         "--population, one trial at a time")
    p = loop.plan(cfg, model=model, task=task, splits=splits)
    task, model, splits, total_steps = p.task, p.model, p.splits, p.total_steps
    # Each member starts from the state loop.fit builds for its config (init, seed, init_from).
    plain = [loop.initial_state(c, model, task, total_steps, example=splits.train["x"][:1], log=log) for c in cfgs]
    hp = hyperparameters(cfgs)
    clip, decay = bool(np.any(hp["clip_norm"] > 0)), bool(np.any(hp["weight_decay"] > 0))

    def tx_of(h):
        return loop.build_optimizer(cfg, total_steps, h, clip=clip, decay=decay)

    state = _stacked_state(plain, hp, tx_of, task)
    step_fn = task.train_step(model, cfg)

    def member_step(tree, h, batch):
        new, metrics = step_fn(TrainState(**tree, apply_fn=model.apply, tx=tx_of(h)), batch)
        return loop.state_tree(new), metrics

    def step(carry, batch):  # batch: (K, B, ...); metrics: (K,) each
        tree, h = carry
        new, metrics = jax.vmap(member_step)(tree, h, batch)
        return (new, h), metrics

    strategy = parallel.JitStrategy(step, p.mesh, members=True)
    evaluator = parallel.make_evaluator(jax.vmap(task.eval_step(model), in_axes=(0, None, None)), p.mesh)
    pop = _Population(
        cfgs=cfgs, task=task, model=model, splits=splits, strategy=strategy, evaluator=evaluator,
        state=strategy.place_state((state, hp)), train_data=strategy.place_data(splits.train),
        val_data=strategy.place_data(splits.val),
        eval_batch=parallel.eval_batch_size(cfg.eval_batch_size, len(p.devices)), steps_per_epoch=p.steps_per_epoch,
        total_steps=total_steps, max_in_flight=loop.max_in_flight(p.devices), log=log)
    return pop, [jax.tree.structure(s.opt_state) for s in plain]


def _stacked_state(plain: list[TrainState], hp: dict, tx_of: Callable, task: tasks.Task) -> dict:
    """The members' states stacked on a leading axis, their optimizer states re-initialized for
    the shared member optimizer (whose chain may hold stateless clipping/decay a member's own
    lacks); the array leaves are the same."""

    def init_opt(params, h):
        tx = tx_of(h)
        return {p: tx.init(params[p]) for p in task.players} if task.players else tx.init(params)

    state = _stack([{**loop.state_tree(s), "opt_state": None} for s in plain])
    state["opt_state"] = jax.jit(jax.vmap(init_opt))(state["params"], hp)
    for i, s in enumerate(plain):
        _check_opt_structure(jax.tree.map(lambda a: a[i], state["opt_state"]), s.opt_state)
    return state


def _check_opt_structure(population_opt, plain_opt) -> None:
    # The member optimizer may hold extra stateless transformations (clipping, decay); its
    # array leaves must be exactly a separate run's so checkpoints carry the plain structure.
    got = [(a.shape, a.dtype) for a in jax.tree.leaves(population_opt)]
    want = [(np.shape(a), a.dtype) for a in jax.tree.leaves(plain_opt)]
    if got != want:
        raise ValueError(f"population optimizer state leaves {got} do not match a separate run's {want}")


def _stop(m: Member, status: str, log: Callable, why: str) -> None:
    m.status, m.error = status, why
    log(f"member {m.workdir.name}: {status}: {why}")


def _epoch_end(pop: _Population, timing: dict, on_epoch) -> None:
    """Per active member: validation record, early stopping, checkpoint if due, `on_epoch`."""
    task, step, state = pop.task, pop.step, pop.state[0]
    variables = {"params": state["params"], **state["model_state"]}
    sums = jax.tree.map(np.asarray, pop.evaluator(variables, pop.val_data, len(pop.splits.val["x"]), pop.eval_batch))
    metric = f"val_{task.val_metric}"
    for i, m in enumerate(pop.members):
        if not m.active:
            continue
        cfg, book = m.cfg, m.book
        val = tasks.summarize(jax.tree.map(lambda a: a[i], sums))
        record = loop.record_epoch(task, book, step, val, timing)
        m.metrics_log.write(record)
        m.record = record
        pop.log(f"member {m.workdir.name} epoch {book.epoch} step {step} "
                + report.fmt({k: v for k, v in record.items() if k != "epoch_s"}))
        if cfg.sample_every and book.epoch % cfg.sample_every == 0 and task.epoch_sample and report.is_writer():
            member_vars = jax.device_get(jax.tree.map(lambda a: a[i], variables))
            task.epoch_sample(pop.model, member_vars, pop.splits.val, m.workdir / "samples", book.epoch, cfg.seed,
                              pop.log)
        early = bool(cfg.early_stop_patience and book.bad_epochs >= cfg.early_stop_patience)
        if early or step >= pop.total_steps:
            book.finished = True
        due = book.finished or book.epoch % cfg.checkpoint_every == 0
        if due and not _save(m, i, state, step, record, metric, pop.log):
            continue
        if on_epoch is not None and on_epoch(i, record):  # as loop.fit: asked after the checkpoint
            m.status = "pruned"
        elif early:
            _stop(m, "early_stopped", pop.log, f"{metric} has not improved for {book.bad_epochs} epochs")
        elif book.finished:
            m.status = "complete"


def _save(m: Member, i: int, state: dict, step: int, record: dict, metric: str, log: Callable) -> bool:
    """Saves member `i`'s checkpoint with a separate run's optimizer-state structure; False (and
    the member diverged, nothing saved) where its parameters are not finite."""
    tree = jax.tree.map(lambda a: a[i], state)
    tree["opt_state"] = jax.tree.unflatten(m.opt_treedef, jax.tree.leaves(tree["opt_state"]))
    if not loop.all_finite((tree["params"], tree["model_state"])):
        _stop(m, "diverged", log, f"non-finite parameters at step {step}; not saved")
        return False
    m.ckpt.save(step, tree, loop.checkpoint_meta(m.book, m.book.epoch, step, m.cfg), {metric: record[metric]})
    return True
