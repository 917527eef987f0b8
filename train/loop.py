"""fit(): the training loop. Resume, epochs of compiled chunks, eval, logging, early stop,
checkpoints, samples; and evaluate() for finished runs and exported weights.

Determinism: the data order of an epoch is a pure function of (seed, epoch), step
randomness is fold_in(base key, step), and dispatch chunks are aligned to the epoch
start, so a run resumed from any checkpoint replays the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import zoo
from train import data, parallel, report, tasks
from train.checkpoint import Checkpointer
from train.config import Config
from train.state import TrainState, create_state, glorot_reinit, make_optimizer, make_schedule
from train.steps import to_input


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last finalized checkpoint is left untouched."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved and the run can be resumed."""


def _tuples(value):
    # JSON turns tuples into lists; module fields (hashable dataclass) want tuples back.
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def build_model(cfg: Config):
    return zoo.create(cfg.model, **{k: _tuples(v) for k, v in cfg.model_overrides.items()})


def state_tree(state: TrainState) -> dict:
    """The checkpointed part of a TrainState (arrays only)."""
    return {
        "step": state.step,
        "params": state.params,
        "model_state": state.model_state,
        "opt_state": state.opt_state,
        "rng": state.rng,
    }


def _example_input(x: np.ndarray):
    return to_input(jnp.asarray(x[:1]))


class _SigtermFlag:
    """Turns SIGTERM into a flag checked at dispatch boundaries (main thread only)."""

    def __init__(self):
        self.raised = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old = None
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def initial_state(cfg: Config, model, task: str, train_x: np.ndarray, total_steps: int, *, log=print) -> TrainState:
    """A fresh TrainState for `cfg`: optimizer and schedule, init (default/glorot/init_from)."""
    schedule = make_schedule(cfg.schedule, cfg.lr, total_steps, cfg.warmup_steps)
    tx = make_optimizer(
        cfg.optimizer, schedule, momentum=cfg.momentum, weight_decay=cfg.weight_decay, clip_norm=cfg.clip_norm, b1=cfg.b1
    )
    init_key, state_key, reinit_key = jax.random.split(jax.random.key(cfg.seed), 3)
    # GANs take latent noise, not the data: their input spec builds the example.
    variables = zoo.init(model, init_key, None if task == "gan" else _example_input(train_x))
    if cfg.init == "glorot":
        variables = {**variables, "params": glorot_reinit(variables["params"], reinit_key)}
    elif cfg.init != "default":
        raise ValueError(f"init must be 'default' or 'glorot', got {cfg.init!r}")
    if cfg.init_from:
        from train.finetune import init_from

        variables = init_from(cfg.init_from, model, variables, log=log)
    return create_state(model, variables, tx, state_key, gan=task == "gan")


def fit(cfg: Config, workdir: str | Path, *, log=print) -> dict:
    """Trains `cfg.model` in `workdir`, resuming from its latest checkpoint if there is one.

    Returns the final epoch's record (train and validation metrics, timings).
    Raises TrainingDiverged on a non-finite loss and Preempted after a SIGTERM save.
    """
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    spec = zoo.get_spec(cfg.model)
    task = spec.task
    model = build_model(cfg)
    splits = tasks.load_splits(task, cfg)

    devices = jax.devices()
    if cfg.num_devices:
        if cfg.num_devices > len(devices):
            raise ValueError(f"num_devices={cfg.num_devices} but only {len(devices)} devices exist")
        devices = devices[: cfg.num_devices]
    mesh = parallel.make_mesh(devices)
    parallel.check_batch_size(cfg.batch_size, len(devices))
    n_train = len(splits.train["x"])
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {cfg.batch_size} is larger than the {n_train} training examples")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    state = initial_state(cfg, model, task, splits.train["x"], total_steps, log=log)

    metric, mode = tasks.VAL_METRIC[task]
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=cfg.keep_checkpoints, best_metric=f"val_{metric}", best_mode=mode)
    meta = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "finished": False}
    replicated = parallel.NamedSharding(mesh, parallel.P())
    if ckpt.latest_step() is not None:
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state_tree(state))
        restored, saved_meta = ckpt.restore(target)
        _check_same_run(saved_meta.get("config", {}), cfg)
        warning = schedule_change(saved_meta.get("config", {}), cfg)
        if warning:
            log(f"warning: {warning}")
        state = state.replace(**restored)
        meta.update({k: saved_meta[k] for k in meta if k in saved_meta})
        # Re-decided for this run: a larger --epochs/--max-steps continues a completed run
        # (the while condition stops one that is done); only an early stop stays final.
        meta["finished"] = bool(cfg.early_stop_patience and meta["bad_epochs"] >= cfg.early_stop_patience)
        log(f"resumed from step {int(restored['step'])} (epoch {meta['epoch']}) in {ckpt.directory}")
    if report.is_writer():
        (workdir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2, sort_keys=True) + "\n")

    step_fn = tasks.train_step(task, model, cfg)
    pmap_step = tasks.train_step(task, model, cfg, axis_name=parallel.AXIS) if cfg.strategy == "pmap" else None
    strategy = parallel.make_strategy(cfg.strategy, step_fn, mesh, pmap_step_fn=pmap_step)
    evaluator = parallel.make_evaluator(tasks.eval_step(task, model), mesh)
    eval_bs = max(len(devices), cfg.eval_batch_size - cfg.eval_batch_size % len(devices))
    train_data = strategy.place_data(splits.train)
    val_data = jax.tree.map(lambda a: parallel.put_global(a, replicated), splits.val)
    n_val = len(splits.val["x"])
    state = strategy.place_state(state)
    metrics_log = report.MetricsLog(workdir)
    step = int(np.asarray(strategy.unreplicate(state).step))
    record: dict = {}

    def save(epoch_done: int, val_record: dict | None, force: bool = False):
        tree = state_tree(strategy.unreplicate(state))
        # Losses are checked only at log syncs, and the step that overflows still reports a
        # finite loss: never let non-finite parameters become the "last good" checkpoint.
        if not _all_finite((tree["params"], tree["model_state"])):
            ckpt.wait()
            raise TrainingDiverged(
                f"non-finite parameters at step {step} (lr={cfg.lr}, optimizer={cfg.optimizer}); not saved. "
                f"Last good checkpoint: step {ckpt.latest_step()} in {ckpt.directory}. Lower --lr or set --clip-norm."
            )
        metrics = {f"val_{metric}": val_record[metric]} if val_record else None
        ckpt.save(step, tree, {**meta, "epoch": epoch_done, "step": step, "config": cfg.to_json()}, metrics, force=force)

    try:
        with _SigtermFlag() as sigterm:
            epoch = step // steps_per_epoch
            while step < total_steps and not meta["finished"]:
                order = np.asarray(data.epoch_order(cfg.seed, epoch, n_train))
                order = order[: steps_per_epoch * cfg.batch_size].reshape(steps_per_epoch, cfg.batch_size)
                pos = step - epoch * steps_per_epoch
                progress = report.Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.batch_size)
                progress.done = pos
                chunks, pending, t0, compile_s = [], [], time.perf_counter(), None
                per_dispatch = cfg.steps_per_dispatch or parallel.default_steps_per_dispatch(steps_per_epoch)
                while pos < steps_per_epoch and step < total_steps:
                    k = min(per_dispatch, steps_per_epoch - pos, total_steps - step)
                    tc = time.perf_counter()
                    state, m = strategy.run_chunk(state, train_data, order[pos : pos + k])
                    if compile_s is None:
                        jax.block_until_ready(m)
                        compile_s = time.perf_counter() - tc
                    pos += k
                    step += k
                    pending.append(m)  # stays on device until the next sync
                    at_end = pos >= steps_per_epoch or step >= total_steps
                    if at_end or sigterm.raised or sum(len(p["loss"]) for p in pending) >= cfg.log_every:
                        fetched = [jax.tree.map(np.asarray, p) for p in pending]
                        losses = np.concatenate([f["loss"] for f in fetched])
                        if not np.all(np.isfinite(losses)):
                            bad = step - len(losses) + int(np.argmin(np.isfinite(losses)))
                            raise TrainingDiverged(
                                f"non-finite loss at step {bad} (lr={cfg.lr}, optimizer={cfg.optimizer}); "
                                f"stopped without saving. Last good checkpoint: step {ckpt.latest_step()} in "
                                f"{ckpt.directory}. Lower --lr or set --clip-norm."
                            )
                        chunks.extend(fetched)
                        progress.update(len(losses), float(losses[-1]))
                        pending = []
                    if sigterm.raised:
                        save(epoch, None, force=True)
                        ckpt.wait()
                        raise Preempted(f"SIGTERM: saved step {step} in {ckpt.directory}; rerun to resume")
                    if cfg.checkpoint_steps and step % cfg.checkpoint_steps < k and not at_end:
                        save(epoch, None)
                progress.close()
                epoch_s = time.perf_counter() - t0
                if pos < steps_per_epoch:  # max_steps ended the run mid-epoch
                    meta["finished"] = True
                else:
                    epoch += 1
                train_means = {k: float(np.mean(np.concatenate([c[k] for c in chunks]))) for k in chunks[0]} if chunks else {}
                host_state = strategy.unreplicate(state)
                val = tasks.summarize(evaluator(host_state, val_data, n_val, eval_bs))
                record = {
                    "epoch": epoch,
                    "step": step,
                    **{f"train_{k}": v for k, v in train_means.items()},
                    **{f"val_{k}": v for k, v in val.items() if isinstance(v, float)},
                    "epoch_s": epoch_s,
                    "compile_s": compile_s or 0.0,
                    "examples_per_s": (len(chunks) and sum(len(c["loss"]) for c in chunks) * cfg.batch_size / epoch_s),
                }
                metrics_log.write(record)
                log(f"epoch {epoch} step {step} " + report.fmt({k: v for k, v in record.items() if k != "epoch_s"}) + f" time={epoch_s:.1f}s")
                value = val[metric]
                improved = meta["best"] is None or (value > meta["best"] if mode == "max" else value < meta["best"])
                if improved:
                    meta.update(best=value, best_epoch=epoch, bad_epochs=0)
                else:
                    meta["bad_epochs"] += 1
                if cfg.early_stop_patience and meta["bad_epochs"] >= cfg.early_stop_patience:
                    log(f"early stop: val_{metric} has not improved for {meta['bad_epochs']} epochs (best {meta['best']:.4g} at epoch {meta['best_epoch']})")
                    meta["finished"] = True
                if step >= total_steps:
                    meta["finished"] = True
                if cfg.sample_every and epoch % cfg.sample_every == 0 and report.is_writer():
                    write_samples(task, model, host_state, splits.val, workdir / "samples", epoch, cfg.seed, log)
                if meta["finished"] or epoch % cfg.checkpoint_every == 0:
                    save(epoch, val)
    finally:
        ckpt.close()
        metrics_log.close()
    return record


@jax.jit
def _finite(leaves):
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


def _all_finite(tree) -> bool:
    """Whether every floating-point leaf of `tree` is finite (one small device reduction)."""
    return bool(_finite([x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]))


def _check_same_run(saved: dict, cfg: Config) -> None:
    # Resuming with a different model, data or batch size would silently train something else.
    for key in ("model", "dataset", "batch_size", "seed", "model_overrides", "seq_len", "val_size", "train_limit"):
        if key in saved and saved[key] != cfg.to_json()[key]:
            raise ValueError(
                f"the workdir holds a run with {key}={saved[key]!r} but this run has {key}={cfg.to_json()[key]!r}; "
                "use a new --workdir or the same settings to resume"
            )


def schedule_change(saved: dict, cfg: Config) -> str | None:
    """A warning when a resumed run's learning-rate schedule is not the one it started with.

    Schedules are functions of the step and of the run length, so resuming with another
    --epochs/--max-steps (or lr, schedule, warmup) makes the rate jump at the resume point
    instead of continuing the curve the checkpoint was trained on.
    """
    keys = ("schedule", "lr", "warmup_steps", "epochs", "max_steps")
    if cfg.schedule == "constant" and saved.get("schedule", "constant") == "constant":
        keys = ("lr",)  # a constant rate does not depend on the run length
    changed = [f"{k} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in keys if k in saved and saved[k] != getattr(cfg, k)]
    if not changed:
        return None
    return ("resuming with " + ", ".join(changed) + f": the {cfg.schedule} learning-rate schedule is recomputed for "
            "this run, so the rate jumps at the resume point instead of following the curve the checkpoint was trained on")


def write_samples(task: str, model, state: TrainState, val: dict, outdir: Path, epoch: int, seed: int, log=print) -> None:
    """AE: originals above reconstructions; GAN: 64 samples from fixed noise; LM: a text sample."""
    variables = jax.device_get(state.variables())
    if task == "reconstruction":
        x = to_input(jnp.asarray(val["x"][:32]))
        recon = model.apply(variables, x)
        grid = jnp.concatenate([x, recon], 0)
        report.save_grid(grid, outdir / f"recon_epoch{epoch:03d}.png")
    elif task == "gan":
        z = jax.random.normal(jax.random.key(seed + 1_000_003), (64, tasks.latent_dim(model)))
        report.save_grid(model.apply(variables, z, method="generate"), outdir / f"samples_epoch{epoch:03d}.png")
    elif task == "language_model":
        text = sample_text(model, variables, "ROMEO:", 200, jax.random.key(seed + epoch))
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / f"text_epoch{epoch:03d}.txt").write_text(text)
        log("sample: " + text.replace("\n", "\n        "))


def sample_text(model, variables, prompt: str, length: int, key, temperature: float = 0.8) -> str:
    """Generates `length` characters after `prompt` with a char-level LM."""
    tokens = jnp.asarray(zoo.rnn.encode(prompt))[None]
    out = jax.jit(lambda v, k, t: model.apply(v, k, t, length, temperature, method="generate"))(variables, key, tokens)
    return prompt + zoo.rnn.decode(out[0])


def evaluate(task: str, model, variables: dict, arrays: dict, *, batch_size: int = 1000, devices=None) -> dict:
    """Metrics of `variables` on `arrays` ({"x", "y"}), in one compiled dispatch.

    Classification adds per-class precision/recall/F1, macro F1 and the confusion matrix.
    """
    devices = jax.devices() if devices is None else devices
    mesh = parallel.make_mesh(devices)
    replicated = parallel.NamedSharding(mesh, parallel.P())
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        model_state={k: v for k, v in variables.items() if k != "params"},
        opt_state=(),
        rng=jnp.zeros((2,), jnp.uint32),
        apply_fn=model.apply,
        tx=optax.identity(),
    )
    state = jax.tree.map(lambda a: parallel.put_global(a, replicated), state)
    on_device = jax.tree.map(lambda a: parallel.put_global(a, replicated), arrays)
    bs = max(len(devices), batch_size - batch_size % len(devices))
    run = parallel.make_evaluator(tasks.eval_step(task, model), mesh)
    return tasks.summarize(run(state, on_device, len(arrays["x"]), bs))
