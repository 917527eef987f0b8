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
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import optax

import zoo
from train import data, loop, parallel, report, tasks, workdir as workdirs
from train.checkpoint import Checkpointer
from train.config import Config
from train.state import TrainState, make_optimizer, make_schedule
from zoo.exports import write_text_atomic

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


def member_optimizer(cfg: Config, hp: dict, total_steps: int, *, clip: bool, decay: bool) -> optax.GradientTransformation:
    """One member's optimizer from its hyperparameters `hp` (scalars, traced under vmap).

    The learning rate is the member's peak times the shared schedule's shape (the schedule at
    peak 1). `clip`/`decay`: whether any member clips/decays (else those stay out of the chain,
    as in a plain run with 0).
    """
    shape = make_schedule(cfg.schedule, 1.0, total_steps, cfg.warmup_steps)
    tx = make_optimizer(cfg.optimizer, lambda count: hp["lr"] * shape(count), momentum=hp["momentum"],
                        weight_decay=hp["weight_decay"] if decay else 0.0, clip_norm=hp["clip_norm"] if clip else 0.0,
                        b1=hp["b1"])
    if cfg.train_only:  # as loop.initial_state: frozen parameters get zero updates
        tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()},
                                   lambda params: zoo.param_labels(params, cfg.train_only))
    return tx


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
    cfg = cfgs[0]
    p = loop.plan(cfg, model=model, task=task, splits=splits)
    task, model, splits, devices, mesh = p.task, p.model, p.splits, p.devices, p.mesh
    n_train, k, spe, total_steps = len(splits.train["x"]), len(cfgs), p.steps_per_epoch, p.total_steps

    # Each member starts from the state loop.fit builds for its config (init, seed, init_from).
    plain = [loop.initial_state(c, model, task, total_steps, example=splits.train["x"][:1], log=log) for c in cfgs]
    hp = hyperparameters(cfgs)
    clip, decay = bool(np.any(hp["clip_norm"] > 0)), bool(np.any(hp["weight_decay"] > 0))

    def tx_of(h):
        return member_optimizer(cfg, h, total_steps, clip=clip, decay=decay)

    def init_opt(params, h):
        tx = tx_of(h)
        return {p: tx.init(params[p]) for p in task.players} if task.players else tx.init(params)

    # Optimizer states are re-initialized for the shared member optimizer (whose chain may
    # hold stateless clipping/decay a member's own lacks); the array leaves are the same.
    state = _stack([{**loop.state_tree(s), "opt_state": None} for s in plain])
    state["opt_state"] = jax.jit(jax.vmap(init_opt))(state["params"], hp)
    treedefs = [jax.tree.structure(s.opt_state) for s in plain]
    for i, s in enumerate(plain):
        _check_opt_structure(jax.tree.map(lambda a: a[i], state["opt_state"]), s.opt_state)

    step_fn = task.train_step(model, cfg)

    def member_step(tree, h, batch):
        new, metrics = step_fn(TrainState(**tree, apply_fn=model.apply, tx=tx_of(h)), batch)
        return loop.state_tree(new), metrics

    replicated = parallel.NamedSharding(mesh, parallel.P())
    batch_sharding = parallel.NamedSharding(mesh, parallel.P(None, parallel.AXIS))  # (K, B, ...): B split

    def chunk(tree, h, train_data, idx):  # idx: (S, K, B) example indices
        def body(tree, i):
            batch = jax.vmap(lambda j: parallel.gather(train_data, j))(i)
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            return jax.vmap(member_step)(tree, h, batch)

        return parallel.scan_steps(body, tree, idx)  # metrics: (S, K) each

    run_chunk = jax.jit(chunk, donate_argnums=0, out_shardings=replicated,
                        compiler_options=parallel.compiler_options(devices))
    eval_fn = jax.vmap(task.eval_step(model), in_axes=(0, None, None))
    evaluator = parallel.make_evaluator(eval_fn, mesh)
    eval_batch = max(len(devices), cfg.eval_batch_size - cfg.eval_batch_size % len(devices))

    put = lambda a: parallel.put_global(a, replicated)  # noqa: E731
    state, hp_dev = jax.tree.map(put, state), jax.tree.map(put, hp)
    train_data, val_data = jax.tree.map(put, splits.train), jax.tree.map(put, splits.val)
    bound = loop.max_in_flight(devices)
    per_dispatch = cfg.steps_per_dispatch or parallel.default_steps_per_dispatch(spe)

    members: list[Member] = []
    try:
        for c, w, treedef in zip(cfgs, workdirs_, treedefs):
            members.append(_open_member(c, w, task, treedef))
        step = 0
        while step < total_steps and any(m.active for m in members):
            epoch = step // spe
            orders = np.stack([np.asarray(data.epoch_order(c.seed, epoch, n_train))[: spe * cfg.batch_size]
                               .reshape(spe, cfg.batch_size) for c in cfgs], axis=1)  # (spe, K, B)
            for m in members:
                m.book.sums, m.book.sum_steps = {}, 0
            progress = report.Progress(spe, f"population of {k}: epoch {epoch + 1}/{cfg.epochs}", cfg.batch_size * k)
            pending, t0, compile_s, pos, steps_run = [], time.perf_counter(), None, 0, 0

            def sync():
                fetched = [jax.tree.map(np.asarray, p) for p in pending]
                pending.clear()
                for i, m in enumerate(members):
                    if not m.active:
                        continue
                    losses = np.concatenate([f["loss"][:, i] for f in fetched])
                    if not np.all(np.isfinite(losses)):
                        bad = step - len(losses) + int(np.argmin(np.isfinite(losses)))
                        _stop(m, "diverged", log, f"non-finite loss at step {bad} (lr={m.cfg.lr}); not saved")
                        continue
                    for f in fetched:
                        for key, v in f.items():
                            m.book.sums[key] = m.book.sums.get(key, 0.0) + float(np.sum(v[:, i], dtype=np.float64))
                    m.book.sum_steps += len(losses)
                shown = next((i for i, m in enumerate(members) if m.active), 0)  # the bar shows one member's loss
                progress.update(sum(len(f["loss"]) for f in fetched), float(fetched[-1]["loss"][-1, shown]))

            while pos < spe and step < total_steps:
                n = min(per_dispatch, spe - pos, total_steps - step)
                tc = time.perf_counter()
                state, metrics = run_chunk(state, hp_dev, train_data, put(orders[pos : pos + n].astype(np.int32)))
                if compile_s is None:
                    jax.block_until_ready(metrics)
                    compile_s = time.perf_counter() - tc
                pos, step, steps_run = pos + n, step + n, steps_run + n
                pending.append(metrics)
                queued = sum(len(p["loss"]) for p in pending)
                if pos >= spe or step >= total_steps or queued >= cfg.log_every or (bound and queued >= bound):
                    sync()
            progress.close()
            epoch_s = time.perf_counter() - t0
            timing = {"epoch_s": epoch_s, "compile_s": compile_s or 0.0,
                      "examples_per_s": steps_run * cfg.batch_size / epoch_s if steps_run else 0}
            if pos < spe:  # max_steps ended the run mid-epoch
                for m in members:
                    m.book.finished = True
            else:
                for m in members:
                    m.book.epoch = epoch + 1
            _epoch_end(members, state, step, timing, task, model, splits, evaluator, val_data, eval_batch,
                       total_steps, log, on_epoch)
    finally:
        errors = []
        for m in members:
            try:
                m.close()
            except Exception as e:  # every member's files are closed; the first error is raised
                errors.append(e)
        if errors:
            raise errors[0]
    return Result(members, state)


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


def _epoch_end(members, state, step, timing, task, model, splits, evaluator, val_data, eval_batch, total_steps,
               log, on_epoch) -> None:
    """Per active member: validation record, early stopping, checkpoint if due, `on_epoch`."""
    variables = {"params": state["params"], **state["model_state"]}
    sums = evaluator(variables, val_data, len(splits.val["x"]), eval_batch)
    sums = jax.tree.map(np.asarray, sums)
    metric = f"val_{task.val_metric}"
    for i, m in enumerate(members):
        if not m.active:
            continue
        cfg, book = m.cfg, m.book
        val = tasks.summarize(jax.tree.map(lambda a: a[i], sums))
        record = loop.record_epoch(task, book, step, val, timing)
        m.metrics_log.write(record)
        m.record = record
        log(f"member {m.workdir.name} epoch {book.epoch} step {step} "
            + report.fmt({k: v for k, v in record.items() if k != "epoch_s"}))
        if cfg.sample_every and book.epoch % cfg.sample_every == 0 and task.epoch_sample and report.is_writer():
            member_vars = jax.device_get(jax.tree.map(lambda a: a[i], variables))
            task.epoch_sample(model, member_vars, splits.val, m.workdir / "samples", book.epoch, cfg.seed, log)
        early = bool(cfg.early_stop_patience and book.bad_epochs >= cfg.early_stop_patience)
        if early or step >= total_steps:
            book.finished = True
        if book.finished or book.epoch % cfg.checkpoint_every == 0:
            tree = jax.tree.map(lambda a: a[i], state)
            tree["opt_state"] = jax.tree.unflatten(m.opt_treedef, jax.tree.leaves(tree["opt_state"]))
            if not loop.all_finite((tree["params"], tree["model_state"])):
                _stop(m, "diverged", log, f"non-finite parameters at step {step}; not saved")
                continue
            m.ckpt.save(step, tree, loop.checkpoint_meta(book, book.epoch, step, cfg), {metric: record[metric]})
        if on_epoch is not None and on_epoch(i, record):  # as loop.fit: asked after the checkpoint
            m.status = "pruned"
        elif early:
            _stop(m, "early_stopped", log, f"{metric} has not improved for {book.bad_epochs} epochs")
        elif book.finished:
            m.status = "complete"
