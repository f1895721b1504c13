"""Benchmark: seconds per object of part segmentation (`pointfalip segment`) against classification (`classify`).

Both on one cloud at a time, with the same random-weight model (speed does not depend on the weights), in fp32 and
bf16, at 2,048 and 100,000 points, on the CPU or a GPU (``--device cuda``): ``PartSegmenter.segment`` (PointCLIP V2's part projection: a 224 x 224 x 112
voxel grid per view, ten views, one encoder pass, per-point scores) and ``Recognizer.classify`` (the realistic
projection, ten views, FALIP, one encoder pass). Memory on the CPU, in a fresh process that builds the model and runs
the task once: its peak resident set, and the run's own peak over the resident set before it (Linux ``/proc``); on a
GPU: the peak of allocated GPU memory of a run over the memory allocated before it, and the peak of all.
Prints a Markdown table with the ratios segment / classify, the CPU's model name and the torch version.

    python bench/bench_parts.py [--model ViT-B-16] [--points 2048 100000] [--precisions fp32 bf16] [--repeats 2]
                                [--device cpu|cuda] [--threads N] [--skip-memory]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from common import cpu_name  # noqa: E402

from pointfalip import Recognizer, io, load_model  # noqa: E402
from pointfalip.parts import PartSegmenter  # noqa: E402

TASKS = ("segment", "classify")


def cloud(points: int, seed: int = 0) -> np.ndarray:
    """A chair-like cloud, y up: seat, back and four legs."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, (points, 3))
    kind = rng.integers(0, 3, points)
    corner = rng.integers(0, 4, points)
    seat = np.c_[u[:, 0] * 0.5, 0.05 * u[:, 1], u[:, 2] * 0.5]
    back = np.c_[u[:, 0] * 0.5, 0.5 + 0.5 * u[:, 1], -0.5 + 0.05 * u[:, 2]]
    legs = np.c_[np.where(corner % 2, 0.45, -0.45) + 0.03 * u[:, 0], -0.5 + 0.5 * u[:, 1],
                 np.where(corner // 2, 0.45, -0.45) + 0.03 * u[:, 2]]
    return np.choose(kind[:, None], [seat, back, legs]).astype(np.float32)


def runner(task: str, model):
    """A function of a cloud that does what the command does with it."""
    if task == "segment":
        seg = PartSegmenter(model, category="chair", cache_dir=False)
        return lambda pts: seg.segment(io.normalize(pts, "y"))
    rec = Recognizer(model, dataset="modelnet40", cache_dir=False)
    return lambda pts: rec.classify(pts)


def best(fn, repeats: int, device: str = "cpu") -> float:
    def timed() -> float:
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    timed()  # warm-up
    return min(timed() for _ in range(repeats))


def gpu_memory(fn) -> tuple[float, float]:
    """(peak allocated GPU memory in MB, the run's peak over what was allocated before it) of ``fn()``."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return peak / 2**20, (peak - before) / 2**20


def _vm(key: str) -> float:
    """A ``/proc/self/status`` figure in MB (``VmRSS``: now, ``VmHWM``: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def measure_run(model_name: str, precision: str, task: str, points: int) -> tuple[float, float]:
    """In this process: (peak RSS in MB of building the model and running ``task`` once, peak RSS in MB of the run
    over the RSS before it). The run's own peak is read after resetting the peak (``/proc/self/clear_refs``)."""
    model = load_model(model_name, pretrained="none", precision=precision)
    run = runner(task, model)
    pts = cloud(points)
    before = _vm("VmRSS")
    whole = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path("/proc/self/clear_refs").write_text("5")
    run(pts)
    return max(whole, _vm("VmHWM")), _vm("VmHWM") - before


def peak_memory(model: str, precision: str, task: str, points: int, threads) -> tuple[float, float]:
    """`measure_run` in a new process (the peak of a process never goes down)."""
    code = (f"import json, sys, warnings; warnings.simplefilter('ignore'); import torch\n"
            f"torch.set_num_threads({threads or torch.get_num_threads()})\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
            f"from bench_parts import measure_run\n"
            f"print(json.dumps(measure_run({model!r}, {precision!r}, {task!r}, {points})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return tuple(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--points", nargs="+", type=int, default=[2048, 100_000])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per configuration after a warm-up (best kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = []
        for precision in args.precisions:
            model = load_model(args.model, pretrained="none", device=args.device, precision=precision)
            runs = {t: runner(t, model) for t in TASKS}
            for n in args.points:
                pts = cloud(n)
                secs = {t: best(lambda: runs[t](pts), args.repeats, args.device) for t in TASKS}
                if args.skip_memory:
                    mem = None
                elif gpu:
                    mem = {t: gpu_memory(lambda: runs[t](pts)) for t in TASKS}
                else:
                    mem = {t: peak_memory(args.model, precision, t, n, args.threads) for t in TASKS}
                rows.append((precision, n, secs, mem))
                print(f"  {precision} {n} points: segment {secs['segment']:.2f} s, classify {secs['classify']:.2f} s",
                      file=sys.stderr)
    where = torch.cuda.get_device_name(args.device) if gpu else \
        f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    print(f"pointfalip bench_parts — {args.model}, random weights, {where}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}; best of {args.repeats}, one object a call")
    head = "| precision | points | segment (s/object) | classify (s/object) | segment / classify |"
    line = "|---|---|---|---|---|"
    if not args.skip_memory:
        kind = "GPU memory" if gpu else "RSS"
        head += f" peak {kind} segment / classify (MB) | run's peak over its start, segment / classify (MB) |"
        line += "---|---|"
    print(head)
    print(line)
    for precision, n, secs, mem in rows:
        text = (f"| {precision} | {n:,} | {secs['segment']:.2f} | {secs['classify']:.2f} | "
                f"{secs['segment'] / secs['classify']:.2f}x |")
        if mem is not None:
            text += (f" {mem['segment'][0]:.0f} / {mem['classify'][0]:.0f} | "
                     f"{mem['segment'][1]:.0f} / {mem['classify'][1]:.0f} |")
        print(text)


if __name__ == "__main__":
    main()
