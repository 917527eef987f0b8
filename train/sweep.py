"""Hyperparameter search on Optuna: `zoo sweep MODEL --param NAME=SPEC ...`.

Each trial is a real run of the engine (`train.loop.fit`) in WORKDIR/trials/<number>/, reporting
its per-epoch validation metric to Optuna for pruning. The study lives in an Optuna storage
(default SQLite WORKDIR/study.db), so several processes running the same command against one
storage URL and study name are workers of one search, and a rerun continues it. A worker killed
mid-trial stops sending heartbeats: another worker (or the rerun) marks that trial failed and
retries its values as a new trial (RDB storages; the journal storage has no heartbeat). A worker
joining a study that already holds trials seeds its sampler from (seed, trials held), so a rerun
or a restarted worker samples new points instead of replaying the seed's sequence. Results are
rewritten from the storage at every write, also in other workers' folders on the same filesystem.

With `population=K` (`--population K`) trials are asked K at a time and those that differ only
in array-able values train together in one compiled program (train/population.py); each still
gets its own trial folder and reports to its own trial.

Everything the user gave is checked before any trial: names, specs, each range's endpoints and
each choice (as `zoo train` would check them), the storage and the study's stored space.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import io
import json
import math
import os
import stat
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from train.config import ALIASES, FIELDS, Config, check_model, loads_finite, read_config_text, resolve

KINDS = ("loguniform", "uniform", "int", "choice")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
MODEL_PREFIX = "set."
_NOT_SWEPT = ("model", "model_overrides")  # the model is the command's; model fields are set.FIELD


def _optuna():
    try:
        import optuna
    except ImportError as e:  # an extra, not a dependency of the engine
        raise ImportError("zoo sweep needs Optuna: pip install 'zoo[sweep]'") from e
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# ---------------------------------------------------------------- the search space


def parse_param(text: str) -> tuple[str, str]:
    """"NAME=SPEC" (one --param) -> (NAME, SPEC)."""
    name, sep, spec = text.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise ValueError(f"--param {text!r}: must be NAME=SPEC, e.g. lr=loguniform:1e-4:1e-2 or batch_size=choice:64,128")
    return name.strip(), spec.strip()


def read_space(path: str | Path) -> dict[str, str]:
    """A --space JSON file: {NAME: "SPEC"} (a JSON list is shorthand for choice:...)."""
    path = Path(path)
    text = read_config_text(path, "a JSON search space")
    try:
        values = loads_finite(text)
    except ValueError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from e
    if not isinstance(values, dict):
        raise ValueError(f"{path}: must be a JSON object of NAME: SPEC, got {type(values).__name__}")
    space = {}
    for name, spec in values.items():
        if isinstance(spec, list):
            spec = "choice:" + ",".join(json.dumps(v) if not isinstance(v, str) else v for v in spec)
        if not isinstance(spec, str):
            raise ValueError(f"{path}: {name}: must be a spec string such as 'loguniform:1e-4:1e-2' or a list of "
                             f"choices, got {spec!r}")
        space[name] = spec
    return space


def _number(name: str, spec: str, raw: str, kind: type) -> float | int:
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"--param {name}={spec}: {raw!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(value):
        raise ValueError(f"--param {name}={spec}: {raw!r} is not a finite number")
    return value


def _choice(raw: str) -> Any:
    """One choice: JSON (64, 0.5, true, [256,128]) or a bare word (adam); lists/objects stay JSON text,
    since Optuna's categorical values are scalars (`decode` turns them back)."""
    try:
        value = loads_finite(raw)
    except ValueError:
        return raw
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def decode(value: Any) -> Any:
    """A sampled value as the config takes it (choices that are JSON lists/objects are parsed back)."""
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def parse_spec(name: str, spec: str):
    """SPEC -> an Optuna distribution: loguniform:A:B, uniform:A:B, int:A:B or choice:V1,V2,...

    Raises ValueError for an unknown kind, a malformed number, an empty or inverted range, a
    non-positive log range, or an empty/duplicated choice list.
    """
    optuna = _optuna()
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"--param {name}={spec}: unknown distribution {kind!r}{hint}; expected one of "
                         "loguniform:A:B, uniform:A:B, int:A:B, choice:V1,V2,...")
    if kind == "choice":
        try:  # all JSON (lists included: choice:[32],[64,32]) ...
            choices = [_choice(json.dumps(v)) for v in loads_finite(f"[{rest}]")]
        except ValueError:  # ... or comma-separated, each JSON or a bare word (choice:adam,sgd)
            raw = [part.strip() for part in rest.split(",")]
            choices = [_choice(part) for part in raw] if all(raw) else []
        if not choices:
            raise ValueError(f"--param {name}={spec}: choice needs comma-separated values, e.g. choice:64,128,256")
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"--param {name}={spec}: the choices repeat a value")
        return optuna.distributions.CategoricalDistribution(choices)
    parts = rest.split(":")
    if len(parts) != 2:
        raise ValueError(f"--param {name}={spec}: {kind} needs two bounds, e.g. {kind}:{'1e-4:1e-2' if kind != 'int' else '1:8'}")
    lo, hi = (_number(name, spec, p.strip(), int if kind == "int" else float) for p in parts)
    if not lo < hi:
        raise ValueError(f"--param {name}={spec}: the range is empty or inverted; the low bound must be below the high one")
    if kind == "int":
        return optuna.distributions.IntDistribution(lo, hi)
    if kind == "loguniform" and lo <= 0:
        raise ValueError(f"--param {name}={spec}: loguniform bounds must be > 0")
    return optuna.distributions.FloatDistribution(lo, hi, log=kind == "loguniform")


def model_fields(model: str) -> list[str]:
    """The fields of `model`'s module that `--set` (and `set.FIELD`) can change."""
    import zoo

    module = zoo.create(model)
    return [f.name for f in dataclasses.fields(module) if f.init and f.name not in ("parent", "name")]


def check_name(model: str, name: str) -> str:
    """The Config field (aliases resolved) or set.FIELD that `name` means; ValueError with a close name."""
    if name.startswith(MODEL_PREFIX):
        field = name[len(MODEL_PREFIX):]
        known = model_fields(model)
        if field not in known:
            close = difflib.get_close_matches(field, known, n=1)
            hint = f" (did you mean {MODEL_PREFIX}{close[0]}?)" if close else ""
            raise ValueError(f"--param {name}: {model} has no field {field!r}{hint}; its fields: {', '.join(known)}")
        return name
    name = ALIASES.get(name, name)
    if name in FIELDS and name not in _NOT_SWEPT:
        return name
    candidates = [n for n in FIELDS if n not in _NOT_SWEPT] + [MODEL_PREFIX + f for f in model_fields(model)]
    close = difflib.get_close_matches(name, candidates + list(ALIASES), n=1)
    hint = f" (did you mean {ALIASES.get(close[0], close[0])}?)" if close else ""
    raise ValueError(f"--param {name}: unknown parameter{hint}; names are Config fields (zoo train --help) "
                     f"or {MODEL_PREFIX}FIELD for model fields")


def trial_config(model: str, values: dict, *, overrides: dict | None = None, config_file=None) -> Config:
    """The validated Config of one trial: the command's flags (`overrides`, `config_file`) with the
    sampled `values` ({Config field or set.FIELD: value}) on top."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    model_overrides = dict(overrides.pop("model_overrides", {}) or {})
    for name, value in values.items():
        if name.startswith(MODEL_PREFIX):
            model_overrides[name[len(MODEL_PREFIX):]] = decode(value)
        else:
            overrides[name] = decode(value)
    return resolve(model, {**overrides, "model_overrides": model_overrides}, config_file=config_file)


def _candidates(dist) -> list:
    """The values checked before a sweep: a range's endpoints, or every choice."""
    if hasattr(dist, "choices"):
        return list(dist.choices)
    return [dist.low, dist.high]


def build_space(model: str, params: dict[str, str], *, overrides: dict | None = None, config_file=None,
                num_devices: int | None = None) -> dict:
    """{name: Optuna distribution} for `params` ({NAME: SPEC}), every name and value checked.

    Each range endpoint and each choice must give a valid config that builds the model, and a
    batch size must split over the devices (an int range of batch sizes steps by the device count).
    """
    import jax

    from train.finetune import check_source
    from train.parallel import check_batch_size

    if not params:
        raise ValueError("nothing to search: give --param NAME=SPEC (e.g. --param lr=loguniform:1e-4:1e-2) or --space FILE.json")
    base = trial_config(model, {}, overrides=overrides, config_file=config_file)
    if base.init_from:
        check_source(base.init_from)
    devices = num_devices or base.num_devices or len(jax.devices())
    space = {}
    for raw_name, spec in params.items():
        name = check_name(model, raw_name)
        if name in space:
            raise ValueError(f"--param {raw_name}: {name} is given twice")
        dist = parse_spec(name, spec)
        for value in _candidates(dist):
            try:
                cfg = trial_config(model, {name: value}, overrides=overrides, config_file=config_file)
                if name.startswith(MODEL_PREFIX):
                    check_model(cfg)
                if name == "batch_size":
                    check_batch_size(cfg.batch_size, devices)
                if name == "init_from" and cfg.init_from:
                    check_source(cfg.init_from)
            except ValueError as e:
                raise ValueError(f"--param {raw_name}={spec}: value {value!r}: {e}") from e
        if name == "batch_size" and not hasattr(dist, "choices"):
            dist = type(dist)(dist.low, dist.high, step=devices)  # only batch sizes the devices divide
        space[name] = dist
    return space


def space_json(space: dict) -> dict:
    """A JSON-able description of `space` (stored in the study, compared when a worker joins)."""
    optuna = _optuna()
    return {name: json.loads(optuna.distributions.distribution_to_json(d)) for name, d in sorted(space.items())}


def grid_of(space: dict) -> dict[str, list]:
    """The grid sampler's values: every choice, every integer of an int range."""
    grid = {}
    for name, dist in space.items():
        if hasattr(dist, "choices"):
            grid[name] = list(dist.choices)
        elif isinstance(dist.low, int) and not dist.log and getattr(dist, "step", None):
            grid[name] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise ValueError(f"--sampler grid enumerates choice and int specs; {name} is a continuous range "
                             "(use choice:V1,V2,... or another sampler)")
    return grid


# ---------------------------------------------------------------- storage and study


def open_storage(url: str, *, heartbeat: int = 60, attempts: int = 3):
    """An Optuna storage: an RDB URL (sqlite:///..., postgresql://...) with heartbeats and retries of
    trials whose worker died, or journal:PATH (a journal file on a shared filesystem).

    Workers started together race to create the schema (SQLite: "table ... already exists",
    "database is locked"), so a failure is retried `attempts` times before it is reported.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _open_storage(url, heartbeat)
        except ValueError:
            if attempt == attempts:
                raise
            time.sleep(attempt)


def _open_storage(url: str, heartbeat: int):
    optuna = _optuna()
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
        engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
        )
    except Exception as e:  # sqlalchemy's connection errors, a missing driver, a bad path
        raise ValueError(f"--storage {url}: cannot open the storage: {type(e).__name__}: {str(e).splitlines()[0]}") from e


def _make_sqlite_folder(url: str) -> None:
    """Creates the folder of a SQLite storage's database file (SQLite creates the file, not its
    folder: "unable to open database file"); other URLs are left as they are."""
    if not url.startswith("sqlite"):
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(url).database
    except ArgumentError as e:
        raise ValueError(f"--storage {url}: not a database URL: {e}") from e
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    folder = Path(database).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--storage {url}: cannot create the folder {folder}: {e.strerror or e}") from e


def _sampler(name: str, space: dict, seed: int):
    optuna = _optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid_of(space), seed=seed)
    raise ValueError(f"--sampler {name!r}: must be one of {', '.join(SAMPLERS)}")


def _pruner(name: str):
    optuna = _optuna()
    pruners = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
               "none": optuna.pruners.NopPruner}
    if name not in pruners:
        raise ValueError(f"--pruner {name!r}: must be one of {', '.join(PRUNERS)}")
    return pruners[name]()


def continued_seed(seed: int, held: int) -> int:
    """The sampler seed of a worker joining a study that already holds `held` trials: derived from
    both, so a rerun or a restarted worker samples new points, still reproducibly."""
    import numpy as np

    return int(np.random.SeedSequence([seed, held]).generate_state(1)[0])


def open_study(model: str, space: dict, *, storage, study_name: str, sampler: str = "tpe", pruner: str = "median",
               seed: int = 0, fixed: dict | None = None):
    """Creates or joins the study; a study of that name must hold the same model, space and `fixed`
    values (the config every trial shares, JSON), so workers never mix differently-run trials.

    The sampler is seeded with `seed` for a new study and with `continued_seed(seed, trials held)`
    for one that already holds trials.
    """
    from train import tasks

    optuna = _optuna()
    direction = "maximize" if tasks.of_model(model).mode == "max" else "minimize"
    sampler_obj, pruner_obj = _sampler(sampler, space, seed), _pruner(pruner)
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler_obj, pruner=pruner_obj,
                                direction=direction, load_if_exists=True)
    held = len(study.get_trials(deepcopy=False))
    if held:  # a seeded sampler restarts its sequence: a continued study would repeat its first values
        study.sampler = _sampler(sampler, space, continued_seed(seed, held))
    described, fixed = space_json(space), fixed or {}
    saved = study.user_attrs
    if "space" not in saved:
        study.set_user_attr("model", model)
        study.set_user_attr("space", described)
        study.set_user_attr("fixed", fixed)
    elif saved.get("model") != model or saved["space"] != described:
        raise ValueError(
            f"study {study_name!r} exists with model {saved.get('model')!r} and space "
            f"{json.dumps(saved['space'], sort_keys=True)}, not {model!r} with {json.dumps(described, sort_keys=True)}; "
            "use another --study (or --workdir) or the same --param values")
    elif saved.get("fixed", {}) != fixed:
        changed = sorted(k for k in {*fixed, *saved.get("fixed", {})} if fixed.get(k) != saved.get("fixed", {}).get(k))
        raise ValueError(f"study {study_name!r} exists with other fixed values: " + ", ".join(
            f"{k} {saved.get('fixed', {}).get(k)!r} there, {fixed.get(k)!r} here" for k in changed)
            + "; use the same flags, or another --study")
    return study


# ---------------------------------------------------------------- running trials


def _data_key(cfg: Config) -> tuple:
    return (cfg.dataset, cfg.data_dir, cfg.val_size, cfg.seq_len, cfg.train_limit, tuple(cfg.classes))


def _splits(cache: dict, task, cfg: Config):
    """`cfg`'s data splits, loaded once for consecutive trials that share the data settings."""
    from train import tasks

    if cfg.data:  # each trial opens it: the run's config follows the data (class names, num_classes)
        return None
    key = _data_key(cfg)
    if key not in cache:
        cache.clear()
        cache[key] = tasks.load_splits(task, cfg)
    return cache[key]


def make_objective(model: str, space: dict, workdir: Path, *, overrides: dict | None = None, config_file=None,
                   log: Callable = print) -> Callable:
    """The Optuna objective: one `train.loop.fit` per trial in WORKDIR/trials/<number>/, pruned on
    the per-epoch validation metric; returns the last epoch's metric."""
    from train import loop, tasks

    optuna = _optuna()
    task = tasks.of_model(model)
    metric = f"val_{task.val_metric}"
    splits_cache: dict = {}  # trials sharing the data settings load it once

    def objective(trial) -> float:
        values = {}
        for name, dist in space.items():
            if hasattr(dist, "choices"):
                values[name] = trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, optuna.distributions.IntDistribution):
                values[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        cfg = trial_config(model, values, overrides=overrides, config_file=config_file)
        run_dir = workdir / "trials" / str(trial.number)
        trial.set_user_attr("workdir", str(run_dir))
        trial.set_user_attr("config", cfg.to_json())  # best.json comes from here: the run may be on another machine
        pruned = []

        def on_epoch(record: dict) -> bool:
            trial.report(record[metric], record["epoch"])
            if trial.should_prune():
                pruned.append(record["epoch"])
                return True
            return False

        shown = ", ".join(f"{k}={decode(v)}" for k, v in values.items())
        log(f"trial {trial.number}: {shown} in {run_dir}")
        result = loop.fit(cfg, run_dir, log=lambda m: log(f"  [trial {trial.number}] {m}"), task=task,
                          splits=_splits(splits_cache, task, cfg), on_epoch=on_epoch)
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {pruned[0]}")
        record = result.record or _last_record(run_dir)
        return float(record[metric])

    return objective


def _suggest(trial, space: dict) -> dict:
    """The trial's values for every parameter of `space` (ask-and-tell: distributions given up front)."""
    return {name: trial.params[name] for name in space}


def _tell(study, trial, **kw):
    """`study.tell`, returning the finished trial. The grid sampler stops a study whose grid is
    exhausted with `study.stop()`, which raises outside `optimize`; the trial is stored anyway."""
    try:
        return study.tell(trial, **kw)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
        return study._storage.get_trial(trial._trial_id)


def run_populations(study, model: str, space: dict, workdir: Path, *, trials: int, population: int,
                    timeout: float | None = None, overrides: dict | None = None, config_file=None,
                    log: Callable = print, on_trial: Callable | None = None) -> None:
    """Runs trials `population` at a time until the study holds `trials` finished ones.

    Each round asks up to `population` trials, groups them by their static values
    (`population.group`: batch size, model fields, optimizer kind, epochs, ...) and trains each
    group as one population (train/population.py) in WORKDIR/trials/<number>/. Each member
    reports its per-epoch metric to its own trial; a member the pruner stops is told PRUNED
    (its slot keeps computing with the others until the group ends, its results discarded), a
    diverged member FAIL, the others COMPLETE with their last epoch's metric. Heartbeats are
    sent for every running trial, so a killed worker's trials are failed and retried.
    """
    from optuna.storages._heartbeat import get_heartbeat_thread  # what study.optimize uses per trial

    from train import population as pop, tasks

    optuna = _optuna()
    task = tasks.of_model(model)
    metric = f"val_{task.val_metric}"
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    start, splits_cache = time.monotonic(), {}
    while True:
        done = len(study.get_trials(deepcopy=False, states=finished))
        if done >= trials or (timeout is not None and time.monotonic() - start > timeout):
            return
        optuna.storages.fail_stale_trials(study)  # trials of killed workers: failed, their values retried
        sampler = study.sampler
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study):
            log("the grid is exhausted")
            return
        with warnings.catch_warnings():  # Optuna warns that heartbeats need optimize(); they are sent below
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            asked = [study.ask(space) for _ in range(min(population, trials - done))]
        cfgs = []
        for trial in asked:
            cfg = trial_config(model, _suggest(trial, space), overrides=overrides, config_file=config_file)
            trial.set_user_attr("workdir", str(workdir / "trials" / str(trial.number)))
            trial.set_user_attr("config", cfg.to_json())
            cfgs.append(cfg)
        told: set = set()
        with contextlib.ExitStack() as beats:
            for trial in asked:
                beats.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
            try:
                for members in pop.group(cfgs):
                    _run_group(study, [asked[i] for i in members], [cfgs[i] for i in members], workdir, task,
                               metric, splits_cache, log, on_trial, told)
            except BaseException:  # as study.optimize: the round's unfinished trials fail, the error propagates
                for trial in asked:
                    if trial.number not in told:
                        frozen = _tell(study, trial, state=optuna.trial.TrialState.FAIL)
                        if on_trial is not None:
                            on_trial(study, frozen)
                raise


def _run_group(study, trials: list, cfgs: list, workdir: Path, task, metric: str, splits_cache: dict, log, on_trial,
               told: set):
    """One population: trains `cfgs`, reports and tells each member's trial (adding its number to `told`)."""
    from train import population as pop

    optuna = _optuna()
    for trial in trials:
        shown = ", ".join(f"{k}={decode(v)}" for k, v in trial.params.items())
        log(f"trial {trial.number}: {shown} in {workdir / 'trials' / str(trial.number)}")
    log(f"population of {len(trials)}: trials {', '.join(str(t.number) for t in trials)}")

    def on_epoch(i: int, record: dict) -> bool:
        trials[i].report(record[metric], record["epoch"])
        return trials[i].should_prune()

    result = pop.fit_population(cfgs, [workdir / "trials" / str(t.number) for t in trials],
                                log=lambda m: log(f"  [population] {m}"), task=task, splits=_splits(splits_cache, task, cfgs[0]),
                                on_epoch=on_epoch)
    for trial, member in zip(trials, result.members):
        if member.status == "pruned":
            frozen = _tell(study, trial, state=optuna.trial.TrialState.PRUNED)
        elif member.status == "diverged" or not member.record:
            trial.set_user_attr("error", member.error or "no epoch finished")
            frozen = _tell(study, trial, state=optuna.trial.TrialState.FAIL)
        else:  # complete or early-stopped: the last epoch's metric, as a separate trial returns
            frozen = _tell(study, trial, values=float(member.record[metric]))
        told.add(trial.number)
        if on_trial is not None:
            on_trial(study, frozen)


def _last_record(run_dir: Path) -> dict:
    """The last metrics.jsonl record of a run that had nothing left to train."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def _summary(study) -> str:
    counts = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    best = ""
    if counts["COMPLETE"]:
        b = study.best_trial
        best = f"; best {b.value:.6g} (trial {b.number})"
    return (f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed, "
            f"{counts['RUNNING']} running{best}")


@dataclasses.dataclass
class Sweep:
    """What `run_sweep` ends with."""

    study: Any
    workdir: Path
    files: list


def _progress(workdir: Path, log: Callable) -> Callable:
    """The study callback that logs each finished trial and rewrites the results."""

    def progress(study, trial) -> None:
        value = trial.value if trial.value is not None else (
            trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
        shown = "-" if value is None else f"{value:.6g}"
        log(f"trial {trial.number} {trial.state.name.lower()} ({shown}); study: {_summary(study)}")
        write_results(study, workdir)

    return progress


def _check_counts(*, trials, population, timeout, heartbeat, seed) -> None:
    """run_sweep's numeric arguments (ValueError naming the flag and the value)."""
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"--trials {trials!r}: must be an integer >= 1")
    if population is not None and (not isinstance(population, int) or isinstance(population, bool) or population < 1):
        raise ValueError(f"--population {population!r}: must be an integer >= 1 (trials trained together)")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"--timeout {timeout!r}: must be > 0 seconds")
    if heartbeat < 1:
        raise ValueError(f"--heartbeat {heartbeat!r}: must be >= 1 second")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"--seed {seed!r}: must be an integer in [0, 2**32) (the sampler's seed)")


def run_sweep(model: str, params: dict[str, str], *, trials: int, workdir: str | Path, sampler: str = "tpe",
              pruner: str = "median", seed: int = 0, storage: str | None = None, study_name: str | None = None,
              timeout: float | None = None, overrides: dict | None = None, config_file=None, heartbeat: int = 60,
              population: int | None = None, log: Callable = print) -> Sweep:
    """Runs (or continues, or joins as a worker) the search until the study holds `trials`
    finished (complete or pruned) trials, then writes the results and plots.

    `population`: ask up to that many trials at a time and train those whose configs differ
    only in array-able values (train/population.py) together in one compiled program.

    Every input is checked before any trial starts (ValueError naming the flag and the value).
    """
    optuna = _optuna()
    from train.loop import TrainingDiverged

    _check_counts(trials=trials, population=population, timeout=timeout, heartbeat=heartbeat, seed=seed)
    space = build_space(model, params, overrides=overrides, config_file=config_file)
    base = trial_config(model, {}, overrides=overrides, config_file=config_file).to_json()
    if population is not None and base["strategy"] != "jit":
        raise ValueError(f"--population {population} trains under the jit strategy; got --strategy {base['strategy']}")
    _sampler(sampler, space, seed), _pruner(pruner)  # their errors, before anything is written
    workdir = Path(workdir).absolute()
    url = storage or f"sqlite:///{workdir / 'study.db'}"
    if storage is None:
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        _make_sqlite_folder(url)
    store = open_storage(url, heartbeat=heartbeat)
    # data_dir differs between machines without changing a run
    fixed = {k: v for k, v in base.items() if k not in space and k != "data_dir"}
    fixed["model_overrides"] = {k: v for k, v in base["model_overrides"].items() if MODEL_PREFIX + k not in space}
    study = open_study(model, space, storage=store, study_name=study_name or f"sweep-{model}", sampler=sampler,
                       pruner=pruner, seed=seed, fixed=fixed)
    workdir.mkdir(parents=True, exist_ok=True)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    log(f"sweep {study.study_name} of {model} in {workdir} (storage {url}): {len(space)} parameters, "
        f"{trials} trials, sampler {sampler}, pruner {pruner}")

    progress = _progress(workdir, log)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done < trials and population is not None:
        run_populations(study, model, space, workdir, trials=trials, population=population, timeout=timeout,
                        overrides=overrides, config_file=config_file, log=log, on_trial=progress)
    elif done < trials:
        study.optimize(
            make_objective(model, space, workdir, overrides=overrides, config_file=config_file, log=log),
            timeout=timeout, catch=(TrainingDiverged,),
            callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished), progress],
        )
    else:
        log(f"the study already holds {done} finished trials (--trials {trials}): nothing to run")
    files = write_results(study, workdir)
    files += write_plots(study, workdir, grid=sampler == "grid", log=log)
    log(f"done: {_summary(study)}")
    return Sweep(study, workdir, files)


# ---------------------------------------------------------------- results


_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


def result_rows(study) -> list[dict]:
    """One row per trial, sorted: complete trials by value (best first), then pruned (by their last
    reported value), then running and failed ones. `value`: the final or last reported metric."""
    maximize = study.direction.name == "MAXIMIZE"
    names = sorted({n for t in study.get_trials(deepcopy=False) for n in t.params})
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        wall = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        row = {"trial": t.number, "state": t.state.name.lower(), "value": value,
               "epochs": len(t.intermediate_values), "wall_s": None if wall is None else round(wall, 2)}
        row.update({n: decode(t.params[n]) if n in t.params else None for n in names})
        rows.append(row)

    def key(row):
        v = row["value"]
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        return (_ORDER.get(row["state"].upper(), 5), missing, 0 if missing else (-v if maximize else v), row["trial"])

    return sorted(rows, key=key)


def _title(study) -> str:
    return f"# Sweep {study.study_name}: {study.user_attrs['model']}"


def _other_workdirs(study, workdir: Path) -> list[Path]:
    """The sweep folders of other workers of `study` on this filesystem: the folders above its
    trials' WORKDIR/trials/<number>/ that already hold this study's results.md."""
    seen, found = {Path(workdir).absolute()}, []
    for t in study.get_trials(deepcopy=False):
        where = t.user_attrs.get("workdir")
        if not isinstance(where, str):
            continue
        folder = Path(where).absolute().parent.parent
        if folder in seen:
            continue
        seen.add(folder)
        try:  # lstat first: opening a FIFO or a device named results.md would block or read forever
            if not stat.S_ISREG(os.lstat(folder / "results.md").st_mode):
                continue
            with open(folder / "results.md") as f:
                if f.readline().rstrip("\n") == _title(study):
                    found.append(folder)
        except OSError:  # not on this machine, or not readable: that worker's own writes keep it current
            continue
    return found


def write_results(study, workdir: Path) -> list[Path]:
    """WORKDIR/results.csv, results.md and (once a trial completed) best.json in the recipe format,
    from the storage as it is now.

    The same files in other workers' folders of this study on this filesystem are rewritten too,
    so a worker that ended first does not keep showing a trial "running" that another worker
    finished or pruned since.
    """
    files = _write_results(study, workdir)
    for other in _other_workdirs(study, workdir):
        try:
            _write_results(study, other)
        except OSError:  # another worker's snapshot; this worker's own results are written above
            pass
    return files


def _write_results(study, workdir: Path) -> list[Path]:
    from train import tasks
    from zoo.files import write_json_atomic, write_text_atomic

    rows = result_rows(study)
    metric = "val_" + tasks.of_model(study.user_attrs["model"]).val_metric
    header = list(rows[0]) if rows else ["trial", "state", "value", "epochs", "wall_s"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(workdir / "results.csv", buffer.getvalue())

    def cell(v):
        return "-" if v is None else f"{v:.6g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)

    lines = [_title(study), "",
             f"{len(rows)} trials ({_summary(study)}); value = {metric} "
             f"({'higher' if study.direction.name == 'MAXIMIZE' else 'lower'} is better), the final epoch's for "
             "complete trials and the last reported one for pruned trials.", "",
             "| " + " | ".join(h if h != "value" else metric for h in header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r[h]) for h in header) + " |" for r in rows]
    write_text_atomic(workdir / "results.md", "\n".join(lines) + "\n")
    files = [workdir / "results.csv", workdir / "results.md"]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        config = dict(best.user_attrs["config"])
        config.pop("model")
        config.pop("data_dir")  # where this machine keeps the data is no part of a recipe
        params = ", ".join(f"{k}={decode(v)}" for k, v in best.params.items())
        config = {"_comment": f"sweep {study.study_name}: trial {best.number} ({params}), {metric}={best.value:.6g}; "
                              f"zoo train {study.user_attrs['model']} --config best.json reproduces it", **config}
        write_json_atomic(workdir / "best.json", config)
        files.append(workdir / "best.json")
    return files


def write_plots(study, workdir: Path, *, grid: bool = False, log: Callable = print) -> list[Path]:
    """PNGs from optuna.visualization.matplotlib: optimization history, parameter importances,
    parallel coordinates, and (grid) the metric against each parameter. A plot that needs more
    finished trials than there are is skipped with a message."""
    import matplotlib

    from train import tasks

    matplotlib.use("Agg")
    metric = "val_" + tasks.of_model(study.user_attrs["model"]).val_metric
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots = {"history": vis.plot_optimization_history, "importances": vis.plot_param_importances,
             "parallel_coordinates": vis.plot_parallel_coordinate}
    if grid:
        plots["metric_vs_param"] = vis.plot_slice
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        for name, plot in plots.items():
            try:
                axes = plot(study, target_name=metric)
            except Exception as e:  # e.g. importances need 2+ complete trials and 2+ parameters
                log(f"plot {name} skipped: {type(e).__name__}: {e}")
                continue
            first = axes.flat[0] if hasattr(axes, "flat") else axes
            figure = first.figure
            figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
            path = workdir / f"{name}.png"
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append(path)
    return written
