"""The `pointfalip` command: classify point clouds and image regions, render views, scenes, evaluation, the demo.

Each subcommand is one registration (`command`): its name (nested names such as ``"fewshot build"`` allowed),
its arguments, its runner ``run(args) -> result`` that tests can call, and the printer of its result. `main`
prints the result (JSON with --json) and turns user errors into one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from . import __version__, io
from .errors import InputError

log = logging.getLogger("pointfalip")


# ---- the registry --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One subcommand: what the parser needs, what runs, and how its result is shown."""

    name: str  # words separated by spaces: "classify", "fewshot build"
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Any]
    printer: Optional[Callable[[Any], None]] = None  # None: the result as JSON


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None],
            printer: Optional[Callable[[Any], None]] = None):
    """Register the decorated ``run(args)`` as the subcommand ``name``."""
    def register(run):
        COMMANDS[name] = Command(name, help, arguments, run, printer)
        return run
    return register


def list_commands() -> list[str]:
    return sorted(COMMANDS)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every registered command; nested names become nested subparsers."""
    parser = _Parser(prog="pointfalip", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pointfalip {__version__}")
    groups: dict[tuple, Any] = {(): parser.add_subparsers(dest="command", required=True, parser_class=_Parser)}
    for name in sorted(COMMANDS, key=lambda n: (n.count(" "), n)):
        cmd = COMMANDS[name]
        words = tuple(name.split())
        for depth in range(1, len(words)):  # parents of a nested command
            prefix = words[:depth]
            if prefix not in groups:
                parent = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{' '.join(prefix)} commands")
                groups[prefix] = parent.add_subparsers(dest=f"sub_{depth}", required=True, parser_class=_Parser)
        p = groups[words[:-1]].add_parser(words[-1], help=cmd.help, description=cmd.help)
        p.set_defaults(command=name)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("-v", "--verbose", action="store_true", help="say what the model saw")
        cmd.arguments(p)
    return parser


# ---- argument types: one rule each -----------------------------------------------------------------------
def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside [{lo}, {hi}]")
        return value
    return parse


def bounded_float(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse type: a finite number in (lo, hi]."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not (math.isfinite(value) and lo < value <= hi):
            raise argparse.ArgumentTypeError(f"{text} is outside ({lo:g}, {hi:g}]")
        return value
    return parse


MAX_POINTS = io.MAX_NUM_POINTS
top_k_type = bounded_int(1, 10_000)
num_points_type = bounded_int(io.MIN_POINTS, io.MAX_NUM_POINTS)
metres_type = bounded_float(0.0, 100.0)


# ---- shared option groups ------------------------------------------------------------------------------
def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_args(p: argparse.ArgumentParser, precision_default: str = "the preset's, auto") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="ViT-B-16", help="open_clip model name or config JSON (default %(default)s)")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip tag, hf-hub:ID, local checkpoint, or 'none' for random weights (default %(default)s)")
    g.add_argument("--device", default=_default_device(), help="torch device (default %(default)s)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help=f"auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32 (default: {precision_default})")


def image_model_args(p: argparse.ArgumentParser) -> None:
    model_args(p, precision_default="auto")


def label_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help="comma-separated names")
    g.add_argument("--labels-file", help="one name per line")
    g.add_argument("--dataset", help="a dataset's class names: modelnet40, modelnet10, scanobjectnn")


def recognizer_args(p: argparse.ArgumentParser, up_default: str = "the preset's, y") -> None:
    p.add_argument("--preset", default="pointclip_v2", help="configs/presets name or YAML file (default %(default)s)")
    p.add_argument("--projection", choices=("realistic", "simple"), help="override the preset's projection")
    p.add_argument("--no-falip", dest="falip", action="store_false", help="plain CLIP (the baseline)")
    p.add_argument("--up-axis", choices=io.UP_AXES, help=f"up axis of the input (default: {up_default})")
    p.add_argument("--prompt-file", help="per-class prompts in PointCLIP V2's JSON layout")
    p.add_argument("--num-points", type=num_points_type, default=2048,
                   help="points sampled on meshes (default %(default)s)")


def recognizer_options(args) -> dict:
    """The keyword arguments of `Recognizer` that the command line sets: the one reading of them."""
    return {"preset": args.preset, "falip": args.falip, "projection": args.projection, "up_axis": args.up_axis,
            "prompt_file": args.prompt_file}


def load_model(args):
    """The model the options name, in the preset's precision unless --precision says otherwise."""
    from .model import load_model as load

    if args.precision is None:
        from .recognize import load_preset

        args.precision = load_preset(args.preset).precision if getattr(args, "preset", None) else "auto"
    return load(args.model, args.pretrained, device=args.device, precision=args.precision)


def build_recognizer(args, model, labels=None, dataset=None):
    from .recognize import Recognizer

    return Recognizer(model, labels=labels, dataset=dataset, **recognizer_options(args))


def read_labels(args) -> tuple[Optional[list[str]], Optional[str]]:
    """(labels, dataset) from --labels, --labels-file or --dataset."""
    if getattr(args, "labels_file", None):
        path = Path(args.labels_file)
        if path.is_dir():
            raise InputError(f"labels file {path} is a folder")
        if not path.is_file():
            raise InputError(f"labels file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise InputError(f"labels file {path} is not UTF-8 text") from e
        except PermissionError as e:
            raise InputError(f"labels file {path}: permission denied") from e
        labels = [line.strip() for line in text.splitlines() if line.strip()]
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
    labels = [s.strip() for s in (getattr(args, "labels", None) or "").split(",") if s.strip()]
    if not labels:
        raise InputError("the label list is empty: give --labels a,b,c, --labels-file or --dataset")
    return labels, None


def _predictions(preds) -> list[dict]:
    return [p.to_dict() for p in preds]


# ---- 3D ------------------------------------------------------------------------------------------------
def _classify_args(p):
    p.add_argument("files", nargs="+", metavar="FILE")
    label_args(p)
    p.add_argument("--top-k", type=top_k_type, default=5)
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


@command("classify", "which label fits each point cloud", _classify_args, _print_classify)
def run_classify(args) -> list[dict]:
    from .recognize import ranked

    labels, dataset = read_labels(args)
    clouds = [io.load_points(f, num_points=args.num_points) for f in args.files]
    rec = build_recognizer(args, load_model(args), labels, dataset)
    prepared = rec.prepare(clouds)
    if args.verbose:
        for f, cloud in zip(args.files, prepared):
            log.info("%s -> model input (normalised, up=%s): %s", f, rec.config.up_axis, io.describe(cloud))
    feats = rec.embed(prepared, prepared=True)
    probs = rec.probabilities(rec.logits(feats))
    out = []
    view_probs = rec.probabilities(rec.view_logits(feats)) if args.per_view else None
    for i, f in enumerate(args.files):
        item = {"file": str(f), "predictions": _predictions(ranked(rec.labels, probs[i], args.top_k))}
        if view_probs is not None:
            item["views"] = [ranked(rec.labels, p, 1)[0].to_dict() for p in view_probs[i]]
        out.append(item)
    if args.verbose:
        log.info("timings: %s", {k: round(v, 3) for k, v in rec.last_timings.items()})
    return out


def _render_args(p):
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", default="views.png", help="contact sheet (.png or .jpg)")
    p.add_argument("--preset", default="pointclip_v2")
    p.add_argument("--projection", choices=("realistic", "simple"))
    p.add_argument("--up-axis", choices=io.UP_AXES)
    p.add_argument("--num-points", type=num_points_type, default=2048)
    p.add_argument("--model", default="ViT-B-16", help="whose patch grid the masks are drawn on")


@command("render", "contact sheet of the depth views with their foveal masks", _render_args)
def run_render(args) -> dict:
    from .files import IMAGE_SUFFIXES, check_output
    from .foveal import from_occupancy
    from .model import config_grid
    from .projection import project
    from .recognize import DEFAULT_VIEWS, load_preset
    from .render import save_sheet

    output = check_output(args.output, "--output", inputs=[args.file], suffixes=IMAGE_SUFFIXES)
    preset = load_preset(args.preset)
    method = args.projection or preset.projection
    views = preset.views if method == preset.projection else DEFAULT_VIEWS[method]
    grid, size = config_grid(args.model)
    cloud = io.normalize(io.load_points(args.file, num_points=args.num_points), args.up_axis or preset.up_axis)
    if size[0] != size[1]:
        raise InputError(f"model '{args.model}' takes {size[0]}x{size[1]} images; depth views are square")
    depth = project(cloud, method=method, views=views, image_size=size[0])
    weights = from_occupancy(depth.occupancy[0], grid, preset.foveal)
    path = save_sheet(output, depth.images[0], weights, [f"view {v}" for v in range(depth.images.shape[1])])
    return {"file": str(args.file), "output": str(path), "views": int(depth.images.shape[1])}


def _demo_args(p):
    p.add_argument("-o", "--output", default="pointfalip_demo.png", help="contact sheet path (.png or .jpg)")
    p.add_argument("--preset", default="pointclip_v2")
    p.add_argument("--top-k", type=top_k_type, default=3)
    model_args(p)


def _print_demo(result: dict) -> None:
    print(f"pointfalip demo — {result['model']} ({result['pretrained']}), ModelNet40 names, FALIP on")
    print(f"{'object':<8} {'top-1':<14} {'prob.':>7}   next")
    for obj in result["objects"]:
        best, rest = obj["predictions"][0], obj["predictions"][1:3]
        others = ", ".join(f"{p['label']} {p['score']:.1%}" for p in rest)
        print(f"{obj['object']:<8} {best['label']:<14} {best['score']:>7.1%}   {others}")
    print(f"contact sheet: {result['contact_sheet']}")


@command("demo", "the embedded default: built-in objects against ModelNet40 names", _demo_args, _print_demo)
def run_demo(args) -> dict:
    from .demo import demo_clouds
    from .files import IMAGE_SUFFIXES, check_output
    from .recognize import Recognizer, ranked
    from .render import save_sheet

    output = check_output(args.output, "--output", suffixes=IMAGE_SUFFIXES)
    clouds = demo_clouds()
    model = load_model(args)
    rec = Recognizer(model, dataset="modelnet40", preset=args.preset)
    names = list(clouds)
    views = rec.project(rec.prepare([clouds[n] for n in names]))
    probs = rec.probabilities(rec.logits(rec.embed_views(views)))
    _, bias = rec.encoder_input(views)
    v = views.images.shape[1]
    captions = [f"{n} v{i}" for n in names for i in range(v)]
    sheet = save_sheet(output, views.images.flatten(0, 1), bias, captions, columns=v)
    return {"model": model.name, "pretrained": model.pretrained, "contact_sheet": str(sheet),
            "objects": [{"object": n, "predictions": _predictions(ranked(rec.labels, p, args.top_k))}
                        for n, p in zip(names, probs)]}


# ---- scenes --------------------------------------------------------------------------------------------
def _intrinsics(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' must be four numbers fx,fy,cx,cy") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"'{text}' must be four numbers fx,fy,cx,cy, got {len(values)}")
    return values


def _scene_args(p):
    p.add_argument("input", metavar="INPUT", help="point file, depth image (.png/.tif/.npy) or rosbag2 folder/.db3/.mcap")
    label_args(p)
    p.add_argument("--topic", help="PointCloud2 topic of a bag (default: its only one)")
    p.add_argument("--intrinsics", type=_intrinsics, help="fx,fy,cx,cy of a depth image")
    p.add_argument("--depth-scale", type=bounded_float(0.0, 1e9),
                   help="raw depth units per metre (default 1000 for 16-bit)")
    p.add_argument("--scene-preset", default="tabletop", help="segmentation preset: tabletop or room")
    p.add_argument("--voxel-size", type=metres_type, help="metres")
    p.add_argument("--cluster-tolerance", type=metres_type, help="metres (DBSCAN eps)")
    p.add_argument("--plane-distance", type=metres_type, help="metres")
    p.add_argument("--min-object-points", type=bounded_int(1, MAX_POINTS))
    p.add_argument("--max-object-points", type=bounded_int(1, MAX_POINTS))
    p.add_argument("--top-k", type=top_k_type, default=3)
    p.add_argument("--render", help="write a top view with each object's box and label to this PNG")
    recognizer_args(p, up_default="z; -y for depth images")
    model_args(p)


def _scene_config(args):
    from .scene import load_segmentation_config

    overrides = {k: getattr(args, k) for k in ("voxel_size", "cluster_tolerance", "plane_distance",
                                               "min_object_points", "max_object_points")
                 if getattr(args, k) is not None}
    return load_segmentation_config(args.scene_preset, **overrides)


def _print_scene(result: dict) -> None:
    frames = result.get("frames") or [{"stamp": None, "objects": result["objects"], "timings": result["timings"]}]
    for frame in frames:
        head = result["file"] + ("" if frame["stamp"] is None else f"  t={frame['stamp']:.3f}s")
        print(f"{head}: {len(frame['objects'])} object(s)")
        if frame["objects"]:
            print(f"  {'#':>2} {'label':<16} {'prob.':>7} {'points':>7}  centroid (m)")
        for i, obj in enumerate(frame["objects"]):
            c = ", ".join(f"{v:.3f}" for v in obj["centroid"])
            print(f"  {i:>2} {obj['label']:<16} {obj['score']:>7.1%} {obj['num_points']:>7}  ({c})")


@command("scene", "segment a scene (point file, depth image or ROS 2 bag) and recognise each object", _scene_args,
         _print_scene)
def run_scene(args) -> dict:
    from .files import IMAGE_SUFFIXES, check_output
    from .rosbag import read_frames
    from .scene import SceneRecognizer

    labels, dataset = read_labels(args)
    render = check_output(args.render, "--render", inputs=[args.input], suffixes=IMAGE_SUFFIXES) if args.render \
        else None
    source = read_frames(args.input, args.topic, intrinsics=args.intrinsics, depth_scale=args.depth_scale)
    if args.up_axis is None:  # sensor frames: z-up robots and lidars; camera frames (depth images) have y down
        args.up_axis = source.up_axis
    config = _scene_config(args)
    rec = build_recognizer(args, load_model(args), labels, dataset)
    scene = SceneRecognizer(rec, config, top_k=args.top_k)
    results, last = [], None
    for frame in source.frames:
        result = scene.recognize(frame.points, stamp_ns=frame.stamp_ns, frame_id=frame.frame_id)
        results.append(result.to_dict())
        last = (frame.points, result.objects)
    if not results:
        raise InputError(f"{args.input}: no frames to recognise")
    if render is not None:
        from .render import save_scene

        save_scene(render, *last, up_axis=rec.config.up_axis)
    if source.sequence:
        return {"file": str(args.input), "topic": args.topic, "frames": results}
    return {"file": str(args.input), "objects": results[0]["objects"], "timings": results[0]["timings"]}


# ---- 2D ------------------------------------------------------------------------------------------------
def _classify_image_args(p):
    from .visual_prompts import PROMPTS

    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--labels", required=True, help="comma-separated names")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--box", help="x0,y0,x1,y1 in pixels")
    g.add_argument("--mask", help="region mask image, same size as IMAGE (non-zero = region)")
    p.add_argument("--prompt", default="falip", choices=PROMPTS)
    p.add_argument("--top-k", type=top_k_type, default=5)
    image_model_args(p)


def _print_predictions(result: dict) -> None:
    print(result["file"] + (f"  \"{result['caption']}\"" if "caption" in result else ""))
    for p in result["predictions"]:
        print(f"  {p['score']:7.2%}  {p['label']}")


@command("classify-image", "which label fits a region of an image", _classify_image_args, _print_predictions)
def run_classify_image(args) -> dict:
    from .foveal import check_box, parse_box
    from .regions import classify_region, load_image, load_mask

    labels, _ = read_labels(args)
    image = load_image(args.image)
    box = parse_box(args.box) if args.box else None
    mask = load_mask(args.mask, image.size) if args.mask else None
    if box is not None:
        check_box(box, image.width, image.height)
    model = load_model(args)
    preds = classify_region(model, image, labels, box=box, mask=mask, prompt=args.prompt, top_k=args.top_k)
    return {"file": str(args.image), "prompt": args.prompt, "predictions": _predictions(preds)}


def _refer_args(p):
    from .visual_prompts import PROMPTS

    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--boxes", required=True, help="'x0,y0,x1,y1;x0,y0,x1,y1;...'")
    p.add_argument("--caption", required=True)
    p.add_argument("--prompt", default="falip", choices=PROMPTS)
    image_model_args(p)


@command("refer", "rank candidate boxes for a referring expression", _refer_args, _print_predictions)
def run_refer(args) -> dict:
    from .foveal import check_box, parse_box
    from .regions import load_image, rank_boxes

    image = load_image(args.image)
    boxes = [parse_box(b) for b in args.boxes.split(";") if b.strip()]
    if not boxes:
        raise InputError("no candidate boxes: give --boxes 'x0,y0,x1,y1;...'")
    for b in boxes:
        check_box(b, image.width, image.height)
    model = load_model(args)
    preds = rank_boxes(model, image, boxes, args.caption, prompt=args.prompt)
    return {"file": str(args.image), "caption": args.caption, "predictions": _predictions(preds)}


# ---- evaluation ----------------------------------------------------------------------------------------
def _evaluate_args(p):
    p.add_argument("--dataset", required=True,
                   help="modelnet40, modelnet10, scanobjectnn[-obj_only|-obj_bg|-pb_t50_rs] or folder")
    p.add_argument("--root", required=True, help="folder holding the dataset's release")
    p.add_argument("--split", default="test", choices=("test", "train"))
    p.add_argument("--limit", type=bounded_int(1, 10**9), help="the first N objects only")
    p.add_argument("--compare", action="store_true", help="FALIP and the plain-CLIP baseline from the same views")
    p.add_argument("--batch-size", type=bounded_int(1, 4096), default=16, help="objects per batch (default %(default)s)")
    p.add_argument("--out", help="report path, .json (default evaluate_<dataset>.json); the confusion PNG goes beside it")
    recognizer_args(p, up_default="the dataset's")
    model_args(p)


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


@command("evaluate", "zero-shot accuracy on a 3D test set (ModelNet40/10, ScanObjectNN, a folder)", _evaluate_args,
         _print_evaluate)
def run_evaluate(args) -> dict:
    import os

    from .datasets import open_dataset
    from .evaluate import check_report_path, default_report_path, distributed, evaluate, run_names
    from .files import check_output

    run_names(args.compare, args.falip)  # refuse --compare with --no-falip before reading anything
    dataset = open_dataset(args.dataset, args.root, split=args.split, limit=args.limit, num_points=args.num_points,
                           up_axis=args.up_axis)
    out = check_output(args.out or default_report_path(dataset.name), "--out", suffixes=(".json",))
    check_report_path(out)
    with distributed(args.device) as device:  # torchrun: one shard of the batches per rank
        args.device = device
        model = load_model(args)
        options = recognizer_options(args)
        preset = options.pop("preset")
        report = evaluate(model, dataset, preset=preset, compare=args.compare, batch_size=args.batch_size,
                          out=out, **options)
    if int(os.environ.get("RANK", "0")) != 0:  # every rank holds the report; rank 0 alone prints it
        sys.stdout = open(os.devnull, "w")
    return report


# ---- main ----------------------------------------------------------------------------------------------
class _Warnings:
    """Our own warnings, each as one line, shown once the command has succeeded (an error stays one line);
    third-party warnings (numpy, PIL, open3d) stay quiet."""

    def __init__(self):
        self.lines: list[str] = []

    def show(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if text.startswith("pointfalip:"):
            if text not in self.lines:
                self.lines.append(text)
        else:
            log.debug("%s: %s", category.__name__, text)

    def flush(self) -> None:
        for text in self.lines:
            print(text, file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (one line on stderr, exit 2)
        return e.code if isinstance(e.code, int) else 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    if not args.verbose:  # third-party chatter (open_clip logs download failures on the root logger) stays quiet;
        logging.getLogger().setLevel(logging.CRITICAL)  # our own warnings still reach the handler
        logging.getLogger("pointfalip").setLevel(logging.WARNING)
        logging.getLogger("huggingface_hub").setLevel(logging.CRITICAL)  # its download retries log their own lines
    cmd = COMMANDS[args.command]
    caught = _Warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = caught.show
        try:
            result = cmd.run(args)
        except InputError as e:
            print(f"pointfalip {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
    caught.flush()
    if args.json:
        json.dump(result, sys.stdout, indent=2, allow_nan=False)
        print()
    elif cmd.printer is not None:
        cmd.printer(result)
    else:
        print(json.dumps(result, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
