"""Benchmark: objects per second of `pointfalip evaluate`'s per-batch work, one configuration vs --compare (CPU).

For each model (random weights: speed does not depend on them) a batch of clouds goes through what `evaluate`
does per batch: `Recognizer.prepare`, then `evaluate.score_batch` (projection, encoder, fusion) for FALIP alone,
the plain baseline alone, and both at once (--compare: one `encode_image_pair` per chunk of images, the blocks
before the first foveal block run once). Prints objects/s of each and the ratio of the time of --compare to
that of FALIP alone (the blocks doubled are the last 4 of 12, so the encoder's floor is 16/12 ≈ 1.33; two
separate runs would be ≈ 2), and the largest difference between the --compare scores and the separate runs'
(float rounding of the dtype only).

    python bench/bench_evaluate.py [--models ViT-B-32 ViT-B-16] [--objects 8] [--points 2048] [--repeats 3]
                                   [--preset pointclip_v2] [--precisions auto] [--threads N]
                                   [--compile off inductor openvino]
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from common import cpu_name, malloc_setting
from pointfalip import load_model, prompts
from pointfalip.evaluate import BASELINE, FALIP, score_batch
from pointfalip.model import default_precision
from pointfalip.recognize import Recognizer


def clouds(n: int, points: int, seed: int = 0) -> np.ndarray:
    """Ellipsoid surfaces of random proportions: (n, points, 3)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, points, 3))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    return (u * rng.uniform(0.2, 1.0, (n, 1, 3))).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-B-16"])
    ap.add_argument("--objects", type=int, default=8)
    ap.add_argument("--points", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per configuration (the best is kept)")
    ap.add_argument("--preset", default="pointclip_v2")
    ap.add_argument("--precisions", nargs="+", default=["auto"],
                    help="weight dtypes (fp32 bf16 fp16 auto); auto is what the command line picks here (default)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--compile", nargs="+", default=["off"], choices=["off", "inductor", "openvino"],
                    help="encoder engines, each a row (compiled during the warm-up, before timing)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc as it is (the command line makes it reuse freed memory)")
    args = ap.parse_args()
    malloc = malloc_setting(args.default_malloc)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = clouds(args.objects, args.points)
    names = prompts.class_names("modelnet40")
    precisions = list(dict.fromkeys(default_precision("cpu") if p == "auto" else p for p in args.precisions))
    rows = []
    for name, precision, engine in ((n, p, e) for p in precisions for n in args.models for e in args.compile):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(name, pretrained="none", precision=precision, compile=engine)
        rec = Recognizer(model, labels=names, preset=args.preset, falip=True, cache_dir=False)

        def run(runs, rec=rec):
            rec.falip = runs[0] == FALIP
            return score_batch(rec, rec.prepare(list(batch)), runs)

        configs = ((FALIP,), (BASELINE,), (FALIP, BASELINE))
        for runs in configs:  # warm-up at full size: each path's kernels are made for its shapes before timing
            run(runs)
        best, scores = {}, {}
        for _ in range(args.repeats):  # interleaved, so that a busy moment of the machine hits all alike
            for runs in configs:
                t0 = time.perf_counter()
                scores[runs] = run(runs)
                best[runs] = min(best.get(runs, float("inf")), time.perf_counter() - t0)
        t_falip, t_plain, t_pair = best[(FALIP,)], best[(BASELINE,)], best[(FALIP, BASELINE)]
        s_falip, s_plain, s_pair = scores[(FALIP,)], scores[(BASELINE,)], scores[(FALIP, BASELINE)]
        diff = max(float((s_pair[FALIP] - s_falip[FALIP]).abs().max()),
                   float((s_pair[BASELINE] - s_plain[BASELINE]).abs().max()))
        rows.append((name, precision, engine, args.objects / t_falip, args.objects / t_plain, args.objects / t_pair,
                     t_pair / t_falip, (t_falip + t_plain) / t_pair, diff))
        del model, rec

    print(f"evaluate per-batch throughput, {cpu_name()}, {torch.get_num_threads()} threads, {args.objects} objects x "
          f"{args.points} points, preset {args.preset}, {malloc}, random weights")
    print("| model | dtype | compile | FALIP obj/s | plain obj/s | --compare obj/s | compare / FALIP | 2 runs / compare "
          "| max Δscore |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, precision, engine, f, p, c, ratio, gain, diff in rows:
        print(f"| {name} | {precision} | {engine} | {f:.2f} | {p:.2f} | {c:.2f} | {ratio:.2f} | {gain:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
