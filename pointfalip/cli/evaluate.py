"""`evaluate`: a dataset's figures. The dataset names the kind of evaluation (`batches.task_for_dataset`: the
tasks registered by `pointfalip.evaluate`, `pointfalip.evaluate_parts`, `pointfalip.refcoco`); each kind has one
runner here, which says which of the task-specific options it takes (`evaluation`)."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from .options import (DEFAULT_PRESET, bounded_int, load_model, model_args, recognizer_args, recognizer_options,
                      seed_list, subcommand, terminate_as_interrupt)

log = logging.getLogger("pointfalip")

# the options that only some kinds of evaluation take: destination -> (flag, value when not given)
TASK_OPTIONS = {"compare": ("--compare", False), "falip": ("--no-falip", True), "projection": ("--projection", None),
                "prompt_file": ("--prompt-file", None), "fewshot": ("--fewshot", None), "shots": ("--shots", None),
                "category": ("--category", None), "dense": ("--dense", None),
                "annotations": ("--annotations", None), "detections": ("--detections", None),
                "prompts": ("--prompts", "falip"), "predictions": ("--predictions", None),
                "proposals": ("--proposals", None), "save_predictions": ("--save-predictions", None),
                "top_k": ("--top-k", None), "labels": ("--labels", None)}


@dataclass(frozen=True)
class Evaluation:
    """The command line of one kind of evaluation: its runner, the `TASK_OPTIONS` it takes, and what to say to a
    user who gave others."""

    task: str
    run: Callable[[Any], dict]
    options: tuple[str, ...]
    hint: str


EVALUATIONS: dict[str, Evaluation] = {}
SCANNET_TASK = "scannet instance segmentation and detection"  # pointfalip.scannet.TASK, without importing it
EVALUATION_MODULES = ("pointfalip.evaluate", "pointfalip.evaluate_parts", "pointfalip.refcoco", "pointfalip.scannet")


def evaluation(task: str, options: tuple[str, ...], hint: str):
    """Register the decorated ``run(args)`` as the command line of the evaluation task ``task``."""
    def register(run):
        EVALUATIONS[task] = Evaluation(task, run, options, hint)
        return run
    return register


def _evaluate_args(p):
    p.add_argument("--dataset", required=True,
                   help="modelnet40, modelnet10, scanobjectnn[-obj_only|-obj_bg|-pb_t50_rs], folder, shapenetpart "
                        "(part segmentation), or refcoco, refcoco+, refcocog (referring expressions; --root: COCO "
                        "train2014 images)")
    p.add_argument("--root", required=True, help="folder holding the dataset's release")
    p.add_argument("--split", choices=("test", "train", "val"),
                   help="the release's split (default: test; scannet: val, the annotated one)")
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
    p.add_argument("--out", help="report path, .json (default evaluate_<dataset>.json, or the next free name: "
                                 "evaluate_<dataset>-2.json, ...); the confusion PNG goes beside it")
    g = p.add_argument_group("ScanNet v2 instance and detection AP (--dataset scannet; --root: the release)")
    g.add_argument("--predictions", metavar="DIR", help="evaluate another method's predictions in the benchmark's "
                   "format (<scene>.txt lines 'mask label_id confidence'); runs no model")
    g.add_argument("--proposals", help="class-agnostic masks the model labels: segment (this project's scene "
                   "segmentation, default), gt (ground-truth masks: the recognition oracle) or a folder of masks")
    g.add_argument("--save-predictions", metavar="DIR", help="write the model's predictions in the benchmark's "
                   "format to this new folder (re-evaluate them with --predictions, or submit them)")
    g.add_argument("--labels", help="comma-separated names the model chooses from (default: the 18 benchmark "
                   "classes); NYU40 names get their ids, e.g. 'chair,table,wall'")
    g.add_argument("--top-k", type=bounded_int(1, 200), help="labels per proposal, each a prediction with the same "
                   "mask (default 1)")
    g = p.add_argument_group("few-shot protocol (K examples per class from the train split, several seeds)")
    g.add_argument("--shots", type=bounded_int(1, 10_000), help="examples per class for a few-shot cache per seed")
    g.add_argument("--seeds", type=seed_list, default=[1],
                   help="comma-separated seeds of the example draws, each in [0, 2^31) (default 1)")
    g.add_argument("--train-root", help="folder of the release's train split (default --root)")
    recognizer_args(p, up_default="the dataset's", preset_help=f"configs/presets name or YAML file (default "
                    f"{DEFAULT_PRESET}; shapenetpart: a configs/parts name, default pointfalip_parts)")
    model_args(p)


def _print_evaluate(report: dict) -> None:
    from ..batches import TASKS

    print(TASKS[report["task"]].summary(report))


def _datasets_of(task: str) -> str:
    from ..batches import TASKS

    names = TASKS[task].datasets
    return f"--dataset {'|'.join(names)}" if names else "3D classification sets"


@subcommand("evaluate", "accuracy on a 3D test set (ModelNet40/10, ScanObjectNN, a folder; few-shot with --shots), "
            "part IoU on ShapeNetPart, or referring-expression accuracy on RefCOCO/+/g", _evaluate_args,
            _print_evaluate)
def run_evaluate(args) -> dict:
    import importlib

    from ..batches import task_for_dataset, torchrun_env

    rank = torchrun_env()[0]  # garbage in RANK / WORLD_SIZE / LOCAL_RANK: one line before anything is read
    for module in EVALUATION_MODULES:  # importing them registers their tasks
        importlib.import_module(module)

    chosen = EVALUATIONS[task_for_dataset(args.dataset).name]
    if args.split is None:
        args.split = "val" if chosen.task == SCANNET_TASK else "test"
    unused = [dest for dest, (flag, absent) in TASK_OPTIONS.items()
              if dest not in chosen.options and getattr(args, dest, absent) not in (absent, None, False)]
    if unused:
        flags = ", ".join(TASK_OPTIONS[d][0] for d in unused)
        owners = [e.task for e in EVALUATIONS.values() if unused[0] in e.options]
        where = " or ".join(f"{task} ({_datasets_of(task)})" for task in owners)
        raise InputError(f"{flags} do(es) not apply to {chosen.task} (--dataset {args.dataset}); "
                         f"{TASK_OPTIONS[unused[0]][0]} is for {where}; {chosen.hint}")
    with terminate_as_interrupt():  # SIGTERM as Ctrl-C: the batches done stay to resume from, exit 130
        report = chosen.run(args)
    if rank != 0:  # every rank holds the report; rank 0 alone prints it
        sys.stdout = open(os.devnull, "w")
    return report


@evaluation("classification", ("compare", "falip", "projection", "prompt_file", "fewshot", "shots"),
            "set them for classification datasets only")
def _evaluate_classification(args) -> dict:
    """`evaluate` on a 3D classification set (ModelNet40/10, ScanObjectNN, a folder): pointfalip.evaluate."""
    from ..datasets import open_dataset
    from ..evaluate import default_report_path, distributed, evaluate, run_names
    from ..files import free_name

    run_names(args.compare, args.falip, bool(args.fewshot))  # refuse bad combinations before reading anything
    if args.out:
        _check_report_outputs(args, args.out)
    dataset = open_dataset(args.dataset, args.root, split=args.split, limit=args.limit, num_points=args.num_points,
                           up_axis=args.up_axis)
    out = _check_report_outputs(args, args.out or free_name(default_report_path(dataset.name)))
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
    return report


def _check_report_outputs(args, out) -> Path:
    """The report path of an evaluation and every file it writes beside it (the confusion matrix or the
    per-point predictions, the resume folder), checked before any work: none may be an input of the run."""
    from ..batches import check_report_path, partial_path, torchrun_env
    from ..datasets import is_part_dataset
    from ..evaluate import confusion_path
    from ..evaluate_parts import predictions_path
    from ..files import check_output, run_inputs

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
    if torchrun_env()[0] == 0:  # other torchrun ranks could see rank 0 making the cache folder
        check_report_path(out)
    return out


@evaluation("referring expressions", ("annotations", "detections", "prompts"),
            "choose the representations with --prompts")
def _evaluate_rec(args) -> dict:
    """`evaluate --dataset refcoco|refcoco+|refcocog`: referring expressions (pointfalip.refcoco)."""
    from ..batches import check_report_path, torchrun_env
    from ..evaluate import default_report_path, distributed
    from ..files import check_output, free_name, run_inputs
    from ..refcoco import evaluate_rec, open_rec_dataset, parse_runs

    if not args.annotations:
        raise InputError(f"--dataset {args.dataset} needs --annotations F.jsonl (ReCLIP's file of the split)")
    runs = parse_runs(args.prompts)
    name = args.dataset.lower()
    out = check_output(args.out or free_name(default_report_path(name)), "--out", suffixes=(".json",),
                       inputs=run_inputs(args))
    if torchrun_env()[0] == 0:  # other torchrun ranks could see rank 0 making the cache folder
        check_report_path(out)
    dataset = open_rec_dataset(name, args.root, args.annotations, args.detections, limit=args.limit)
    with distributed(args.device) as device:
        args.device = device
        args.precision = args.precision or "auto"
        model = load_model(args)
        report = evaluate_rec(model, dataset, runs, out=out, batch_size=args.batch_size)
    return report


@evaluation("part segmentation", ("compare", "category", "dense"), "set its options in a parts preset")
def _evaluate_parts(args) -> dict:
    """`evaluate --dataset shapenetpart`: zero-shot part segmentation (pointfalip.evaluate_parts)."""
    from ..datasets import open_dataset
    from ..evaluate import distributed
    from ..evaluate_parts import evaluate_parts, part_report_path, part_runs
    from ..files import free_name
    from ..parts import DEFAULT_PRESET as DEFAULT_PART_PRESET
    from ..parts import list_part_presets, load_part_preset

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
    out = _check_report_outputs(args, args.out or free_name(part_report_path(dataset.category)))
    with distributed(args.device) as device:
        args.device = device
        if args.precision is None:
            args.precision = settings.precision
        model = load_model(args)
        report = evaluate_parts(model, dataset, preset=preset, dense=args.dense, compare=args.compare,
                                batch_size=args.batch_size, out=out)
    return report


@evaluation(SCANNET_TASK, ("compare", "falip", "predictions", "proposals", "save_predictions", "top_k", "labels"),
            "ScanNet takes --predictions, or --proposals, --save-predictions, --top-k and --compare")
def _evaluate_scannet(args) -> dict:
    """`evaluate --dataset scannet`: ScanNet v2 instance AP and detection AP (pointfalip.scannet)."""
    from ..datasets import open_dataset
    from ..evaluate import default_report_path, distributed
    from ..files import check_output, free_name, run_inputs
    from ..scannet import check_predictions_folder, evaluate_scannet

    if args.predictions and (args.proposals or args.save_predictions or args.top_k or args.compare
                             or not args.falip or args.labels):
        raise InputError("--predictions evaluates another method's files and runs no model: drop --proposals, "
                         "--save-predictions, --top-k, --labels, --compare and --no-falip")
    labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    if labels is not None:
        from ..scannet import label_ids_for

        label_ids_for(labels)  # names without an NYU40 id: one line before any work
    if args.compare and not args.falip:
        raise InputError("--compare runs FALIP and the plain-CLIP baseline together; drop --no-falip")
    inputs = run_inputs(args)
    out = _check_report_outputs(args, args.out or free_name(default_report_path("scannet")))
    if args.save_predictions:  # before the model loads
        check_predictions_folder(check_output(args.save_predictions, "--save-predictions", inputs=inputs))
    dataset = open_dataset("scannet", args.root, split=args.split, limit=args.limit)
    with distributed(args.device) as device:
        args.device = device
        model = None
        if not args.predictions:
            args.precision = args.precision or "auto"
            model = load_model(args)
        return evaluate_scannet(dataset, model, predictions=args.predictions, labels=labels, compare=args.compare,
                                falip=args.falip, preset=args.preset or DEFAULT_PRESET,
                                proposals=args.proposals or "segment",
                                top_k=args.top_k or 1, save_predictions=args.save_predictions,
                                batch_size=args.batch_size, out=out)
