"""Time to quality: per model, zoo's recipe against the PyTorch twin's tutorial recipe, racing to the
tutorial's quality target in one process, alternating.

    zoo    the shipped fast recipe (train/configs/fast/<model>.json over the default one; the default
           recipe where a model has none, or with `--recipe default`; `--zoo-recipe MODEL=JSON` overrides
           either), trained as the engine trains (the task record's step, jit + donation, the engine's
           dispatch size), on the engine's own splits (MNIST with val_size 0: all 60,000 train
           images, evaluated on the 10,000 test images; tiny_shakespeare: validation split).
    torch  the twin (`zoo.torch_model`) with the tutorial recipe (TUTORIAL below: Adam, constant
           rate), tensors in memory, on the very same arrays (char_lstm: the tutorial's 100-character
           windows, on which zoo is evaluated too when its recipe trains on others).

Both sides are built first (the zoo step compiled by one throwaway step, PyTorch warmed up on a
throwaway twin), then ALTERNATE: zoo trains one evaluation interval (1/`--evals-per-epoch` of
its epoch) and is evaluated, then torch, and so on, so drifts in machine speed hit both. The
clock counts training only; each evaluation is timed apart (`eval_s`) on both sides. A side
stops at the first evaluation that meets the target, at the end of its recipe (zoo: its
schedule's epochs; torch: `--max-epochs`), or once its training time passes `--budget-s`; an
unreached target is a row that says so, with the best quality reached.

Targets (TARGETS): accuracy for the classifiers (multitask: its digit head), validation loss in
nats/char for char_lstm; for autoencoder (test MSE) and dcgan (Frechet distance of 10,000
samples in cnn.mnist features, train/gen_metrics.py) the twin first trains its tutorial epochs
and its final quality is the target (its time is its time to that point), zoo races to it.

"From process start": the process is shared, so each side's overhead is reported as columns
beside the training time: the common start (interpreter + data), its library's import, building
the trainer, and the first (compiling) call. `from_start_s` = all of those + training time.

    python bench/time_to_quality.py                        # every model (needs a quiet machine)
    python bench/time_to_quality.py --models cnn,mlp --seeds 0,1
    python bench/time_to_quality.py --models '' --gan-seeds 3   # the DCGAN comparison only
    python bench/time_to_quality.py --quick                # seconds: tiny data and budgets (tests)

Writes bench/results/time_to_quality.{json,md} and, with `--gan-seeds`, dcgan_vs_twin.{json,md}
(or into `--out DIR`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

_T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MODELS = ("mlp", "mlp_small", "cnn", "lstm", "autoencoder", "char_lstm", "multitask", "dcgan")
# (metric, "max"/"min", value); value None: the twin's quality after its tutorial epochs.
TARGETS = {
    "mlp": ("accuracy", "max", 0.980),
    "mlp_small": ("accuracy", "max", 0.975),
    "cnn": ("accuracy", "max", 0.990),
    "lstm": ("accuracy", "max", 0.985),
    "autoencoder": ("mse", "min", None),
    "char_lstm": ("loss", "min", 1.60),
    "multitask": ("digit_accuracy", "max", 0.975),
    "dcgan": ("frechet", "min", None),
}
# The tutorial recipes: Adam with a constant rate. Image models as bench/compare.py's RECIPES
# (mlp_small and multitask as the feed-forward tutorial's mlp); char_lstm as the char-RNN
# tutorials train it (Adam 2e-3, gradient norm clipped at 5, zoo's 100-character windows);
# epochs: the tutorials' run length, which sets the relative targets.
TUTORIAL = {
    "mlp": dict(batch=100, lr=1e-3),
    "mlp_small": dict(batch=100, lr=1e-3),
    "cnn": dict(batch=64, lr=1e-3),
    "lstm": dict(batch=100, lr=1e-3),
    "autoencoder": dict(batch=128, lr=1e-3, epochs=5),
    "char_lstm": dict(batch=64, lr=2e-3, clip=5.0, seq_len=100),
    "multitask": dict(batch=100, lr=1e-3),
    "dcgan": dict(batch=128, lr=2e-4, betas=(0.5, 0.999), epochs=5),
}
QUICK = dict(train_limit=2048, eval_limit=1000, quality_n=256, budget_s=3.0, evals_per_epoch=2, tutorial_epochs=1)


def meets(value: float | None, mode: str, target: float | None) -> bool:
    return value is not None and target is not None and (value >= target if mode == "max" else value <= target)


# --------------------------------------------------------------------------------------------------
# Sample quality (dcgan): cnn.mnist features of the reference images computed once


class Scorer:
    """Frechet distance (and confident share, classes covered) of generated images against
    the first `n` test images, in cnn.mnist's feature space (train/gen_metrics.py)."""

    def __init__(self, reference: np.ndarray, n: int):
        from train import gen_metrics

        self.gm, self.n = gen_metrics, min(n, len(reference))
        self.ref = gen_metrics.classify(reference[: self.n])[0]

    def __call__(self, images: np.ndarray) -> dict:
        feats, probs = self.gm.classify(images)
        confident = probs.max(-1) > self.gm.CONFIDENCE
        return {"frechet": self.gm.frechet_distance(feats, self.ref), "confident_share": float(confident.mean()),
                "classes_covered": int(len(np.unique(probs.argmax(-1)[confident]))), "quality_n": len(feats)}


# --------------------------------------------------------------------------------------------------
# The two sides: run(steps) -> training seconds, evaluate() -> metrics


class ZooSide:
    name = "zoo"

    def __init__(self, cfg, model, task, splits, seed: int, scorer=None, eval_limit: int = 0, val=None):
        import jax

        from train import loop, parallel

        self.jax, self.cfg, self.model, self.task, self.scorer = jax, cfg, model, task, scorer
        self.batch, self.n = cfg.batch_size, len(splits.train["x"])
        self.steps_per_epoch = self.n // self.batch
        self.max_steps = cfg.epochs * self.steps_per_epoch  # the schedule's length: the recipe ends there
        mesh = parallel.make_mesh(jax.devices()[:1])
        self.strategy = parallel.JitStrategy(task.train_step(model, cfg), mesh, "auto")
        # one state object placed afresh: a rebuilt TrainState's new static fields would recompile the step
        state0 = loop.initial_state(cfg, model, task, self.max_steps, log=lambda *a: None)
        self._init = lambda: self.strategy.place_state(state0)  # noqa: E731
        self.data = self.strategy.place_data(splits.train)
        val = jax.tree.map(lambda a: a[:eval_limit] if eval_limit else a, splits.val if val is None else val)
        self.val_n = len(val["x"])
        if task.name != "gan":
            self._eval = parallel.make_evaluator(task.eval_step(model), mesh)
            self.val = self.strategy.place_data(val)
        self.spd = parallel.default_steps_per_dispatch(self.steps_per_epoch)
        self.rng = np.random.default_rng(seed)
        self.state, self.order, self.pos = self._init(), self.rng.permutation(self.n), 0

    def warm_up(self) -> float:
        """The first (compiling) dispatch, then a fresh state: the race starts at step 0, compiled."""
        t = self.run(self.spd)
        self.state, self.order, self.pos = self._init(), self.rng.permutation(self.n), 0
        return t

    def run(self, steps: int) -> float:
        steps = -(-steps // self.spd) * self.spd
        idx = []
        for _ in range(steps):  # the engine's order: a permutation per epoch, the partial batch dropped
            if self.pos + self.batch > self.n:
                self.order, self.pos = self.rng.permutation(self.n), 0
            idx.append(self.order[self.pos: self.pos + self.batch])
            self.pos += self.batch
        idx = np.stack(idx)
        t0 = time.perf_counter()
        metrics = None
        for k in range(0, steps, self.spd):
            self.state, metrics = self.strategy.run_chunk(self.state, self.data, idx[k: k + self.spd])
        self.jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - t0

    def evaluate(self) -> dict:
        from train import tasks

        variables = self.state.variables()
        if self.task.name == "gan":
            z = self.jax.random.normal(self.jax.random.key(12345), (self.scorer.n, self.model.latent_dim))
            gen = self.jax.jit(lambda v, z: self.model.apply(v, z, method="generate"))
            return self.scorer(np.concatenate([np.asarray(gen(variables, z[i:i + 1000]))
                                               for i in range(0, len(z), 1000)]))
        m = tasks.summarize(self._eval(variables, self.val, self.val_n, self.cfg.eval_batch_size))
        return {k: m[k] for k in ("accuracy", "digit_accuracy", "mse", "loss") if k in m}


class TorchSide:
    name = "torch"

    def __init__(self, model_name: str, splits, seed: int, scorer=None, eval_limit: int = 0):
        import torch

        import zoo

        self.torch, self.kind, self.scorer = torch, model_name, scorer
        r = TUTORIAL[model_name]
        self.batch, self.clip = r["batch"], r.get("clip", 0.0)
        torch.manual_seed(seed)
        self.net = zoo.torch_model(model_name).train()
        self.x, self.y = self._inputs(splits.train["x"]), self._labels(splits.train.get("y"))
        val = {k: (v[:eval_limit] if eval_limit else v) for k, v in splits.val.items() if k != "y"}
        self.vx = self._inputs(val["x"])
        self.vy = self._labels(splits.val.get("y"), eval_limit)
        self.n = len(self.x)
        self.steps_per_epoch = self.n // self.batch
        adam = lambda p: torch.optim.Adam(p, lr=r["lr"], betas=r.get("betas", (0.9, 0.999)))  # noqa: E731
        if model_name == "dcgan":
            self.opt_d, self.opt_g = adam(self.net.discriminator.parameters()), adam(self.net.generator.parameters())
        else:
            self.opt = adam(self.net.parameters())
        self.perm, self.pos = torch.randperm(self.n), 0

    def _inputs(self, x: np.ndarray):
        t = self.torch.from_numpy(np.ascontiguousarray(x))
        if self.kind == "char_lstm":
            return t.long()
        t = t.float().div_(255.0)
        if t.ndim == 4:  # NHWC -> NCHW
            t = t.permute(0, 3, 1, 2).contiguous()
        return t.mul_(2.0).sub_(1.0) if self.kind == "dcgan" else t  # the DCGAN tutorial's [-1, 1]

    def _labels(self, y, limit: int = 0):
        if y is None:
            return None
        cut = (lambda a: a[:limit]) if limit else (lambda a: a)  # noqa: E731
        if isinstance(y, dict):
            return {k: self.torch.from_numpy(np.asarray(cut(v))).long() for k, v in y.items()}
        return self.torch.from_numpy(np.asarray(cut(y))).long()

    def _loss(self, out, xb, yb):
        f = self.torch.nn.functional
        if self.kind == "autoencoder":  # BCE on its sigmoid outputs, as zoo's recipe (bench/README.md)
            return f.binary_cross_entropy(out, xb)
        if self.kind == "char_lstm":
            return f.cross_entropy(out.flatten(0, 1), yb.flatten())
        if self.kind == "multitask":
            return sum(f.cross_entropy(out[k], yb[k]) for k in out)
        return f.cross_entropy(out, yb)

    def _gan_step(self, xb):  # the PyTorch DCGAN tutorial's loop (the fake batch reused for G)
        torch, g, d = self.torch, self.net.generator, self.net.discriminator
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        ones, zeros = torch.ones(len(xb), 1), torch.zeros(len(xb), 1)
        self.opt_d.zero_grad()
        fake = g(torch.randn(len(xb), g.latent_dim))
        (bce(d(xb), ones) + bce(d(fake.detach()), zeros)).backward()
        self.opt_d.step()
        self.opt_g.zero_grad()
        bce(d(fake), ones).backward()
        self.opt_g.step()

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            if self.pos + self.batch > self.n:
                self.perm, self.pos = self.torch.randperm(self.n), 0
            idx = self.perm[self.pos: self.pos + self.batch]
            self.pos += self.batch
            xb = self.x[idx]
            if self.kind == "dcgan":
                self._gan_step(xb)
                continue
            yb = None if self.y is None else ({k: v[idx] for k, v in self.y.items()} if isinstance(self.y, dict) else self.y[idx])
            self.opt.zero_grad()
            self._loss(self.net(xb), xb, yb).backward()
            if self.clip:
                self.torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
            self.opt.step()
        return time.perf_counter() - t0

    def evaluate(self) -> dict:
        torch = self.torch
        self.net.eval()
        try:
            with torch.no_grad():
                if self.kind == "dcgan":
                    gen = torch.Generator().manual_seed(12345)
                    z = torch.randn(self.scorer.n, self.net.generator.latent_dim, generator=gen)
                    imgs = torch.cat([self.net.generator(z[i:i + 1000]) for i in range(0, len(z), 1000)])
                    return self.scorer(((imgs + 1) / 2).permute(0, 2, 3, 1).numpy())
                return self._eval_batches()
        finally:
            self.net.train()

    def _eval_batches(self) -> dict:
        sums, n = {}, 0
        for i in range(0, len(self.vx), 1000):
            xb = self.vx[i:i + 1000]
            yb = None if self.vy is None else ({k: v[i:i + 1000] for k, v in self.vy.items()} if isinstance(self.vy, dict) else self.vy[i:i + 1000])
            out = self.net(xb)
            if self.kind == "autoencoder":
                part = {"mse": ((out - xb) ** 2).flatten(1).mean(1).sum()}
            elif self.kind == "char_lstm":
                part = {"loss": self._loss(out, xb, yb) * len(xb)}
            elif self.kind == "multitask":
                part = {"digit_accuracy": (out["digit"].argmax(-1) == yb["digit"]).sum()}
            else:
                part = {"accuracy": (out.argmax(-1) == yb).sum()}
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += len(xb)
        return {k: v / n for k, v in sums.items()}


# --------------------------------------------------------------------------------------------------
# The race


def zoo_config(model: str, overrides: dict, seed: int, quick: bool, recipe: str = "fast"):
    """zoo's side: the model's shipped `recipe` ("fast" where the model has one, else "default")
    under `overrides`."""
    from train import config

    over = {"seed": seed, "recipe": recipe if config.has_recipe(model, recipe) else "default", **overrides}
    if config.recipe(model).get("dataset", "mnist") == "mnist":
        over.setdefault("val_size", 0)  # all 60,000 train images, as the twin; evaluated on test
    if quick:
        over.setdefault("train_limit", QUICK["train_limit"])
    return config.resolve(model, over)


def build_sides(model: str, seed: int, args, log) -> tuple[dict, dict, object]:
    """Both sides of `model`, built and warmed up; (sides, overhead seconds per side, zoo config)."""
    from train import config, tasks

    cfg = zoo_config(model, args.zoo_recipe.get(model, {}), seed, args.quick, args.recipe)
    task = tasks.of_model(model)
    t0 = time.perf_counter()
    splits = tasks.load_splits(task, cfg)
    # the twin's data: the tutorial's windows where zoo's recipe trains on others (char_lstm's seq_len);
    # both sides are evaluated on the twin's validation split
    ref = splits
    if "seq_len" in TUTORIAL[model] and cfg.seq_len != TUTORIAL[model]["seq_len"]:
        ref = tasks.load_splits(task, zoo_config(model, {**args.zoo_recipe.get(model, {}), "seq_len": TUTORIAL[model]["seq_len"]},
                                                 seed, args.quick, args.recipe))
    data_s = time.perf_counter() - t0
    scorer = Scorer(splits.test["x"], args.quality_n) if model == "dcgan" else None
    over = {"zoo": {}, "torch": {}}
    t0 = time.perf_counter()
    zoo_side = ZooSide(cfg, config.build_model(cfg), task, splits, seed, scorer, args.eval_limit, val=ref.val)
    over["zoo"]["setup_s"] = time.perf_counter() - t0
    over["zoo"]["first_call_s"] = zoo_side.warm_up()
    TorchSide(model, ref, seed + 1000, scorer, args.eval_limit).run(args.torch_warmup)  # throwaway twin
    t0 = time.perf_counter()
    torch_side = TorchSide(model, ref, seed, scorer, args.eval_limit)
    over["torch"]["setup_s"] = time.perf_counter() - t0
    over["torch"]["first_call_s"] = torch_side.run(1)  # its first step, then a fresh twin
    torch_side = TorchSide(model, ref, seed, scorer, args.eval_limit)
    for side in over.values():
        side["data_s"] = data_s
    log(f"[{model} seed {seed}] zoo {cfg.recipe=} {cfg.batch_size=} {cfg.lr=} {cfg.schedule=} {cfg.epochs=}; torch {TUTORIAL[model]}")
    return {"zoo": zoo_side, "torch": torch_side}, over, cfg


def side_limits(model: str, side, name: str, args) -> dict:
    """The side's evaluation interval and stopping rules."""
    metric, mode, target = TARGETS[model]
    per_epoch = 1 if model == "dcgan" else args.evals_per_epoch  # 10,000 samples per evaluation
    interval = max(1, side.steps_per_epoch // per_epoch)
    if name == "zoo":
        max_steps = side.max_steps
    elif target is None:
        max_steps = args.tutorial_epochs.get(model, TUTORIAL[model]["epochs"]) * side.steps_per_epoch
    else:
        max_steps = args.max_epochs * side.steps_per_epoch
    return {"interval": interval, "max_steps": max_steps}


def race(model: str, sides: dict, args, log) -> dict:
    """Alternates the sides one evaluation interval at a time until each has stopped."""
    metric, mode, target = TARGETS[model]
    relative = target is None
    lim = {k: side_limits(model, s, k, args) for k, s in sides.items()}
    rec = {k: {"timeline": [], "train_s": 0.0, "steps": 0, "stopped": None} for k in sides}
    while any(r["stopped"] is None for r in rec.values()):
        for name, side in sides.items():
            r = rec[name]
            if r["stopped"]:
                continue
            todo = min(lim[name]["interval"], lim[name]["max_steps"] - r["steps"])
            r["train_s"] += side.run(todo)
            r["steps"] += todo
            t0 = time.perf_counter()
            q = side.evaluate()
            point = {"steps": r["steps"], "epochs": r["steps"] / side.steps_per_epoch, "train_s": r["train_s"],
                     **q, "eval_s": time.perf_counter() - t0}
            r["timeline"].append(point)
            log(f"  [{model}] {name}: {r['steps']} steps, {r['train_s']:.2f} s training, {metric} {q[metric]:.4f}"
                f" (load {os.getloadavg()[0]:.1f})")
            if relative and name == "torch" and r["steps"] >= lim[name]["max_steps"]:
                target = q[metric]  # the twin's quality after its tutorial epochs
                if any(meets(p[metric], mode, target) for p in rec["zoo"]["timeline"]):
                    rec["zoo"]["stopped"] = rec["zoo"]["stopped"] or "target"  # zoo passed it already
            if (name == "zoo" or not relative) and meets(q[metric], mode, target):
                r["stopped"] = "target"
            elif r["steps"] >= lim[name]["max_steps"]:
                r["stopped"] = "end of recipe" if name == "zoo" else "tutorial epochs" if relative else "max epochs"
            elif r["train_s"] >= args.budget_s and not (relative and name == "torch"):  # the twin sets the target
                r["stopped"] = "budget"
    return summarize_race(model, rec, target)


def summarize_race(model: str, rec: dict, target: float | None) -> dict:
    metric, mode, fixed = TARGETS[model]
    out = {"metric": metric, "mode": mode, "target": target, "target_from": "tutorial" if fixed is not None else "twin"}
    for name, r in rec.items():
        tl = r["timeline"]
        if fixed is None and name == "torch":
            reached = tl[-1] if r["stopped"] == "tutorial epochs" else None
        else:  # the first evaluation meeting the target (zoo may pass a relative target before it is known)
            reached = next((p for p in tl if meets(p[metric], mode, target)), None)
        best = (max if mode == "max" else min)(tl, key=lambda p: p[metric])
        out[name] = {"reached": reached is not None, "time_s": reached["train_s"] if reached else None,
                     "quality": reached[metric] if reached else best[metric], "best": best[metric],
                     "stopped": r["stopped"], "steps": reached["steps"] if reached else r["steps"],
                     "epochs": reached["epochs"] if reached else tl[-1]["epochs"], "train_s": r["train_s"],
                     "eval_s": sum(p["eval_s"] for p in tl), "evaluations": len(tl), "timeline": tl}
    z, t = out["zoo"]["time_s"], out["torch"]["time_s"]
    out["ratio"] = z / t if z and t else None
    return out


# --------------------------------------------------------------------------------------------------
# The DCGAN comparison: equal epochs, several seeds, 10,000 samples each


def gan_comparison(args, log) -> dict:
    """The twin (the tutorial recipe: Adam 2e-4, b1 0.5, batch 128) and zoo's DCGAN with each of
    `args.gan_recipes` ("default": the tutorial recipe; "fast": train/configs/fast/dcgan.json),
    all for the same epochs (a schedule spans them), alternating epoch by epoch, per seed; every
    side's 10,000 samples scored by the same Scorer."""
    from train import config, tasks

    epochs = args.gan_epochs
    names = ["torch"] + [f"zoo_{r}" for r in args.gan_recipes]
    out = {"epochs": epochs, "quality_n": args.quality_n, "sides": names, "seeds": []}
    task = tasks.of_model("dcgan")
    over = {**args.zoo_recipe.get("dcgan", {}), "epochs": epochs}
    # the same arrays and reference features for every seed (val_size 0: no seeded validation cut)
    splits = tasks.load_splits(task, zoo_config("dcgan", over, 0, args.quick, args.gan_recipes[0]))
    scorer = Scorer(splits.test["x"], args.quality_n)
    for seed in range(args.gan_seeds):
        cfgs = {f"zoo_{r}": zoo_config("dcgan", over, seed, args.quick, r) for r in args.gan_recipes}
        TorchSide("dcgan", splits, seed + 1000, scorer).run(args.torch_warmup)  # throwaway twin
        sides = {"torch": TorchSide("dcgan", splits, seed, scorer)}
        for name, cfg in cfgs.items():
            sides[name] = ZooSide(cfg, config.build_model(cfg), task, splits, seed, scorer)
            sides[name].warm_up()
        row = {"seed": seed, "recipes": {k: {f: getattr(c, f) for f in ("recipe", "batch_size", "lr", "b1", "schedule", "epochs")}
                                         for k, c in cfgs.items()}}
        for _ in range(epochs):
            for name, side in sides.items():
                row[f"{name}_train_s"] = row.get(f"{name}_train_s", 0.0) + side.run(side.steps_per_epoch)
        for name, side in sides.items():
            row[name] = side.evaluate()
        log(f"  [dcgan comparison seed {seed}] " + ", ".join(f"{k} Frechet {row[k]['frechet']:.1f}" for k in names))
        out["seeds"].append(row)
        del sides
    for name in names:
        vals = [r[name]["frechet"] for r in out["seeds"]]
        out[name] = {"frechet_mean": statistics.fmean(vals), "frechet_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     "frechet_min": min(vals), "frechet_max": max(vals),
                     "confident_share_mean": statistics.fmean(r[name]["confident_share"] for r in out["seeds"]),
                     "train_s_mean": statistics.fmean(r[f"{name}_train_s"] for r in out["seeds"])}
    out["below_twin"] = {k: out[k]["frechet_mean"] < out["torch"]["frechet_mean"] for k in names[1:]}
    return out


def write_gan_md(res: dict, path: Path) -> None:
    g, m = res["gan"], res["machine"]
    recipes = g["seeds"][0]["recipes"]
    lines = [f"# DCGAN: zoo vs the PyTorch twin at equal epochs ({res['device']})", "",
             f"{m['cpu']}, {m['affinity_cpus']} cores; jax {res['versions']['jax']}, torch {res['versions']['torch']}. "
             f"Command: `{res['command']}`" + (" (QUICK: not a measurement)" if res["quick"] else "."), "",
             f"{g['epochs']} epochs each, {len(g['seeds'])} seeds (0..{len(g['seeds']) - 1}), alternating epoch by epoch in "
             f"one process. Frechet distance of {g['quality_n']:,} samples (eval-mode BatchNorm, fixed noise) to the test "
             "images in cnn.mnist features (train/gen_metrics.py); lower is better. The twin: the tutorial recipe "
             f"{TUTORIAL['dcgan']}.", "",
             "| side | recipe | Frechet mean | std | min-max | per seed | confident share | training s (mean) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in g["sides"]:
        s = g[name]
        r = recipes.get(name)
        what = "tutorial (twin)" if r is None else f"{r['recipe']}: batch {r['batch_size']}, lr {r['lr']:g}, b1 {r['b1']:g}, {r['schedule']}"
        per = ", ".join(f"{row[name]['frechet']:.1f}" for row in g["seeds"])
        lines.append(f"| {name} | {what} | {s['frechet_mean']:.1f} | {s['frechet_std']:.1f} | {s['frechet_min']:.1f}-"
                     f"{s['frechet_max']:.1f} | {per} | {100 * s['confident_share_mean']:.1f}% | {s['train_s_mean']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------
# Output


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc; elsewhere since this module started)."""
    try:
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        return float(Path("/proc/uptime").read_text().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _T0


def _cell(side: dict, metric: str) -> str:
    q = f"{side['quality']:.4f}" if side["quality"] is not None else "n/a"
    if side["reached"]:
        return f"{side['time_s']:.1f} s ({metric} {q}, {side['epochs']:.2f} ep)"
    return f"not reached ({side['stopped']} after {side['train_s']:.0f} s, {side['epochs']:.2f} ep; best {side['best']:.4f})"


def write_md(res: dict, path: Path) -> None:
    m = res["machine"]
    lines = [f"# Time to quality: zoo's recipe vs the PyTorch twin's tutorial recipe ({res['device']})", "",
             f"{m['cpu']}, {m['affinity_cpus']} cores; jax {res['versions']['jax']}, torch {res['versions']['torch']} "
             f"({res['torch_threads']} threads). Load average {res['load_start'][0]:.1f} at start, "
             f"{res['load_end'][0]:.1f} at end. Command: `{res['command']}`" + (" (QUICK: tiny data and budgets, not a measurement)" if res["quick"] else "."), "",
             "Times are training time only, both sides alternating in one process; evaluations excluded on both sides "
             "(timed apart in the JSON). overhead = process start (interpreter + imports of its library) + data + "
             "building the trainer + first (compiling) call; from start = overhead + training time.", "",
             "| model | seed | target | zoo | PyTorch | zoo / PyTorch | zoo overhead s | PyTorch overhead s | zoo from start s | PyTorch from start s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in res["races"]:
        t = row["target"]
        tgt = f"{row['metric']} {'>=' if row['mode'] == 'max' else '<='} " + (f"{t:.4f}" if t is not None else "n/a")
        tgt += " (twin)" if row["target_from"] == "twin" else ""
        z, p = row["zoo"], row["torch"]
        fs = lambda s: f"{s['from_start_s']:.1f}" if s["reached"] else "-"  # noqa: E731
        lines.append(f"| {row['model']} | {row['seed']} | {tgt} | {_cell(z, row['metric'])} | {_cell(p, row['metric'])} | "
                     f"{'%.2f' % row['ratio'] if row['ratio'] else 'n/a'} | {z['overhead_s']:.1f} | {p['overhead_s']:.1f} | {fs(z)} | {fs(p)} |")
    path.write_text("\n".join(lines) + "\n")


def parse_args(argv):
    from train.config import RECIPES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}; '' for none")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one race per model and seed")
    p.add_argument("--budget-s", type=float, default=900.0, help="training seconds per side per race before giving up")
    p.add_argument("--max-epochs", type=int, default=30, help="the twin's longest run toward an absolute target")
    p.add_argument("--evals-per-epoch", type=int, default=4, help="evaluations per epoch (dcgan: 1)")
    p.add_argument("--tutorial-epochs", default="", help="MODEL=N,...: the twin's epochs for a relative target "
                   "(default autoencoder=5, dcgan=5)")
    p.add_argument("--zoo-recipe", action="append", default=[], metavar="MODEL=JSON",
                   help='overrides of zoo\'s recipe, e.g. cnn=\'{"schedule": "onecycle", "lr": 0.003, "epochs": 3}\'')
    p.add_argument("--recipe", default="fast", choices=RECIPES,
                   help="zoo's shipped recipe: fast (train/configs/fast/MODEL.json where the model has one, else "
                        "its default recipe) or default")
    p.add_argument("--gan-seeds", type=int, default=0, help="run the DCGAN comparison with this many seeds "
                   "(written to dcgan_vs_twin.{json,md})")
    p.add_argument("--gan-recipes", default="default,fast", help="zoo's recipes in the DCGAN comparison")
    p.add_argument("--gan-epochs", type=int, default=TUTORIAL["dcgan"]["epochs"])
    p.add_argument("--quality-n", type=int, default=10_000, help="DCGAN samples scored per evaluation")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate on the first N examples only (0: all)")
    p.add_argument("--torch-warmup", type=int, default=100, help="untimed steps of a throwaway twin first")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--quick", action="store_true", help=f"tiny settings for a smoke test: {QUICK}")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    bad = [m for m in filter(None, args.models.split(",")) if m not in MODELS]
    if bad:
        p.error(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    args.models = [m for m in args.models.split(",") if m]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.gan_recipes = [r for r in args.gan_recipes.split(",") if r]
    if bad := [r for r in args.gan_recipes if r not in RECIPES]:
        p.error(f"--gan-recipes {','.join(bad)}: each must be one of {', '.join(RECIPES)}")
    try:
        args.tutorial_epochs = {k: int(v) for k, v in (kv.split("=") for kv in filter(None, args.tutorial_epochs.split(",")))}
        args.zoo_recipe = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.zoo_recipe)}
    except ValueError as e:
        p.error(f"--tutorial-epochs MODEL=N,... / --zoo-recipe MODEL=JSON: {e}")
    if bad := sorted(set(args.zoo_recipe) - set(MODELS)):
        p.error(f"--zoo-recipe for unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    if args.quick:
        args.budget_s = min(args.budget_s, QUICK["budget_s"])
        args.eval_limit = args.eval_limit or QUICK["eval_limit"]
        args.quality_n = min(args.quality_n, QUICK["quality_n"])
        args.evals_per_epoch, args.max_epochs = QUICK["evals_per_epoch"], min(args.max_epochs, 2)
        args.gan_epochs = min(args.gan_epochs, 1)
        args.torch_warmup = min(args.torch_warmup, 5)
        args.tutorial_epochs = {"autoencoder": 1, "dcgan": 1, **args.tutorial_epochs}
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    start_s = process_age_s()
    checks = [(m, args.recipe) for m in args.models] + [("dcgan", r) for r in (args.gan_recipes if args.gan_seeds else [])]
    for model, recipe in checks:
        try:  # a bad --zoo-recipe field fails here, before any training
            zoo_config(model, args.zoo_recipe.get(model, {}), 0, args.quick, recipe)
        except ValueError as e:
            print(f"error: --zoo-recipe {model}: {e}", file=sys.stderr)
            sys.exit(2)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    import jax

    import train  # noqa: F401  (the engine: its own imports count as zoo's)
    import_s = {"zoo": time.perf_counter() - t0}
    t0 = time.perf_counter()
    import torch

    import_s["torch"] = time.perf_counter() - t0
    import compare  # noqa: E402  (bench/compare.py: machine())

    torch.set_num_threads(args.threads)
    res = {"command": "python bench/time_to_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "quick": args.quick, "device": "CPU" if jax.default_backend() == "cpu" else jax.devices()[0].device_kind,
           "machine": compare.machine(), "versions": {"jax": jax.__version__, "torch": torch.__version__},
           "torch_threads": torch.get_num_threads(), "budget_s": args.budget_s, "evals_per_epoch": args.evals_per_epoch,
           "process_start_s": start_s, "import_s": import_s, "load_start": os.getloadavg(),
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "targets": TARGETS, "tutorial": TUTORIAL, "races": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():  # after every race: a cut-off run keeps what it measured
        res["load_end"] = os.getloadavg()
        (out / "time_to_quality.json").write_text(json.dumps(res, indent=1))
        write_md(res, out / "time_to_quality.md")
        log((out / "time_to_quality.md").read_text())

    for model in args.models:
        for seed in args.seeds:
            sides, over, cfg = build_sides(model, seed, args, log)
            row = {"model": model, "seed": seed, **race(model, sides, args, log),
                   "zoo_recipe": {k: getattr(cfg, k) for k in ("recipe", "batch_size", "optimizer", "lr", "b1", "schedule", "epochs", "clip_norm", "seq_len")},
                   "torch_recipe": TUTORIAL[model]}
            # compiled programs of zoo's step after the race (1: the race ran the warm-up's program)
            row["zoo_step_compiles"] = sides["zoo"].strategy.compiles()
            for name in ("zoo", "torch"):
                o = over[name]
                o["overhead_s"] = start_s + import_s[name] + o["data_s"] + o["setup_s"] + o["first_call_s"]
                row[name].update(o)
                row[name]["from_start_s"] = o["overhead_s"] + row[name]["time_s"] if row[name]["reached"] else None
            res["races"].append(row)
            del sides
            save()
    if args.gan_seeds:
        res = {k: v for k, v in res.items() if k not in ("races", "targets", "budget_s", "evals_per_epoch")}
        res["gan"] = gan_comparison(args, log)
        res["load_end"] = os.getloadavg()
        (out / "dcgan_vs_twin.json").write_text(json.dumps(res, indent=1))
        write_gan_md(res, out / "dcgan_vs_twin.md")
        log((out / "dcgan_vs_twin.md").read_text())


if __name__ == "__main__":
    main()
