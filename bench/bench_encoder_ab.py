"""The encoder of another checkout against this one, in one process on the same weights, calls interleaved.

    python bench/bench_encoder_ab.py --old PATH [--model ViT-B-16] [--batch 10] [--repeats 7] [--default-malloc]

PATH is a checkout of pointfalip (e.g. ``git worktree add /tmp/old <commit>``); its package is copied to a temporary
folder as ``pointfalip_old`` (the package imports itself relatively), and both wrap the same open_clip model, so
the machine's drift hits both sides alike. Prints best times of plain, FALIP and --compare encodes (random
weights), the ratio old/new, and the largest difference of their features.
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import cpu_name, fp32_and_bf16, malloc_setting
from pointfalip.foveal import from_token_boxes


def import_old(checkout: Path, into: Path):
    shutil.copytree(checkout / "pointfalip", into / "pointfalip_old")
    sys.path.insert(0, str(into))
    import pointfalip_old.model

    return pointfalip_old.model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="root of the other checkout")
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc as it is")
    args = ap.parse_args()
    malloc = malloc_setting(args.default_malloc)
    with tempfile.TemporaryDirectory() as tmp:
        old_model = import_old(args.old, Path(tmp))
        torch.manual_seed(0)
        fp32, bf16 = fp32_and_bf16(args.model)
        images = torch.rand(args.batch, 3, *fp32.image_size)
        gh, gw = fp32.grid_size
        r0, c0 = torch.randint(0, gh // 2, (args.batch,)), torch.randint(0, gw // 2, (args.batch,))
        bias = from_token_boxes(torch.stack([r0, c0, r0 + gh // 2, c0 + gw // 2], dim=1), (gh, gw))
        calls = {"plain": lambda m: m.encode_image(images), "FALIP": lambda m: m.encode_image(images, bias),
                 "--compare": lambda m: m.encode_image_pair(images, bias)}
        print(f"{args.model}, {args.batch} images a call, {torch.get_num_threads()} threads, torch "
              f"{torch.__version__}, {cpu_name()}, {malloc}; best of {args.repeats}, interleaved, random weights")
        print("| precision | call | old (s) | new (s) | old / new | max feature Δ |")
        print("|---|---|---|---|---|---|")
        for new in (fp32, bf16):
            old = old_model.FalipCLIP(new.clip, new.tokenizer, name=new.name, precision=new.precision).eval()
            best = {}
            with torch.inference_mode():
                for model in (old, new):
                    for call in calls.values():
                        call(model)
                for _ in range(args.repeats):
                    for side, model in (("old", old), ("new", new)):
                        for name, call in calls.items():
                            t0 = time.perf_counter()
                            call(model)
                            best[side, name] = min(best.get((side, name), float("inf")), time.perf_counter() - t0)
                diffs = {name: max((a - b).abs().max().item() for a, b in zip(*(
                    (out,) if isinstance(out, torch.Tensor) else out for out in (call(new), call(old)))))
                    for name, call in calls.items()}
            for name in calls:
                print(f"| {new.precision} | {name} | {best['old', name]:.3f} | {best['new', name]:.3f} "
                      f"| {best['old', name] / best['new', name]:.2f}x | {diffs[name]:.1e} |")
            print(f"| {new.precision} | --compare / FALIP | {best['old', '--compare'] / best['old', 'FALIP']:.2f} "
                  f"| {best['new', '--compare'] / best['new', 'FALIP']:.2f} | | |")


if __name__ == "__main__":
    main()
