"""Training parity: the same run in zoo (JAX) and in PyTorch, compared step by step.

For each case (model x optimizer) both sides start from the SAME initial weights (zoo's seeded
init, copied into the PyTorch twin with `zoo.to_torch`), see the SAME batches in the SAME order,
use the same optimizer and loss in float32, and are compared after every step:

    zoo    the engine's own code: `train.loop.initial_state` (make_optimizer, create_state) and
           the task record's step `tasks.of_model(name).train_step(model, cfg)`, jitted.
    torch  `zoo.torch_model(name)` with torch.optim.{SGD, Adam, RMSprop} at the same settings,
           F.cross_entropy, clip_grad_norm_ where the case clips.

Reported per case: the largest relative difference of the training loss over the first
`--steps` steps, the largest absolute parameter difference after them, the first step whose
loss differs by more than 1e-4 (relative) within one epoch, and (with `--epoch`) both sides'
MNIST test accuracy after one full epoch.

Matched semantics (where the frameworks' defaults differ, zoo follows PyTorch):
  * RMSprop: make_optimizer uses decay 0.99 and eps outside the square root, like
    torch.optim.RMSprop (optax's defaults: decay 0.9, eps inside). The "rmsprop-optax-defaults"
    row shows the gap the defaults would leave.
  * Adam: optax and PyTorch both add eps outside the square root of the bias-corrected second
    moment; nothing to match. AdamW: both decay decoupled, lr * wd * param.
  * LSTM biases: PyTorch keeps b_ih and b_hh, zoo keeps their sum. Trained as is, the twin moves
    the sum by two updates per step (each bias gets its own); for parity b_hh is frozen at 0
    (requires_grad False). The "lstm-two-biases" row shows the unmatched run.

    python bench/parity.py                       # all cases on MNIST, 100 steps + one epoch each
    python bench/parity.py --cases cnn-sgd --steps 20 --no-epoch
    python bench/parity.py --noise-floor 4 --cases mlp-rmsprop lstm-adam-clip   # torch vs itself, 1 ulp apart

Writes bench/results/parity.{json,md} (--noise-floor: parity_floor.{json,md}).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import zoo  # noqa: E402
from train import loop, tasks  # noqa: E402
from train.config import Config  # noqa: E402
from train.state import create_state  # noqa: E402

LOSS_RTOL = 1e-4  # per-step loss, relative
PARAM_ATOL = 1e-4  # parameters after the compared steps, absolute


@dataclasses.dataclass(frozen=True)
class Case:
    """One side-by-side run: a registry model trained with one optimizer recipe."""

    model: str
    optimizer: str  # make_optimizer's name
    lr: float
    batch_size: int
    clip_norm: float = 0.0
    matched: bool = True  # False: a row that shows an unmatched default (expected to differ)
    overrides: tuple = ()  # (field, value) pairs of zoo.create options (tests shrink the model)


CASES = {
    "mlp-sgd": Case("mlp", "momentum", 0.01, 100),
    "mlp-adam": Case("mlp", "adam", 1e-3, 100),
    "mlp-rmsprop": Case("mlp", "rmsprop", 1e-3, 100),
    "cnn-sgd": Case("cnn", "momentum", 0.01, 64),
    "cnn-adam": Case("cnn", "adam", 1e-3, 64),
    "cnn-rmsprop": Case("cnn", "rmsprop", 1e-3, 64),
    "lstm-adam-clip": Case("lstm", "adam", 1e-3, 100, clip_norm=1.0),
    # unmatched defaults, for the record: how far apart they drift
    "mlp-rmsprop-optax-defaults": Case("mlp", "rmsprop", 1e-3, 100, matched=False),
    "lstm-two-biases": Case("lstm", "adam", 1e-3, 100, clip_norm=1.0, matched=False),
}


def config(case: Case) -> Config:
    """The engine's Config of a case (constant learning rate, seed 0)."""
    return Config(model=case.model, optimizer=case.optimizer, lr=case.lr, batch_size=case.batch_size,
                  clip_norm=case.clip_norm, momentum=0.9, model_overrides=dict(case.overrides))


# ------------------------------------------------------------------------------------ the two sides


def precision() -> dict:
    """The zoo.create dtype options of this run: float64 under --float64 (jax_enable_x64), else none."""
    return {"dtype": jnp.float64, "param_dtype": jnp.float64} if jax.config.jax_enable_x64 else {}


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> [0, 1] in the run's precision (the same values on both sides)."""
    return x.astype(np.float64 if jax.config.jax_enable_x64 else np.float32) / 255.0


class ZooSide:
    """The engine's state and jitted train step for a case."""

    def __init__(self, case: Case, total_steps: int):
        cfg = config(case)
        self.model = zoo.create(case.model, **dict(case.overrides), **precision())
        self.task = tasks.of_model(case.model)
        state = loop.initial_state(cfg, self.model, self.task, total_steps, log=lambda *a: None)
        if case.optimizer == "rmsprop" and not case.matched:  # optax's own RMSprop defaults
            state = create_state(self.model, state.variables(), optax.rmsprop(case.lr), jax.random.key(0))
        if jax.config.jax_enable_x64:  # zoo.to_torch hands over float32: start both from those values
            state = state.replace(params=jax.tree.map(lambda p: p.astype(jnp.float32).astype(p.dtype), state.params))
        self.state = state
        self.step = jax.jit(self.task.train_step(self.model, cfg))
        self.predict = jax.jit(lambda v, x: jnp.argmax(self.model.apply(v, x), -1))

    def train(self, x: np.ndarray, y: np.ndarray) -> float:
        self.state, metrics = self.step(self.state, {"x": to_float(x), "y": y})
        return float(metrics["loss"])  # a host sync per step: the comparison needs each loss

    def params(self) -> dict:
        return jax.device_get(self.state.params)

    def accuracy(self, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
        variables = self.state.variables()
        hits = sum(int(np.sum(np.asarray(self.predict(variables, to_float(x[i:i + batch]))) == y[i:i + batch]))
                   for i in range(0, len(x), batch))
        return hits / len(x)


class TorchSide:
    """The PyTorch twin with torch.optim at the case's settings, from zoo's initial weights."""

    def __init__(self, case: Case, variables: dict):
        self.case = case
        self.model = zoo.create(case.model, **dict(case.overrides), **precision())
        self.net = zoo.torch_model(self.model)
        if jax.config.jax_enable_x64:
            self.net.double()  # before loading, so zoo's float64 initial weights arrive unrounded
        self.net.load_state_dict(zoo.to_torch(self.model, variables))
        if case.model == "lstm" and case.matched:  # zoo has one bias per gate: train b_ih only
            for name, p in self.net.named_parameters():
                if "bias_hh" in name:
                    p.requires_grad_(False)
        params = [p for p in self.net.parameters() if p.requires_grad]
        if case.optimizer == "momentum":
            self.opt = torch.optim.SGD(params, lr=case.lr, momentum=0.9)
        elif case.optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=case.lr)
        elif case.optimizer == "rmsprop":
            self.opt = torch.optim.RMSprop(params, lr=case.lr)
        else:
            raise ValueError(f"no PyTorch optimizer for {case.optimizer!r}; expected momentum, adam or rmsprop")

    def _input(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(to_float(x)))
        return t.permute(0, 3, 1, 2) if t.ndim == 4 else t  # NHWC -> NCHW; sequences stay (B, T, F)

    def train(self, x: np.ndarray, y: np.ndarray) -> float:
        self.net.train()
        self.opt.zero_grad()
        loss = F.cross_entropy(self.net(self._input(x)), torch.from_numpy(y).long())
        loss.backward()
        if self.case.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.case.clip_norm)
        self.opt.step()
        return loss.item()

    def params(self) -> dict:
        return zoo.from_torch(self.model, self.net.state_dict())["params"]

    @torch.no_grad()
    def accuracy(self, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
        self.net.eval()
        hits = sum(int((self.net(self._input(x[i:i + batch])).argmax(-1).numpy() == y[i:i + batch]).sum())
                   for i in range(0, len(x), batch))
        return hits / len(x)


# ------------------------------------------------------------------------------------ one case


def max_param_diff(a: dict, b: dict) -> float:
    """Largest absolute difference between two parameter trees of the same structure."""
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def perturbed(variables: dict, seed: int) -> dict:
    """`variables` with every floating-point value moved by one ulp, up or down at random.

    The smallest change a float32 run can see: the noise floor of step-by-step parity. Two
    PyTorch runs, one from these weights, show how soon float32 training parts from itself.
    """
    rng = np.random.default_rng(seed)

    def nudge(v):
        v = np.asarray(v)
        if not np.issubdtype(v.dtype, np.floating):
            return v
        toward = np.where(rng.random(v.shape) < 0.5, np.inf, -np.inf).astype(v.dtype)
        return np.nextafter(v, toward)

    return jax.tree.map(nudge, jax.device_get(variables))


def run_pair(case: Case, a, b, train: dict, *, steps: int, epoch: bool = False, test: dict | None = None,
             seed: int = 0) -> dict:
    """Trains two sides (`.train(x, y) -> loss`, `.params()`, `.accuracy(x, y)`) on `train` in one
    seeded order and compares them step by step (see run_case for the arguments and result)."""
    n = len(train["y"])
    per_epoch = n // case.batch_size
    total = per_epoch if epoch else steps
    order = np.random.default_rng(seed).permutation(n)
    losses, diverge, param_diff = [], None, None
    start = time.perf_counter()
    for i in range(total):
        idx = order[i * case.batch_size:(i + 1) * case.batch_size]
        x, y = train["x"][idx], train["y"][idx]
        pair = (a.train(x, y), b.train(x, y))
        if i < steps:
            losses.append(pair)
        if diverge is None and abs(pair[0] - pair[1]) > LOSS_RTOL * abs(pair[1]):
            diverge = i + 1
        if i + 1 == steps:
            param_diff = max_param_diff(a.params(), b.params())
    loss = np.asarray(losses, np.float64)
    out = {
        "case": dataclasses.asdict(case),
        "steps": steps,
        "seed": seed,
        "loss_max_rel": float(np.max(np.abs(loss[:, 0] - loss[:, 1]) / np.abs(loss[:, 1]))),
        "param_max_abs": param_diff,
        "diverge_step": diverge,
        "losses": loss.tolist(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if epoch:
        out.update(epoch_steps=total, accuracy=[a.accuracy(test["x"], test["y"]), b.accuracy(test["x"], test["y"])])
    return out


def _check_steps(case: Case, train: dict, steps: int) -> None:
    per_epoch = len(train["y"]) // case.batch_size
    if steps > per_epoch:
        raise ValueError(f"steps must be at most one epoch ({per_epoch} batches of {case.batch_size}), got {steps}")


def run_case(case: Case, train: dict, *, steps: int, epoch: bool = False, test: dict | None = None,
             seed: int = 0) -> dict:
    """Trains zoo and the PyTorch twin on `train` ({"x": zoo view, "y"}) in one seeded order and
    compares them.

    Args:
      case: the model and optimizer recipe.
      train: host arrays as the task's view gives them (uint8 images or rows, int labels).
      steps: the steps whose losses and final parameters are compared (the issue's 100).
      epoch: continue to one full epoch (len // batch steps), tracking where losses diverge,
        and report both sides' accuracy on `test`.
      seed: the data order's seed (one permutation, shared by both sides).

    Returns:
      {"loss_max_rel": .., "param_max_abs": .., "diverge_step": first step (1-based) whose loss
      differs by more than LOSS_RTOL, or None, "losses": [[zoo, torch], ...] for the compared
      steps, and with `epoch`: "epoch_steps", "zoo_accuracy", "torch_accuracy"}.
    """
    _check_steps(case, train, steps)
    z = ZooSide(case, len(train["y"]) // case.batch_size if epoch else steps)
    t = TorchSide(case, z.state.variables())
    out = run_pair(case, z, t, train, steps=steps, epoch=epoch, test=test, seed=seed)
    if epoch:
        out["zoo_accuracy"], out["torch_accuracy"] = out.pop("accuracy")
    return out


def run_noise_floor(case: Case, train: dict, *, steps: int, epoch: bool = False, test: dict | None = None,
                    seed: int = 0) -> dict:
    """PyTorch against itself: the twin from zoo's initial weights vs the twin from the same
    weights moved by one ulp (`perturbed`, seeded by `seed`), on the same batches (data order
    `seed`). The step where these part is how long float32 training stays reproducible at all.

    Returns run_pair's record; with `epoch`, "torch_accuracy" and "torch_ulp_accuracy".
    """
    _check_steps(case, train, steps)
    variables = ZooSide(case, steps).state.variables()
    out = run_pair(case, TorchSide(case, variables), TorchSide(case, perturbed(variables, seed)), train,
                   steps=steps, epoch=epoch, test=test, seed=seed)
    if epoch:
        out["torch_accuracy"], out["torch_ulp_accuracy"] = out.pop("accuracy")
    return out


# ------------------------------------------------------------------------------------ the bench


@functools.cache
def load_mnist(model: str, data_dir: str | None) -> tuple[dict, dict]:
    """(train, test) MNIST host arrays as the model's task views them (loaded once per model)."""
    from train import data

    task = tasks.of_model(model)
    return tuple(task.view(data.load_split("mnist", split, data_dir=data_dir)) for split in ("train", "test"))


def run_meta(args, **extra) -> dict:
    """The versions and settings every output file of a run records."""
    return {"jax": jax.__version__, "torch": torch.__version__, "optax": optax.__version__,
            "backend": jax.default_backend(), "loss_rtol": LOSS_RTOL, "torch_threads": args.threads, **extra}


def table(results: dict) -> str:
    """The markdown table of bench/README.md and the top-level README."""
    rows = ["| case | steps | max loss rel. diff | max param abs. diff | loss diverges (>1e-4) at step | "
            "test acc. zoo / torch after 1 epoch |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        acc = (f"{100 * r['zoo_accuracy']:.2f} / {100 * r['torch_accuracy']:.2f}" if "zoo_accuracy" in r else "-")
        diverge = r["diverge_step"] if r["diverge_step"] is not None else f"none in {r.get('epoch_steps', r['steps'])}"
        rows.append(f"| {name}{'' if r['case']['matched'] else ' (unmatched)'} | {r['steps']} | "
                    f"{r['loss_max_rel']:.1e} | {r['param_max_abs']:.1e} | {diverge} | {acc} |")
    return "\n".join(rows)


def floor_table(rows: list) -> str:
    """parity_floor.md: per case and seed, where zoo parts from torch and where torch parts from itself."""
    out = ["| case | seed | zoo vs torch: loss parts (>1e-4) at step | torch vs torch 1 ulp apart: parts at step | "
           "test acc. zoo / torch / torch 1 ulp apart | abs. acc. diff zoo-torch / torch-torch |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        z, t, u = (100 * r[k] for k in ("zoo_accuracy", "torch_accuracy", "torch_ulp_accuracy"))
        out.append(f"| {r['case']} | {r['seed']} | {r['zoo_diverge']} | {r['torch_diverge']} | "
                   f"{z:.2f} / {t:.2f} / {u:.2f} | {abs(z - t):.2f} / {abs(t - u):.2f} |")
    for name in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == name]
        zt = [abs(r["zoo_accuracy"] - r["torch_accuracy"]) * 100 for r in mine]
        tt = [abs(r["torch_accuracy"] - r["torch_ulp_accuracy"]) * 100 for r in mine]
        zs = [r["zoo_diverge"] or r["epoch_steps"] for r in mine]
        ts = [r["torch_diverge"] or r["epoch_steps"] for r in mine]
        out.append(f"| **{name}, median over {len(mine)} seeds** | | {int(np.median(zs))} | {int(np.median(ts))} | "
                   f"mean zoo {np.mean([r['zoo_accuracy'] for r in mine]) * 100:.2f} / "
                   f"torch {np.mean([r['torch_accuracy'] for r in mine]) * 100:.2f} | "
                   f"{np.mean(zt):.2f} / {np.mean(tt):.2f} (mean) |")
    return "\n".join(out)


def orders_main(args) -> int:
    """--orders N: where zoo and torch part within --steps steps, for data orders 0..N-1."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = run_meta(args, steps=args.steps, init=args.init)
    rows = {}
    for name in args.cases:
        case = CASES[name]
        train = load_mnist(case.model, args.data_dir)[0]
        runs = (run_case(case, train, steps=args.steps, seed=seed) for seed in range(args.orders))
        rows[name] = [{k: r[k] for k in ("seed", "diverge_step", "loss_max_rel", "param_max_abs")} for r in runs]
        print(name, [(r["diverge_step"], f"{r['loss_max_rel']:.1e}") for r in rows[name]], flush=True)
    lines = [f"| case | loss parts (>1e-4) at step, data orders 0-{args.orders - 1} | max loss rel. diff over "
             f"{args.steps} steps | orders holding the bars |", "|---|---|---|---|"]
    for name, rs in rows.items():
        held = sum(r["diverge_step"] is None and r["param_max_abs"] < PARAM_ATOL for r in rs)
        parts = ", ".join(str(r["diverge_step"] or "-") for r in rs)
        diffs = ", ".join(f"{r['loss_max_rel']:.1e}" for r in rs)
        lines.append(f"| {name} | {parts} | {diffs} | {held} of {len(rs)} |")
    stem = "parity_orders" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "cases": rows}, indent=1) + "\n")
    (out / f"{stem}.md").write_text(f"init: {args.init}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def noise_floor_main(args) -> int:
    """--noise-floor N: zoo vs torch and torch vs torch (1 ulp) for N seeds, one epoch each."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = run_meta(args, dtype="float32")
    rows = []
    for name in args.cases:
        case = CASES[name]
        train, test = load_mnist(case.model, args.data_dir)
        for seed in range(args.noise_floor):
            zt = run_case(case, train, steps=args.steps, epoch=True, test=test, seed=seed)
            tt = run_noise_floor(case, train, steps=args.steps, epoch=True, test=test, seed=seed)
            rows.append({"case": name, "seed": seed, "epoch_steps": zt["epoch_steps"],
                         "zoo_diverge": zt["diverge_step"], "torch_diverge": tt["diverge_step"],
                         "zoo_loss_max_rel": zt["loss_max_rel"], "torch_loss_max_rel": tt["loss_max_rel"],
                         "zoo_accuracy": zt["zoo_accuracy"], "torch_accuracy": zt["torch_accuracy"],
                         "torch_ulp_accuracy": tt["torch_ulp_accuracy"],
                         "torch_accuracy_again": tt["torch_accuracy"]})
            print(f"{name} seed {seed}: zoo parts at {zt['diverge_step']}, torch (1 ulp) at {tt['diverge_step']}; "
                  f"acc {zt['zoo_accuracy']} / {zt['torch_accuracy']} / {tt['torch_ulp_accuracy']}", flush=True)
            (out / "parity_floor.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
            (out / "parity_floor.md").write_text(floor_table(rows) + "\n")
    print(floor_table(rows))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=100, help="steps compared (losses, then parameters)")
    parser.add_argument("--no-epoch", dest="epoch", action="store_false", help="skip the full epoch")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default $TFDS_DATA_DIR)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--merge", action="store_true", help="keep the other cases of an existing parity.json")
    parser.add_argument("--noise-floor", type=int, default=0, metavar="N",
                        help="instead of the table: for seeds 0..N-1 (data order and ulp directions), zoo vs torch "
                             "and torch vs torch from weights one ulp apart, each for one epoch; writes parity_floor.*")
    parser.add_argument("--orders", type=int, default=0, metavar="N",
                        help="instead of the table: each case's first --steps steps for data orders 0..N-1, "
                             "where the loss parts and its largest difference; writes parity_orders[_TAG].*")
    parser.add_argument("--init", choices=("engine", "optimized"), default="engine",
                        help="how zoo.init's program is compiled on CPU: the engine's way (fast to compile, "
                             "zoo.registry.INIT_CPU_COMPILER_OPTIONS) or XLA's default optimization, as zoo did "
                             "before; the initial weights differ in their last bit")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("--float64", action="store_true",
                        help="both sides in float64 (jax_enable_x64, the twin .double()): separates a difference "
                             "in the update rules from float32 rounding amplified by training; writes parity_float64.*")
    args = parser.parse_args(argv)
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    if args.init == "optimized":
        from zoo import registry

        registry.INIT_CPU_COMPILER_OPTIONS.clear()  # this process only: XLA's default optimization level
    torch.set_num_threads(args.threads)
    if args.noise_floor:
        return noise_floor_main(args)
    if args.orders:
        return orders_main(args)
    stem = "parity_float64" if args.float64 else "parity"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = run_meta(args, dtype="float64" if args.float64 else "float32", param_atol=PARAM_ATOL)
    results = {}
    if args.merge and (out / f"{stem}.json").exists():
        results = json.loads((out / f"{stem}.json").read_text())["cases"]
    for name in args.cases:
        case = CASES[name]
        train, test = load_mnist(case.model, args.data_dir)
        results[name] = run_case(case, train, steps=args.steps, epoch=args.epoch, test=test)
        r = results[name]
        print(f"{name}: loss rel {r['loss_max_rel']:.2e}, params abs {r['param_max_abs']:.2e}, "
              f"diverges at {r['diverge_step']}, acc {r.get('zoo_accuracy')} / {r.get('torch_accuracy')} "
              f"({r['seconds']} s)", flush=True)
        ordered = {k: results[k] for k in CASES if k in results}  # written after each case: a long run keeps its rows
        (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "cases": ordered}, indent=1) + "\n")
        (out / f"{stem}.md").write_text(table(ordered) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
