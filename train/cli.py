"""The `zoo` command: list, train, eval, sample, prepare.

    zoo list
    zoo train cnn --epochs 3 --workdir runs/cnn
    zoo eval cnn --workdir runs/cnn            # or: zoo eval cnn --pretrained mnist
    zoo sample char_lstm --pretrained tiny_shakespeare
    zoo prepare mnist tiny_shakespeare         # TFDS, offline from the vendored data/
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import signal
import sys
from pathlib import Path

from train.config import ALIASES, Config, flag, loads_finite

# Flags of `zoo train`, generated from Config (help and valid values from each field's
# metadata) so the two can never drift apart.
_SKIP = {"model", "model_overrides"}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, no abbreviated flags, and close-name hints for unknown flags."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # a new flag must not change what an abbreviation meant
        self.flags: list[str] = []  # set first: the base class adds --help
        self.hints: dict[str, str] = {}  # other spellings users try -> the flag
        self.commands: dict[str, _Parser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        self.flags.extend(s for s in action.option_strings if s.startswith("--"))
        return action

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def suggest(self, unknown: list[str]) -> str:
        """'; did you mean --x?' for the first unknown flag with a close known one, else ''."""
        for arg in unknown:
            name = arg.split("=", 1)[0]
            if not name.startswith("--"):
                continue
            close = self.hints.get(name) or next(iter(difflib.get_close_matches(name, self.flags, n=1)), None)
            if close:
                return f"; did you mean {close}?"
        return ""

    def parse_args(self, args=None, namespace=None):
        namespace, unknown = self.parse_known_args(args, namespace)
        if unknown:
            parser = self.commands.get(getattr(namespace, "command", None), self)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}{parser.suggest(unknown)}")
        return namespace


def _add_config_flags(parser: _Parser) -> None:
    for field in dataclasses.fields(Config):
        if field.name in _SKIP:
            continue
        default = field.default if field.default not in (None, "", dataclasses.MISSING) else "none"
        kind = {"int": int, "float": float, "str": str, "bool": bool, "str | None": str, "list": _int_list}.get(
            str(field.type), str)
        if kind is bool:
            help_text = f"{field.metadata['help']} [default {'on' if default else 'off'}]"
            parser.add_argument(flag(field.name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            help_text = f"{field.metadata['help']} [{field.metadata['check'].describe()}; default {default}]"
            parser.add_argument(flag(field.name), type=kind, default=None, metavar=field.name.upper(), help=help_text)
    parser.hints.update({flag(alias): flag(name) for alias, name in ALIASES.items()})
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=JSON",
        help="model override, e.g. --set dropout_rate=0.25 --set 'hidden=[256,128]' (a bare word is a string: "
             "--set act=relu); zoo list shows the models, their fields are in zoo/*.py",
    )
    parser.add_argument(
        "--config", metavar="FILE.json",
        help="a JSON object of these fields (the train/configs/*.json recipe format, \"model_overrides\" for "
             "--set), applied over the recipe and under explicit flags",
    )


def _int_list(raw: str) -> list:
    """"0,1,2" -> [0, 1, 2] (argparse reports a ValueError as an invalid value of the flag)."""
    return [int(part) for part in raw.split(",") if part.strip()]


_int_list.__name__ = "comma-separated integers"  # argparse names the type in its error


def _looks_like_json(raw: str) -> bool:
    """Values a user meant as JSON (a list, object, quoted string or number), as opposed to a bare word."""
    return raw[:1] in ("[", "{", '"') or raw.lstrip("+-.")[:1].isdigit()


def _overrides(args) -> dict:
    """The Config fields given as flags (unset ones are None) and the --set model overrides."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if f.name not in _SKIP}
    if args.set:
        model_overrides = {}
        for item in args.set:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--set {item}: must be FIELD=JSON, e.g. --set dropout_rate=0.25")
            try:
                model_overrides[key] = loads_finite(raw)
            except json.JSONDecodeError as e:
                if _looks_like_json(raw):
                    raise ValueError(f"--set {item}: malformed JSON ({e}); a string value starting with "
                                     "[ { \" or a digit must be JSON-quoted") from e
                model_overrides[key] = raw  # a bare word (--set act=relu) is a string
            except ValueError as e:  # NaN, Infinity, -Infinity
                raise ValueError(f"--set {item}: {e}") from e
        values["model_overrides"] = model_overrides
    return values


def _setup_jax(args) -> None:
    """Persistent compilation cache (on by default) and multi-host initialization."""
    import jax

    cache = os.environ.get("ZOO_COMPILATION_CACHE", str(Path.home() / ".cache" / "zoo" / "jax"))
    if cache and cache.lower() not in ("0", "off", "none"):
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if getattr(args, "coordinator", None) or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        from train.parallel import init_distributed

        init_distributed(args.coordinator, args.num_processes, args.process_id)


def argv_is_cli() -> bool:
    return len(sys.argv) > 1 and sys.argv[1] == "train"


def cmd_list(args) -> int:
    import zoo

    rows = [("name", "task", "input", "params", "pretrained")]
    for name in zoo.list_models():
        s = zoo.get_spec(name)
        shape = "(" + ", ".join("T" if d is None else str(d) for d in s.input.shape) + f") {s.input.dtype}"
        rows.append((name, s.task, shape, f"{s.num_params:,}", ",".join(s.pretrained) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def train_config(args) -> Config:
    """The validated Config of parsed `zoo train` arguments: recipe < --config file < flags.

    Also checks that the model initializes with its overrides (shapes only), so every error
    comes before any work. Raises ValueError naming the flag (or file), the value and what is allowed.
    """
    from train.config import check_model, resolve

    cfg = resolve(args.model, _overrides(args), config_file=args.config)
    check_model(cfg)
    return cfg


def cmd_train(args) -> int:
    cfg = train_config(args)  # before anything is written
    from train.loop import Preempted, TrainingDiverged, fit

    workdir = Path(args.workdir or Path("runs") / args.model)
    print(f"training {cfg.model} on {cfg.dataset} in {workdir.absolute()}")
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "command.txt").exists():
        (workdir / "command.txt").write_text("zoo " + " ".join(sys.argv[1:] if argv_is_cli() else ["train", args.model]) + "\n")
    try:
        record = fit(cfg, workdir).record
    except Preempted as e:
        print(f"preempted: {e}")
        return 130 if e.signum == signal.SIGINT else 0
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if record and args.test:
        return _eval_workdir(args.model, workdir, "test", None)
    return 0


def _eval_workdir(model_name: str, workdir: Path, split: str, which: str | None) -> int:
    from train.evaluate import evaluate_workdir

    result = evaluate_workdir(model_name, workdir, split=split, which=which)
    _print_eval(result)
    return 0


def _print_eval(result: dict) -> None:
    m = result["metrics"]
    print(f"{result['model']} on {result['dataset']}/{result['split']} ({m['count']} examples, {result['source']}):")
    for key, value in m.items():
        if isinstance(value, float):
            print(f"  {key}: {value:.6g}")
    if "per_class" in m:
        print("  class  precision  recall  f1      support")
        for c, r in m["per_class"].items():
            print(f"  {c:>5}  {r['precision']:.4f}     {r['recall']:.4f}  {r['f1']:.4f}  {r['support']}")
        print("  confusion (rows: true, cols: predicted):")
        for row in m["confusion"]:
            print("   " + " ".join(f"{v:5d}" for v in row))
    if "classes_covered" in m:  # generative quality (train/gen_metrics.py)
        print(f"  classes_covered: {m['classes_covered']} of 10 digits (cnn.mnist confidence > 0.9), "
              f"over {m['quality_n']} images")
    if result.get("saved"):
        print(f"saved {result['saved']}")


def cmd_eval(args) -> int:
    from train.evaluate import evaluate_pretrained, evaluate_workdir

    if args.pretrained or args.path:
        result = evaluate_pretrained(args.model, args.pretrained, path=args.path, split=args.split, data_dir=args.data_dir, out=args.out,
                                     quality_n=args.quality_n)
    else:
        workdir = Path(args.workdir or Path("runs") / args.model)
        result = evaluate_workdir(args.model, workdir, split=args.split, which=args.which, out=args.out,
                                  quality_n=args.quality_n)
    _print_eval(result)
    return 0


def cmd_sample(args) -> int:
    import jax

    from train import tasks
    from train.evaluate import variables_for

    task = tasks.of_model(args.model)
    if task.sample is None:
        raise ValueError(f"zoo sample works for generative models (char_lstm, dcgan), not {args.model!r}")
    model, variables = variables_for(args.model, pretrained=args.pretrained, path=args.path, workdir=args.workdir)
    options = {k: getattr(args, k) for k in ("prompt", "length", "temperature", "num", "out")}
    print(task.sample(model, variables, jax.random.key(args.seed), options))
    return 0


def cmd_export(args) -> int:
    """Best (or latest) checkpoint of a run -> evaluated on the test split -> exported (and shipped)."""
    from train import tasks
    from train.evaluate import evaluate_run, restore_workdir
    from zoo.exports import ship, write_export

    workdir = Path(args.workdir or Path("runs") / args.model)
    cfg, model, variables, step = restore_workdir(workdir, args.which)
    if cfg.model != args.model:
        raise ValueError(f"{workdir} holds a {cfg.model!r} run, not {args.model!r}")
    metrics = evaluate_run(cfg, model, variables, args.split)  # the checkpoint restored above, not again
    name = tasks.of_model(args.model).val_metric  # the metric the run was selected on
    command = (workdir / "command.txt").read_text().strip() if (workdir / "command.txt").exists() else None
    out = write_export(
        args.out,
        args.model,
        variables,
        model_overrides=cfg.model_overrides,
        dataset=cfg.dataset,
        metric={"name": name, "value": metrics[name], "split": args.split, "count": metrics["count"], "step": step},
        command=command,
        train_config=cfg.to_json(),
        overwrite=args.overwrite,
    )
    print(f"exported {args.model} step {step} ({name}={metrics[name]:.6g} on {args.split}) to {out}")
    if args.ship:
        entry = ship(out, args.ship, overwrite=args.overwrite)
        print(f"shipped as {args.model}.{args.ship}: {entry}")
    return 0


def cmd_prepare(args) -> int:
    from train import data

    data.main(list(args.names) + (["--data-dir", args.data_dir] if args.data_dir else []))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zoo", description="JAX/Flax model zoo: train, evaluate and sample the tutorial models.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list registered models").set_defaults(func=cmd_list)

    t = sub.add_parser(
        "train", help="train a model (resumes if the workdir has a checkpoint)",
        description="Train a model; resumes if the workdir has a checkpoint. Every value is checked before any "
                    "work. Defaults below are Config's; the model's recipe (train/configs/MODEL.json), then "
                    "--config, then the flags override them.",
    )
    t.add_argument("model", help="registered model name (zoo list)")
    t.add_argument("--workdir", help="run directory (default runs/MODEL)")
    t.add_argument("--test", action="store_true", help="evaluate the final model on the test split when done")
    t.add_argument("--coordinator", help="multi-host: coordinator host:port (or JAX_COORDINATOR_ADDRESS)")
    t.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    t.add_argument("--process-id", type=int, help="multi-host: this process's id")
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run (best checkpoint) or pretrained weights")
    e.add_argument("model")
    e.add_argument("--workdir")
    e.add_argument("--pretrained", help="shipped weights tag, e.g. mnist")
    e.add_argument("--path", help="exported checkpoint dir or URL")
    e.add_argument("--split", default="test")
    e.add_argument("--which", choices=["best", "latest"], default=None, help="checkpoint (default: best if tracked)")
    e.add_argument("--data-dir")
    e.add_argument("--out", help="where to save the JSON report (default WORKDIR/eval_SPLIT.json)")
    e.add_argument("--quality-n", type=int, default=10_000,
                   help="dcgan/autoencoder on MNIST: images for the Frechet distance and confidence measures "
                   "(train/gen_metrics.py); 0 = off")
    e.set_defaults(func=cmd_eval)

    s = sub.add_parser("sample", help="sample from a generative model (char_lstm text, dcgan images)")
    s.add_argument("model")
    s.add_argument("--pretrained")
    s.add_argument("--path")
    s.add_argument("--workdir")
    s.add_argument("--prompt", default="ROMEO:")
    s.add_argument("--length", type=int, default=300)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--num", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out")
    s.set_defaults(func=cmd_sample)

    x = sub.add_parser("export", help="export a run's best checkpoint as params-only weights (and ship them)")
    x.add_argument("model")
    x.add_argument("out", help="export directory to create")
    x.add_argument("--workdir")
    x.add_argument("--which", choices=["best", "latest"], default=None)
    x.add_argument("--split", default="test", help="split whose metric is recorded in the manifest")
    x.add_argument("--ship", metavar="TAG", help="also copy into zoo/weights as MODEL.TAG")
    x.add_argument("--overwrite", action="store_true")
    x.set_defaults(func=cmd_export)

    p = sub.add_parser("prepare", help="prepare datasets with TFDS (offline from data/ for mnist, tiny_shakespeare)")
    p.add_argument("names", nargs="+")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_prepare)
    parser.commands = dict(sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("train", "eval", "sample", "export"):
        _setup_jax(args)
    try:
        return args.func(args)
    except (ValueError, KeyError, TypeError, OSError) as e:  # OSError: unreadable files, failed downloads
        if os.environ.get("ZOO_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
