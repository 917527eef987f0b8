"""Your own data, measured: MNIST as a folder of PNGs and tiny-shakespeare as a plain .txt.

The same data three ways, through the real CLI, in one run:

    folder   `zoo train cnn --data FOLDER`: the 70,000 MNIST digits written as PNGs in
             train/<digit>/ and test/<digit>/ folders (the ImageFolder layout), decoded in
             Grain worker processes while training
    memory   `zoo train cnn`: the same digits from TFDS, held on the device (today's path)
    text     `zoo train char_lstm --data input.txt` against `zoo train char_lstm` on TFDS's
             tiny_shakespeare, the same recipe and epochs: their validation losses

Both cnn runs use the shipped recipe (train/configs/cnn.json) and evaluate the test split
(`--test`); images/s is the engine's `examples_per_s` of each epoch (training only, the
first epoch's compile excluded), median over epochs.

    python bench/own_data.py                          # everything (about 10 min on 2 CPU cores)
    python bench/own_data.py --text-epochs 2 --only text

Writes bench/results/own_data.json and prints a markdown table. The folder of PNGs and the
runs go under --scratch (default: a temporary directory, removed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_mnist_folder(out: Path) -> int:
    """MNIST's train and test splits as out/{train,test}/<digit>/<index>.png; returns the image count."""
    from PIL import Image

    from train import data

    count = 0
    for split in ("train", "test"):
        images, labels = data.image_classification(data.load_split("mnist", split))
        for digit in range(10):
            (out / split / str(digit)).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image[..., 0], mode="L").save(out / split / str(int(label)) / f"{i:05d}.png")
        count += len(images)
    return count


def write_shakespeare_text(out: Path) -> int:
    """tiny_shakespeare's train, validation and test text, in that order, as one plain file."""
    from train import data

    text = b"".join(bytes(data.load_split("tiny_shakespeare", s)["text"]) for s in ("train", "validation", "test"))
    out.write_bytes(text)
    return len(text)


def zoo(args: list[str], log: Path) -> tuple[str, float]:
    """Runs `zoo ARGS` (this checkout's CLI); returns its output and wall time; raises on failure."""
    cmd = [sys.executable, "-m", "train.cli", *args]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    with open(log, "a") as f:
        f.write("$ zoo " + " ".join(args) + f"\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode:
        raise RuntimeError(f"zoo {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout, wall


def printed_metric(out: str, name: str) -> float:
    """The value of an `  NAME: VALUE` line of the last evaluation printed."""
    lines = [line for line in out.splitlines() if line.strip().startswith(f"{name}:")]
    if not lines:
        raise ValueError(f"no '{name}:' line in the output:\n{out[-2000:]}")
    return float(lines[-1].split()[-1])


def epochs(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def images_per_s(records: list[dict]) -> float:
    rates = [r["examples_per_s"] for r in records[1:]] or [records[0]["examples_per_s"]]
    return statistics.median(rates)


def cnn_runs(scratch: Path, log: Path) -> dict:
    folder = scratch / "mnist_png"
    t = time.perf_counter()
    n = write_mnist_folder(folder)
    write_s = time.perf_counter() - t
    result = {"images_written": n, "write_s": round(write_s, 1)}
    for side, extra in (("folder", ["--data", str(folder)]), ("memory", [])):
        workdir = scratch / f"cnn_{side}"
        out, wall = zoo(["train", "cnn", "--workdir", str(workdir), "--test", "--sample-every", "0", *extra], log)
        records = epochs(workdir)
        result[side] = {"test_accuracy": printed_metric(out, "accuracy"), "wall_s": round(wall, 1),
                        "epochs": len(records), "images_per_s": round(images_per_s(records), 1),
                        "val_accuracy": records[-1]["val_accuracy"]}
    result["folder_over_memory_images_per_s"] = round(
        result["folder"]["images_per_s"] / result["memory"]["images_per_s"], 3)
    return result


def text_runs(scratch: Path, log: Path, n_epochs: int) -> dict:
    path = scratch / "input.txt"
    result = {"characters": write_shakespeare_text(path), "epochs": n_epochs}
    for side, extra in (("text_file", ["--data", str(path)]), ("tfds", [])):
        workdir = scratch / f"char_lstm_{side}"
        _, wall = zoo(["train", "char_lstm", "--workdir", str(workdir), "--epochs", str(n_epochs),
                       "--sample-every", "0", *extra], log)
        last = epochs(workdir)[-1]
        result[side] = {"val_loss": last["val_loss"], "steps": last["step"], "wall_s": round(wall, 1)}
    result["val_loss_difference"] = round(result["text_file"]["val_loss"] - result["tfds"]["val_loss"], 4)
    return result


def table(res: dict) -> str:
    rows = ["| measurement | own data (`--data`) | TFDS path | |", "|---|---|---|---|"]
    if "cnn" in res:
        c = res["cnn"]
        rows.append(f"| cnn test accuracy (shipped recipe, {c['folder']['epochs']} epochs) | "
                    f"{c['folder']['test_accuracy']:.2%} (ImageFolder of {c['images_written']:,} PNGs) | "
                    f"{c['memory']['test_accuracy']:.2%} | |")
        rows.append(f"| cnn training images/s | {c['folder']['images_per_s']:,.0f} (Grain, decoding PNGs) | "
                    f"{c['memory']['images_per_s']:,.0f} (on device) | ratio {c['folder_over_memory_images_per_s']:.2f} |")
    if "text" in res:
        t = res["text"]
        rows.append(f"| char_lstm validation loss after {t['tfds']['steps']} steps | {t['text_file']['val_loss']:.4f} "
                    f"(input.txt) | {t['tfds']['val_loss']:.4f} | difference {t['val_loss_difference']:+.4f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("cnn", "text"), help="run one part")
    parser.add_argument("--text-epochs", type=int, default=1, help="char_lstm epochs on each side (the recipe's "
                        "cosine schedule over them)")
    parser.add_argument("--scratch", help="where the PNGs and runs go (default: a temporary directory)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "own_data.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(args.scratch or tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        log = scratch / "own_data.log"
        out = Path(args.out)
        # --only reruns one part and keeps the other's last figures
        res = json.loads(out.read_text()) if args.only and out.exists() else {}
        res.update({"device": "cpu", "command": "python bench/own_data.py " + " ".join(argv or sys.argv[1:])})
        if args.only in (None, "cnn"):
            res["cnn"] = cnn_runs(scratch, log)
        if args.only in (None, "text"):
            res["text"] = text_runs(scratch, log, args.text_epochs)
        out.write_text(json.dumps(res, indent=1) + "\n")
        print(table(res))


if __name__ == "__main__":
    main()
