"""FALIP overhead over plain encoding, and fp32 vs bf16, measured in one run (not a test).

    python bench/bench_falip.py [--model ViT-B-16] [--batch 10] [--repeats 5]

Random weights (no download): timing and numerics do not depend on the weights' values.
"""
import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from common import fp32_and_bf16
from pointfalip.foveal import from_token_boxes


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    fp32, bf16 = fp32_and_bf16(args.model)
    images = torch.rand(args.batch, 3, *fp32.image_size)
    gh, gw = fp32.grid_size
    r0 = torch.randint(0, gh // 2, (args.batch,))
    c0 = torch.randint(0, gw // 2, (args.batch,))
    boxes = torch.stack([r0, c0, r0 + gh // 2, c0 + gw // 2], dim=1)
    bias = from_token_boxes(boxes, (gh, gw))

    rows = []
    feats = {}
    with torch.inference_mode():
        for name, model in (("fp32", fp32), ("bf16", bf16)):
            plain = timed(lambda: model.encode_image(images), args.repeats)
            falip = timed(lambda: model.encode_image(images, bias), args.repeats)
            feats[name] = (model.encode_image(images), model.encode_image(images, bias))
            rows.append((name, plain, falip))
    cos_plain = F.cosine_similarity(feats["fp32"][0], feats["bf16"][0]).min().item()
    cos_falip = F.cosine_similarity(feats["fp32"][1], feats["bf16"][1]).min().item()

    print(f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}; median of {args.repeats}")
    print("| precision | plain (s/batch) | FALIP (s/batch) | FALIP / plain | vs fp32 plain |")
    print("|---|---|---|---|---|")
    base = rows[0][1]
    for name, plain, falip in rows:
        print(f"| {name} | {plain:.3f} | {falip:.3f} | {falip / plain:.3f} | {base / plain:.2f}x faster |")
    print(f"worst feature cosine bf16 vs fp32: plain {cos_plain:.5f}, FALIP {cos_falip:.5f}")


if __name__ == "__main__":
    main()
