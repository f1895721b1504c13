"""Every performance figure of the project in one table, measured in one run on this machine (not a test).

    python bench/run.py [--model ViT-B-16] [--repeats 3] [--skip-memory]

Reference points measured in the same run: PointCLIP V2's projection (a port of its code structure, in
bench_projection.py) followed by open_clip's fp32 encoder — the pipeline the references run. Random weights:
timings do not depend on the weights' values. Ratios are what to read; absolute times depend on the load.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_projection import _clouds, reference_realistic, reference_views  # noqa: E402

from common import cpu_name, fp32_and_bf16  # noqa: E402

from pointfalip import Recognizer  # noqa: E402
from pointfalip.demo import demo_clouds  # noqa: E402
from pointfalip.projection import RealisticConfig, project  # noqa: E402


def best(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def paired(fn_a, fn_b, repeats):
    """Best times of two functions run alternately, each going first every other time, so that drifting load
    and the second call's slowdown measured on this machine hit both alike."""
    fn_a(), fn_b()
    best = [float("inf"), float("inf")]
    for i in range(repeats):
        order = [(0, fn_a), (1, fn_b)] if i % 2 == 0 else [(1, fn_b), (0, fn_a)]
        for k, fn in order:
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best[0], best[1]


def rss_of(code: str) -> float:
    """Peak RSS (MB) of a fresh Python process running `code` (VmHWM: ru_maxrss would carry the forking
    parent's peak across exec)."""
    probe = "\nprint([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    out = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    fp32, bf16 = fp32_and_bf16(args.model)
    rows = []

    def row(what, value, reference="", note=""):
        rows.append((what, value, reference, note))

    # 1. end to end, one object, 10 views
    cloud = demo_clouds()["chair"]
    size = fp32.image_size[0]
    ref_views = reference_views("pointclip_v2")
    cfg = RealisticConfig()

    def reference_pipeline():
        pts = torch.as_tensor(cloud)[None]
        images = reference_realistic(pts, ref_views, size, cfg)
        with torch.inference_mode():
            fp32.clip.encode_image(images.reshape(-1, 3, size, size))

    rec32 = Recognizer(fp32, dataset="modelnet40")
    rec16 = Recognizer(bf16, dataset="modelnet40")
    t_ref, t32 = paired(reference_pipeline, lambda: rec32.classify(cloud), args.repeats)
    t16 = best(lambda: rec16.classify(cloud), args.repeats)
    row("classify 1 object, FALIP, fp32 (s)", f"{t32:.2f}", f"{t_ref:.2f}", f"{t_ref / t32:.2f}x the reference")
    row("classify 1 object, FALIP, bf16 (s)", f"{t16:.2f}", f"{t_ref:.2f}", f"{t_ref / t16:.2f}x the reference")
    share = rec16.last_timings["projection"] / sum(rec16.last_timings.values())
    row("projection share of bf16 end to end", f"{share:.1%}")

    # 2. bf16 numerics: worst view-feature cosine against fp32 on the demo objects' real depth views
    views = rec32.project(rec32.prepare(list(demo_clouds().values())))
    images, bias = rec32.encoder_input(views)
    with torch.inference_mode():
        f32 = fp32.encode_image(images, bias)
        f16 = bf16.encode_image(images, bias)
    row("worst feature cosine bf16 vs fp32 (50 views)", f"{F.cosine_similarity(f32, f16).min():.5f}", "≥ 0.999")

    # 3. FALIP overhead, batch 10, last four blocks
    batch, b = images[:10], bias[:10]
    for name, model in (("fp32", fp32), ("bf16", bf16)):
        with torch.inference_mode():
            plain, falip = paired(lambda: model.encode_image(batch), lambda: model.encode_image(batch, b),
                                  args.repeats)
        row(f"FALIP / plain encode, {name}", f"{falip / plain:.3f}", "≤ 1.05")

    # 4. --compare: FALIP and baseline from one pass vs one configuration
    batch, b = images[:20], bias[:20]
    with torch.inference_mode():
        one, pair = paired(lambda: bf16.encode_image(batch, b), lambda: bf16.encode_image_pair(batch, b),
                           args.repeats)
    row("--compare / one configuration (encoder, bf16)", f"{pair / one:.2f}", "≤ 1.6 (floor 1.33)")

    # 5. projection, batch 32, 2048 points, 10 views
    clouds = _clouds(32, 2048)
    t_ours, t_refp = paired(lambda: project(clouds, image_size=size),
                            lambda: reference_realistic(clouds, ref_views, size, cfg), args.repeats)
    row("realistic projection (ms/object)", f"{t_ours / 32 * 1e3:.1f}", f"{t_refp / 32 * 1e3:.1f}",
        f"{t_refp / t_ours:.1f}x faster")

    # 6. memory
    if not args.skip_memory:
        tmp = Path(tempfile.mkdtemp())
        big = tmp / "big.npy"
        np.save(big, np.random.default_rng(0).normal(size=(5_000_000, 3)).astype(np.float32))
        small = tmp / "small.npy"
        np.save(small, np.random.default_rng(0).normal(size=(2048, 3)).astype(np.float32))
        code = ("import warnings;warnings.simplefilter('ignore');import pointfalip\n"
                "from pointfalip import io\n"
                "m=pointfalip.load_model('ViT-B-32','none')\n"
                "r=pointfalip.Recognizer(m,labels=['a','b'])\n"
                "r.classify(io.load_points('{}'))")
        rss_small, rss_big = rss_of(code.format(small)), rss_of(code.format(big))
        row("peak RSS, classify 5M-point cloud vs 2k (MB)", f"{rss_big:.0f}", f"{rss_small:.0f}",
            f"+{rss_big - rss_small:.0f} MB")
        rss = {}
        for n in (16, 64):  # evaluate streams batches: its peak must not grow with the dataset
            root = tmp / f"mn{n}"
            root.mkdir()
            with h5py.File(root / "ply_data_test0.h5", "w") as f:
                f["data"] = np.random.default_rng(n).normal(size=(n, 2048, 3)).astype(np.float32)
                f["label"] = (np.arange(n) % 40).astype(np.uint8)[:, None]
            rss[n] = rss_of("import warnings;warnings.simplefilter('ignore');import pointfalip\n"
                            "from pointfalip.datasets import open_dataset\nfrom pointfalip.evaluate import evaluate\n"
                            "m=pointfalip.load_model('ViT-B-32','none',precision='bf16')\n"
                            f"evaluate(m,open_dataset('modelnet40','{root}'),compare=True,batch_size=8,"
                            f"out='{root}/r.json',progress=False)")
        row("peak RSS, evaluate --compare 64 vs 16 objects (MB)", f"{rss[64]:.0f}", f"{rss[16]:.0f}",
            f"{rss[64] - rss[16]:+.0f} MB")

    print(f"pointfalip bench — {args.model}, random weights, {cpu_name()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; best of {args.repeats}")
    print("| figure | ours | reference / target | note |")
    print("|---|---|---|---|")
    for what, value, reference, note in rows:
        print(f"| {what} | {value} | {reference} | {note} |")


if __name__ == "__main__":
    main()
