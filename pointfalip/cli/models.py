"""`models`: the open_clip models and pretrained tags this tool can use, and which of them are cached here."""
from __future__ import annotations

from .options import subcommand


def _models_args(p):
    p.add_argument("--all", action="store_true",
                   help="also models whose image tower is not a ViT (they cannot take foveal masks)")
    p.add_argument("--cached", action="store_true", help="only the weights cached on this machine")


def _print_models(result: dict) -> None:
    rows = result["models"]
    width = max([len(m["model"]) for m in rows] + [5])
    print("open_clip models and pretrained tags (--model MODEL --pretrained TAG; * = cached here, no download):")
    for m in rows:
        tags = ", ".join(t["tag"] + ("*" if t["cached"] else "") for t in m["tags"])
        print(f"  {m['model']:<{width}}  {tags}")
    print(f"{result['cached']} of {result['tags']} weights cached. Offline, a tag without * fails at once: pass a "
          "checkpoint file with --pretrained PATH, or --pretrained none for random weights.")


@subcommand("models", "the open_clip models and tags that work here, and which weights are cached", _models_args,
            _print_models)
def run_models(args) -> dict:
    from ..downloads import is_foveal_model, list_tags

    by_model: dict[str, list] = {}
    for t in list_tags(all_models=args.all):
        if args.cached and not t.cached:
            continue
        by_model.setdefault(t.model, []).append({"tag": t.tag, "cached": t.cached is not None, "file": t.cached,
                                                 "source": t.source})
    models = [{"model": m, "foveal": is_foveal_model(m), "tags": tags} for m, tags in by_model.items()]
    n_cached = sum(t["cached"] for m in models for t in m["tags"])
    return {"models": models, "tags": sum(len(m["tags"]) for m in models), "cached": n_cached}
