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
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import __version__, io
from .errors import InputError
from .files import forget_pipes
from .model import default_device
from .presets import PRECISION_CHOICES

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
MAX_SEED = 2**31 - 1  # seeds of the example draws: numpy's generators take any, the reports keep them as JSON ints
top_k_type = bounded_int(1, 10_000)
num_points_type = bounded_int(io.MIN_POINTS, io.MAX_NUM_POINTS)
metres_type = bounded_float(1e-4, 100.0)  # 0.1 mm to 100 m: smaller voxels overflow the grid's integer indices


def seed_list(text: str) -> list[int]:
    """An argparse type: comma-separated seeds, each an integer in [0, MAX_SEED]."""
    parse = bounded_int(0, MAX_SEED)
    seeds = [parse(v.strip()) for v in text.split(",") if v.strip()]
    if not seeds:
        raise argparse.ArgumentTypeError(f"'{text}' holds no seed")
    return seeds


# ---- shared option groups ------------------------------------------------------------------------------
def model_args(p: argparse.ArgumentParser, precision_default: str = "the preset's, auto") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="ViT-B-16", help="open_clip model name or config JSON (default %(default)s)")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip tag, hf-hub:ID, local checkpoint, or 'none' for random weights (default %(default)s)")
    g.add_argument("--device", default=default_device(), help="torch device (default %(default)s)")
    g.add_argument("--precision", choices=PRECISION_CHOICES,
                   help=f"auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32 (default: {precision_default})")


def image_model_args(p: argparse.ArgumentParser) -> None:
    model_args(p, precision_default="auto")


def label_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", help="comma-separated names")
    g.add_argument("--labels-file", help="one name per line")
    g.add_argument("--dataset", help="a dataset's class names: modelnet40, modelnet10, scanobjectnn")


DEFAULT_PRESET = "pointclip_v2"  # the recognition preset when --preset is not given


def recognizer_args(p: argparse.ArgumentParser, up_default: str = "the preset's, y",
                    preset_help: str = f"configs/presets name or YAML file (default {DEFAULT_PRESET})") -> None:
    p.add_argument("--preset", help=preset_help)
    p.add_argument("--projection", choices=("realistic", "simple"), help="override the preset's projection")
    p.add_argument("--no-falip", dest="falip", action="store_false", help="plain CLIP (the baseline)")
    p.add_argument("--up-axis", choices=io.UP_AXES, help=f"up axis of the input (default: {up_default})")
    p.add_argument("--prompt-file", help="per-class prompts in PointCLIP V2's JSON layout")
    p.add_argument("--num-points", type=num_points_type, default=2048,
                   help="points sampled on meshes (default %(default)s)")
    p.add_argument("--fewshot", metavar="FILE", help="a few-shot cache (pointfalip fewshot build) of labelled examples")


def recognizer_options(args) -> dict:
    """The keyword arguments of `Recognizer` that the command line sets: the one reading of them."""
    return {"preset": args.preset or DEFAULT_PRESET, "falip": args.falip, "projection": args.projection,
            "up_axis": args.up_axis, "prompt_file": args.prompt_file, "fewshot": getattr(args, "fewshot", None)}


def load_model(args):
    """The model the options name, in the preset's precision unless --precision says otherwise."""
    from .model import load_model as load

    if args.precision is None:
        from .recognize import load_preset

        args.precision = load_preset(args.preset or DEFAULT_PRESET).precision if hasattr(args, "preset") else "auto"
    return load(args.model, args.pretrained, device=args.device, precision=args.precision)


def build_recognizer(args, model, labels=None, dataset=None):
    from .recognize import Recognizer

    return Recognizer(model, labels=labels, dataset=dataset, **recognizer_options(args))


def read_labels(args) -> tuple[Optional[list[str]], Optional[str]]:
    """(labels, dataset) from --labels, --labels-file or --dataset."""
    if getattr(args, "labels_file", None):
        from .files import read_input_text

        path = args.labels_file
        text = read_input_text(path, "labels file")
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
        item = {"file": str(f), "predictions": _predictions(preds)}
        if views is not None:
            item["views"] = _predictions(views[i])
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
    from .files import IMAGE_SUFFIXES, check_output, run_inputs
    from .model import config_grid
    from .recognize import foveal_biases, project_clouds, resolve_config
    from .render import save_sheet

    output = check_output(args.output, "--output", inputs=run_inputs(args), suffixes=IMAGE_SUFFIXES)
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
    from .files import IMAGE_SUFFIXES, check_output, run_inputs
    from .recognize import Recognizer
    from .render import save_sheet

    output = check_output(args.output, "--output", inputs=run_inputs(args), suffixes=IMAGE_SUFFIXES)
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
            "objects": [{"object": n, "predictions": _predictions(preds)} for n, preds in zip(names, ranks)]}


# ---- parts ---------------------------------------------------------------------------------------------
def _segment_args(p):
    p.add_argument("cloud", metavar="CLOUD", help="point file or mesh")
    p.add_argument("--parts", help="comma-separated part names, e.g. 'back,seat,leg,arm'")
    p.add_argument("--category", help="what the object is (filled into the prompts); a ShapeNetPart category "
                                      "gives its parts when --parts is absent")
    p.add_argument("--preset", default="pointfalip_parts",
                   help="configs/parts name or YAML file (default %(default)s)")
    p.add_argument("--dense", choices=("tokens", "clearclip"), help="dense features (default: the preset's)")
    p.add_argument("-o", "--output", help="write the points as a PLY with one colour per part")
    p.add_argument("--render", help="write a contact sheet of the views coloured by part, with a legend (.png/.jpg)")
    p.add_argument("--per-point", help="write the part index of every point as .npy")
    p.add_argument("--up-axis", choices=io.UP_AXES, help="up axis of the input (default: the preset's, y)")
    p.add_argument("--num-points", type=num_points_type, default=2048, help="points sampled on meshes "
                   "(default %(default)s; point files keep all their points)")
    model_args(p)


def _print_segment(result: dict) -> None:
    print(f"{result['file']}: {result['points']} points, {len(result['parts'])} parts — {result['model']} "
          f"({result['pretrained']}), dense {result['dense']}")
    for part in result["parts"]:
        print(f"  {part['index']:>2}  {part['part'][:24]:<24} {part['points']:>8}  {part['share']:>6.1%}")
    written = [f"{k}: {result[k]}" for k in ("output", "render", "per_point") if result.get(k)]
    if written:
        print("   ".join(written))


@command("segment", "zero-shot part segmentation: a part name for every point", _segment_args, _print_segment)
def run_segment(args) -> dict:
    import numpy as np

    from .files import IMAGE_SUFFIXES, atomic_write, check_output, run_inputs
    from .parts import PartSegmenter, load_part_preset, resolve_parts
    from .render import part_colors, save_part_sheet

    names = resolve_parts(args.parts, args.category)
    targets = {"output": (args.output, "-o/--output", (".ply",)), "render": (args.render, "--render", IMAGE_SUFFIXES),
               "per_point": (args.per_point, "--per-point", (".npy",))}
    inputs = run_inputs(args)
    paths = {k: check_output(path, what, inputs=inputs, suffixes=suffixes)
             for k, (path, what, suffixes) in targets.items() if path is not None}
    if len({os.path.realpath(p) for p in paths.values()}) < len(paths):
        raise InputError("-o, --render and --per-point name the same file: give each its own")
    preset = load_part_preset(args.preset)
    cloud = io.load_points(args.cloud, num_points=args.num_points, max_points=None)
    if args.precision is None:
        args.precision = preset.precision
    model = load_model(args)
    seg = PartSegmenter(model, parts=names, category=args.category, preset=preset, dense=args.dense)
    prediction = seg.predict(io.normalize(cloud, args.up_axis or preset.up_axis))
    labels = prediction.scores[seg.dense][0].argmax(dim=-1).cpu()
    index = labels.numpy().astype(np.int64)
    counts = np.bincount(index, minlength=len(seg.parts))
    result = {"file": str(args.cloud), "points": int(len(index)), "category": seg.category, "dense": seg.dense,
              "preset": str(args.preset), "model": model.name, "pretrained": model.pretrained,
              "parts": [{"index": k, "part": p, "points": int(c), "share": float(c / len(index))}
                        for k, (p, c) in enumerate(zip(seg.parts, counts))],
              "output": None, "render": None, "per_point": None}
    if "output" in paths:
        import trimesh

        colors = np.concatenate([part_colors(len(seg.parts)), np.full((len(seg.parts), 1), 255, np.uint8)], axis=1)
        ply = trimesh.PointCloud(cloud, colors=colors[index]).export(file_type="ply")
        result["output"] = str(atomic_write(paths["output"], lambda f: f.write(ply)))
    if "render" in paths:
        views = prediction.views
        v = views.images.shape[1]
        result["render"] = str(save_part_sheet(paths["render"], views.images[0], views.point_pixels[0],
                                               views.visible[0], labels, seg.parts, [f"view {i}" for i in range(v)]))
    if "per_point" in paths:
        result["per_point"] = str(atomic_write(paths["per_point"], lambda f: np.save(f, index)))
    return result


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
    p.add_argument("--depth-scale", type=bounded_float(1e-6, 1e9),
                   help="raw depth units per metre (default 1000 for 16-bit)")
    p.add_argument("--scene-preset", default="tabletop",
                   help="segmentation and tracking preset of configs/scene.yaml: tabletop or room")
    p.add_argument("--voxel-size", type=metres_type, help="metres")
    p.add_argument("--cluster-tolerance", type=metres_type, help="metres (DBSCAN eps)")
    p.add_argument("--plane-distance", type=metres_type, help="metres")
    p.add_argument("--min-object-points", type=bounded_int(1, MAX_POINTS))
    p.add_argument("--max-object-points", type=bounded_int(1, MAX_POINTS))
    p.add_argument("--no-track", action="store_true",
                   help="no object ids across frames (a bag's objects are tracked unless this is given)")
    p.add_argument("--top-k", type=top_k_type, default=3)
    p.add_argument("--render", help="write a top view with each object's box and label to this PNG")
    g = p.add_argument_group("Foxglove")
    g.add_argument("--mcap", metavar="FILE.mcap",
                   help="record every frame's cloud and objects to this MCAP file (open it in Foxglove)")
    g.add_argument("--serve", action="store_true", help="stream the frames live to Foxglove (WebSocket)")
    g.add_argument("--port", type=bounded_int(0, 65535), default=8765,
                   help="port of --serve (0: any free port; default %(default)s)")
    g.add_argument("--host", default="127.0.0.1",
                   help="address --serve listens on (default %(default)s: this machine only; 0.0.0.0: every network)")
    g.add_argument("--wait", type=bounded_int(0, 86_400), default=60, metavar="SECONDS",
                   help="with --serve: wait this long for a viewer before the first frame (0: start at once; "
                        "default %(default)s)")
    g.add_argument("--realtime", action="store_true", help="with --serve: play a bag at the pace of its stamps")
    g.add_argument("--loop", action="store_true", help="with --serve: repeat the input until Ctrl-C")
    p.add_argument("--no-reuse", action="store_true",
                   help="encode every object in every frame (by default a tracked object whose cloud barely changed "
                        "keeps its view features)")
    recognizer_args(p, up_default="z; -y for depth images")
    model_args(p)


def _print_scene(result: dict) -> None:
    frames = result.get("frames") or [{"stamp": None, "objects": result["objects"], "timings": result["timings"]}]
    for frame in frames:
        head = result["file"] + ("" if frame["stamp"] is None else f"  t={frame['stamp']:.3f}s")
        print(f"{head}: {len(frame['objects'])} object(s)")
        tracked = any("id" in obj for obj in frame["objects"])
        if frame["objects"]:
            print(f"  {'#':>2} {'id':>4} {'label':<16} {'prob.':>7} {'points':>7}  centroid (m)" if tracked else
                  f"  {'#':>2} {'label':<16} {'prob.':>7} {'points':>7}  centroid (m)")
        for i, obj in enumerate(frame["objects"]):
            c = ", ".join(f"{v:.3f}" for v in obj["centroid"])
            row = f"{obj['label']:<16} {obj['score']:>7.1%} {obj['num_points']:>7}  ({c})"
            if tracked:
                smoothed = obj.get("track_label")
                note = f"  track: {smoothed}" if smoothed and smoothed != obj["label"] else ""
                print(f"  {i:>2} {obj['id']:>4} {row}{note}")
            else:
                print(f"  {i:>2} {row}")
    if result.get("mcap"):
        print(f"wrote {result['mcap']}")


@command("scene", "segment a scene (point file, depth image or ROS 2 bag) and recognise each object", _scene_args,
         _print_scene)
def run_scene(args) -> dict:
    """Frames in, objects out (JSON, --render, --mcap, --serve), through `stream.stream`. Ctrl-C or SIGTERM: outputs
    cleaned up, exit 130."""
    import signal
    import threading
    from contextlib import ExitStack

    from .files import IMAGE_SUFFIXES, check_output, run_inputs
    from .scene import load_scene_recognizer
    from .sources import read_frames
    from .stream import stream

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    on_main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = signal.signal(signal.SIGTERM, interrupt) if on_main else None
    try:
        if (args.loop or args.realtime) and not args.serve:
            raise InputError("--loop and --realtime pace the live view: add --serve (or drop them)")
        labels, dataset = read_labels(args)
        inputs = run_inputs(args)
        render = check_output(args.render, "--render", inputs=inputs, suffixes=IMAGE_SUFFIXES) if args.render else None
        mcap = check_output(args.mcap, "--mcap", inputs=inputs, suffixes=(".mcap",)) if args.mcap else None

        def open_source():
            return read_frames(args.input, args.topic, intrinsics=args.intrinsics, depth_scale=args.depth_scale,
                               num_points=args.num_points)

        source = open_source()  # read (and checked) before any work; a --loop pass opens the input again
        unread = [source]

        def frames():
            return (unread.pop() if unread else open_source()).frames

        if args.up_axis is None:  # sensor frames: z-up robots and lidars; camera frames (depth images) have y down
            args.up_axis = source.up_axis
        segmentation = {k: getattr(args, k) for k in ("voxel_size", "cluster_tolerance", "plane_distance",
                                                      "min_object_points", "max_object_points")
                        if getattr(args, k) is not None}
        with ExitStack() as outputs:
            sinks, record, channels = [], [], None
            if mcap is not None or args.serve:
                from .foxglove import LiveServer, McapRecording, SceneChannels

                channels = SceneChannels(labels=labels)
            if args.serve:
                server = outputs.enter_context(LiveServer(args.port, args.host, scene=channels))
                sinks.append(server)
                print(f"pointfalip scene: Foxglove live view at {server.url} (Foxglove: Open connection, "
                      "Foxglove WebSocket)", file=sys.stderr, flush=True)
            scene = load_scene_recognizer(
                labels, dataset, model=args.model, pretrained=args.pretrained, device=args.device,
                precision=args.precision, scene_preset=args.scene_preset, segmentation=segmentation,
                track=source.sequence and not args.no_track, reuse=not args.no_reuse, top_k=args.top_k,
                **recognizer_options(args))
            rec = scene.recognizer
            if channels is not None:
                channels.labels = list(rec.labels)
            if mcap is not None:
                record.append(outputs.enter_context(McapRecording(mcap, scene=channels, overwrite=True, metadata={
                    "input": str(args.input), "topic": source.topic or "", "model": str(args.model),
                    "pretrained": str(args.pretrained), "labels": ",".join(rec.labels)})))
            if args.serve and args.wait and not server.wait_for_subscriber(timeout=args.wait):
                print(f"pointfalip scene: no viewer subscribed within {args.wait} s; streaming anyway",
                      file=sys.stderr, flush=True)
            results, last = [], None
            for item in stream(scene, frames, sinks=sinks, record=record, realtime=args.realtime, loop=args.loop):
                if item.pass_index == 0:
                    results.append(item.result.to_dict())
                    last = item
    finally:  # Ctrl-C (and SIGTERM, turned into it) leaves through main: outputs closed above, exit 130
        if on_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    if render is not None:
        from .render import save_scene

        save_scene(render, last.points, last.result.objects, up_axis=rec.config.up_axis)
    extra = {"mcap": str(mcap)} if mcap is not None else {}
    if source.sequence:
        return {"file": str(args.input), "topic": source.topic, "frames": results, **extra}
    return {"file": str(args.input), "objects": results[0]["objects"], "timings": results[0]["timings"], **extra}


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
    from .images import load_image, load_mask
    from .regions import classify_region

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
    from .images import load_image
    from .regions import rank_boxes

    image = load_image(args.image)
    boxes = [parse_box(b) for b in args.boxes.split(";") if b.strip()]
    if not boxes:
        raise InputError("no candidate boxes: give --boxes 'x0,y0,x1,y1;...'")
    for b in boxes:
        check_box(b, image.width, image.height)
    model = load_model(args)
    preds = rank_boxes(model, image, boxes, args.caption, prompt=args.prompt)
    return {"file": str(args.image), "caption": args.caption, "predictions": _predictions(preds)}


# ---- few-shot ------------------------------------------------------------------------------------------
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


@command("fewshot build", "cache a few labelled examples per label for few-shot recognition", _fewshot_build_args,
         _print_fewshot_build)
def run_fewshot_build(args) -> dict:
    from .datasets import open_dataset
    from .fewshot import build_from_dataset, save_cache
    from .files import check_output, run_inputs
    from .recognize import Recognizer

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
            "adapter": cache.adapter is not None}


# ---- evaluation ----------------------------------------------------------------------------------------
def _evaluate_args(p):
    p.add_argument("--dataset", required=True,
                   help="modelnet40, modelnet10, scanobjectnn[-obj_only|-obj_bg|-pb_t50_rs], folder, shapenetpart "
                        "(part segmentation), or refcoco, refcoco+, refcocog (referring expressions; --root: COCO "
                        "train2014 images)")
    p.add_argument("--root", required=True, help="folder holding the dataset's release")
    p.add_argument("--split", default="test", choices=("test", "train"))
    p.add_argument("--limit", type=bounded_int(1, 10**9), help="the first N objects only")
    p.add_argument("--compare", action="store_true", help="FALIP and the plain-CLIP baseline from the same views "
                   "(shapenetpart: tokens and clearclip dense features)")
    g = p.add_argument_group("part segmentation (--dataset shapenetpart; --preset defaults to pointfalip_parts)")
    g.add_argument("--category", help="one ShapeNetPart category only, e.g. chair")
    g.add_argument("--dense", choices=("tokens", "clearclip"), help="dense features (default: the preset's)")
    g = p.add_argument_group("referring expressions (--dataset refcoco|refcoco+|refcocog)")
    g.add_argument("--annotations", metavar="F.jsonl", help="ReCLIP's jsonl of the split (required)")
    g.add_argument("--detections", metavar="D.json", help="ReCLIP's detector boxes (default: the gold boxes)")
    g.add_argument("--prompts", default="falip", help="comma-separated runs of falip, crop, blur, circle, shade; "
                   "'+' sums representations, e.g. falip,crop+blur (default %(default)s)")
    p.add_argument("--batch-size", type=bounded_int(1, 4096), default=16,
                   help="objects (REC: images) per batch (default %(default)s)")
    p.add_argument("--out", help="report path, .json (default evaluate_<dataset>.json); the confusion PNG goes beside it")
    g = p.add_argument_group("few-shot protocol (K examples per class from the train split, several seeds)")
    g.add_argument("--shots", type=bounded_int(1, 10_000), help="examples per class for a few-shot cache per seed")
    g.add_argument("--seeds", type=seed_list, default=[1],
                   help="comma-separated seeds of the example draws, each in [0, 2^31) (default 1)")
    g.add_argument("--train-root", help="folder of the release's train split (default --root)")
    recognizer_args(p, up_default="the dataset's", preset_help=f"configs/presets name or YAML file (default "
                    f"{DEFAULT_PRESET}; shapenetpart: a configs/parts name, default pointfalip_parts)")
    model_args(p)


_EVALUATE_ROWS = 40  # classes listed on screen; the report holds them all


def _print_evaluate(report: dict) -> None:
    if report.get("task") == "part segmentation":
        return _print_part_evaluation(report)
    if report.get("task") == "referring expressions":
        from .refcoco import summary

        return print(summary(report))
    runs = list(report["runs"])
    w = max(10, max(len(r) for r in runs) + 2)  # column width
    print(f"pointfalip evaluate — {report['dataset']} ({report['split']}): {report['n']} objects, "
          f"{len(report['skipped'])} skipped — {report['model']} ({report['pretrained']}), preset {report['preset']}")
    print(f"{'':<20}" + "".join(f"{r:>{w}}" for r in runs))
    for key, name in (("overall_accuracy", "overall"), ("mean_class_accuracy", "mean class")):
        print(f"{name:<20}" + "".join(f"{report['runs'][r][key]:>{w}.2%}" for r in runs))
        if any(f"{key}_std" in report["runs"][r] for r in runs):
            print(f"{'  ± over seeds':<20}" + "".join(
                f"{report['runs'][r][key + '_std']:>{w}.2%}" if f"{key}_std" in report["runs"][r] else f"{'':>{w}}"
                for r in runs))
    print(f"{'class':<20}" + "".join(f"{r:>{w}}" for r in runs) + f"{'n':>6}")
    confusion = report["runs"][runs[0]]["confusion"]
    present = [(k, c) for k, c in enumerate(report["classes"]) if sum(confusion[k])]
    for k, c in present[:_EVALUATE_ROWS]:
        print(f"{c[:19]:<20}" + "".join(f"{report['runs'][r]['per_class'][c]:>{w}.1%}" for r in runs)
              + f"{sum(confusion[k]):>6}")
    if len(present) > _EVALUATE_ROWS:
        print(f"... and {len(present) - _EVALUATE_ROWS} more classes in the report")
    print(f"report: {report['report']}   confusion matrix: {report['confusion_png']}")


@command("evaluate", "accuracy on a 3D test set (ModelNet40/10, ScanObjectNN, a folder; few-shot with --shots) or "
         "part IoU on ShapeNetPart", _evaluate_args,
         _print_evaluate)
def run_evaluate(args) -> dict:
    from .datasets import is_part_dataset, open_dataset
    from .evaluate import default_report_path, distributed, evaluate, run_names

    if args.dataset.lower() in ("refcoco", "refcoco+", "refcocog"):
        return _evaluate_rec(args)
    if args.annotations or args.detections or args.prompts != "falip":
        raise InputError("--annotations, --detections and --prompts apply to --dataset refcoco|refcoco+|refcocog")
    if is_part_dataset(args.dataset):
        return _evaluate_parts(args)
    if args.category or args.dense:
        raise InputError("--category and --dense apply to --dataset shapenetpart (part segmentation) only")
    run_names(args.compare, args.falip, bool(args.fewshot))  # refuse bad combinations before reading anything
    if args.out:
        _check_report_outputs(args, args.out)
    dataset = open_dataset(args.dataset, args.root, split=args.split, limit=args.limit, num_points=args.num_points,
                           up_axis=args.up_axis)
    out = _check_report_outputs(args, args.out or default_report_path(dataset.name))
    protocol = {}
    if args.shots is not None:
        seeds = args.seeds
        train_split = "test" if args.dataset.lower() == "folder" else "train"
        train = open_dataset(args.dataset, args.train_root or args.root, split=train_split,
                             num_points=args.num_points, up_axis=args.up_axis)
        protocol = {"shots": args.shots, "seeds": seeds, "train_dataset": train}
    with distributed(args.device) as device:  # torchrun: one shard of the batches per rank
        args.device = device
        model = load_model(args)
        options = recognizer_options(args)
        preset = options.pop("preset")
        report = evaluate(model, dataset, preset=preset, compare=args.compare, batch_size=args.batch_size,
                          out=out, **protocol, **options)
    if int(os.environ.get("RANK", "0")) != 0:  # every rank holds the report; rank 0 alone prints it
        sys.stdout = open(os.devnull, "w")
    return report


def _check_report_outputs(args, out) -> Path:
    """The report path of an evaluation and every file it writes beside it (the confusion matrix or the
    per-point predictions, the resume folder), checked before any work: none may be an input of the run."""
    from .batches import check_report_path, partial_path
    from .datasets import is_part_dataset
    from .evaluate import confusion_path
    from .evaluate_parts import predictions_path
    from .files import check_output, run_inputs

    inputs = run_inputs(args)
    out = check_output(out, "--out", inputs=inputs, suffixes=(".json",))
    if is_part_dataset(args.dataset):
        check_output(predictions_path(out), "the predictions file beside --out", inputs=inputs)
    else:
        check_output(confusion_path(out), "the confusion-matrix picture beside --out", inputs=inputs)
    partial = partial_path(out)
    for source in inputs:
        if os.path.realpath(source) == os.path.realpath(partial):
            raise InputError(f"{partial}, where --out keeps its resume cache, is an input of this run")
    if int(os.environ.get("RANK", "0")) == 0:  # other torchrun ranks could see rank 0 making the cache folder
        check_report_path(out)
    return out


def _evaluate_rec(args) -> dict:
    """`evaluate --dataset refcoco|refcoco+|refcocog`: referring expressions (pointfalip.refcoco)."""
    from .batches import check_report_path
    from .evaluate import default_report_path, distributed
    from .files import check_output, run_inputs
    from .refcoco import evaluate_rec, open_rec_dataset, parse_runs

    unused = [flag for flag, value in (("--compare", args.compare), ("--no-falip", not args.falip),
                                       ("--projection", args.projection), ("--prompt-file", args.prompt_file),
                                       ("--fewshot", args.fewshot), ("--shots", args.shots),
                                       ("--category", args.category), ("--dense", args.dense)) if value]
    if unused:
        raise InputError(f"{', '.join(unused)} do(es) not apply to referring expressions; choose the "
                         "representations with --prompts")
    if not args.annotations:
        raise InputError(f"--dataset {args.dataset} needs --annotations F.jsonl (ReCLIP's file of the split)")
    runs = parse_runs(args.prompts)
    name = args.dataset.lower()
    out = check_output(args.out or default_report_path(name), "--out", suffixes=(".json",), inputs=run_inputs(args))
    if int(os.environ.get("RANK", "0")) == 0:  # other torchrun ranks could see rank 0 making the cache folder
        check_report_path(out)
    dataset = open_rec_dataset(name, args.root, args.annotations, args.detections, limit=args.limit)
    with distributed(args.device) as device:
        args.device = device
        args.precision = args.precision or "auto"
        model = load_model(args)
        report = evaluate_rec(model, dataset, runs, out=out, batch_size=args.batch_size)
    if int(os.environ.get("RANK", "0")) != 0:
        sys.stdout = open(os.devnull, "w")
    return report


def _evaluate_parts(args) -> dict:
    """`evaluate --dataset shapenetpart`: zero-shot part segmentation (pointfalip.evaluate_parts)."""
    from .datasets import open_dataset
    from .evaluate import distributed
    from .evaluate_parts import evaluate_parts, part_report_path, part_runs
    from .parts import DEFAULT_PRESET as DEFAULT_PART_PRESET
    from .parts import list_part_presets, load_part_preset

    classification_only = (("--projection", args.projection), ("--no-falip", not args.falip),
                           ("--prompt-file", args.prompt_file), ("--fewshot", getattr(args, "fewshot", None)),
                           ("--shots", getattr(args, "shots", None)))
    unused = [flag for flag, value in classification_only if value]
    if unused:
        raise InputError(f"{', '.join(unused)} do(es) not apply to part segmentation (--dataset shapenetpart); "
                         "set its options in a parts preset")
    preset = args.preset or DEFAULT_PART_PRESET  # --preset pointclip_v2 gives V2's own, pointclip_v2_parts
    if preset in list_part_presets() or preset.endswith((".yaml", ".yml")) or os.path.exists(preset):
        settings = load_part_preset(preset)
    elif f"{preset}_parts" in list_part_presets():
        preset = f"{preset}_parts"
        settings = load_part_preset(preset)
    else:
        raise InputError(f"'{preset}' is not a parts preset: choose one of {', '.join(list_part_presets())} "
                         "or a YAML file")
    part_runs(args.compare, args.dense, settings)
    if args.out:
        _check_report_outputs(args, args.out)
    dataset = open_dataset("shapenetpart", args.root, split=args.split, num_points=args.num_points,
                           up_axis=args.up_axis).restrict(args.category, args.limit)
    out = _check_report_outputs(args, args.out or part_report_path(dataset.category))
    with distributed(args.device) as device:
        args.device = device
        if args.precision is None:
            args.precision = settings.precision
        model = load_model(args)
        report = evaluate_parts(model, dataset, preset=preset, dense=args.dense, compare=args.compare,
                                batch_size=args.batch_size, out=out)
    if int(os.environ.get("RANK", "0")) != 0:
        sys.stdout = open(os.devnull, "w")
    return report


def _print_part_evaluation(report: dict) -> None:
    runs = list(report["runs"])
    w = max(10, max(len(r) for r in runs) + 2)
    print(f"pointfalip evaluate — {report['dataset']} ({report['split']}): {report['n']} shapes, part segmentation "
          f"— {report['model']} ({report['pretrained']}), preset {report['preset']}")
    print(f"{'category (IoU)':<20}" + "".join(f"{r:>{w}}" for r in runs) + f"{'n':>6}")
    for c, info in report["categories"].items():
        print(f"{c[:19]:<20}" + "".join(f"{report['runs'][r]['per_category'][c]:>{w}.1%}" for r in runs)
              + f"{info['n']:>6}")
    for key, name in (("instance_miou", "instance mIoU"), ("class_miou", "class mIoU"), ("accuracy", "accuracy")):
        print(f"{name:<20}" + "".join(f"{report['runs'][r][key]:>{w}.1%}" for r in runs))
    print(f"report: {report['report']}   predictions: {report['predictions']}")


# ---- main ----------------------------------------------------------------------------------------------
class _Held(logging.Handler):
    """Our warnings (Python warnings and log records) held until the command ends: shown, one line each, when it
    succeeds; dropped when a user error ends it, so that the error stays one line. Third-party warnings (numpy,
    PIL, open3d) stay quiet."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def _add(self, text: str) -> None:
        text = " ".join(text.split())
        if text and text not in self.lines:
            self.lines.append(text)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] == "pointfalip":
            self._add(f"pointfalip: warning: {record.getMessage()}")

    def show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if text.startswith("pointfalip:"):
            self._add(text)
        else:
            log.debug("%s: %s", category.__name__, text)

    def flush_lines(self) -> None:
        for text in self.lines:
            print(text, file=sys.stderr)


def _non_finite(value, where: str = "the top") -> Optional[str]:
    """Where in a result (a JSON path such as ``[0].predictions[1].score``) the first NaN or infinity lies, None
    when every number is finite."""
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) \
        else ()
    for key, item in items:
        found = _non_finite(item, f"{'' if where == 'the top' else where}" + (f".{key}" if isinstance(key, str)
                                                                              else f"[{key}]"))
        if found is not None:
            return found
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (one line on stderr, exit 2)
        return e.code if isinstance(e.code, int) else 0
    held = _Held()
    root = logging.getLogger()
    ours = logging.getLogger("pointfalip")
    saved = (root.level, list(root.handlers), ours.level)
    root.handlers = [held]
    if args.verbose:  # what the model saw, timings: shown as it happens
        verbose = logging.StreamHandler(sys.stderr)
        verbose.setFormatter(logging.Formatter("%(message)s"))
        verbose.setLevel(logging.INFO)
        verbose.addFilter(lambda record: record.levelno < logging.WARNING)
        root.handlers.append(verbose)
        root.setLevel(logging.INFO)
    else:  # third-party chatter (open_clip logs download failures on the root logger) stays quiet
        root.setLevel(logging.CRITICAL)
        ours.setLevel(logging.WARNING)
    logging.getLogger("huggingface_hub").setLevel(logging.CRITICAL)  # its download retries log their own lines
    cmd = COMMANDS[args.command]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = held.show_warning
            try:
                result = cmd.run(args)
            except InputError as e:
                print(f"pointfalip {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"pointfalip {args.command}: interrupted", file=sys.stderr)
                return 130
    finally:
        forget_pipes()
        root.setLevel(saved[0])
        root.handlers = saved[1]
        ours.setLevel(saved[2])
    bad = _non_finite(result)
    if bad is not None:  # garbage that passed every check: say so instead of printing nan, and print nothing
        print(f"pointfalip {args.command}: error: the result holds a non-finite number at {bad}; nothing was "
              "printed (please report this with the command line)", file=sys.stderr)
        return 1
    held.flush_lines()
    try:
        if args.json or cmd.printer is None:
            text = json.dumps(result, indent=2, allow_nan=False)  # whole before the first byte goes out
            print(text)
        else:
            cmd.printer(result)
        sys.stdout.flush()
    except BrokenPipeError:  # `pointfalip ... --json | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
