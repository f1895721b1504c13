"""The `pointfalip` command: classify point clouds and image regions, render views, run the demo.

Every subcommand has a `run_*(args) -> result` that tests can call; `main` prints the result (JSON with
--json) and turns user errors into one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from . import __version__
from .errors import InputError

log = logging.getLogger("pointfalip")
UP_AXES = ("x", "y", "z", "-x", "-y", "-z")
BAG_SUFFIXES = (".db3", ".mcap")
DEPTH_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
COMMANDS: dict[str, Callable] = {}


def command(name: str):
    """Register `run_<name>` as the handler of a subcommand."""
    def register(fn):
        COMMANDS[name] = fn
        return fn
    return register


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _model_args(p: argparse.ArgumentParser, default_model: str = "ViT-B-16") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default_model, help="open_clip model name (default %(default)s)")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip tag, hf-hub:ID, local checkpoint, or 'none' for random weights (default %(default)s)")
    g.add_argument("--device", default=_default_device(), help="torch device (default %(default)s)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32 (default: the preset's, auto)")


def _load(args):
    from .model import load_model

    if args.precision is None:
        from .recognize import load_preset

        args.precision = load_preset(args.preset).precision if getattr(args, "preset", None) else "auto"
    return load_model(args.model, args.pretrained, device=args.device, precision=args.precision)


def _labels(args) -> tuple[Optional[list[str]], Optional[str]]:
    """(labels, dataset) from --labels, --labels-file or --dataset."""
    if getattr(args, "labels_file", None):
        path = Path(args.labels_file)
        if not path.is_file():
            raise InputError(f"labels file {path} does not exist")
        labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not labels:
            raise InputError(f"labels file {path} is empty")
        return labels, None
    if getattr(args, "dataset", None):
        from .prompts import list_label_sets

        name = args.dataset.lower()
        name = "scanobjectnn" if name.startswith("scanobjectnn") else name
        if name not in list_label_sets():
            raise InputError(f"unknown dataset '{args.dataset}': choose one of {', '.join(list_label_sets())}")
        return None, name
    labels = [s.strip() for s in (args.labels or "").split(",") if s.strip()]
    if not labels:
        raise InputError("the label list is empty: give --labels a,b,c, --labels-file or --dataset")
    return labels, None


# ---- 3D ------------------------------------------------------------------------------------------------
def _label_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help="comma-separated names")
    g.add_argument("--labels-file", help="one name per line")
    g.add_argument("--dataset", help="a dataset's class names: modelnet40, modelnet10, scanobjectnn")


def _recognizer_args(p: argparse.ArgumentParser, up_default: str = "the preset's, y") -> None:
    p.add_argument("--preset", default="pointclip_v2", help="configs/presets name or YAML file (default %(default)s)")
    p.add_argument("--projection", choices=("realistic", "simple"), help="override the preset's projection")
    p.add_argument("--no-falip", dest="falip", action="store_false", help="plain CLIP (the baseline)")
    p.add_argument("--up-axis", choices=UP_AXES, help=f"up axis of the input (default: {up_default})")
    p.add_argument("--prompt-file", help="per-class prompts in PointCLIP V2's JSON layout")
    p.add_argument("--num-points", type=int, default=2048, help="points sampled from meshes (default %(default)s)")


def _recognizer(args, model, labels, dataset):
    from .recognize import Recognizer

    return Recognizer(model, labels=labels, dataset=dataset, preset=args.preset, falip=args.falip,
                      projection=args.projection, up_axis=args.up_axis, prompt_file=args.prompt_file)


@command("classify")
def run_classify(args) -> list[dict]:
    from . import io

    labels, dataset = _labels(args)
    clouds = [io.load_points(f, num_points=args.num_points) for f in args.files]
    model = _load(args)
    rec = _recognizer(args, model, labels, dataset)
    if args.verbose:
        for f, cloud in zip(args.files, rec.prepare(clouds)):
            log.info("%s -> model input (normalised, up=%s): %s", f, rec.config.up_axis, io.describe(cloud))
    preds = rec.classify(clouds, top_k=args.top_k, per_view=args.per_view)
    preds, views = preds if args.per_view else (preds, None)
    out = []
    for i, f in enumerate(args.files):
        item = {"file": str(f), "predictions": preds[i]}
        if views is not None:
            item["views"] = views[i]
        out.append(item)
    if args.verbose:
        log.info("timings: %s", {k: round(v, 3) for k, v in rec.last_timings.items()})
    return out


def _print_classify(results: list[dict]) -> None:
    for item in results:
        print(item["file"])
        for p in item["predictions"]:
            print(f"  {p['score']:7.2%}  {p['label']}")
        for v, view in enumerate(item.get("views", [])):
            print(f"    view {v}: {view['label']} ({view['score']:.2%})")


def _grid_for(model_name: str) -> tuple[tuple[int, int], int]:
    """Patch grid and input size of an open_clip ViT config, without loading weights."""
    import open_clip

    from .model import resolve_model_name

    cfg = open_clip.get_model_config(resolve_model_name(model_name))
    if cfg is None:
        raise InputError(f"unknown model '{model_name}': choose one of open_clip.list_models(), e.g. ViT-B-16")
    vision = cfg["vision_cfg"]
    if not vision.get("patch_size"):
        raise InputError(f"model '{model_name}' is not a ViT: foveal masks need a patch grid")
    size = vision["image_size"]
    size = size if isinstance(size, int) else size[0]
    return (size // vision["patch_size"],) * 2, size


@command("render")
def run_render(args) -> dict:
    from . import io
    from .foveal import from_occupancy
    from .projection import project
    from .recognize import load_preset
    from .render import save_sheet

    preset = load_preset(args.preset)
    method = args.projection or preset.projection
    views = preset.views if method == preset.projection else {"realistic": "pointclip_v2",
                                                              "simple": "pointclip"}[method]
    grid, size = _grid_for(args.model)
    cloud = io.normalize(io.load_points(args.file, num_points=args.num_points), args.up_axis or preset.up_axis)
    depth = project(cloud, method=method, views=views, image_size=size)
    weights = from_occupancy(depth.occupancy[0], grid, preset.foveal)
    path = save_sheet(args.output, depth.images[0], weights, [f"view {v}" for v in range(depth.images.shape[1])])
    return {"file": str(args.file), "output": str(path), "views": int(depth.images.shape[1])}


@command("demo")
def run_demo(args) -> dict:
    from .demo import demo_clouds
    from .recognize import Recognizer
    from .render import save_sheet

    clouds = demo_clouds()
    model = _load(args)
    rec = Recognizer(model, dataset="modelnet40", preset=args.preset)
    names = list(clouds)
    preds = rec.classify([clouds[n] for n in names], top_k=args.top_k)
    views = rec.project(rec.prepare([clouds[n] for n in names]))
    _, bias = rec.encoder_input(views)
    v = views.images.shape[1]
    captions = [f"{n} v{i}" for n in names for i in range(v)]
    sheet = save_sheet(args.output, views.images.flatten(0, 1), bias, captions, columns=v)
    return {"model": model.name, "pretrained": model.pretrained, "contact_sheet": str(sheet),
            "objects": [{"object": n, "predictions": p} for n, p in zip(names, preds)]}


def _print_demo(result: dict) -> None:
    print(f"pointfalip demo — {result['model']} ({result['pretrained']}), ModelNet40 names, FALIP on")
    print(f"{'object':<8} {'top-1':<14} {'score':>7}   next")
    for obj in result["objects"]:
        best, rest = obj["predictions"][0], obj["predictions"][1:3]
        others = ", ".join(f"{p['label']} {p['score']:.1%}" for p in rest)
        print(f"{obj['object']:<8} {best['label']:<14} {best['score']:>7.1%}   {others}")
    print(f"contact sheet: {result['contact_sheet']}")


# ---- scenes --------------------------------------------------------------------------------------------
def _scene_frames(args):
    """(stamp_ns or None, points) for each frame of the input: a bag, a depth image or a point file."""
    from . import io, rosbag

    path = Path(args.input)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir() or path.suffix.lower() in BAG_SUFFIXES:
        return ((f.stamp_ns, f.points) for f in rosbag.read_bag(path, args.topic)), True
    if path.suffix.lower() in DEPTH_IMAGE_SUFFIXES:
        if not args.intrinsics:
            raise InputError(f"{path} is a depth image: give the camera's --intrinsics fx,fy,cx,cy")
        try:
            intrinsics = [float(v) for v in args.intrinsics.split(",")]
        except ValueError as e:
            raise InputError(f"--intrinsics '{args.intrinsics}' must be four numbers fx,fy,cx,cy") from e
        return iter([(None, rosbag.read_depth_image(path, intrinsics, depth_scale=args.depth_scale))]), False
    return iter([(None, io.load_points(path, max_points=None, drop_nonfinite=True))]), False


def _scene_config(args):
    from .scene import load_segmentation_config

    overrides = {k: getattr(args, k) for k in ("voxel_size", "cluster_tolerance", "plane_distance",
                                               "min_object_points", "max_object_points")
                 if getattr(args, k) is not None}
    return load_segmentation_config(args.scene_preset, **overrides)


@command("scene")
def run_scene(args) -> dict:
    from .scene import SceneRecognizer

    labels, dataset = _labels(args)
    if args.up_axis is None:  # sensor frames: z-up robots and lidars; camera frames (depth images) have y down
        args.up_axis = "-y" if Path(args.input).suffix.lower() in DEPTH_IMAGE_SUFFIXES else "z"
    frames, is_bag = _scene_frames(args)
    config = _scene_config(args)
    model = _load(args)
    rec = _recognizer(args, model, labels, dataset)
    scene = SceneRecognizer(rec, config, top_k=args.top_k)
    results, last = [], None
    for stamp, points in frames:
        outcome = scene.recognize(points)
        results.append({"stamp": None if stamp is None else stamp / 1e9, "objects": outcome.objects,
                        "timings": {k: round(v, 4) for k, v in outcome.timings.items()}})
        last = (points, outcome.objects)
    if not results:
        raise InputError(f"{args.input}: no frames to recognise")
    if args.render and last is not None:
        from .render import save_scene

        save_scene(args.render, *last, up_axis=rec.config.up_axis)
    if is_bag:
        return {"file": str(args.input), "topic": args.topic, "frames": results}
    return {"file": str(args.input), "objects": results[0]["objects"], "timings": results[0]["timings"]}


def _print_scene(result: dict) -> None:
    frames = result.get("frames") or [{"stamp": None, "objects": result["objects"], "timings": result["timings"]}]
    for frame in frames:
        head = result["file"] + ("" if frame["stamp"] is None else f"  t={frame['stamp']:.3f}s")
        print(f"{head}: {len(frame['objects'])} object(s)")
        if frame["objects"]:
            print(f"  {'#':>2} {'label':<16} {'score':>7} {'points':>7}  centroid (m)")
        for i, obj in enumerate(frame["objects"]):
            c = ", ".join(f"{v:.3f}" for v in obj["centroid"])
            print(f"  {i:>2} {obj['label']:<16} {obj['score']:>7.1%} {obj['num_points']:>7}  ({c})")


# ---- 2D ------------------------------------------------------------------------------------------------
@command("classify-image")
def run_classify_image(args) -> dict:
    from .regions import classify_region, load_image, load_mask, parse_box

    labels, _ = _labels(args)
    image = load_image(args.image)
    box = parse_box(args.box) if args.box else None
    mask = load_mask(args.mask, image.size) if args.mask else None
    if box is not None:
        from .foveal import check_box

        check_box(box, image.width, image.height)
    model = _load(args)
    preds = classify_region(model, image, labels, box=box, mask=mask, prompt=args.prompt, top_k=args.top_k)
    return {"file": str(args.image), "prompt": args.prompt, "predictions": preds}


@command("refer")
def run_refer(args) -> dict:
    from .foveal import check_box
    from .regions import load_image, parse_box, rank_boxes

    image = load_image(args.image)
    boxes = [parse_box(b) for b in args.boxes.split(";") if b.strip()]
    if not boxes:
        raise InputError("no candidate boxes: give --boxes 'x0,y0,x1,y1;...'")
    for b in boxes:
        check_box(b, image.width, image.height)
    model = _load(args)
    preds = rank_boxes(model, image, boxes, args.caption, prompt=args.prompt)
    return {"file": str(args.image), "caption": args.caption, "predictions": preds}


def _print_predictions(result: dict) -> None:
    print(result["file"] + (f"  \"{result['caption']}\"" if "caption" in result else ""))
    for p in result["predictions"]:
        print(f"  {p['score']:7.2%}  {p['label']}")


PRINTERS = {"classify": _print_classify, "scene": _print_scene, "demo": _print_demo, "classify-image": _print_predictions,
            "refer": _print_predictions}


# ---- evaluation ----------------------------------------------------------------------------------------
@command("evaluate")
def run_evaluate(args) -> dict:
    import os

    from .datasets import open_dataset
    from .evaluate import default_report_path, distributed, evaluate, run_names

    run_names(args.compare, args.falip)  # refuse --compare with --no-falip before reading anything
    dataset = open_dataset(args.dataset, args.root, split=args.split, limit=args.limit, num_points=args.num_points,
                           up_axis=args.up_axis)
    with distributed(args.device) as device:  # torchrun: one shard of the batches per rank
        args.device = device
        model = _load(args)
        report = evaluate(model, dataset, preset=args.preset, compare=args.compare, falip=args.falip,
                          batch_size=args.batch_size, out=args.out or default_report_path(dataset.name),
                          projection=args.projection, prompt_file=args.prompt_file)
    if int(os.environ.get("RANK", "0")) != 0:  # every rank holds the report; rank 0 alone prints it
        sys.stdout = open(os.devnull, "w")
    return report


_EVALUATE_ROWS = 40  # classes listed on screen; the report holds them all


def _print_evaluate(report: dict) -> None:
    runs = list(report["runs"])
    print(f"pointfalip evaluate — {report['dataset']} ({report['split']}): {report['n']} objects, "
          f"{len(report['skipped'])} skipped — {report['model']} ({report['pretrained']}), preset {report['preset']}")
    print(f"{'':<20}" + "".join(f"{r:>10}" for r in runs))
    for key, name in (("overall_accuracy", "overall"), ("mean_class_accuracy", "mean class")):
        print(f"{name:<20}" + "".join(f"{report['runs'][r][key]:>10.2%}" for r in runs))
    print(f"{'class':<20}" + "".join(f"{r:>10}" for r in runs) + f"{'n':>6}")
    confusion = report["runs"][runs[0]]["confusion"]
    present = [(k, c) for k, c in enumerate(report["classes"]) if sum(confusion[k])]
    for k, c in present[:_EVALUATE_ROWS]:
        print(f"{c[:19]:<20}" + "".join(f"{report['runs'][r]['per_class'][c]:>10.1%}" for r in runs)
              + f"{sum(confusion[k]):>6}")
    if len(present) > _EVALUATE_ROWS:
        print(f"... and {len(present) - _EVALUATE_ROWS} more classes in the report")
    print(f"report: {report['report']}   confusion matrix: {report['confusion_png']}")


PRINTERS["evaluate"] = _print_evaluate


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pointfalip", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pointfalip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("-v", "--verbose", action="store_true", help="say what the model saw")
        return p

    p = add("classify", "which label fits each point cloud")
    p.add_argument("files", nargs="+", metavar="FILE")
    _label_args(p)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--per-view", action="store_true", help="each view's top label and score too")
    _recognizer_args(p)
    _model_args(p)

    p = add("render", "contact sheet of the depth views with their foveal masks")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", default="views.png")
    p.add_argument("--preset", default="pointclip_v2")
    p.add_argument("--projection", choices=("realistic", "simple"))
    p.add_argument("--up-axis", choices=UP_AXES)
    p.add_argument("--num-points", type=int, default=2048)
    p.add_argument("--model", default="ViT-B-16", help="whose patch grid the masks are drawn on")

    p = add("demo", "the embedded default: built-in objects against ModelNet40 names")
    p.add_argument("-o", "--output", default="pointfalip_demo.png", help="contact sheet path")
    p.add_argument("--preset", default="pointclip_v2")
    p.add_argument("--top-k", type=int, default=3)
    _model_args(p)

    p = add("scene", "segment a scene (point file, depth image or ROS 2 bag) and recognise each object")
    p.add_argument("input", metavar="INPUT", help="point file, depth image (.png/.tif) or rosbag2 folder/.db3/.mcap")
    _label_args(p)
    p.add_argument("--topic", help="PointCloud2 topic of a bag (default: its only one)")
    p.add_argument("--intrinsics", help="fx,fy,cx,cy of a depth image")
    p.add_argument("--depth-scale", type=float, help="raw depth units per metre (default 1000 for 16-bit)")
    p.add_argument("--scene-preset", default="tabletop", help="segmentation preset: tabletop or room")
    p.add_argument("--voxel-size", type=float, help="metres")
    p.add_argument("--cluster-tolerance", type=float, help="metres (DBSCAN eps)")
    p.add_argument("--plane-distance", type=float, help="metres")
    p.add_argument("--min-object-points", type=int)
    p.add_argument("--max-object-points", type=int)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--render", help="write a top view with each object's box and label to this PNG")
    _recognizer_args(p, up_default="z; -y for depth images")
    _model_args(p)

    p = add("classify-image", "which label fits a region of an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--labels", required=True, help="comma-separated names")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--box", help="x0,y0,x1,y1 in pixels")
    g.add_argument("--mask", help="region mask image, same size as IMAGE (non-zero = region)")
    p.add_argument("--prompt", default="falip", choices=("falip", "circle", "blur", "crop", "none"))
    p.add_argument("--top-k", type=int, default=5)
    _model_args(p)

    p = add("refer", "rank candidate boxes for a referring expression")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--boxes", required=True, help="'x0,y0,x1,y1;x0,y0,x1,y1;...'")
    p.add_argument("--caption", required=True)
    p.add_argument("--prompt", default="falip", choices=("falip", "circle", "blur", "crop", "none"))
    _model_args(p)
    p = add("evaluate", "zero-shot accuracy on a 3D test set (ModelNet40/10, ScanObjectNN, a folder)")
    p.add_argument("--dataset", required=True,
                   help="modelnet40, modelnet10, scanobjectnn[-obj_only|-obj_bg|-pb_t50_rs] or folder")
    p.add_argument("--root", required=True, help="folder holding the dataset's release")
    p.add_argument("--split", default="test", choices=("test", "train"))
    p.add_argument("--limit", type=int, help="the first N objects only")
    p.add_argument("--compare", action="store_true", help="FALIP and the plain-CLIP baseline from the same views")
    p.add_argument("--batch-size", type=int, default=16, help="objects per batch (default %(default)s)")
    p.add_argument("--out", help="report path (default evaluate_<dataset>.json); the confusion PNG goes beside it")
    _recognizer_args(p, up_default="the dataset's")
    _model_args(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    if not args.verbose:  # third-party chatter (open_clip logs download failures on the root logger) stays quiet;
        logging.getLogger().setLevel(logging.CRITICAL)  # our own warnings still reach the handler
        logging.getLogger("pointfalip").setLevel(logging.WARNING)
        logging.getLogger("huggingface_hub").setLevel(logging.CRITICAL)  # its download retries log their own lines
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        result = COMMANDS[args.command](args)
    except InputError as e:
        print(f"pointfalip {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        PRINTERS.get(args.command, lambda r: print(json.dumps(r, indent=2)))(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
