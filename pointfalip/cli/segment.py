"""`segment`: a part name for every point of a cloud."""
from __future__ import annotations

import logging
import os

from .. import io
from ..errors import InputError
from .options import (load_model, model_args, num_points_type, subcommand)

log = logging.getLogger("pointfalip")

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


@subcommand("segment", "zero-shot part segmentation: a part name for every point", _segment_args, _print_segment)
def run_segment(args) -> dict:
    import numpy as np

    from ..files import IMAGE_SUFFIXES, atomic_write, check_output, mark_ply, run_inputs, save_npy
    from ..parts import PartSegmenter, load_part_preset, resolve_parts
    from ..render import part_colors, save_part_sheet

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
    written = []  # a later output that fails takes the earlier ones with it: all of them or none
    try:
        if "output" in paths:
            import trimesh

            colors = np.concatenate([part_colors(len(seg.parts)), np.full((len(seg.parts), 1), 255, np.uint8)], axis=1)
            ply = trimesh.PointCloud(cloud, colors=colors[index]).export(file_type="ply")
            written.append(atomic_write(paths["output"], lambda f: f.write(mark_ply(ply))))
            result["output"] = str(written[-1])
        if "render" in paths:
            views = prediction.views
            v = views.images.shape[1]
            written.append(save_part_sheet(paths["render"], views.images[0], views.point_pixels[0], views.visible[0],
                                           labels, seg.parts, [f"view {i}" for i in range(v)]))
            result["render"] = str(written[-1])
        if "per_point" in paths:
            written.append(atomic_write(paths["per_point"], lambda f: save_npy(f, index)))
            result["per_point"] = str(written[-1])
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return result
