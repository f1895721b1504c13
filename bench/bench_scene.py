"""Latency per frame of `SceneRecognizer` and its split by stage (not a test).

    python bench/bench_scene.py [--model ViT-B-16] [--repeats 3]

A 50k-point tabletop scene: a 1.2 m x 0.8 m table (2 mm noise) with four demo objects (chair, lamp, bottle,
cone) scaled to 12-25 cm, z up, in metres. Random weights: timing does not depend on the weights' values.
"""
import argparse

import numpy as np
import torch

from common import fp32_and_bf16

from pointfalip import Recognizer
from pointfalip.demo import demo_clouds
from pointfalip.scene import SceneRecognizer, load_segmentation_config


def tabletop(num_points: int = 50_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    objects = [("chair", 0.25, (-0.35, -0.1)), ("lamp", 0.2, (0.3, 0.2)), ("bottle", 0.12, (0.1, -0.25)),
               ("cone", 0.15, (-0.1, 0.25))]
    clouds = demo_clouds(num_points=5000)
    parts = []
    for name, size, (x, y) in objects:
        pts = clouds[name][:, [0, 2, 1]] * [1, -1, 1]  # y-up demo object -> z up
        pts = pts - [pts[:, 0].mean(), pts[:, 1].mean(), pts[:, 2].min()]
        pts = pts / np.ptp(pts, axis=0).max() * size
        parts.append(pts + [x, y, 0.0])
    n_table = num_points - sum(len(p) for p in parts)
    table = np.c_[rng.uniform(-0.6, 0.6, n_table), rng.uniform(-0.4, 0.4, n_table), rng.normal(0, 0.002, n_table)]
    return np.concatenate([table] + parts).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    scene = tabletop()
    fp32, bf16 = fp32_and_bf16(args.model)
    print(f"{args.model}, {len(scene)}-point tabletop scene, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; best of {args.repeats} frames")
    print("| precision | objects | segmentation (s) | projection (s) | encoder (s) | total per frame (s) |")
    print("|---|---|---|---|---|---|")
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        recognizer = SceneRecognizer(Recognizer(model, dataset="modelnet40", up_axis="z"),
                                     load_segmentation_config("tabletop"), top_k=3)
        recognizer(scene)  # warm-up
        best = None
        for _ in range(args.repeats):
            result = recognizer.recognize(scene)
            if best is None or result.timings["total"] < best.timings["total"]:
                best = result
        t = best.timings
        print(f"| {name} | {len(best.objects)} | {t['segmentation']:.2f} | {t.get('projection', 0):.3f} | "
              f"{t.get('encoder', 0):.2f} | {t['total']:.2f} |")


if __name__ == "__main__":
    main()
