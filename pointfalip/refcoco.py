"""Referring-expression comprehension (RefCOCO, RefCOCO+, RefCOCOg) as FALIP's reference code evaluates it.

Input: ReCLIP's jsonl (one line per referred object: ``file_name``, ``image_id``, ``anns`` with COCO ``bbox``
``[x, y, w, h]`` and ``id``, ``ann_id`` (int, str or list) and ``sentences[].raw``) and, optionally, its detector
files (``{image_id: [[x, y, w, h], ...]}`` or ``[{"image_id", "box"}, ...]``). Without detections a line's ``anns``
are its candidate boxes; an image without detections gets the whole image as its one candidate, as ReCLIP does.

Protocol (pumpkin805/FALIP ``main.py``, ``Executor``, ``Environment.filter``, built on ReCLIP):

- the caption is ``a photo of <raw, lowercased>`` (plus " is in red color." in a run that includes ``shade``);
- the image is squashed to the model's square input (bicubic), not centre-cropped, and read as stored (no EXIF
  rotation); COCO file names lose their ``_<ann>`` suffix (``COCO_train2014_000000581857_16.jpg`` ->
  ``COCO_train2014_000000581857.jpg``);
- each candidate box is scored ``logit_scale · cos(image feature of its representation, caption)``; the
  representations of a run (``"crop+blur"``) are summed; a softmax over the boxes gives the probabilities and its
  argmax the prediction, correct when its IoU with a gold box (the ``anns`` whose ``id`` is in ``ann_id``) is > 0.5;
- representations (`REPRESENTATIONS`): ``falip`` (the whole image with FALIP's foveal bias from the box, by the
  reference's token rule, `foveal.from_box` with ``rule="reclip"``) and the pixel prompts of `visual_prompts`
  (crop, blur, circle, shade), each the reference's pixels.

Speed: every image is read and each representation of each of its distinct boxes encoded once, whatever the number
of lines and sentences that refer to it; text features are cached per caption. Batches are images (the unit of
resuming and of torchrun shards), run through `evaluate.run_batches`.

Report: ``runs[<name>] = {"accuracy", "correct", "predictions"}``, one prediction per expression in file order (line
order, then sentence order): ``file_name``, ``line``, ``text``, ``boxes`` ``[x0, y0, x1, y1]``, ``scores`` (the summed
``logit_scale · cos`` per box), ``probabilities``, ``pred``, ``gold`` (the candidates whose IoU with a gold box is
> 0.5: a prediction is correct exactly when it is one of them) and ``correct``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from . import __version__, foveal, regions, visual_prompts
from .errors import InputError, shown
from .batches import BatchCache, Report, TaskKind, check_batch_size, register_task, run_evaluation
from .files import check_text, data_identity, file_identity
from .images import load_image
from .metrics import box_iou_xywh
from .model import FalipCLIP

log = logging.getLogger(__name__)

DATASETS = ("refcoco", "refcoco+", "refcocog")
REPRESENTATIONS = ("falip", "crop", "blur", "circle", "shade")
_SUM_ORDER = ("falip", "circle", "crop", "blur", "shade")  # the reference's order of representations in a sum
CAPTION_TEMPLATE = "a photo of {}"  # main.py's default --text_prompt
IOU_THRESHOLD = 0.5  # correct when IoU > this
RESIZE_MODE = "squash"  # ReCLIP's square-size preprocessing (Resize((S, S)), bicubic)
BOX_RULE = "reclip"  # FALIP's token rule and float32 weights for the foveal box
JOIN = "+"  # representations summed in one run
_CACHE_VERSION = 1  # bump when the batch files' contents change
_ENCODE_CHUNK = 32  # boxes per encoder call
_COCO_NAME = re.compile(r"COCO_[a-z]+\d{4}_0*(\d+)\.jpg", re.IGNORECASE)  # a COCO image file: its id at the end

BoxXYWH = tuple[float, float, float, float]


# ---- data ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expression:
    """One sentence of one jsonl line: what to find among which boxes of its image."""

    line: int  # 1-based line of the jsonl
    file_name: str  # suffix stripped, relative to the image root
    text: str  # raw, lowercased
    image: int  # index into RecDataset.images
    candidates: tuple[int, ...]  # indices into that image's boxes, in the reference's order
    gold_boxes: tuple[BoxXYWH, ...]


@dataclass
class ImageItem:
    """One image and its distinct candidate boxes (every representation of each is encoded once)."""

    file_name: str
    path: Path
    size: tuple[int, int]  # (width, height) as stored
    boxes: list[BoxXYWH] = field(default_factory=list)
    expressions: list[int] = field(default_factory=list)

    def add_box(self, box: BoxXYWH) -> int:
        try:
            return self.boxes.index(box)
        except ValueError:
            self.boxes.append(box)
            return len(self.boxes) - 1


@dataclass
class RecDataset:
    """A REC split read and checked before any work: images in order of first use, expressions in file order."""

    name: str
    root: Path
    annotations: Path
    detections: Optional[Path]
    lines: int
    images: list[ImageItem]
    expressions: list[Expression]


def coco_file_name(name: str) -> str:
    """The image file of a ReCLIP line: COCO names end in ``_<ann>.jpg``, which the reference strips."""
    return "_".join(name.split("_")[:-1]) + ".jpg" if "coco" in name.lower() else name


def xyxy(box: BoxXYWH) -> tuple[float, float, float, float]:
    x, y, w, h = box
    return x, y, x + w, y + h


def iou_matrix(boxes: Sequence[BoxXYWH], gold: Sequence[BoxXYWH]) -> np.ndarray:
    """IoU (N, G) of ``[x, y, w, h]`` boxes, computed as ReCLIP's ``interpreter.iou`` (`metrics.box_iou_xywh`)."""
    return box_iou_xywh(boxes, gold)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _xywh(value, where: str) -> BoxXYWH:
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(_number(v) for v in value):
        raise InputError(f"{where}: a box must be four finite numbers [x, y, w, h], got {_short(value)}")
    return tuple(float(v) for v in value)


def _short(value) -> str:
    try:
        text = json.dumps(value, default=str)
    except (ValueError, RecursionError):
        text = repr(value)
    return shown(text, 60)


def _check_in_image(box: BoxXYWH, size: tuple[int, int], where: str) -> None:
    x, y, w, h = box
    for name, side in (("width", w), ("height", h)):
        if side <= 0:
            what = f"negative {name}" if side < 0 else f"zero {name} (zero area)"
            raise InputError(f"{where}: box [x, y, w, h] = {_short(list(box))} has {what}; a box needs a positive "
                             "width and height")
    try:
        foveal.check_box(xyxy(box), *size)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


def _image_size(path: Path, where: str) -> tuple[int, int]:
    """(width, height) from the file's header, as stored; a missing or unreadable image is an InputError."""
    if not path.is_file():
        raise InputError(f"{where}: image {path} does not exist" if not path.exists() else
                         f"{where}: image {path} is not a regular file")
    try:
        with Image.open(path) as im:
            return im.size
    except PermissionError:
        raise InputError(f"{where}: image {path}: permission denied") from None
    except Exception:  # noqa: BLE001 - Pillow raises many types for foreign files
        raise InputError(f"{where}: cannot read image {path}: not an image file") from None


def _read_json_lines(path: Path, limit: Optional[int]) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise InputError(f"annotations {path} do not exist" if not path.exists() else
                         f"annotations {path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"annotations {path} are not UTF-8 text") from None
    except PermissionError:
        raise InputError(f"annotations {path}: permission denied") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if limit is not None and len(rows) == limit:
            break
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise InputError(f"{path} line {number}: nests too deeply to be a ReCLIP line") from None
        if not isinstance(row, dict):
            raise InputError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    if not rows:
        raise InputError(f"annotations {path} hold no lines")
    return rows


def _image_key(value, where: str) -> int:
    try:
        if isinstance(value, bool) or isinstance(value, float):
            raise ValueError
        key = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: image_id must be an integer, got {_short(value)}") from None
    if key < 0:
        raise InputError(f"{where}: image_id {key} is negative; COCO's ids are positive")
    return key


def _coco_number(file_name: str) -> Optional[int]:
    """The image id a COCO file name spells (``COCO_train2014_000000581857.jpg`` -> 581857), None for others."""
    match = _COCO_NAME.fullmatch(Path(file_name).name)
    return int(match.group(1)) if match else None


def read_detections(path: Union[str, Path]) -> dict[int, list[BoxXYWH]]:
    """ReCLIP's detector file, either layout, as ``{image_id: [[x, y, w, h], ...]}``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"detections {path} do not exist" if not path.exists() else
                         f"detections {path} is not a regular file")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"detections {path}: not valid JSON ({getattr(e, 'msg', e)})") from None
    except RecursionError:
        raise InputError(f"detections {path}: nests too deeply to be a detector file") from None
    except PermissionError:
        raise InputError(f"detections {path}: permission denied") from None
    out: dict[int, list[BoxXYWH]] = {}
    if isinstance(data, dict):
        for key, boxes in data.items():
            where = f"detections {path}, image_id {key}"
            if not isinstance(boxes, list):
                raise InputError(f"{where}: expected a list of boxes, got {_short(boxes)}")
            out.setdefault(_image_key(key, where), []).extend(_xywh(b, f"{where}, box {k}")
                                                              for k, b in enumerate(boxes))
    elif isinstance(data, list):
        for k, det in enumerate(data):
            where = f"detections {path}, entry {k}"
            if not isinstance(det, dict) or "image_id" not in det or "box" not in det:
                raise InputError(f"{where}: expected {{\"image_id\": ..., \"box\": [x, y, w, h]}}, got {_short(det)}")
            out.setdefault(_image_key(det["image_id"], where), []).append(_xywh(det["box"], where))
    else:
        raise InputError(f"detections {path}: expected {{image_id: [boxes]}} or a list of {{image_id, box}}")
    return out


def open_rec_dataset(name: str, root: Union[str, Path], annotations: Union[str, Path],
                     detections: Union[str, Path, None] = None, limit: Optional[int] = None) -> RecDataset:
    """Read and check a REC split: every line, image header and box, before any work (one-line InputErrors).

    limit: the first N lines (referred objects) only.
    """
    if name not in DATASETS:
        raise InputError(f"unknown REC dataset '{name}': choose one of {', '.join(DATASETS)}")
    root, annotations = Path(root), Path(annotations)
    if not root.is_dir():
        raise InputError(f"image root {root} is not a folder" if root.exists() else
                         f"image root {root} does not exist")
    rows = _read_json_lines(annotations, limit)
    dets = read_detections(detections) if detections is not None else None
    images: dict[str, ImageItem] = {}
    positions: dict[str, int] = {}  # file name -> index of its image
    ids_of: dict[str, int] = {}  # file name -> its image_id
    expressions: list[Expression] = []
    for number, row in rows:
        where = f"{annotations} line {number}"
        for key in ("file_name", "image_id", "anns", "ann_id", "sentences"):
            if key not in row:
                raise InputError(f"{where}: no '{key}'")
        if not isinstance(row["file_name"], str) or not row["file_name"].strip():
            raise InputError(f"{where}: file_name must be a non-empty string")
        anns, sentences = row["anns"], row["sentences"]
        if not isinstance(anns, list) or not anns:
            raise InputError(f"{where}: the expression has no boxes ('anns' is empty or not a list)")
        if not isinstance(sentences, list) or not sentences:
            raise InputError(f"{where}: no sentences")
        texts = []
        for k, s in enumerate(sentences):
            if not isinstance(s, dict) or not isinstance(s.get("raw"), str) or not s["raw"].strip():
                raise InputError(f"{where}: sentence {k} has no 'raw' text")
            texts.append(check_text(s["raw"], f"{where}: sentence {k}").lower())
        ann_ids = row["ann_id"] if isinstance(row["ann_id"], list) else [row["ann_id"]]
        if not ann_ids or not all(_is_id(a) for a in ann_ids):
            raise InputError(f"{where}: ann_id must be an int, a non-empty string or a list of them, got "
                             f"{_short(row['ann_id'])}")
        boxes = []
        for k, ann in enumerate(anns):
            if not isinstance(ann, dict) or "bbox" not in ann or "id" not in ann:
                raise InputError(f"{where}: ann {k} needs 'bbox' and 'id'")
            if not _is_id(ann["id"]):
                raise InputError(f"{where}: ann {k} has id {_short(ann['id'])}; an id is an int or a non-empty "
                                 "string")
            boxes.append(_xywh(ann["bbox"], f"{where}, ann {k}"))
        ids = [ann["id"] for ann in anns]
        if len(set(ids)) != len(ids):
            twice = next(i for i in ids if ids.count(i) > 1)
            raise InputError(f"{where}: two anns have the id {_short(twice)}; the gold box would be ambiguous")
        gold = tuple(b for b, ann in zip(boxes, anns) if ann["id"] in ann_ids)
        if not gold:
            raise InputError(f"{where}: ann_id {_short(row['ann_id'])} matches none of the ids of its anns")
        file_name = coco_file_name(check_text(row["file_name"], f"{where}: file_name"))
        image_id = _image_key(row["image_id"], where)
        number = _coco_number(file_name)
        if number is not None and number != image_id:
            raise InputError(f"{where}: image_id {image_id} is not the id of {file_name} ({number}); the line "
                             "names two images")
        if ids_of.setdefault(file_name, image_id) != image_id:
            raise InputError(f"{where}: image_id {image_id} for {file_name}, which an earlier line gives the "
                             f"image_id {ids_of[file_name]}")
        item = images.get(file_name)
        if item is None:
            path = root / file_name
            item = images[file_name] = ImageItem(file_name, path, _image_size(path, where))
        for k, b in enumerate(boxes):
            _check_in_image(b, item.size, f"{where}, ann {k} ({file_name})")
        if dets is None:
            candidates = boxes
        else:
            candidates = dets.get(image_id) or [(0.0, 0.0, float(item.size[0]), float(item.size[1]))]
            for k, b in enumerate(candidates):
                _check_in_image(b, item.size, f"detections {detections}, image_id {image_id}, box {k} ({file_name})")
        index = positions.setdefault(file_name, len(positions))
        slots = tuple(item.add_box(b) for b in candidates)
        for text in texts:
            item.expressions.append(len(expressions))
            expressions.append(Expression(number, file_name, text, index, slots, gold))
    if dets is not None:
        _check_detections_match(detections, dets, set(ids_of.values()))
    return RecDataset(name, root, annotations, None if detections is None else Path(detections), len(rows),
                      list(images.values()), expressions)


def _check_detections_match(path, dets: dict, image_ids: set) -> None:
    """InputError when a detector file names none of the annotations' images (every expression would fall back
    to the whole image: a report of nothing); a warning when it misses some of them."""
    named = image_ids & set(dets)
    if not named:
        raise InputError(f"detections {path} name none of the {len(image_ids)} images of the annotations "
                         f"(detections' first image_id: {next(iter(dets), 'none')}, annotations' first: "
                         f"{min(image_ids)}); are they of another split?")
    if len(named) < len(image_ids):
        log.warning("detections %s name %d of the %d images of the annotations; the others take the whole image "
                    "as their one candidate", path, len(named), len(image_ids))


def _is_id(value) -> bool:
    """Whether ``value`` can be a COCO annotation id: an int, or a non-empty string."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and bool(value.strip()))


# ---- representations and runs --------------------------------------------------------------------------
def parse_runs(text: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """Run names from ``"falip,crop,crop+blur"`` (or a list): representations joined by ``+`` are summed."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    if not items or any(not t for t in items):
        raise InputError(f"--prompts '{text}': give comma-separated representations, e.g. falip,crop,crop+blur")
    runs = []
    for item in items:
        parts = [p.strip() for p in item.split(JOIN)]
        unknown = [p for p in parts if p not in REPRESENTATIONS]
        if unknown:
            raise InputError(f"unknown representation '{unknown[0]}' in '{item}': choose among "
                             f"{', '.join(REPRESENTATIONS)}, joined with '{JOIN}' to sum them")
        if len(set(parts)) != len(parts):
            raise InputError(f"'{item}' names a representation twice")
        name = JOIN.join(parts)
        if name in runs:
            raise InputError(f"run '{name}' is given twice")
        runs.append(name)
    return tuple(runs)


def representations_of(run: str) -> tuple[str, ...]:
    """The representations a run sums, in the reference's order."""
    parts = run.split(JOIN)
    return tuple(r for r in _SUM_ORDER if r in parts)


def caption(text: str, run: str) -> str:
    """The caption a run scores an expression with (a run with shade uses the shade's caption for every term)."""
    base = CAPTION_TEMPLATE.format(text.lower())
    return visual_prompts.caption_for("shade", base) if "shade" in representations_of(run) else base


def encode_boxes(model: FalipCLIP, image: Image.Image, boxes: Sequence[BoxXYWH], representation: str,
                 config: Optional[foveal.FovealConfig] = None) -> torch.Tensor:
    """Unit image features (B, D) of one representation of each ``[x, y, w, h]`` box of one image."""
    feats = []
    for start in range(0, len(boxes), _ENCODE_CHUNK):
        chunk = [{"box": xyxy(b)} for b in boxes[start:start + _ENCODE_CHUNK]]
        images, bias = regions.region_batch(model, image, chunk, representation, config, RESIZE_MODE, BOX_RULE)
        feats.append(regions.encode_regions(model, images, bias, config))
    return torch.cat(feats)


class TextCache:
    """Unit text features per caption, each encoded once."""

    def __init__(self, model: FalipCLIP):
        self.model = model
        self.features: dict[str, torch.Tensor] = {}

    def get(self, captions: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(c for c in captions if c not in self.features))
        if missing:
            with torch.inference_mode():
                feats = self.model.encode_text(missing, normalize=True)
            self.features.update(zip(missing, feats))
        return torch.stack([self.features[c] for c in captions])


def box_scores(model: FalipCLIP, features: dict[str, torch.Tensor], text: torch.Tensor, run: str,
               candidates: Sequence[int]) -> np.ndarray:
    """Summed ``logit_scale · cos`` (float32) of a run's representations for the candidate boxes."""
    idx = torch.as_tensor(list(candidates), dtype=torch.long)
    total = None
    for rep in representations_of(run):
        term = model.logit_scale * (features[rep][idx] @ text)
        total = term if total is None else total + term
    return total.float().cpu().numpy()


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax over the boxes (float32, as ``Environment.filter``)."""
    return torch.from_numpy(np.asarray(scores, np.float32)).softmax(dim=-1).numpy()


def score_image(model: FalipCLIP, dataset: RecDataset, index: int, runs: Sequence[str], texts: TextCache,
                config: Optional[foveal.FovealConfig] = None) -> dict[int, dict[str, np.ndarray]]:
    """Scores of every expression of one image for each run: ``{expression: {run: scores}}``; the image is read
    and each representation of each distinct box encoded once."""
    item = dataset.images[index]
    image = load_image(item.path, upright=False)
    if image.size != item.size:
        raise InputError(f"image {item.path} changed while the evaluation ran")
    reps = [r for r in _SUM_ORDER if any(r in representations_of(run) for run in runs)]
    features = {r: encode_boxes(model, image, item.boxes, r, config) for r in reps}
    keys = [(e, run) for e in item.expressions for run in runs]
    text = texts.get([caption(dataset.expressions[e].text, run) for e, run in keys])
    out: dict[int, dict[str, np.ndarray]] = {e: {} for e in item.expressions}
    for (e, run), t in zip(keys, text):
        out[e][run] = box_scores(model, features, t, run, dataset.expressions[e].candidates)
    return out


def judge(expression: Expression, boxes: Sequence[BoxXYWH], scores: np.ndarray) -> dict:
    """One prediction entry of the report from an expression's scores over its candidates."""
    cands = [boxes[c] for c in expression.candidates]
    probs = probabilities(scores)
    pred = int(np.argmax(probs))
    gold = [int(k) for k in np.nonzero((iou_matrix(cands, expression.gold_boxes) > IOU_THRESHOLD).any(axis=1))[0]]
    return {"file_name": expression.file_name, "line": expression.line, "text": expression.text,
            "boxes": [list(xyxy(b)) for b in cands], "scores": [float(s) for s in scores],
            "probabilities": [float(p) for p in probs], "pred": pred, "gold": gold,
            "gold_boxes": [list(xyxy(b)) for b in expression.gold_boxes], "correct": pred in gold}


# ---- batches, resume, shards -----------------------------------------------------------------------------
@dataclass
class RecBatch:
    """The scores of the expressions of images [start, start + batch_size)."""

    start: int
    expressions: np.ndarray  # (E,) int64 expression indices
    scores: dict  # run -> (sum of candidates,) float32, expression after expression


class RecBatchCache(BatchCache):
    """`batches.BatchCache` holding REC batches (per-expression scores) instead of class predictions."""

    def __init__(self, folder: Path, key: dict, runs: Sequence[str], dataset: RecDataset, batch_size: int):
        super().__init__(folder, key, runs, RecBatch)
        self.dataset = dataset
        self.batch_size = batch_size

    def save(self, b: RecBatch) -> None:
        arrays = {"start": np.int64(b.start), "expressions": b.expressions}
        arrays.update({f"scores_{k}": b.scores[r] for k, r in enumerate(self.runs)})
        self._write(b.start, arrays)

    def _decode(self, z, start: int) -> RecBatch:
        return RecBatch(int(z["start"]), z["expressions"].astype(np.int64),
                        {r: z[f"scores_{k}"].astype(np.float32) for k, r in enumerate(self.runs)})

    def _inconsistent(self, b: RecBatch, start: int) -> Optional[str]:
        expected = [e for item in self.dataset.images[start:start + self.batch_size] for e in item.expressions]
        n = sum(len(self.dataset.expressions[e].candidates) for e in expected)
        if b.start != start or b.expressions.tolist() != expected or \
                any(s.shape != (n,) for s in b.scores.values()):
            return "inconsistent contents"
        if not all(np.isfinite(s).all() for s in b.scores.values()):
            return "scores that are not finite"
        return None


def run_key(model: FalipCLIP, dataset: RecDataset, runs: Sequence[str], batch_size: int,
            config: foveal.FovealConfig) -> dict:
    """Everything that changes a REC evaluation's results (hashed by `batches.run_key`)."""
    return {
        "version": _CACHE_VERSION,
        "pointfalip": __version__,
        "dataset": dataset.name,
        "root": str(dataset.root.resolve()),
        "annotations": data_identity([dataset.annotations]),
        "detections": None if dataset.detections is None else data_identity([dataset.detections]),
        "data": data_identity(item.path for item in dataset.images),  # the images themselves
        "lines": dataset.lines,
        "model": str(model.name),
        "pretrained": file_identity(str(model.pretrained)),
        "precision": str(model.precision),
        "runs": list(runs),
        "batch_size": batch_size,
        "foveal": dataclasses.asdict(config),
    }


def protocol() -> dict:
    """The settings of the reference's protocol, recorded in the report."""
    return {"caption": CAPTION_TEMPLATE.replace("{}", "<expression>"),
            "shade_caption_suffix": visual_prompts.CAPTION_SUFFIX["shade"], "resize": f"{RESIZE_MODE}, bicubic",
            "foveal_box_rule": BOX_RULE, "blur_radius": visual_prompts.BLUR_RADIUS,
            "circle_width": f"int(max(W, H) / {visual_prompts.CIRCLE_WIDTH_DIVISOR})",
            "shade": list(visual_prompts.SHADE_COLOR) + [visual_prompts.SHADE_ALPHA],
            "iou_threshold": IOU_THRESHOLD, "aggregation": "sum of logit_scale * cos, softmax over boxes"}


def evaluate_rec(model: FalipCLIP, dataset: RecDataset, runs: Union[str, Sequence[str]] = ("falip",),
                 out=None, batch_size: int = 16, config: Optional[foveal.FovealConfig] = None,
                 progress: bool = True) -> dict:
    """Evaluate every expression of ``dataset`` for each run; write (rank 0) and return the report (module doc).

    batch_size: images per batch (the unit of resuming and sharding); out: the report's path (default
    ``evaluate_<dataset>.json``), its resume cache in ``<out>.partial/``.
    """
    runs = parse_runs(runs)
    batch_size = check_batch_size(batch_size)
    task = RecTask(model, dataset, runs, batch_size, config or foveal.FovealConfig())
    out = Path(out) if out is not None else Path(f"evaluate_{dataset.name}.json")
    return run_evaluation(task, out, progress).to_dict()


@dataclass(kw_only=True)
class RecReport(Report):
    """The report of a REC evaluation (see the module doc for the JSON)."""

    TASK: ClassVar[str] = "referring expressions"

    dataset: str
    root: str
    annotations: str
    detections: Optional[str]
    model: str
    pretrained: str
    precision: str
    protocol: dict
    lines: int
    images: int
    n: int
    runs: dict
    report: str = ""


class RecTask:
    """Referring expressions over images in batches, as `batches.run_evaluation` runs it."""

    name = RecReport.TASK
    record = RecBatch

    def __init__(self, model: FalipCLIP, dataset: RecDataset, runs: Sequence[str], batch_size: int,
                 config: foveal.FovealConfig):
        self.model, self.dataset, self.runs, self.batch_size, self.config = model, dataset, tuple(runs), \
            batch_size, config
        self.n_items = len(dataset.images)
        self.description = f"{dataset.name} {','.join(self.runs)}"
        self.texts = TextCache(model)

    def key(self) -> dict:
        return run_key(self.model, self.dataset, self.runs, self.batch_size, self.config)

    def cache(self, folder: Path, key: dict) -> "RecBatchCache":
        return RecBatchCache(folder, key, self.runs, self.dataset, self.batch_size)

    def compute(self, lo: int, hi: int) -> Iterator[RecBatch]:
        dataset, runs = self.dataset, self.runs
        for start in range(lo, min(hi, len(dataset.images)), self.batch_size):
            exprs, flat = [], {r: [] for r in runs}
            for index in range(start, min(start + self.batch_size, len(dataset.images))):
                scored = score_image(self.model, dataset, index, runs, self.texts, self.config)
                for e in dataset.images[index].expressions:
                    exprs.append(e)
                    for r in runs:
                        flat[r].append(scored[e][r])
            yield RecBatch(start, np.asarray(exprs, np.int64),
                           {r: np.concatenate(v).astype(np.float32) if v else np.zeros(0, np.float32)
                            for r, v in flat.items()})

    def report(self, batches: list, out: Path) -> RecReport:
        report = _report(self.model, self.dataset, self.runs, batches)
        report.report = str(out)
        return report

    def write(self, report: RecReport) -> list[Path]:
        """Nothing besides the JSON."""
        return []


def _report(model: FalipCLIP, dataset: RecDataset, runs: Sequence[str], batches: list) -> RecReport:
    scores: dict[str, list] = {r: [None] * len(dataset.expressions) for r in runs}
    for b in batches:
        offset = 0
        for e in b.expressions.tolist():
            n = len(dataset.expressions[e].candidates)
            for r in runs:
                scores[r][e] = b.scores[r][offset:offset + n]
            offset += n
    report = RecReport(
        dataset=dataset.name, root=str(dataset.root), annotations=str(dataset.annotations),
        detections=None if dataset.detections is None else str(dataset.detections), model=str(model.name),
        pretrained=str(model.pretrained), precision=str(model.precision), protocol=protocol(), lines=dataset.lines,
        images=len(dataset.images), n=len(dataset.expressions), runs={})
    for r in runs:
        preds = [judge(x, dataset.images[x.image].boxes, scores[r][e]) for e, x in enumerate(dataset.expressions)]
        correct = sum(p["correct"] for p in preds)
        report.runs[r] = {"accuracy": correct / len(preds), "correct": correct, "predictions": preds}
    return report


def summary(report: dict) -> str:
    """The text table of a REC report."""
    runs = list(report["runs"])
    w = max(12, max(len(r) for r in runs) + 2)
    source = "detections " + Path(report["detections"]).name if report["detections"] else "gold boxes"
    lines = [f"pointfalip evaluate — {report['dataset']} ({Path(report['annotations']).name}, {source}): "
             f"{report['n']} expressions, {report['images']} images — {report['model']} ({report['pretrained']}, "
             f"{report['precision']})",
             f"{'representation':<{w}}{'accuracy':>10}{'correct':>10}"]
    for r in runs:
        run = report["runs"][r]
        lines.append(f"{r:<{w}}{run['accuracy']:>10.2%}{run['correct']:>10}")
    lines.append(f"report: {report['report']}")
    return "\n".join(lines)


register_task(TaskKind(RecReport.TASK, ("refcoco", "refcoco+", "refcocog"), summary))
