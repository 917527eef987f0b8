"""Hand-drawn-style digits, and `zoo predict`'s accuracy on them with and without MNIST centring.

    python bench/hand_digits.py --write tests/data/hand_digits   # the fixture: 50 PNGs, seeded
    python bench/hand_digits.py                                  # measure -> results/hand_digits.json

The fixture draws each digit 0-9 five times as pen strokes (polylines and elliptic arcs, one
template per digit with random slant, rotation, aspect and per-point wobble), small and
off-centre on canvases of 64-200 px, with thin and thick pens, dark on light paper and light on
dark, antialiased by drawing at 4x and shrinking. File names carry the label: 4_2_thin_dark.png
is the third "4", a thin dark pen on light paper. Nothing here comes from MNIST.

The measurement reads every PNG the way `zoo predict` does (train.predict.read_image) and
classifies it with the shipped cnn.mnist and mlp.mnist weights, once with the digit cropped,
scaled and centred as MNIST's (the default for these models) and once only resized
(--no-center).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "hand_digits"
SUPERSAMPLE = 4


def _arc(cx, cy, rx, ry, start, stop, n=24):
    """Points of an elliptic arc in the unit box (y down; 0 degrees = right, 90 = bottom)."""
    t = np.radians(np.linspace(start, stop, n))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


# Strokes of each digit in a unit box (x right, y down); each stroke is one pen-down polyline.
TEMPLATES = {
    0: [_arc(0.5, 0.5, 0.45, 0.5, -90, 275, 40)],
    1: [[(0.25, 0.2), (0.6, 0.0), (0.6, 1.0)]],
    2: [_arc(0.5, 0.3, 0.42, 0.3, 195, 385) + [(0.05, 1.0), (0.98, 1.0)]],
    3: [_arc(0.45, 0.25, 0.4, 0.25, 200, 450) + _arc(0.45, 0.74, 0.47, 0.26, -90, 155)],
    4: [[(0.68, 0.0), (0.03, 0.66), (1.0, 0.66)], [(0.7, 0.0), (0.7, 1.0)]],
    5: [[(0.92, 0.0), (0.18, 0.0), (0.12, 0.45)] + _arc(0.47, 0.7, 0.45, 0.3, -140, 150)],
    6: [[(0.8, 0.0), (0.45, 0.22), (0.18, 0.5), (0.1, 0.72)] + _arc(0.48, 0.72, 0.38, 0.28, 180, 540, 32)],
    7: [[(0.02, 0.0), (0.98, 0.0), (0.38, 1.0)]],
    8: [_arc(0.5, 0.24, 0.33, 0.24, 90, 450, 32) + _arc(0.5, 0.73, 0.42, 0.27, -90, 270, 32)],
    9: [_arc(0.5, 0.3, 0.4, 0.3, 0, 360, 32) + [(0.88, 0.35), (0.8, 1.0)]],
}


def draw_digit(digit: int, rng: np.random.Generator, *, thick: bool, dark_on_light: bool):
    """One drawing of `digit` (a PIL "L" image), small and off-centre on a 64-200 px canvas."""
    from PIL import Image, ImageDraw

    size = int(rng.integers(64, 201))
    height = size * rng.uniform(0.2, 0.5)
    width = height * rng.uniform(0.5, 0.7)
    slant, turn = rng.uniform(-0.25, 0.25), np.radians(rng.uniform(-10, 10))
    x0 = rng.uniform(0.1 * size, size - width - 0.1 * size)
    y0 = rng.uniform(0.1 * size, size - height - 0.1 * size)
    pen = height * rng.uniform(0.1, 0.16) if thick else rng.uniform(1.0, 2.0)
    paper, ink = (int(rng.integers(215, 256)), int(rng.integers(0, 60))) if dark_on_light else \
        (int(rng.integers(0, 40)), int(rng.integers(200, 256)))
    s = SUPERSAMPLE
    image = Image.new("L", (size * s, size * s), paper)
    draw = ImageDraw.Draw(image)
    cos, sin = np.cos(turn), np.sin(turn)
    for stroke in TEMPLATES[digit]:
        u = np.asarray(stroke) + rng.normal(0.0, 0.012, (len(stroke), 2))  # the hand's wobble
        x = (u[:, 0] - 0.5) * width + slant * (0.5 - u[:, 1]) * height
        y = (u[:, 1] - 0.5) * height
        px = (x0 + width / 2 + cos * x - sin * y) * s
        py = (y0 + height / 2 + sin * x + cos * y) * s
        points = list(zip(px.tolist(), py.tolist()))
        draw.line(points, fill=ink, width=max(1, round(pen * s)), joint="curve")
        r = pen * s / 2  # round pen ends
        for cx, cy in (points[0], points[-1]):
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=ink)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def write_fixture(out: Path, seed: int = 0) -> list[Path]:
    """The 50 drawings as PNGs in `out` (5 per digit: thin/thick, dark on light/light on dark)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for digit in range(10):
        for i in range(5):
            thick, dark = i % 2 == 1, i in (0, 1, 4)
            path = out / f"{digit}_{i}_{'thick' if thick else 'thin'}_{'dark' if dark else 'light'}.png"
            draw_digit(digit, rng, thick=thick, dark_on_light=dark).save(path, optimize=True)
            paths.append(path)
    return paths


def measure(folder: Path, models=(("cnn", "mnist"), ("mlp", "mnist"))) -> dict:
    """Accuracy of the shipped weights on the drawings in `folder`, with and without centring."""
    import jax

    import zoo
    from train.predict import read_image

    files = sorted(folder.glob("*.png"))
    labels = [int(p.name[0]) for p in files]
    result = {"files": len(files), "fixture": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder),
              "models": {}}
    for name, tag in models:
        model, variables = zoo.load(name, pretrained=tag)
        apply = jax.jit(lambda x, m=model, v=variables: m.apply(v, x))
        row = {}
        for center in (False, True):
            predicted = [int(np.argmax(apply(read_image(model, p, center=center))[0])) for p in files]
            right = [p == y for p, y in zip(predicted, labels)]
            row["centred" if center else "resized"] = {
                "accuracy": float(np.mean(right)),
                "wrong": [f.name + f" -> {p}" for f, p, ok in zip(files, predicted, right) if not ok]}
        result["models"][f"{name}.{tag}"] = row
    return result


def table(result: dict) -> str:
    lines = [f"zoo predict on {result['files']} hand-drawn digits ({result['fixture']})",
             "| weights | resized only (--no-center) | centred as MNIST (default) |", "|---|---|---|"]
    for name, row in result["models"].items():
        lines.append(f"| {name} | {row['resized']['accuracy']:.2f} | {row['centred']['accuracy']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="DIR", help="write the fixture's 50 PNGs to DIR and stop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixture", default=str(FIXTURE), help="folder of drawings to measure")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "hand_digits.json"))
    args = parser.parse_args(argv)
    if args.write:
        print(f"wrote {len(write_fixture(Path(args.write), args.seed))} drawings to {args.write}")
        return 0
    result = measure(Path(args.fixture).resolve())
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
