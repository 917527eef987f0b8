"""Sample quality of the shipped generative models, in cnn.mnist's feature space (train/gen_metrics.py).

Measures, at N images (default 10,000, fixed seed 0):
  * floor: the Fréchet distance between the first N MNIST train images and the N test images
    (two samples of the real distribution: the best a generator can expect);
  * dcgan.mnist: N samples (z ~ N(0, 1) from key(0)) against the N test images, plus the share
    classified with confidence > 0.9 and the digit classes they cover; again with the
    generator's BatchNorm on each batch of 128's own statistics, as the PyTorch tutorial samples
    (its netG never leaves train mode), instead of the running averages;
  * autoencoder.mnist: its reconstructions of the N test images against those images;
  * the test images themselves (the confident share and coverage of real digits).

    python bench/gen_metrics.py [--n 10000] [--data-dir DIR]

Writes bench/results/gen_metrics.json (the shipped manifests are sha256-pinned, so the numbers
live here rather than in zoo/weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


import zoo  # noqa: E402
from train import data, gen_metrics  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=gen_metrics.NUM_IMAGES)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    train = data.load_split("mnist", "train", data_dir=args.data_dir)["image"][: args.n]
    test = data.load_split("mnist", "test", data_dir=args.data_dir)["image"][: args.n]
    results = {"n": int(len(test)), "classifier": ".".join(gen_metrics.CLASSIFIER), "confidence": gen_metrics.CONFIDENCE}
    results["mnist_test"] = gen_metrics.quality(test, test)
    results["floor_train_vs_test"] = gen_metrics.quality(train, test)
    for name, measure in (("dcgan", gen_metrics.gan_quality), ("autoencoder", gen_metrics.reconstruction_quality)):
        model, variables = zoo.load(name, pretrained="mnist")
        results[f"{name}.mnist"] = measure(model, variables, {"x": test}, args.n, 0)
        print(name, results[f"{name}.mnist"], flush=True)
        if name == "dcgan":  # sampled as the tutorial does: BatchNorm on each batch's statistics
            key = "dcgan.mnist_batch_stats_bn"
            results[key] = measure(model, variables, {"x": test}, args.n, 0, batch_size=128, batch_stats=True)
            print(key, results[key], flush=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gen_metrics.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
