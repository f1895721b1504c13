"""Seconds a ScanNet v2 scene costs in `pointfalip evaluate --dataset scannet`, by stage, and what the 312 scenes of the
val split would take (not a test).

    python bench/bench_scannet.py [--model ViT-B-16] [--vertices 50000] [--proposals segment] [--repeats 1]
                                  [--device cpu] [--precision fp32]

A synthetic room in ScanNet's layout, written to a temporary folder: a 6 m x 5 m floor, two 2.5 m walls and 14
furniture boxes (chairs, tables, a bed, cabinets, a sofa) whose surfaces hold the vertices, about as densely as a
``_vh_clean_2.ply`` (``--vertices`` in all), one segment and one annotated instance each. Stages per scene: reading
the scene (mesh, segments, aggregation, alignment), the class-agnostic proposals (``segment``: the project's scene
segmentation with the ``room`` preset; ``gt``: the annotated instances), projection and encoder (the recognizer's own
timings over every proposal, `DEFAULT_PROPOSAL_POINTS` vertices each), and the metrics (`scene_matches`). Stages are
the best of ``--repeats``. Random weights: timing does not depend on the weights' values.
"""
import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import trimesh

from common import cpu_name

from pointfalip import Recognizer, load_model
from pointfalip import scannet

VAL_SCENES = 312
ROOM = (6.0, 5.0, 2.5)  # metres: floor x, floor y, wall height
FURNITURE = [  # raw label, NYU40 label in the table, centre (x, y), size (dx, dy, dz)
    ("chair", 5, (1.0, 1.0), (0.5, 0.5, 0.9)), ("chair", 5, (1.8, 1.0), (0.5, 0.5, 0.9)),
    ("chair", 5, (1.0, 2.6), (0.5, 0.5, 0.9)), ("chair", 5, (1.8, 2.6), (0.5, 0.5, 0.9)),
    ("table", 7, (1.4, 1.8), (1.4, 0.8, 0.75)), ("table", 7, (4.6, 4.2), (0.8, 0.6, 0.7)),
    ("bed", 4, (4.6, 1.4), (1.6, 2.0, 0.6)), ("cabinet", 3, (0.4, 4.5), (0.6, 0.5, 1.2)),
    ("cabinet", 3, (1.3, 4.5), (0.6, 0.5, 1.2)), ("sofa", 6, (3.0, 4.4), (1.8, 0.8, 0.8)),
    ("desk", 14, (5.6, 3.4), (0.6, 1.2, 0.75)), ("toilet", 33, (3.2, 0.4), (0.4, 0.6, 0.8)),
    ("bookshelf", 10, (0.3, 3.3), (0.35, 0.8, 1.8)), ("door", 8, (5.95, 0.8), (0.05, 0.9, 2.0)),
]
STRUCTURE = [("floor", 2), ("wall", 1)]


def box_surface(lo, hi, n, rng):
    """n points uniformly on the five faces of a box without its bottom."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    d = hi - lo
    faces = [(0, 1, hi[2]), (0, 2, lo[1]), (0, 2, hi[1]), (1, 2, lo[0]), (1, 2, hi[0])]  # (axis a, axis b, fixed)
    areas = np.array([d[a] * d[b] for a, b, _ in faces])
    which = rng.choice(len(faces), n, p=areas / areas.sum())
    pts = lo + rng.random((n, 3)) * d
    for k, (a, b, value) in enumerate(faces):
        fixed = 3 - a - b
        pts[which == k, fixed] = value
    return pts


def room(num_vertices, seed=0):
    """Vertices, segment ids, aggregation groups and a NYU40 label table of the synthetic room: vertices spread
    over the surfaces by area, one segment and one group per part (floor, walls, each piece of furniture)."""
    rng = np.random.default_rng(seed)
    x, y, h = ROOM
    areas = np.array([x * y, (x + y) * h] + [dx * dy + 2 * (dx + dy) * dz for *_, (dx, dy, dz) in FURNITURE])
    counts = np.floor(num_vertices * areas / areas.sum()).astype(int)
    counts[0] += num_vertices - counts.sum()
    floor = np.c_[rng.random(counts[0]) * x, rng.random(counts[0]) * y, np.zeros(counts[0])]
    t = rng.random(counts[1]) * (x + y)
    wall = np.c_[np.where(t < x, t, 0.0), np.where(t < x, y, t - x), rng.random(counts[1]) * h]
    parts = [("floor", floor), ("wall", wall)]
    for (label, _, (cx, cy), (dx, dy, dz)), n in zip(FURNITURE, counts[2:]):
        parts.append((label, box_surface((cx - dx / 2, cy - dy / 2, 0.0), (cx + dx / 2, cy + dy / 2, dz), n, rng)))
    vertices = np.concatenate([p for _, p in parts]).astype(np.float32)
    segments = np.concatenate([np.full(len(p), k) for k, (_, p) in enumerate(parts)])
    groups = [{"id": k, "objectId": k, "label": label, "segments": [k]} for k, (label, _) in enumerate(parts)]
    table = dict(STRUCTURE + [(label, nyu) for label, nyu, _, _ in FURNITURE])
    return vertices, segments, groups, table


def write_release(root: Path, num_vertices: int, scene="scene0000_00") -> None:
    vertices, segments, groups, table = room(num_vertices)
    d = root / "scans" / scene
    d.mkdir(parents=True)
    n = len(vertices)
    faces = np.arange(n - n % 3).reshape(-1, 3)
    colors = np.c_[np.full((n, 3), 128), np.full(n, 255)].astype(np.uint8)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)
    (d / f"{scene}_vh_clean_2.ply").write_bytes(mesh.export(file_type="ply", encoding="binary"))
    (d / f"{scene}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": segments.tolist()}))
    (d / f"{scene}.aggregation.json").write_text(json.dumps({"segGroups": groups}))
    (d / f"{scene}.txt").write_text("axisAlignment = 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1\n")
    (root / "scannetv2-labels.combined.tsv").write_text(
        "raw_category\tnyu40id\n" + "".join(f"{k}\t{v}\n" for k, v in table.items()))
    (root / "scannetv2_val.txt").write_text(scene + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--vertices", type=int, default=50_000)
    ap.add_argument("--proposals", default="segment", choices=["segment", "gt"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.model, pretrained="none", device=args.device, precision=args.precision)
    rec = Recognizer(model, labels=scannet.benchmark_labels(), up_axis="z")
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_release(root, args.vertices)
        ds = scannet.open_scannet(root)
        for _ in range(args.repeats):
            times = {}
            t0 = time.perf_counter()
            scene = ds.scene(0)
            times["read scene"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            masks = scannet.propose(scene, args.proposals)
            times[f"proposals ({args.proposals})"] = time.perf_counter() - t0
            clouds, kept = scannet.proposal_clouds(scene, masks)
            projection = encoder = 0.0
            probs, views = [], 0
            for start in range(0, len(clouds), 64):
                feats = rec.embed(clouds[start:start + 64])
                projection += rec.last_timings["projection"]
                encoder += rec.last_timings["encoder"]
                probs.append(rec.probabilities(rec.logits(feats)).float().cpu().numpy())
                views += feats.shape[0] * feats.shape[1]
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times["projection"], times["encoder"] = projection, encoder
            t0 = time.perf_counter()
            preds = scannet.label_proposals(masks, kept, np.concatenate(probs), scannet.label_ids_for(rec.labels))
            scannet.scene_matches(scene, preds)
            times["labels + metrics"] = time.perf_counter() - t0
            best = {k: min(v, best.get(k, v)) for k, v in times.items()}
    total = sum(best.values())
    device = cpu_name() if args.device == "cpu" else torch.cuda.get_device_name(0)
    print(f"ScanNet scene cost — {args.model} random weights, {args.precision}, {args.device} ({device}, "
          f"{torch.get_num_threads()} threads); {scene.num_vertices} vertices, {len(masks)} proposals "
          f"({len(kept)} recognised, {len(FURNITURE)} furniture objects), {len(rec.labels)} labels, "
          f"{views} views; best of {args.repeats}")
    print(f"{'stage':<22}{'s/scene':>10}{'share':>8}")
    for k, v in best.items():
        print(f"{k:<22}{v:>10.2f}{v / total:>8.1%}")
    print(f"{'total':<22}{total:>10.2f}")
    print(f"ScanNet val ({VAL_SCENES} scenes) at this rate: {total * VAL_SCENES / 3600:.2f} h")


if __name__ == "__main__":
    main()
