"""Inception feature throughput (images/s) of the FID step on the current device, and the minutes for 50k images.

Needs NVIDIA's inception-2015-12-05.pt (docs/architecture.md, "Evaluation": --inception PATH, $CLDSGM_INCEPTION
or resources/); nothing is
downloaded. Random uint8 CIFAR-sized images go through the same path as `cldsgm fid` (resize, Inception pool3).
    python benchmarks/fid_features.py --inception resources/inception-2015-12-05.pt --n 5000 --batch 500
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cldsgm.eval.fid import inception_features, load_inception


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inception", default=None)
    parser.add_argument("--mode", default="legacy_tensorflow", choices=["clean", "legacy_tensorflow"])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_inception(args.inception, args.mode, device=device)
    images = np.random.default_rng(0).integers(0, 256, (args.n, 3, 32, 32), dtype=np.uint8)
    inception_features(images[: args.batch], model, args.mode, batch_size=args.batch, device=device)  # warm-up
    start = time.perf_counter()
    inception_features(images, model, args.mode, batch_size=args.batch, device=device)
    rate = args.n / (time.perf_counter() - start)
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{name}, torch {torch.__version__}, {args.mode}: {rate:.0f} img/s; 50,000 images in "
          f"{50_000 / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
