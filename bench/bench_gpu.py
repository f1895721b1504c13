"""Objects/s on a GPU for ModelNet40-sized synthetic input: one configuration and --compare (not a test).

    python bench/bench_gpu.py --device cuda --objects 2468 --precision fp16 bf16

Synthetic clouds (2048 points on random boxes) keep the run free of downloads; timing does not depend on
the data or on the weights' values (random ViT-B-16). Runs on CPU too with a small --objects for a smoke check.
"""
import argparse
import time
import warnings

import torch

from pointfalip import load_model
from pointfalip.foveal import FovealConfig, from_occupancy
from pointfalip.projection import project


def synthetic_clouds(n: int, points: int, device) -> torch.Tensor:
    """Points on the surfaces of random boxes, (n, points, 3)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    extents = torch.rand(n, 1, 3, generator=gen) * 0.8 + 0.2
    p = torch.rand(n, points, 3, generator=gen) * 2 - 1
    face = torch.randint(0, 3, (n, points), generator=gen)
    sign = torch.randint(0, 2, (n, points), generator=gen) * 2 - 1
    p.scatter_(2, face[..., None], sign[..., None].float())
    return (p * extents).to(device)


def run(model, clouds, batch, compare, text):
    cfg = FovealConfig()
    grid = model.grid_size
    sync = torch.cuda.synchronize if clouds.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(clouds), batch):
            views = project(clouds[start:start + batch], image_size=model.image_size[0])
            images = views.images.flatten(0, 1)
            bias = from_occupancy(views.occupancy.flatten(0, 1), grid, cfg)
            if compare:
                feats = torch.cat(model.encode_image_pair(images, bias, normalize=True))
            else:
                feats = model.encode_image(images, bias, normalize=True)
            (feats @ text.T).reshape(-1, views.images.shape[1], text.shape[0]).mean(1).argmax(-1)
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
        text = torch.nn.functional.normalize(torch.randn(40, model.visual.output_dim, device=args.device), dim=-1)
        run(model, clouds[: args.batch], args.batch, True, text)  # warm-up
        one = run(model, clouds, args.batch, False, text)
        both = run(model, clouds, args.batch, True, text)
        n = args.objects
        print(f"| {precision} | {one:.1f} | {n / one:.0f} | {both:.1f} | {n / both:.0f} | {both / one:.2f} |")


if __name__ == "__main__":
    main()
