"""What the commands share: the `Command` record, argument types (one rule each), option groups and their one
reading (`recognizer_options`, `load_model`, `read_labels`)."""
from __future__ import annotations

import argparse
import contextlib
import math
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .. import io
from ..errors import InputError
from ..presets import COMPILE_ENGINES as ENGINES, PRECISION_CHOICES

@dataclass(frozen=True)
class Command:
    """One subcommand: what the parser needs, what runs, and how its result is shown."""

    name: str  # words separated by spaces: "classify", "fewshot build"
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Any]
    printer: Optional[Callable[[Any], None]] = None  # None: the result as JSON


def subcommand(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None],
               printer: Optional[Callable[[Any], None]] = None):
    """Mark the decorated ``run(args)`` as the subcommand ``name``; `pointfalip.cli` registers the marked runners
    of its command modules."""
    def mark(run):
        run.command = Command(name, help, arguments, run, printer)
        return run
    return mark


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM (``kill``, a scheduler ending a job) raises KeyboardInterrupt inside the block, as Ctrl-C does, so
    that a command ends the same way on both: its cleanup runs and `pointfalip.cli.main` exits 130. Only the main
    thread may set handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


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
    g.add_argument("--device", help="torch device (default: cuda where available, else cpu)")
    g.add_argument("--precision", choices=PRECISION_CHOICES,
                   help=f"auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32 (default: {precision_default})")
    g.add_argument("--compile", nargs="?", const="inductor", choices=(*ENGINES, "off"), metavar="ENGINE",
                   help="run the image encoder compiled: inductor (torch.compile, the default ENGINE; CPU or CUDA, "
                        "its code cached on disk) or openvino (CPU; pip install 'pointfalip[openvino]'); the first "
                        "batch of each kind compiles (15-25 s for ViT-B-16 on 2 CPU cores). Pays on long runs: "
                        "bench/bench_falip.py measures it (default: the preset's, off)")
    g.add_argument("--no-compile", dest="compile", action="store_const", const="off", help="same as --compile off")


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
    """The model the options name, in the recognizer preset's precision and compile setting unless --precision
    or --compile says otherwise (a command whose preset is of another kind sets ``args.precision`` first)."""
    from ..model import load_model as load

    if args.precision is None:
        from ..recognize import load_preset

        preset = load_preset(args.preset or DEFAULT_PRESET) if hasattr(args, "preset") else None
        args.precision = preset.precision if preset else "auto"
        if getattr(args, "compile", None) is None and preset:
            args.compile = preset.compile
    if args.device is None:
        from ..model import default_device

        args.device = default_device()
    return load(args.model, args.pretrained, device=args.device, precision=args.precision,
                compile=getattr(args, "compile", None) or False)


def build_recognizer(args, model, labels=None, dataset=None):
    from ..recognize import Recognizer

    return Recognizer(model, labels=labels, dataset=dataset, **recognizer_options(args))


def read_labels(args) -> tuple[Optional[list[str]], Optional[str]]:
    """(labels, dataset) from --labels, --labels-file or --dataset."""
    if getattr(args, "labels_file", None):
        from ..files import read_input_text

        path = args.labels_file
        text = read_input_text(path, "labels file")
        labels = [line.strip() for line in text.splitlines() if line.strip()]
        if not labels:
            raise InputError(f"labels file {path} is empty")
        return labels, None
    if getattr(args, "dataset", None):
        from ..prompts import list_label_sets

        name = args.dataset.lower()
        name = "scanobjectnn" if name.startswith("scanobjectnn") else name
        if name not in list_label_sets():
            raise InputError(f"unknown dataset '{args.dataset}': choose one of {', '.join(list_label_sets())}")
        return None, name
    labels = [s.strip() for s in (getattr(args, "labels", None) or "").split(",") if s.strip()]
    if not labels:
        raise InputError("the label list is empty: give --labels a,b,c, --labels-file or --dataset")
    return labels, None


def predictions(preds) -> list[dict]:
    return [p.to_dict() for p in preds]

