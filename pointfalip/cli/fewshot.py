"""`fewshot build`: a cache of labelled examples."""
from __future__ import annotations

import logging
import sys

from ..errors import InputError
from .options import (MAX_SEED, bounded_int, load_model, model_args, recognizer_args, recognizer_options, subcommand)

log = logging.getLogger("pointfalip")

def _fewshot_build_args(p):
    p.add_argument("--dataset", required=True,
                   help="folder (ROOT/<label>/<files>) or a release: modelnet40, modelnet10, scanobjectnn[-variant]")
    p.add_argument("--root", required=True, help="folder holding the labelled examples")
    p.add_argument("--split", default="train", choices=("train", "test"),
                   help="the release's split the shots are drawn from (default %(default)s; a folder has one)")
    p.add_argument("--shots", type=bounded_int(1, 10_000), default=16, help="examples per label (default %(default)s)")
    p.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0, help="which examples are drawn")
    p.add_argument("--tune", action="store_true", help="pick the cache's alpha and beta by leave-one-out on the shots")
    p.add_argument("--adapter", action="store_true", help="also train PointCLIP's inter-view adapter on the shots")
    p.add_argument("--adapter-epochs", type=bounded_int(1, 10_000), default=250,
                   help="adapter training epochs (default %(default)s, PointCLIP's)")
    p.add_argument("-o", "--output", required=True, help="the cache file to write (.fewshot or .safetensors)")
    recognizer_args(p, up_default="the dataset's")
    model_args(p)


def _print_fewshot_build(result: dict) -> None:
    extra = (" + inter-view adapter" if result["adapter"] else "") + (" (alpha, beta tuned)" if result["tuned"] else "")
    print(f"few-shot cache {result['output']}: {result['examples']} examples of {len(result['labels'])} labels, "
          f"{result['shots']} shots asked, alpha {result['alpha']:g}, beta {result['beta']:g}{extra}")
    for label, n in result["per_label"].items():
        print(f"  {n:>4}  {label}")
    if result["cache_off"]:
        print("alpha 0: --tune switched the cache off. Leave-one-out on these examples found no alpha that beats "
              "zero-shot (ties go to the smallest alpha), so --fewshot with this file gives the zero-shot answers. "
              "More examples a label may change that; without --tune the cache keeps alpha 1.")


@subcommand("fewshot build", "cache a few labelled examples per label for few-shot recognition", _fewshot_build_args,
         _print_fewshot_build)
def run_fewshot_build(args) -> dict:
    from ..datasets import open_dataset
    from ..fewshot import build_from_dataset, save_cache
    from ..files import check_output, run_inputs
    from ..recognize import Recognizer

    output = check_output(args.output, "--output", inputs=run_inputs(args), suffixes=(".fewshot", ".safetensors"))
    if args.fewshot:
        raise InputError("--fewshot reads a cache; fewshot build writes one with -o")
    split = "test" if args.dataset.lower() == "folder" else args.split
    dataset = open_dataset(args.dataset, args.root, split=split, num_points=args.num_points, up_axis=args.up_axis)
    model = load_model(args)
    options = recognizer_options(args)
    options["up_axis"] = options["up_axis"] or dataset.up_axis
    rec = Recognizer(model, labels=list(dataset.classes), **options)
    cache = build_from_dataset(rec, dataset, args.shots, seed=args.seed, tune_cache=args.tune, adapter=args.adapter,
                               adapter_epochs=args.adapter_epochs, progress=sys.stderr.isatty())
    save_cache(output, cache)
    return {"output": str(output), "examples": len(cache.targets), "labels": cache.labels, "shots": args.shots,
            "per_label": cache.shot_counts(), "alpha": cache.alpha, "beta": cache.beta,
            "tuned": bool(cache.metadata.get("tuned", False)),
            "cache_off": bool(cache.metadata.get("tuned", False)) and cache.alpha == 0,
            "adapter": cache.adapter is not None}
