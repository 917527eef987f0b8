"""The `zoo` command: list, train, eval, sample, export, predict, prepare.

    zoo list                                   # or: zoo list 'cnn*' --pretrained
    zoo info cnn.mnist                         # model card of shipped weights (or: zoo info cnn)
    zoo train cnn --epochs 3 --workdir runs/cnn
    zoo eval cnn --workdir runs/cnn            # or: zoo eval cnn --pretrained mnist
    zoo sample char_lstm --pretrained tiny_shakespeare
    zoo export cnn cnn.onnx --pretrained mnist --format onnx   # or safetensors, orbax (default)
    zoo predict cnn digit.png --pretrained mnist --top-k 3
    zoo prepare mnist tiny_shakespeare         # TFDS, offline from the vendored train/vendored/
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
        kind = {"int": int, "float": float, "str": str, "bool": bool, "str | None": str, "int | None": int, "list": _int_list}.get(
            str(field.type), str)
        if field.name == "class_names":
            kind = _name_list
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


def _name_list(raw: str) -> list:
    """"cat,dog" -> ["cat", "dog"] (names keep inner spaces; empty parts are dropped)."""
    return [part.strip() for part in raw.split(",") if part.strip()]


_name_list.__name__ = "comma-separated names"


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

        # only `zoo train` has the flags; the other commands join by the JAX_* variables
        init_distributed(*(getattr(args, k, None) for k in ("coordinator", "num_processes", "process_id")))


def argv_is_cli() -> bool:
    return len(sys.argv) > 1 and sys.argv[1] == "train"


def cmd_list(args) -> int:
    import zoo

    names = zoo.list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        which = "with shipped weights " if args.pretrained else ""
        print(f"no model {which}matches {args.pattern!r}; models: {', '.join(zoo.list_models())}", file=sys.stderr)
        return 1
    rows = [("name", "task", "input", "params", "pretrained")]
    for name in names:
        s = zoo.get_spec(name)
        # shipped weights built with other overrides (mlp_binary's 784-wide input) name their input
        tags = [tag if spec.shape == s.input.shape else f"{tag} (input {_dims(spec.shape)})"
                for tag, spec in zoo.pretrained_inputs(name).items()]
        rows.append((name, s.task, f"{_dims(s.input.shape)} {s.input.dtype}", f"{s.num_params:,}", ", ".join(tags) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _dims(shape) -> str:
    return "(" + ", ".join("T" if d is None else str(d) for d in shape) + ")"


def cmd_info(args) -> int:
    import zoo

    name, _, tag = args.name.partition(".")
    print(zoo.model_card(name, tag or None, path=args.path))
    return 0


def train_config(args) -> Config:
    """The validated Config of parsed `zoo train` arguments: recipe < --config file < flags.

    Also checks that the model initializes with its overrides (shapes only), so every error
    comes before any work. Raises ValueError naming the flag (or file), the value and what is allowed.
    """
    from train.config import check_model, resolve

    cfg = resolve(args.model, _overrides(args), config_file=args.config)
    check_model(cfg)
    if cfg.init_from:
        from train.finetune import check_source

        check_source(cfg.init_from)
    return cfg


def cmd_train(args) -> int:
    cfg = train_config(args)  # before anything is written
    from train.export import recipe
    from train.loop import Preempted, TrainingDiverged, fit

    workdir = Path(args.workdir or Path("runs") / args.model)
    print(f"training {cfg.model} on {cfg.data or cfg.dataset} in {workdir.absolute()}")
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "command.txt").exists():
        (workdir / "command.txt").write_text(recipe(["zoo", *(sys.argv[1:] if argv_is_cli() else ["train", args.model])]) + "\n")
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
    from train.evaluate import report_lines

    print("\n".join(report_lines(result)))


def _check_quality_n(args) -> None:
    if args.quality_n < 0:
        raise ValueError(f"--quality-n must be >= 0 (images to score; 0 = off), got {args.quality_n}")


def cmd_eval(args) -> int:
    from train.evaluate import evaluate_pretrained, evaluate_workdir

    _check_quality_n(args)
    if args.pretrained or args.path:
        result = evaluate_pretrained(args.model, args.pretrained, path=args.path, split=args.split, data_dir=args.data_dir, out=args.out,
                                     quality_n=args.quality_n, data=args.data)
    else:
        workdir = Path(args.workdir or Path("runs") / args.model)
        result = evaluate_workdir(args.model, workdir, split=args.split, which=args.which, out=args.out,
                                  quality_n=args.quality_n, data=args.data)
    _print_eval(result)
    return 0


def cmd_sample(args) -> int:
    import jax

    from train import tasks
    from train.evaluate import variables_for

    task = tasks.of_model(args.model)
    if args.prompt == "" and task.name == "language_model":
        raise ValueError("--prompt must be at least one character (the model continues it)")
    if task.sample is None:
        raise ValueError(f"zoo sample works for generative models (char_lstm, dcgan), not {args.model!r}")
    model, variables = variables_for(args.model, pretrained=args.pretrained, path=args.path, workdir=args.workdir)
    options = {k: getattr(args, k) for k in ("prompt", "length", "temperature", "num", "out")}
    print(task.sample(model, variables, jax.random.key(args.seed), options))
    return 0


def _export_source(args) -> tuple:
    """(variables, export fields, step) from --pretrained/--path, or a run's best (latest) checkpoint."""
    from train import export

    if args.pretrained or args.path:
        if args.workdir or args.which:
            raise ValueError("zoo export: give --workdir/--which (a run) or --pretrained/--path (an export), not both")
        return (*export.fields_from_export(args.model, args.pretrained, args.path), None)
    workdir = Path(args.workdir or Path("runs") / args.model)
    return export.fields_from_run(args.model, workdir, args.which, args.split, quality_n=args.quality_n)


def _check_export_out(args) -> None:
    """Refuses an OUT that is the exported source (run, export or shipped weights) or holds it,
    and one that --overwrite may not replace (only an earlier zoo export: formats.check_overwrite)."""
    from zoo import formats

    if args.pretrained:
        from zoo.weights_index import weights_dir

        source = weights_dir() / f"{args.model}.{args.pretrained}"
    elif args.path:
        from zoo.files import is_url_path

        source = None if is_url_path(args.path) else Path(args.path)
    else:
        source = Path(args.workdir or Path("runs") / args.model)
    out = Path(args.out).absolute()
    if source is not None:
        src, dest = source.resolve(), out.resolve()
        if dest == src or dest in src.parents:
            what = "is" if dest == src else "contains"
            raise ValueError(f"zoo export: OUT {args.out} {what} the source being exported ({source}); "
                             f"choose another output path")
    formats.check_overwrite(out, args.format, args.overwrite)


def cmd_export(args) -> int:
    """A run's best (or latest) checkpoint, evaluated on the test split, or shipped weights -> one format (and shipped)."""
    from zoo import formats
    from zoo.weights_index import publish

    _check_quality_n(args)
    if args.publish and args.format != formats.DIRECTORY:
        raise ValueError(f"--publish needs --format {formats.DIRECTORY} (pretrained weights are export directories), "
                         f"got --format {args.format}")
    _check_export_out(args)  # before the (slow) restore and evaluation
    variables, fields, step = _export_source(args)
    out = formats.write(args.format, args.out, args.model, variables, overwrite=args.overwrite, **fields)
    metric = fields["metric"]
    scored = f" ({metric['name']}={metric['value']:.6g} on {metric.get('split')})" if metric else ""
    if fields.get("quality"):
        scored += f", frechet={fields['quality']['frechet']:.4g} over {fields['quality']['quality_n']} images"
    source = f"step {step}" if step is not None else (f"pretrained {args.pretrained}" if args.pretrained else str(args.path))
    print(f"exported {args.model} {source}{scored} as {args.format} to {out}")
    if args.publish:
        entry = publish(out, args.publish, overwrite=args.overwrite)
        print(f"published as pretrained {args.model}.{args.publish}: {entry}")
    return 0


# ---------------------------------------------------------------- predict


def printable(name: str) -> str:
    """`name` with control characters (newlines, ANSI escapes) escaped as repr() does, so a
    file name cannot forge output lines or drive the terminal."""
    return name if name.isprintable() else repr(name)[1:-1]


def cmd_predict(args) -> int:
    """Top-k classes (or reconstructions) for image files; a bad file is named and skipped (exit 2)."""
    import jax

    import zoo
    from train import predict, tasks
    from train.evaluate import variables_for
    from zoo.preprocess import image_shape

    spec = zoo.get_spec(args.model)
    if args.top_k < 1:
        raise ValueError(f"--top-k must be a positive integer, got {args.top_k}")
    predicts = tasks.get(spec.task).predicts
    if not predicts:
        raise ValueError(f"zoo predict works for image classifiers and the autoencoder; {args.model!r} is a "
                         f"{spec.task} model (its input: {spec.input})")
    reconstruct = predicts == "reconstruction"
    if reconstruct and not args.out:
        raise ValueError(f"zoo predict {args.model} writes reconstructions as PNGs: give --out DIR")
    model, variables = variables_for(args.model, pretrained=args.pretrained, path=args.path, workdir=args.workdir)
    source = predict.provenance(args.model, pretrained=args.pretrained, path=args.path, workdir=args.workdir)
    names = predict.class_names(args.model, source)
    if image_shape(model) is None:
        raise ValueError(f"zoo predict works for image models; {args.model!r} here takes {model.input_spec()}")
    # own --data was fed as it is: no auto-invert to MNIST's light-on-dark convention
    invert = args.invert and not predict.trained_on_own_data(source)
    center = args.center and predict.centers_digits(args.model, model, source)
    apply = jax.jit(lambda x: model.apply(variables, x))
    out_names = predict.reconstruction_names([str(Path(f)) for f in args.files])
    results, failed = [], False
    for file in args.files:
        png = Path(args.out) / out_names[str(Path(file))] if reconstruct else None
        try:
            result = {"file": file, **predict.predict_one(model, apply, Path(file), names, top_k=args.top_k,
                                                          invert=invert, center=center, reconstruction=png)}
        except ValueError as e:
            failed = True
            result = {"file": file, "error": str(e)}
            print(f"error: {printable(file)}: {e}", file=sys.stderr)
        else:
            if not args.json:
                print(predict.summary_line(printable(file), result))
        results.append(result)
    if args.json:
        print(json.dumps(results, indent=2))
    return 2 if failed else 0


def cmd_prepare(args) -> int:
    from train import data

    data.main(list(args.names) + (["--data-dir", args.data_dir] if args.data_dir else [])
              + (["--from", args.from_dir] if args.from_dir else []))
    return 0


# ---------------------------------------------------------------- zoo sweep


def cmd_sweep(args) -> int:
    """`zoo sweep`: an Optuna search, each trial a `zoo train` run in WORKDIR/trials/<number>/."""
    from train.sweep import parse_param, read_space, run_sweep

    params = read_space(args.space) if args.space else {}
    for item in args.param:
        name, spec = parse_param(item)
        params[name] = spec  # a --param overrides the same name in --space
    overrides = _overrides(args)
    overrides.pop("seed")  # --seed is the sampler's here; sweep the training seed with --param seed=...
    workdir = Path(args.workdir or Path("runs") / f"sweep-{args.model}")
    sweep = run_sweep(
        args.model, params, trials=args.trials, workdir=workdir, sampler=args.sampler, pruner=args.pruner,
        seed=args.sampler_seed, storage=args.storage, study_name=args.study, timeout=args.timeout,
        overrides=overrides, config_file=args.config, heartbeat=args.heartbeat, population=args.population,
    )
    for path in sweep.files:
        print(f"wrote {path}")
    return 0


def _add_sweep_parser(sub) -> None:
    # conflict_handler="resolve": the sweep's own --seed (the sampler's) replaces Config's --seed flag
    w = sub.add_parser(
        "sweep", conflict_handler="resolve", help="hyperparameter search on Optuna (each trial a zoo train run)",
        description="Search hyperparameters with Optuna. Each trial is a zoo train run in WORKDIR/trials/<number>/; "
                    "the study lives in --storage (default sqlite WORKDIR/study.db), so rerunning continues it and "
                    "several processes with the same --storage and --study are workers of one search. The train "
                    "flags below fix the values that are not searched.",
    )
    w.add_argument("model", help="registered model name (zoo list)")
    w.add_argument("--param", action="append", default=[], metavar="NAME=SPEC",
                   help="a searched value: NAME is a config field (lr, batch_size, ...) or set.FIELD (a model field); "
                        "SPEC is loguniform:A:B, uniform:A:B, int:A:B or choice:V1,V2,... (repeatable)")
    w.add_argument("--space", metavar="FILE.json", help='a JSON object {NAME: SPEC} (a list means choice)')
    w.add_argument("--trials", type=int, default=20, help="finished (complete or pruned) trials the study should hold [20]")
    w.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe",
                   help="tpe (Bayesian optimization), random, or grid (every combination of choice/int values) [tpe]")
    w.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                   help="stops trials whose per-epoch validation metric falls behind [median]")
    w.add_argument("--workdir", help="sweep directory (default runs/sweep-MODEL)")
    w.add_argument("--storage", help="Optuna storage URL shared by workers (sqlite:///PATH, postgresql://..., or "
                                     "journal:PATH on a shared filesystem) [sqlite:///WORKDIR/study.db]")
    w.add_argument("--study", help="study name (default sweep-MODEL)")
    w.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    w.add_argument("--heartbeat", type=int, default=60,
                   help="seconds between a worker's heartbeats; a trial silent for twice this is failed and retried [60]")
    w.add_argument("--population", type=int, metavar="K",
                   help="train up to K trials together in one compiled program (vmap over members); trials that "
                        "differ in more than lr, weight_decay, b1, momentum, clip_norm and seed train in separate groups")
    _add_config_flags(w)
    w.add_argument("--seed", dest="sampler_seed", type=int, default=0, help="the sampler's seed [0]")
    w.set_defaults(func=cmd_sweep, seed=None)


def _add_train_parser(sub) -> None:
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



def _add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a run (best checkpoint) or pretrained weights")
    e.add_argument("model")
    e.add_argument("--workdir")
    e.add_argument("--pretrained", help="shipped weights tag, e.g. mnist")
    e.add_argument("--path", help="exported checkpoint dir or URL")
    e.add_argument("--split", default="test")
    e.add_argument("--which", choices=["best", "latest"], default=None, help="checkpoint (default: best if tracked; latest for a GAN, whose g_loss does not rank its samples)")
    e.add_argument("--data-dir")
    e.add_argument("--data", metavar="PATH", help="your own data (an image folder, an .npz; docs/data.md) to evaluate "
                                                  "on; default: the data the run trained on")
    e.add_argument("--out", help="where to save the JSON report (default WORKDIR/eval_SPLIT.json)")
    e.add_argument("--quality-n", type=int, default=10_000,
                   help="dcgan/autoencoder on MNIST: images for the Frechet distance and confidence measures "
                   "(train/gen_metrics.py); 0 = off")
    e.set_defaults(func=cmd_eval)



def _add_sample_parser(sub) -> None:
    s = sub.add_parser("sample", help="sample from a generative model (char_lstm text, dcgan images)")
    s.add_argument("model")
    s.add_argument("--pretrained")
    s.add_argument("--path")
    s.add_argument("--workdir")
    s.add_argument("--prompt", help="char_lstm: the text to continue [default ROMEO: where the model's vocabulary "
                   "holds it, else its first character]")
    s.add_argument("--length", type=int, default=300)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--n", "--num", dest="num", type=int, default=64, help="images to sample (dcgan) [default 64]")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out")
    s.set_defaults(func=cmd_sample)



def _add_export_parser(sub) -> None:
    from zoo import formats  # the formats' table names the choices

    x = sub.add_parser("export", help="export a run's best checkpoint or shipped weights (orbax, safetensors, onnx)")
    x.add_argument("model")
    x.add_argument("out", help="export directory (orbax) or file (.safetensors, .onnx) to create")
    x.add_argument("--format", choices=list(formats.FORMATS), default=formats.DIRECTORY,
                   help="; ".join(f"{f.name}: {f.help}" for f in formats.FORMATS.values())
                   + f" [default {formats.DIRECTORY}]")
    x.add_argument("--workdir", help="the run to export (default runs/MODEL)")
    x.add_argument("--pretrained", metavar="TAG", help="instead, convert shipped weights, e.g. mnist")
    x.add_argument("--path", help="instead, convert an export (directory, .safetensors file or URL)")
    x.add_argument("--which", choices=["best", "latest"], default=None,
                   help="checkpoint (default: best if tracked; latest for a GAN, whose g_loss does not rank its samples)")
    x.add_argument("--split", default="test", help="split whose metric is recorded in the manifest")
    x.add_argument("--publish", metavar="TAG",
                   help="also publish as pretrained weights MODEL.TAG in zoo/weights (zoo.load(MODEL, pretrained=TAG))")
    x.add_argument("--ship", dest="publish", help=argparse.SUPPRESS)  # its name before --publish
    x.add_argument("--quality-n", type=int, default=10_000,
                   help="dcgan/autoencoder on MNIST: images for the sample-quality measures recorded in the "
                        "manifest (train/gen_metrics.py); 0 = off")
    x.add_argument("--overwrite", action="store_true")
    x.set_defaults(func=cmd_export)



def _add_predict_parser(sub) -> None:
    r = sub.add_parser(
        "predict", help="classify image files (PNG, JPEG, BMP) with an image classifier, or reconstruct them",
        description="Top-k classes for each image file, one line per file (or --json). Images are converted to the "
                    "model's input (zoo.preprocess): grayscale or RGB, resized, and for grayscale models a dark "
                    "drawing on a light background (mean border brightness > 0.5) is inverted to MNIST's light "
                    "digit on black. For MNIST-trained digit models the digit is then cropped to its ink, "
                    "scaled to 20 px and centred by centre of mass in 28x28, as MNIST prepared its digits "
                    "(--no-center turns it off). A bad file is reported and skipped; the exit code is then 2.",
    )
    r.add_argument("model")
    r.add_argument("files", nargs="+", metavar="FILE")
    r.add_argument("--pretrained", metavar="TAG", help="shipped weights, e.g. mnist")
    r.add_argument("--path", help="exported checkpoint (directory, .safetensors file or URL)")
    r.add_argument("--workdir", help="a run directory (default runs/MODEL)")
    r.add_argument("--top-k", type=int, default=3, help="classes to print per file (and per head) [default 3]")
    r.add_argument("--json", action="store_true", help="print one JSON list of {file, predictions | error}")
    r.add_argument("--no-invert", dest="invert", action="store_false",
                   help="never invert grayscale images (by default dark-on-light images are inverted, except for "
                        "weights trained on your own --data, which see pictures as that data was)")
    r.add_argument("--no-center", dest="center", action="store_false",
                   help="only resize digits; by default MNIST-trained digit models get them cropped, scaled "
                        "and centred by centre of mass as MNIST's were")
    r.add_argument("--out", help="the autoencoder: directory for FILE-STEM.png (input | reconstruction); "
                   "repeated stems of one call get -2, -3, ...")
    r.set_defaults(func=cmd_predict)



def _add_prepare_parser(sub) -> None:
    p = sub.add_parser("prepare", help="prepare datasets with TFDS (offline from the vendored files for mnist, "
                       "tiny_shakespeare; others from --from DIR)")
    p.add_argument("names", nargs="+")
    p.add_argument("--data-dir")
    p.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="a folder holding the datasets' files under TFDS's names, for offline preparation")
    p.set_defaults(func=cmd_prepare)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zoo", description="JAX/Flax model zoo: train, evaluate and sample the tutorial models.")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list registered models (input, parameters, shipped weights)")
    ls.add_argument("pattern", nargs="?", help="shell-style name pattern, e.g. 'cnn*' or '*lstm'")
    ls.add_argument("--pretrained", action="store_true", help="only models with shipped weights")
    ls.set_defaults(func=cmd_list)
    i = sub.add_parser("info", help="model card: architecture, input, classes, data, recipe, metric, hashes")
    i.add_argument("name", metavar="NAME[.TAG]", help="a model (cnn) or its shipped weights (cnn.mnist)")
    i.add_argument("--path", help="the card of an export of NAME (directory, .safetensors file or URL): its "
                   "class names, vocabulary, metric and recipe")
    i.set_defaults(func=cmd_info)
    _add_train_parser(sub)
    _add_eval_parser(sub)
    _add_sample_parser(sub)
    _add_export_parser(sub)
    _add_predict_parser(sub)
    _add_prepare_parser(sub)
    _add_sweep_parser(sub)
    parser.commands = dict(sub.choices)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that report bad input or a failing environment (anything else is a bug:
    its traceback is shown). OSError: unreadable files, failed downloads, a full disk."""
    errors = [ValueError, KeyError, TypeError, OSError]
    data = sys.modules.get("train.data")  # not imported: its error cannot have been raised
    if data is not None:
        errors.append(data.DatasetUnavailableError)  # offline without the dataset (a RuntimeError)
    return tuple(errors)


def _quiet_library_logs() -> None:
    """Orbax (through absl) and asyncio log the tracebacks of background-thread failures that
    also reach main() as one exception; the CLI reports that one line instead (ZOO_DEBUG=1 shows them)."""
    import logging

    for name in ("absl", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    debug = bool(os.environ.get("ZOO_DEBUG"))
    try:
        args = build_parser().parse_args(argv)
        if not debug:
            _quiet_library_logs()
        if args.command in ("train", "eval", "sample", "export", "predict", "sweep"):
            _setup_jax(args)
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which stops at a checkpoint itself)
        if debug and not _joined():
            raise
        return _fail(130, "error: interrupted", debug)
    except _user_errors() as e:
        if debug and not _joined():
            raise
        return _fail(2, f"error: {e}", debug)
    except Exception:  # a bug: Python reports it, unless a run was joined (below)
        if not _joined():
            raise
        return _fail(1, None, debug)


def _joined() -> bool:
    parallel = sys.modules.get("train.parallel")  # not imported: no run was joined
    return parallel is not None and parallel.joined()


def _fail(code: int, line: str | None, debug: bool) -> int:
    """Reports the exception being handled as `line` (None, or ZOO_DEBUG: its traceback) and
    returns `code`. A process of a multi-process run ends right here (os._exit): a normal exit
    would wait at JAX's shutdown barrier for the others, blocked in a collective waiting for
    it; they stop once its heartbeats do (train.parallel.heartbeat_timeout)."""
    if line is None or debug:
        import traceback

        traceback.print_exc()
    else:
        print(line, file=sys.stderr)
    if _joined():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
