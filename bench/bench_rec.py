"""Benchmark: expressions/s of `pointfalip evaluate --dataset refcoco` against the per-expression loop (CPU bf16).

The reference (ReCLIP / FALIP ``main.py``) builds and encodes every representation of every candidate box once per
expression, and encodes the caption each time. `refcoco.evaluate_rec` reads each image once, encodes each
representation of each distinct box once for all the expressions that refer to the image, and caches text
features per caption. Both go through the same `refcoco.encode_boxes`, so the ratio is the grouping alone.

Data: generated images (COCO-sized, 640x480) in ReCLIP's jsonl layout, each with ``--boxes`` gold boxes and
``--lines`` referred objects of 2-3 sentences (RefCOCO testA averages 2.6 objects and 7.5 sentences per image).
Model: ViT-B-16 with random weights (``pretrained="none"``; timing does not depend on the weights), bf16.

Rows: --prompts falip (grouped vs the per-expression loop); the five representations in one run vs five separate
runs (and vs the per-expression loop); the largest score difference between grouped and loop (rounding only).

    python bench/bench_rec.py [--images 2] [--boxes 6] [--lines 3] [--model ViT-B-16] [--threads N] [--repeats 3]
                             [--with-loop-all]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_name  # noqa: E402

from pointfalip import load_model, refcoco  # noqa: E402
from pointfalip.images import load_image  # noqa: E402

ALL = ("falip", "crop", "blur", "circle", "shade")
SENTENCES = (3, 2, 3, 2, 2)  # sentences of the referred objects of an image, in turn


def make_data(folder: Path, images: int, boxes: int, lines: int, seed: int = 0) -> Path:
    """COCO-named 640x480 images with coloured rectangles and a ReCLIP jsonl referring to them."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir()
    rows = []
    for i in range(1, images + 1):
        picture = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(picture)
        anns = []
        for k in range(boxes):
            w, h = rng.uniform(40, 300), rng.uniform(40, 240)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            draw.rectangle([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
            anns.append({"bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "id": i * 100 + k})
        picture.save(folder / "images" / f"COCO_train2014_{i:012d}.jpg", quality=90)
        for j in range(lines):
            target = anns[j % boxes]["id"]
            rows.append({"file_name": f"COCO_train2014_{i:012d}_{target}.jpg", "image_id": i, "anns": anns,
                         "ann_id": target, "sentences": [{"raw": f"the object number {j} variant {s} in image {i}"}
                                                         for s in range(SENTENCES[j % len(SENTENCES)])]})
    path = folder / "refs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def per_expression_loop(model, dataset, runs) -> dict:
    """The reference's loop: per expression, read the image, encode every representation of every candidate box
    and the caption. Returns {run: [scores per expression]}."""
    out = {r: [] for r in runs}
    for x in dataset.expressions:
        item = dataset.images[x.image]
        image = load_image(item.path, upright=False)
        boxes = [item.boxes[c] for c in x.candidates]
        reps = {rep for r in runs for rep in refcoco.representations_of(r)}
        feats = {rep: refcoco.encode_boxes(model, image, boxes, rep) for rep in reps}
        for r in runs:
            with torch.inference_mode():
                text = model.encode_text([refcoco.caption(x.text, r)], normalize=True)[0]
            out[r].append(refcoco.box_scores(model, feats, text, r, range(len(boxes))))
    return out


def interleaved(configs: dict, rounds: int) -> tuple[dict, dict, dict]:
    """Best wall and CPU (process) time of each config over ``rounds`` rounds that run every config once in turn,
    so that a burst of load from other processes on a shared machine spreads over all of them; the last results."""
    wall = {k: float("inf") for k in configs}
    cpu = dict(wall)
    results = {}
    for _ in range(rounds):
        for name, fn in configs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn()
            wall[name] = min(wall[name], time.perf_counter() - w0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    return wall, cpu, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--boxes", type=int, default=6)
    ap.add_argument("--lines", type=int, default=3)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each row is its best round")
    ap.add_argument("--with-loop-all", action="store_true", help="also time the five representations' loop (long)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.model, pretrained="none", precision=args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        annotations = make_data(tmp, args.images, args.boxes, args.lines)
        dataset = refcoco.open_rec_dataset("refcoco", tmp / "images", annotations)
        n = len(dataset.expressions)

        def grouped(runs, name):
            return refcoco.evaluate_rec(model, dataset, runs, out=tmp / f"{name}.json", progress=False)

        refcoco.encode_boxes(model, load_image(dataset.images[0].path), dataset.images[0].boxes[:1], "falip")  # warm
        configs = {"falip": lambda: grouped("falip", "falip"),
                   "loop falip": lambda: per_expression_loop(model, dataset, ("falip",)),
                   "all": lambda: grouped(",".join(ALL), "all"),
                   "separate": lambda: [grouped(r, f"sep_{r}") for r in ALL]}
        if args.with_loop_all:
            configs["loop all"] = lambda: per_expression_loop(model, dataset, ALL)
        wall, cpu, res = interleaved(configs, args.repeats)

    pairs = [(res["falip"], res["loop falip"])] + ([(res["all"], res["loop all"])] if "loop all" in res else [])
    diff = max(float(np.abs(np.asarray(p["scores"]) - s).max())
               for report, loop in pairs for r in loop for p, s in zip(report["runs"][r]["predictions"], loop[r]))
    same = sum(p["pred"] == int(np.argmax(s)) for p, s in zip(res["falip"]["runs"]["falip"]["predictions"],
                                                             res["loop falip"]["falip"]))
    print(f"pointfalip REC bench — {cpu_name()}, {torch.get_num_threads()} threads, {args.model} random weights, "
          f"{args.precision}, best of {args.repeats} interleaved rounds")
    print(f"{args.images} images of 640x480, {args.boxes} gold boxes each, {n} expressions "
          f"({n / args.images:.1f} per image)\n")
    print(f"{'':<44}{'wall s':>8}{'expr/s':>9}{'speed-up':>10}{'CPU s':>8}{'speed-up':>10}")
    rows = [("falip, grouped by image (evaluate)", "falip", "loop falip"),
            ("falip, per-expression loop (reference)", "loop falip", "loop falip"),
            ("five representations, one run", "all", "separate"),
            ("five representations, five separate runs", "separate", "separate")]
    if "loop all" in wall:
        rows.append(("five representations, per-expression loop", "loop all", "separate"))
    for name, key, base in rows:
        print(f"{name:<44}{wall[key]:>8.2f}{n / wall[key]:>9.2f}{wall[base] / wall[key]:>9.2f}x"
              f"{cpu[key]:>8.2f}{cpu[base] / cpu[key]:>9.2f}x")
    print("\nspeed-up (wall, CPU): falip grouped vs its loop; one run and the loop vs five separate runs")
    print(f"largest score difference, grouped vs per-expression loop: {diff:.2e} (logit units; {args.precision} "
          f"rounding of other batch shapes), same falip prediction for {same}/{n} expressions")


if __name__ == "__main__":
    main()
