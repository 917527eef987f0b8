"""Side-by-side training speed: zoo (JAX/Flax, as the engine trains) vs PyTorch (zoo.torch_model twins).

For each model at the tutorial recipe (same architecture, batch size, optimizer and loss), one
process builds three trainers on real MNIST and then ALTERNATES them for `--repeats` rounds:

    zoo, torch-mem, torch-dataloader, zoo, torch-mem, torch-dataloader, ...

Each round of each trainer runs `--steps` timed steps (after a warm-up) and reports ms/step; the
ratios torch / zoo are taken within the same round, so machine load drifts cancel as far as they
can. "Time per epoch" is EXTRAPOLATED: ms/step x (60000 // batch) steps, unless `--full-epoch`
(then each timed round is one real epoch of 60000 // batch steps).

    zoo        the task record's train step (train.tasks), jitted with donation by train.parallel.JitStrategy
               over a 1-device mesh, 1 step per dispatch (the CPU engine setting); data uint8 on
               device, batches cut on device by index; host syncs only at the end of a round.
    torch-mem  the PyTorch twin (zoo.torch_model: the same architecture), same optimizer/loss;
               float tensors in memory, batches by index x[idx] from a torch.randperm per epoch.
    torch-dl   as the tutorials write it: DataLoader(TensorDataset(x, y), batch_size, shuffle=True)
               over the same float tensors (num_workers=0, drop_last=False, the defaults).

Both sides share the machine's cores: torch.set_num_threads(--threads, default 2), XLA:CPU uses
its default thread pool. Peak memory is measured per side in separate subprocesses (VmHWM
of a fresh process, plus the RSS after imports and data, to give the training delta).
Compile time (`--compile`): first-step seconds of the zoo step in a fresh process with an empty
persistent compilation cache (cold), then in a second fresh process with the same cache (warm).

    python bench/compare.py                              # all 5 models, 100 steps, 2 rounds
    python bench/compare.py --models cnn mlp --steps 50 --repeats 3 --compile
    python bench/compare.py --full-epoch --repeats 1     # real epochs (slow on CPU)

Writes bench/results/compare.json (raw numbers + machine) and bench/results/compare.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("mlp", "cnn", "lstm", "autoencoder", "dcgan")
# name -> batch size, lr, (b1, b2): the tutorial recipes (constant learning rate, no clipping).
RECIPES = {
    "mlp": dict(batch=100, lr=1e-3, betas=(0.9, 0.999)),
    "cnn": dict(batch=64, lr=1e-3, betas=(0.9, 0.999)),
    "lstm": dict(batch=100, lr=1e-3, betas=(0.9, 0.999)),
    "autoencoder": dict(batch=128, lr=1e-3, betas=(0.9, 0.999)),
    "dcgan": dict(batch=128, lr=2e-4, betas=(0.5, 0.999)),
}
SIDES = ("zoo", "torch_mem", "torch_dl")
WARMUP = 5  # untimed steps after the first (compiling) call, per trainer


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def maxrss_mb() -> float:
    """Peak RSS of this process image: VmHWM (ru_maxrss survives execve on Linux, so a child
    started from a big parent would report the parent's peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------------------------------
# Data (uint8 MNIST train/test, loaded once; subprocesses read a .npz written by the parent)


def load_mnist() -> dict:
    from train.data import load_split

    out = {}
    for split in ("train", "test"):
        a = load_split("mnist", split)
        out[f"{split}_x"] = np.asarray(a["image"])  # (N, 28, 28, 1) uint8
        out[f"{split}_y"] = np.asarray(a["label"]).astype(np.int64)
    return out


# --------------------------------------------------------------------------------------------------
# zoo side


def tutorial_config(model_name: str, seed: int = 0):
    """The tutorial recipe of `model_name` (RECIPES) as a train.config.Config: Adam, constant rate."""
    from train.config import Config

    r = RECIPES[model_name]
    return Config(
        model=model_name, dataset="mnist", batch_size=r["batch"], optimizer="adam", lr=r["lr"],
        b1=r["betas"][0], schedule="constant", clip_norm=0.0, seed=seed,
    )


def whole_dispatches(steps: int, spd: int) -> int:
    """`steps` rounded up to a whole number of dispatches of `spd` steps."""
    return -(-steps // spd) * spd


class ZooTrainer:
    name = "zoo"

    def __init__(self, model_name: str, data: dict, seed: int = 0, steps_per_dispatch: int = 0, options="auto",
                 cfg=None, total_steps: int = 10**6):
        """cfg: a train.config.Config to train with instead of `tutorial_config(model_name)`;
        total_steps: the run length its learning-rate schedule is built for."""
        import jax

        from train import loop, parallel, tasks
        from train.config import build_model

        self.jax = jax
        self.cfg = cfg or tutorial_config(model_name, seed)
        self.batch = self.cfg.batch_size
        self.task = tasks.of_model(model_name)
        self.model = build_model(self.cfg)
        arrays = self.task.view({"image": data["train_x"], "label": data["train_y"]})
        self.test = self.task.view({"image": data["test_x"], "label": data["test_y"]})
        self.n = len(arrays["x"])
        step_fn = self.task.train_step(self.model, self.cfg)
        # options: the engine's XLA compiler options ("auto", as `zoo train` compiles) or explicit ones
        self.strategy = parallel.JitStrategy(step_fn, parallel.make_mesh(jax.devices()[:1]), options)
        state = loop.initial_state(self.cfg, self.model, self.task, total_steps, log=lambda *a: None)
        self.state = self.strategy.place_state(state)
        self.data = self.strategy.place_data(arrays)
        jax.block_until_ready((self.state, self.data))
        self.rng = np.random.default_rng(seed)
        self.order, self.pos = self.rng.permutation(self.n), 0
        self.steps_done = 0
        # As the engine dispatches: 1 step per call on CPU, a whole epoch (lax.scan) on GPU/TPU.
        self.spd = steps_per_dispatch or parallel.default_steps_per_dispatch(self.n // self.batch)

    def _idx(self, k: int) -> np.ndarray:
        rows = []
        for _ in range(k):
            if self.pos + self.batch > self.n:  # the engine drops the last partial batch
                self.order, self.pos = self.rng.permutation(self.n), 0
            rows.append(self.order[self.pos : self.pos + self.batch])
            self.pos += self.batch
        return np.stack(rows)  # (k, B)

    def run(self, steps: int) -> float:
        """Runs `steps` steps (a multiple of the dispatch size); returns seconds incl. the final sync."""
        jax = self.jax
        if steps == 0:
            return 0.0
        if steps % self.spd:
            raise ValueError(f"steps={steps} is not a multiple of {self.spd} steps per dispatch")
        t0 = time.perf_counter()
        metrics = None
        for _ in range(steps // self.spd):
            self.state, metrics = self.strategy.run_chunk(self.state, self.data, self._idx(self.spd))
        jax.block_until_ready((self.state, metrics))
        self.last_loss = float(np.asarray(metrics["loss"])[-1])
        self.steps_done += steps
        return time.perf_counter() - t0

    def evaluate(self) -> dict:
        """Test-set metrics; the evaluator is compiled and the test set placed once (the races evaluate often)."""
        from train import parallel, tasks

        if self.task.name == "gan":
            return {}
        if not hasattr(self, "_eval"):
            mesh = parallel.make_mesh(self.jax.devices()[:1])
            self._eval = parallel.make_evaluator(self.task.eval_step(self.model), mesh)
            self._test_on_device = self.strategy.place_data(self.test)
        sums = self._eval(self.state.variables(), self._test_on_device, len(self.test["x"]), 1000)
        m = tasks.summarize(sums)
        return {k: m[k] for k in ("accuracy", "mse", "loss") if k in m}


# --------------------------------------------------------------------------------------------------
# torch side


class TorchTrainer:
    spd = 1  # steps per dispatch: eager PyTorch runs one step per call
    def __init__(self, model_name: str, data: dict, loader: bool, seed: int = 0, recipe: dict | None = None):
        """recipe: {"batch", "lr", "betas"} to train with instead of RECIPES[model_name]."""
        import torch
        from torch import nn

        import zoo

        self.torch, self.nn = torch, nn
        self.name = "torch_dl" if loader else "torch_mem"
        self.device = dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model_name = model_name
        r = recipe or RECIPES[model_name]
        self.batch = r["batch"]
        torch.manual_seed(seed)
        self.net = zoo.torch_model(model_name).to(dev).train()
        x = torch.from_numpy(data["train_x"]).permute(0, 3, 1, 2).float().div_(255.0).contiguous()  # (N,1,28,28)
        tx = torch.from_numpy(data["test_x"]).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        if model_name == "lstm":
            x, tx = x[:, 0].contiguous(), tx[:, 0].contiguous()  # rows as a 28-step sequence
        if model_name == "dcgan":
            x = x.mul_(2.0).sub_(1.0)  # the tutorial's Normalize((0.5,), (0.5,)): [-1, 1]
        self.x, self.y = x, torch.from_numpy(data["train_y"])
        self.tx, self.ty = tx.to(dev), torch.from_numpy(data["test_y"]).to(dev)
        if not loader:  # in-memory: the whole dataset on the device once
            self.x, self.y = self.x.to(dev), self.y.to(dev)
        self.n = len(x)
        adam = lambda params: torch.optim.Adam(params, lr=r["lr"], betas=r["betas"])  # noqa: E731
        if model_name == "dcgan":
            self.opt_d = adam(self.net.discriminator.parameters())
            self.opt_g = adam(self.net.generator.parameters())
            self.criterion = nn.BCEWithLogitsLoss()  # the discriminator returns logits
        else:
            self.opt = adam(self.net.parameters())
            # the autoencoder: binary cross-entropy on its sigmoid outputs, as zoo's recipe trains
            # (the tutorial's MSE on sigmoid outputs stalls this twin at MSE 0.108 within 40 steps:
            # the outputs saturate at 0, where the sigmoid's gradient vanishes)
            self.criterion = nn.BCELoss() if model_name == "autoencoder" else nn.CrossEntropyLoss()
        self.loader = None
        if loader:
            from torch.utils.data import DataLoader, TensorDataset

            # as the tutorials write it: CPU tensors, each batch moved with .to(device)
            self.loader = DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch, shuffle=True)
            self._it = iter(self.loader)
        else:
            self.perm, self.pos = torch.randperm(self.n, device=dev), 0
        self.steps_done = 0

    def _batch(self):
        if self.loader is not None:
            try:
                xb, yb = next(self._it)
            except StopIteration:
                self._it = iter(self.loader)
                xb, yb = next(self._it)
            return xb.to(self.device), yb.to(self.device)
        if self.pos + self.batch > self.n:
            self.perm, self.pos = self.torch.randperm(self.n, device=self.device), 0
        idx = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return self.x[idx], self.y[idx]

    def _step(self, xb, yb):
        if self.model_name == "dcgan":  # the PyTorch DCGAN tutorial's loop (fake reused for G)
            g, d, crit = self.net.generator, self.net.discriminator, self.criterion
            b = xb.shape[0]
            ones, zeros = self.torch.ones(b, 1, device=self.device), self.torch.zeros(b, 1, device=self.device)
            self.opt_d.zero_grad()
            err_real = crit(d(xb), ones)
            err_real.backward()
            fake = g(self.torch.randn(b, g.latent_dim, device=self.device))
            err_fake = crit(d(fake.detach()), zeros)
            err_fake.backward()
            self.opt_d.step()
            self.opt_g.zero_grad()
            err_g = crit(d(fake), ones)
            err_g.backward()
            self.opt_g.step()
            return err_real + err_fake + err_g
        self.opt.zero_grad()
        out = self.net(xb)
        loss = self.criterion(out, xb) if self.model_name == "autoencoder" else self.criterion(out, yb)
        loss.backward()
        self.opt.step()
        return loss

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        loss = None
        for _ in range(steps):
            loss = self._step(*self._batch())
        self.last_loss = float(loss.detach())  # syncs the device (CUDA) before the clock stops
        self.steps_done += steps
        return time.perf_counter() - t0

    def evaluate(self) -> dict:
        torch = self.torch
        if self.model_name == "dcgan":
            return {}
        self.net.eval()
        correct, sq, n = 0.0, 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.tx), 1000):
                xb, yb = self.tx[i : i + 1000], self.ty[i : i + 1000]
                out = self.net(xb)
                if self.model_name == "autoencoder":
                    sq += float(((out - xb) ** 2).flatten(1).mean(1).sum())
                else:
                    correct += float((out.argmax(-1) == yb).sum())
                n += len(xb)
        self.net.train()
        return {"mse": sq / n} if self.model_name == "autoencoder" else {"accuracy": correct / n}


def setup_torch(threads: int) -> dict:
    """Thread count on CPU; on CUDA full float32 (no TF32), like JAX with
    JAX_DEFAULT_MATMUL_PRECISION=highest, so both sides do the same arithmetic."""
    import torch

    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return {"threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "tf32": bool(torch.cuda.is_available() and torch.backends.cudnn.allow_tf32)}


def make_trainer(side: str, model: str, data: dict):
    if side == "zoo":
        return ZooTrainer(model, data)
    return TorchTrainer(model, data, loader=side == "torch_dl")


# --------------------------------------------------------------------------------------------------
# Subprocess modes: peak memory of one side, compile time of the zoo step


def child_memory(side: str, model: str, npz: str, steps: int, threads: int) -> dict:
    """Fresh process: imports only the side's library, loads the data, trains `steps` steps."""
    if side != "zoo":
        setup_torch(threads)
    else:
        import jax  # noqa: F401
    d = np.load(npz)
    data = {k: d[k] for k in d.files}
    base = rss_mb()
    tr = make_trainer(side, model, data)
    tr.run(tr.spd)
    tr.run(whole_dispatches(steps, tr.spd))
    out = {"rss_after_imports_and_data_mb": base, "peak_rss_mb": maxrss_mb(), "train_delta_mb": maxrss_mb() - base}
    out.update(device_peak_mb(side))
    return out


def device_peak_mb(side: str) -> dict:
    """Peak accelerator memory of this process (empty on CPU)."""
    if side == "zoo":
        import jax

        dev = jax.devices()[0]
        stats = dev.memory_stats() if dev.platform != "cpu" else None
        return {"device_peak_mb": stats["peak_bytes_in_use"] / 2**20} if stats else {}
    import torch

    return {"device_peak_mb": torch.cuda.max_memory_allocated() / 2**20} if torch.cuda.is_available() else {}


def child_compile(model: str, npz: str) -> dict:
    import jax

    d = np.load(npz)
    data = {k: d[k] for k in d.files}
    tr = ZooTrainer(model, data)
    first = tr.run(tr.spd)  # one dispatch: 1 step on CPU, a whole epoch on GPU
    second = tr.run(tr.spd)
    return {"first_step_s": first, "second_step_s": second, "compile_s": first - second, "steps_per_dispatch": tr.spd,
            "cache_dir": jax.config.jax_compilation_cache_dir}


def run_child(args: list[str], env_extra: dict | None = None, timeout: float = 900) -> dict:
    # Children must not wait for the parent's preallocated accelerator memory.
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", **(env_extra or {})}
    p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        return {"error": p.stderr[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# Main benchmark


def fmt(v, nd=1):
    return "n/a" if v is None else f"{v:.{nd}f}"


def bench_model(model: str, data: dict, args, log) -> dict:
    r = RECIPES[model]
    steps_per_epoch = len(data["train_x"]) // r["batch"]
    steps = steps_per_epoch if args.full_epoch else args.steps
    trainers, setup_s, first_step_s = {}, {}, {}
    for side in SIDES:  # build all three before any clock; first call + warm-up untimed
        t0 = time.perf_counter()
        trainers[side] = tr = make_trainer(side, model, data)
        setup_s[side] = time.perf_counter() - t0
        first_step_s[side] = tr.run(tr.spd)  # one dispatch (zoo: 1 step on CPU, an epoch on GPU)
        tr.run(whole_dispatches(WARMUP, tr.spd))
    log(f"[{model}] setup {setup_s}, first step {first_step_s}")
    rounds = []
    for rep in range(args.repeats):
        rnd = {}
        for side in SIDES:
            secs = trainers[side].run(steps)
            rnd[side] = {"seconds": secs, "ms_per_step": 1e3 * secs / steps, "loss": trainers[side].last_loss}
        rnd["load1"] = os.getloadavg()[0]
        rnd["speedup_vs_mem"] = rnd["torch_mem"]["seconds"] / rnd["zoo"]["seconds"]
        rnd["speedup_vs_dl"] = rnd["torch_dl"]["seconds"] / rnd["zoo"]["seconds"]
        rounds.append(rnd)
        log(f"[{model}] round {rep}: " + ", ".join(f"{s} {rnd[s]['ms_per_step']:.2f} ms" for s in SIDES)
            + f" | x{rnd['speedup_vs_mem']:.2f} vs mem, x{rnd['speedup_vs_dl']:.2f} vs DataLoader (load {rnd['load1']:.1f})")
    out = {"batch_size": r["batch"], "lr": r["lr"], "betas": r["betas"], "steps_per_round": steps,
           "steps_per_epoch": steps_per_epoch, "epoch_time": "measured" if args.full_epoch else "extrapolated",
           "setup_s": setup_s, "first_step_s": first_step_s, "rounds": rounds, "sides": {}}
    for side in SIDES:
        ms = [rd[side]["ms_per_step"] for rd in rounds]
        med = statistics.median(ms)
        out["sides"][side] = {
            "ms_per_step_median": med, "ms_per_step_min": min(ms),
            "examples_per_s_median": r["batch"] * 1e3 / med,
            "epoch_s_median": med * steps_per_epoch / 1e3,
            "total_steps_trained": trainers[side].steps_done,
        }
    for key in ("speedup_vs_mem", "speedup_vs_dl"):
        vals = [rd[key] for rd in rounds]
        out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    if args.eval:
        for side in SIDES:
            out["sides"][side]["test"] = trainers[side].evaluate()
    del trainers
    return out


def write_md(res: dict, path: Path) -> None:
    a = res["args"]
    lines = [
        f"# zoo vs PyTorch: training speed on {res.get('device', 'CPU')} (side by side)",
        "",
        f"Machine: {res['machine']['cpu']}, {res['machine']['affinity_cpus']} cores, {res.get('device', 'CPU')}; python {res['machine']['python']}, "
        f"jax {res['versions']['jax']}, flax {res['versions']['flax']}, optax {res['versions']['optax']}, torch {res['versions']['torch']} "
        f"(torch threads {res['torch_num_threads']}). Load average (1 min) {res['load_start'][0]:.1f} at start, {res['load_end'][0]:.1f} at end.",
        "",
        f"Command: `{res['command']}`. Each round runs {'one real epoch' if a['full_epoch'] else str(a['steps']) + ' timed steps'} "
        f"per trainer, alternating zoo, torch-mem, torch-DataLoader; {a['repeats']} rounds. ms/step: median (min) over rounds; "
        "speedup = torch time / zoo time within the same round, median (min-max). "
        + ("Epoch times are measured." if a["full_epoch"] else "Epoch time = median ms/step x (60000 // batch) steps: EXTRAPOLATED, not measured."),
        "",
        "| model | batch | zoo ms/step | torch mem ms/step | torch DataLoader ms/step | speedup vs mem | speedup vs DataLoader "
        "| zoo epoch s | torch mem epoch s | torch DL epoch s | zoo ex/s | torch mem ex/s | zoo 1st dispatch s (in-process) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in res["models"].items():
        if "sides" not in r:  # --no-train
            continue
        s = r["sides"]
        sv, sd = r["speedup_vs_mem"], r["speedup_vs_dl"]
        lines.append(
            f"| {m} | {r['batch_size']} "
            + "".join(f"| {s[x]['ms_per_step_median']:.2f} ({s[x]['ms_per_step_min']:.2f}) " for x in SIDES)
            + f"| {sv['median']:.2f}x ({sv['min']:.2f}-{sv['max']:.2f}) | {sd['median']:.2f}x ({sd['min']:.2f}-{sd['max']:.2f}) "
            + "".join(f"| {s[x]['epoch_s_median']:.2f} " for x in SIDES)
            + f"| {s['zoo']['examples_per_s_median']:.0f} | {s['torch_mem']['examples_per_s_median']:.0f} "
            + f"| {r['first_step_s']['zoo']:.2f} |"
        )
    if res.get("compile"):
        lines += ["", "Compile time of the zoo train step (fresh process each; the persistent compilation cache empty "
                  "for cold, filled by the cold run for warm). compile = first dispatch - second dispatch (the same "
                  "work once compiled), so it includes tracing, lowering and XLA compilation or the cache load.", "",
                  "| model | steps per dispatch | cold: first dispatch s | cold compile s | warm: first dispatch s | warm compile (cache load) s |",
                  "|---|---|---|---|---|---|"]
        for m, c in res["compile"].items():
            cold, warm = c.get("cold", {}), c.get("warm", {})
            lines.append(f"| {m} | {cold.get('steps_per_dispatch', 'n/a')} | {fmt(cold.get('first_step_s'), 2)} | {fmt(cold.get('compile_s'), 2)} "
                         f"| {fmt(warm.get('first_step_s'), 2)} | {fmt(warm.get('compile_s'), 2)} |")
    if any("memory" in r for r in res["models"].values()):
        lines += ["", "Peak memory: a fresh subprocess per side (imports only its own library, loads MNIST from a .npz, "
                  f"trains 1 + {WARMUP} + {a['memory_steps']} steps). Peak = VmHWM of the child (its high-water RSS); delta = peak - RSS after imports and data.", "",
                  "| model | zoo peak MB (delta) | torch mem peak MB (delta) | torch DataLoader peak MB (delta) |", "|---|---|---|---|"]
        for m, r in res["models"].items():
            if "memory" not in r:
                continue
            mem = r.get("memory", {})
            cells = []
            for x in SIDES:
                v = mem.get(x, {})
                if "error" in v or not v:
                    cells.append("error")
                elif "device_peak_mb" in v:  # accelerator: the device's own peak
                    cells.append(f"{v['device_peak_mb']:.0f} device, {v['peak_rss_mb']:.0f} host")
                else:
                    cells.append(f"{v['peak_rss_mb']:.0f} ({v['train_delta_mb']:+.0f})")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if any("test" in r.get("sides", {}).get("zoo", {}) for r in res["models"].values()):
        lines += ["", "Test-set metric after the same number of training steps on each side "
                  "(few steps: a sanity check, not an accuracy claim):", "", "| model | steps | zoo | torch mem | torch DataLoader |", "|---|---|---|---|---|"]
        for m, r in res["models"].items():
            if "sides" not in r:
                continue
            t = [r["sides"][x].get("test", {}) for x in SIDES]
            if not t[0]:
                continue
            cell = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items())  # noqa: E731
            lines.append(f"| {m} | {r['sides']['zoo']['total_steps_trained']} | " + " | ".join(cell(d) for d in t) + " |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--steps", type=int, default=100, help="timed steps per round per trainer")
    p.add_argument("--repeats", type=int, default=2, help="alternating rounds")
    p.add_argument("--full-epoch", action="store_true", help="time real epochs (60000 // batch steps) instead of --steps")
    p.add_argument("--compile", action="store_true", help="cold/warm compile time in fresh subprocesses")
    p.add_argument("--no-compile-warm", dest="compile_warm", action="store_false",
                   help="with --compile: the cold child only")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-steps", type=int, default=20)
    p.add_argument("--no-eval", dest="eval", action="store_false", help="skip the test-set metric")
    p.add_argument("--no-train", dest="train", action="store_false", help="skip the timed training rounds")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._child:
        kind = args._child[0]
        if kind == "memory":
            _, side, model, npz, steps = args._child
            out = child_memory(side, model, npz, int(steps), args.threads)
        else:
            _, model, npz = args._child
            out = child_compile(model, npz)
        print(json.dumps(out))
        return

    import jax
    import torch
    import flax
    import optax

    torch_setup = setup_torch(args.threads)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    res = {
        "command": "python bench/compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {k: v for k, v in vars(args).items() if k != "_child"},
        "machine": machine(),
        "versions": {"jax": jax.__version__, "jaxlib": getattr(jax.lib, "__version__", None) or __import__("jaxlib").__version__,
                     "flax": flax.__version__, "optax": optax.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "torch_num_threads": torch.get_num_threads(),
        "torch_setup": torch_setup,
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision or "default",
        "device": jax.devices()[0].device_kind if jax.default_backend() != "cpu" else "CPU",
        "torch_device": "cuda" if torch.cuda.is_available() else "cpu",
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "load_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "models": {},
    }
    log(f"machine {res['machine']} torch threads {res['torch_num_threads']} load {res['load_start']}")
    t0 = time.perf_counter()
    data = load_mnist()
    res["data_load_s"] = time.perf_counter() - t0
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if jax.default_backend() != "cpu" and not args.full_epoch:
        log("accelerator: timing whole epochs (the engine dispatches one epoch per call there)")
        args.full_epoch = True
        res["args"]["full_epoch"] = True
    tmp = tempfile.mkdtemp(prefix="zoo_compare_")
    npz = os.path.join(tmp, "mnist.npz")
    np.savez(npz, **data)

    def save():
        res["load_end"] = os.getloadavg()
        res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        (out_dir / "compare.json").write_text(json.dumps(res, indent=2))
        write_md(res, out_dir / "compare.md")

    for model in args.models:
        res["models"][model] = bench_model(model, data, args, log) if args.train else {}
        save()
    if args.memory:
        for model in args.models:
            res["models"][model]["memory"] = {}
            for side in SIDES:
                res["models"][model]["memory"][side] = m = run_child(
                    ["--threads", str(args.threads), "--_child", "memory", side, model, npz, str(args.memory_steps)])
                log(f"[{model}] memory {side}: {m if 'error' not in m else 'ERROR ' + m['error'][-300:]}")
            save()
    if args.compile:
        res["compile"] = {}
        for model in args.models:
            cache = tempfile.mkdtemp(prefix="jaxcache_", dir=tmp)
            env = {"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                   "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
            c = {"cold": run_child(["--_child", "compile", model, npz], env)}
            if args.compile_warm:
                c["warm"] = run_child(["--_child", "compile", model, npz], env)
            c["cache_files"] = sum(len(f) for _, _, f in os.walk(cache))
            res["compile"][model] = c
            log(f"[{model}] compile: {c}")
            save()
    save()
    log((out_dir / "compare.md").read_text())


if __name__ == "__main__":
    main()
