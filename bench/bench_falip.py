"""The image encoder against the machine's GEMM peak: eager and compiled, fp32 and bf16, plain, FALIP and --compare.

    python bench/bench_falip.py [--model ViT-B-16] [--batch 10] [--repeats 5] [--precisions fp32 bf16]
                                [--no-compile]

One run, one process: torch's own GEMM rate on the encoder's shapes (``F.linear`` with M = batch x tokens, the
four projections of a block weighted by their FLOPs) is the peak; each encode's rate counts the whole encoder's
FLOPs (what the work is, whichever shortcut a path takes) over its best time. Random weights (no download): timing
does not depend on their values. Rows: eager, then each compile engine (inductor; openvino where installed), each
compiled once before timing ("compile" is the first calls' time over the timed ones). The script uses only
`load_model`, `encode_image` and `encode_image_pair`, so it also times an older checkout
(``PYTHONPATH=old/tree python bench/bench_falip.py --no-compile``).
"""
import argparse
import copy
import importlib.util
import time

import torch
import torch.nn.functional as F

from common import cpu_name, fp32_and_bf16, malloc_setting
from pointfalip.foveal import from_token_boxes


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def block_shapes(model) -> list[tuple[int, int]]:
    """(in, out) of the four projections of one block: q|k|v, attention output, MLP up and down."""
    block = model.visual.transformer.resblocks[0]
    width = block.attn.embed_dim
    hidden = block.mlp.c_fc.out_features
    return [(width, 3 * width), (width, width), (width, hidden), (hidden, width)]


def encoder_gflop(model, n: int) -> float:
    """FLOPs (2 per multiply-add) of the whole image encoder on n images, in GFLOP."""
    gh, gw = model.grid_size
    tokens = gh * gw + 1
    width = model.visual.transformer.resblocks[0].attn.embed_dim
    patch = model.visual.conv1.weight[0].numel()
    gemm = sum(i * o for i, o in block_shapes(model)) * tokens
    attention = 2 * tokens * tokens * width
    per_image = model.num_layers * (gemm + attention) + gh * gw * patch * width
    return 2 * n * per_image / 1e9


def gemm_peak(model, dtype: torch.dtype, n: int, repeats: int) -> float:
    """torch's GEMM rate (GFLOP/s) on the encoder's projections, weighted by their FLOPs."""
    gh, gw = model.grid_size
    m = n * (gh * gw + 1)
    flop = seconds = 0.0
    for k, o in block_shapes(model):
        x, w, b = torch.randn(m, k, dtype=dtype), torch.randn(o, k, dtype=dtype), torch.randn(o, dtype=dtype)
        with torch.inference_mode():
            F.linear(x, w, b)
            seconds += best_time(lambda: F.linear(x, w, b), repeats * 4)
        flop += 2 * m * k * o
    return flop / seconds / 1e9


def batch_sweep(args) -> None:
    """Images/s of eager FALIP encodes by images a call."""
    torch.manual_seed(0)
    models = dict(zip(("fp32", "bf16"), fp32_and_bf16(args.model)))
    gh, gw = models["fp32"].grid_size
    print(f"{args.model}, eager FALIP, {torch.get_num_threads()} threads, torch {torch.__version__}, {cpu_name()}, "
          f"{args.malloc}; best of {args.repeats}")
    print("| images a call | " + " | ".join(f"{p} images/s" for p in args.precisions) + " |")
    print("|---|" + "---|" * len(args.precisions))
    with torch.inference_mode():
        for n in args.batch_sweep:
            images, bias = torch.rand(n, 3, *models["fp32"].image_size), torch.rand(n, gh, gw)
            rates = []
            for p in args.precisions:
                models[p].encode_image(images, bias)
                rates.append(n / best_time(lambda: models[p].encode_image(images, bias), args.repeats))
            print(f"| {n} | " + " | ".join(f"{r:.1f}" for r in rates) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--batch", type=int, default=10, help="images a call (10: one object's views)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="eager rows only")
    ap.add_argument("--batch-sweep", type=int, nargs="+", metavar="N",
                    help="instead: images/s of eager FALIP encodes of N images a call, per precision (what sizes the "
                         "view batches of evaluate)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc as it is (the command line makes it reuse freed memory)")
    args = ap.parse_args()
    args.malloc = malloc_setting(args.default_malloc)
    if args.batch_sweep:
        return batch_sweep(args)
    torch.manual_seed(0)
    fp32, bf16 = fp32_and_bf16(args.model)
    images = torch.rand(args.batch, 3, *fp32.image_size)
    gh, gw = fp32.grid_size
    r0 = torch.randint(0, gh // 2, (args.batch,))
    c0 = torch.randint(0, gw // 2, (args.batch,))
    bias = from_token_boxes(torch.stack([r0, c0, r0 + gh // 2, c0 + gw // 2], dim=1), (gh, gw))
    gflop = encoder_gflop(fp32, args.batch)
    engines = [e for e in ("inductor", "openvino") if args.compile and hasattr(fp32, "set_compile")
               and (e != "openvino" or importlib.util.find_spec("openvino"))]

    rows, feats, peaks = [], {}, {}
    for precision in args.precisions:
        eager = fp32 if precision == "fp32" else bf16
        peaks[precision] = gemm_peak(eager, eager.dtype, args.batch, args.repeats)
        models = {"eager": eager}
        for engine in engines:
            models[engine] = type(eager)(copy.deepcopy(eager.clip), eager.tokenizer, name=eager.name,
                                         precision=precision).eval().set_compile(engine)
        calls = {"plain": lambda m: m.encode_image(images), "FALIP": lambda m: m.encode_image(images, bias),
                 "compare": lambda m: m.encode_image_pair(images, bias)}
        first, best = {}, {}
        with torch.inference_mode():
            for path, model in models.items():
                for name, call in calls.items():  # the first call of each compiles (compiled) or warms up
                    t0 = time.perf_counter()
                    call(model)
                    first[path, name] = time.perf_counter() - t0
            for _ in range(args.repeats):  # interleaved: a busy moment of the machine hits every row alike
                for path, model in models.items():
                    for name, call in calls.items():
                        t = best_time(lambda: call(model), 1)
                        best[path, name] = min(best.get((path, name), float("inf")), t)
            for path, model in models.items():
                feats[precision, path] = model.encode_image(images, bias)
        for path in models:
            t = {name: best[path, name] for name in calls}
            compile_s = sum(first[path, n] - t[n] for n in calls) if path != "eager" else None
            rows.append((precision, path, t, compile_s))

    print(f"{args.model}, {args.batch} images a call, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{cpu_name()}, {args.malloc}; best of {args.repeats}, random weights")
    print("GEMM peak (F.linear on the encoder's projections): "
          + ", ".join(f"{p} {v:,.0f} GFLOP/s" for p, v in peaks.items())
          + f"; the encoder: {gflop:.1f} GFLOP a call")
    print("| precision | path | plain (s) | FALIP (s) | --compare (s) | FALIP GFLOP/s | FALIP / peak | plain / peak "
          "| FALIP / plain | compare / FALIP | compile (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for precision, path, t, compile_s in rows:
        peak = peaks[precision]
        print(f"| {precision} | {path} | {t['plain']:.3f} | {t['FALIP']:.3f} | {t['compare']:.3f} "
              f"| {gflop / t['FALIP']:,.0f} | {gflop / t['FALIP'] / peak:.2f} | {gflop / t['plain'] / peak:.2f} "
              f"| {t['FALIP'] / t['plain']:.3f} | {t['compare'] / t['FALIP']:.2f} "
              f"| {'' if compile_s is None else f'{compile_s:.0f}'} |")
    if "fp32" in args.precisions and "bf16" in args.precisions:
        cos = {path: F.cosine_similarity(feats["fp32", "eager"], feats["bf16", path]).min().item()
               for _, path, _, _ in rows if ("bf16", path) in feats}
        print("worst FALIP feature cosine, bf16 vs fp32 eager: " + ", ".join(f"{p} {c:.5f}" for p, c in cos.items()))
    for precision in args.precisions:
        for engine in engines:
            a, b = feats[precision, "eager"], feats[precision, engine]
            rel = ((a - b).norm(dim=-1) / a.norm(dim=-1)).max().item()
            print(f"{precision} {engine} vs eager: worst relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
