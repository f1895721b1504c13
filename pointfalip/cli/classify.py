"""`classify`, `render` and `demo`: point clouds in, labels and contact sheets out."""
from __future__ import annotations

import logging

from .. import io
from ..errors import InputError
from .options import (build_recognizer, label_args, load_model, model_args, num_points_type, predictions,
                      read_labels, recognizer_args, subcommand, top_k_type)

log = logging.getLogger("pointfalip")
RENDER_OUTPUT, DEMO_OUTPUT = "views.png", "pointfalip_demo.png"  # default names; a taken one gives <stem>-2.png, ...

def _classify_args(p):
    p.add_argument("files", nargs="+", metavar="FILE")
    label_args(p)
    p.add_argument("--top-k", type=top_k_type, default=5, help="labels listed per file")
    p.add_argument("--per-view", action="store_true", help="each view's top label and probability too")
    recognizer_args(p)
    model_args(p)


def _print_classify(results: list[dict]) -> None:
    for item in results:
        print(item["file"])
        for p in item["predictions"]:
            print(f"  {p['score']:7.2%}  {p['label']}")
        for v, view in enumerate(item.get("views", [])):
            print(f"    view {v}: {view['label']} ({view['score']:.2%})")


@subcommand("classify", "which label fits each point cloud", _classify_args, _print_classify)
def run_classify(args) -> list[dict]:
    labels, dataset = read_labels(args)
    clouds = [io.load_points(f, num_points=args.num_points) for f in args.files]
    rec = build_recognizer(args, load_model(args), labels, dataset)
    prepared = rec.prepare(clouds)
    if args.verbose:
        for f, cloud in zip(args.files, prepared):
            log.info("%s -> model input (normalised, up=%s): %s", f, rec.config.up_axis, io.describe(cloud))
    feats = rec.embed(prepared, prepared=True)
    views = rec.rank_views(feats) if args.per_view else None
    out = []
    for i, (f, preds) in enumerate(zip(args.files, rec.rank(feats, args.top_k))):
        item = {"file": str(f), "predictions": predictions(preds)}
        if views is not None:
            item["views"] = predictions(views[i])
        out.append(item)
    if args.verbose:
        log.info("timings: %s", {k: round(v, 3) for k, v in rec.last_timings.items()})
    return out


def _render_args(p):
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", help=f"contact sheet (.png or .jpg; default {RENDER_OUTPUT}, or the next free "
                                          f"name: {RENDER_OUTPUT.replace('.png', '-2.png')}, ...)")
    p.add_argument("--preset", default="pointclip_v2", help="configs/presets name or YAML file")
    p.add_argument("--projection", choices=("realistic", "simple"), help="override the preset's projection")
    p.add_argument("--up-axis", choices=io.UP_AXES, help="up axis of the input (default: the preset's, y)")
    p.add_argument("--num-points", type=num_points_type, default=2048, help="points sampled on meshes")
    p.add_argument("--model", default="ViT-B-16", help="whose patch grid the masks are drawn on")
    p.add_argument("--pretrained", help="not used: render needs no weights (taken so that every command of the "
                                        "README accepts --pretrained none)")


def _print_render(result: dict) -> None:
    print(f"wrote {result['output']}: {result['views']} depth views of {result['file']} with their foveal masks")


@subcommand("render", "contact sheet of the depth views with their foveal masks", _render_args, _print_render)
def run_render(args) -> dict:
    from ..files import IMAGE_SUFFIXES, check_output, free_name, run_inputs
    from ..model import config_grid
    from ..recognize import foveal_biases, project_clouds, resolve_config
    from ..render import save_sheet

    output = check_output(args.output or free_name(RENDER_OUTPUT), "--output", inputs=run_inputs(args),
                          suffixes=IMAGE_SUFFIXES)
    config = resolve_config(args.preset, projection=args.projection, up_axis=args.up_axis)
    grid, size = config_grid(args.model)
    cloud = io.normalize(io.load_points(args.file, num_points=args.num_points), config.up_axis)
    if size[0] != size[1]:
        raise InputError(f"model '{args.model}' takes {size[0]}x{size[1]} images; depth views are square")
    depth = project_clouds(config, [cloud], size[0])
    weights = foveal_biases(config, depth, grid)
    path = save_sheet(output, depth.images[0], weights, [f"view {v}" for v in range(depth.images.shape[1])])
    return {"file": str(args.file), "output": str(path), "views": int(depth.images.shape[1])}


def _demo_args(p):
    p.add_argument("-o", "--output", help=f"contact sheet path (.png or .jpg; default {DEMO_OUTPUT}, or the next "
                                          "free name)")
    p.add_argument("--preset", default="pointclip_v2", help="configs/presets name or YAML file")
    p.add_argument("--top-k", type=top_k_type, default=3, help="labels listed per object")
    model_args(p)


def _print_demo(result: dict) -> None:
    print(f"pointfalip demo — {result['model']} ({result['pretrained']}), ModelNet40 names, FALIP on")
    print(f"{'object':<8} {'top-1':<14} {'prob.':>7}   next")
    for obj in result["objects"]:
        best, rest = obj["predictions"][0], obj["predictions"][1:3]
        others = ", ".join(f"{p['label']} {p['score']:.1%}" for p in rest)
        print(f"{obj['object']:<8} {best['label']:<14} {best['score']:>7.1%}   {others}")
    print(f"contact sheet: {result['contact_sheet']}")


@subcommand("demo", "the embedded default: built-in objects against ModelNet40 names", _demo_args, _print_demo)
def run_demo(args) -> dict:
    from ..demo import demo_clouds
    from ..files import IMAGE_SUFFIXES, check_output, free_name, run_inputs
    from ..recognize import Recognizer
    from ..render import save_sheet

    output = check_output(args.output or free_name(DEMO_OUTPUT), "--output", inputs=run_inputs(args),
                          suffixes=IMAGE_SUFFIXES)
    clouds = demo_clouds()
    model = load_model(args)
    rec = Recognizer(model, dataset="modelnet40", preset=args.preset)
    names = list(clouds)
    views = rec.project(rec.prepare([clouds[n] for n in names]))
    ranks = rec.rank(rec.embed_views(views), args.top_k)
    _, bias = rec.encoder_input(views)
    v = views.images.shape[1]
    captions = [f"{n} v{i}" for n in names for i in range(v)]
    sheet = save_sheet(output, views.images.flatten(0, 1), bias, captions, columns=v)
    return {"model": model.name, "pretrained": model.pretrained, "contact_sheet": str(sheet),
            "objects": [{"object": n, "predictions": predictions(preds)} for n, preds in zip(names, ranks)]}
