"""Objects/s on a GPU for ModelNet40-sized synthetic input: one configuration and --compare (not a test).

    python bench/bench_gpu.py --device cuda --objects 2468 --precision fp16 bf16

Synthetic clouds (2048 points on random boxes, already centred and in the unit cube) keep the run free of
downloads; timing does not depend on the data or on the weights' values (random ViT-B-16). Scored through
`Recognizer.embed` and `Recognizer.logits`, as `evaluate` scores. Runs on CPU too with a small --objects for a smoke check.
"""
import argparse
import time
import warnings

import torch

from pointfalip import Recognizer, load_model


def synthetic_clouds(n: int, points: int, device) -> torch.Tensor:
    """Points on the surfaces of random boxes, (n, points, 3)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    extents = torch.rand(n, 1, 3, generator=gen) * 0.8 + 0.2
    p = torch.rand(n, points, 3, generator=gen) * 2 - 1
    face = torch.randint(0, 3, (n, points), generator=gen)
    sign = torch.randint(0, 2, (n, points), generator=gen) * 2 - 1
    p.scatter_(2, face[..., None], sign[..., None].float())
    return (p * extents).to(device)


def run(rec: Recognizer, clouds: torch.Tensor, batch: int, compare: bool) -> float:
    """Seconds to score every cloud through the Recognizer's one scoring path (embed, then logits)."""
    sync = torch.cuda.synchronize if clouds.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for start in range(0, len(clouds), batch):
        feats = rec.embed(clouds[start:start + batch], with_plain=compare, prepared=True)
        for f in (feats if compare else (feats,)):
            rec.logits(f).argmax(-1)
    sync()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--objects", type=int, default=2468)
    ap.add_argument("--batch", type=int, default=64, help="objects per step (x10 views)")
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--precision", nargs="+", default=["fp16", "bf16"])
    args = ap.parse_args()
    clouds = synthetic_clouds(args.objects, 2048, args.device)
    print(f"{args.model}, {args.objects} objects x 10 views, batch {args.batch} objects, device {args.device}"
          f" ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), torch {torch.__version__}")
    print("| precision | one config (s) | objects/s | --compare (s) | objects/s | compare / one |")
    print("|---|---|---|---|---|---|")
    for precision in args.precision:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(args.model, pretrained="none", device=args.device, precision=precision)
        rec = Recognizer(model, dataset="modelnet40", cache_dir=False)
        run(rec, clouds[: args.batch], args.batch, True)  # warm-up
        one = run(rec, clouds, args.batch, False)
        both = run(rec, clouds, args.batch, True)
        n = args.objects
        print(f"| {precision} | {one:.1f} | {n / one:.0f} | {both:.1f} | {n / both:.0f} | {both / one:.2f} |")


if __name__ == "__main__":
    main()
