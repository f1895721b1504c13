"""`scene`: frames of a scene (point file, depth image, ROS 2 bag) in, recognised objects out."""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import InputError
from .options import (DEFAULT_PRESET, MAX_POINTS, bounded_float, bounded_int, label_args, metres_type, model_args,
                      read_labels, recognizer_args, subcommand, top_k_type)

log = logging.getLogger("pointfalip")

def _intrinsics(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' must be four numbers fx,fy,cx,cy") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"'{text}' must be four numbers fx,fy,cx,cy, got {len(values)}")
    return values


def scene_settings_args(p, track_help: str, up_default: str) -> None:
    """The options of a `SceneSettings` (read back by `scene_settings`): labels, the segmentation and tracking
    preset with its overrides, tracking, reuse, top-k, the recognizer and the model. `pointfalip scene` and
    `pointfalip ros2` both take them."""
    label_args(p)
    p.add_argument("--scene-preset", default="tabletop",
                   help="segmentation and tracking preset of configs/scene.yaml: tabletop or room")
    p.add_argument("--voxel-size", type=metres_type, help="metres")
    p.add_argument("--cluster-tolerance", type=metres_type, help="metres (DBSCAN eps)")
    p.add_argument("--plane-distance", type=metres_type, help="metres")
    p.add_argument("--min-object-points", type=bounded_int(1, MAX_POINTS))
    p.add_argument("--max-object-points", type=bounded_int(1, MAX_POINTS))
    p.add_argument("--no-track", action="store_true", help=track_help)
    p.add_argument("--top-k", type=top_k_type, default=3)
    p.add_argument("--no-reuse", action="store_true",
                   help="encode every object in every frame (by default a tracked object whose cloud barely changed "
                        "keeps its view features)")
    recognizer_args(p, up_default=up_default)
    model_args(p)


def _scene_args(p):
    p.add_argument("input", metavar="INPUT", help="point file, depth image (.png/.tif/.npy) or rosbag2 folder/.db3/.mcap")
    p.add_argument("--topic", help="PointCloud2 topic of a bag (default: its only one)")
    p.add_argument("--intrinsics", type=_intrinsics, help="fx,fy,cx,cy of a depth image")
    p.add_argument("--depth-scale", type=bounded_float(1e-6, 1e9),
                   help="raw depth units per metre (default 1000 for 16-bit)")
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
    scene_settings_args(p, track_help="no object ids across frames (a bag's objects are tracked unless this is given)",
                        up_default="z; -y for depth images")


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
    for key in ("mcap", "render"):
        if result.get(key):
            print(f"wrote {result[key]}")


@subcommand("scene", "segment a scene (point file, depth image or ROS 2 bag) and recognise each object", _scene_args,
         _print_scene)
def run_scene(args) -> dict:
    """Frames in, objects out (JSON, --render, --mcap, --serve), through `stream.stream`. Ctrl-C or SIGTERM: outputs
    cleaned up, exit 130."""
    import signal
    import threading
    from contextlib import ExitStack

    from ..files import IMAGE_SUFFIXES, check_output, run_inputs
    from ..sources import read_frames
    from ..stream import SceneOutputs, reopening, stream

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
        source, frames = reopening(lambda: read_frames(args.input, args.topic, intrinsics=args.intrinsics,
                                                       depth_scale=args.depth_scale, num_points=args.num_points))
        if args.up_axis is None:  # sensor frames: z-up robots and lidars; camera frames (depth images) have y down
            args.up_axis = source.up_axis
        settings = scene_settings(args, labels, dataset, track=source.sequence and not args.no_track)
        with ExitStack() as stack:
            outputs = SceneOutputs(stack, labels, serve=args.serve, port=args.port, host=args.host,
                                   announce=lambda line: print(f"pointfalip scene: {line}", file=sys.stderr,
                                                               flush=True))
            scene = settings.build()
            rec = scene.recognizer
            outputs.set_labels(rec.labels)
            if mcap is not None:
                outputs.record_to(mcap, rec.labels, metadata={
                    "input": str(args.input), "topic": source.topic or "", "model": str(args.model),
                    "pretrained": str(args.pretrained), "labels": ",".join(rec.labels)})
            if args.serve and not outputs.wait_for_viewer(args.wait):
                print(f"pointfalip scene: no viewer subscribed within {args.wait} s; streaming anyway",
                      file=sys.stderr, flush=True)
            # the picture is drawn when the first pass ends, before the recording gets its name: a failing
            # render leaves no recording behind
            record = ([_RenderLast(render, rec.config.up_axis)] if render is not None else []) + outputs.record
            results = []
            for item in stream(scene, frames, sinks=outputs.sinks, record=record, realtime=args.realtime,
                               loop=args.loop):
                if item.pass_index == 0:
                    results.append(item.result.to_dict())
    finally:  # Ctrl-C (and SIGTERM, turned into it) leaves through main: outputs closed above, exit 130
        if on_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    extra = {"mcap": str(mcap)} if mcap is not None else {}
    if render is not None:
        extra["render"] = str(render)
    if source.sequence:
        return {"file": str(args.input), "topic": source.topic, "frames": results, **extra}
    return {"file": str(args.input), "objects": results[0]["objects"], "timings": results[0]["timings"], **extra}


class _RenderLast:
    """A recording sink of `stream.stream` that draws the first pass's last frame (`render.save_scene`) when the
    pass ends."""

    def __init__(self, path, up_axis: str):
        self.path, self.up_axis, self.last = path, up_axis, None

    def log_frame(self, points, result, *, stamp_ns=None) -> None:
        self.last = (points, result)

    def close(self) -> None:
        from ..render import save_scene

        points, result = self.last
        save_scene(self.path, points, result.objects, up_axis=self.up_axis)


def scene_settings(args, labels, dataset, **fixed):
    """The `SceneSettings` a scene command line names (``fixed``: values the command decides itself)."""
    import dataclasses

    from ..scene import SceneSettings

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SceneSettings) if hasattr(args, f.name)}
    given.update(labels=labels, dataset=dataset, reuse=not args.no_reuse, preset=args.preset or DEFAULT_PRESET,
                 **fixed)
    return SceneSettings(**given)
