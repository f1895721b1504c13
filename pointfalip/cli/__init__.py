"""The `pointfalip` command: classify point clouds and image regions, render views, scenes, evaluation, the demo.

Each subcommand is one registration: its name (nested names such as ``"fewshot build"`` allowed), its arguments,
its runner ``run(args) -> result`` that tests can call, and the printer of its result. The command modules
(`classify`, `segment`, `scene`, `ros2`, `images`, `fewshot`, `evaluate`, `samples`, `models`) mark their runners with
`options.subcommand`; this module registers them in `COMMANDS` (`command` registers one more, e.g. a plugin's).
`main` prints the result (text; JSON with --json) and turns user errors into one line on stderr and exit code 2.
Parsing imports neither torch nor open_clip (command modules import them inside their runners), so ``--help``
and ``--version`` answer at once; help, usage and suggestions are `help`'s.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import warnings
from types import ModuleType
from typing import Any, Callable, Optional, Sequence

from .. import __version__
from ..errors import InputError
from ..files import forget_pipes, replacing
from . import classify, evaluate, fewshot, images, models, ros2, samples, scene, segment
from .help import START, Parser, epilog
from .options import Command

log = logging.getLogger("pointfalip")

__all__ = ["COMMANDS", "Command", "InputError", "build_parser", "command", "list_commands", "main"]

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


def _register(module: ModuleType) -> None:
    """Register the runners a command module marked with `options.subcommand`."""
    for value in vars(module).values():
        if isinstance(getattr(value, "command", None), Command):
            COMMANDS[value.command.name] = value.command


for _module in (classify, segment, scene, ros2, images, fewshot, evaluate, samples, models):
    _register(_module)


OUTPUT_OPTIONS = ("--output", "--out", "--render", "--mcap", "--per-point", "--save-predictions")  # they get --force


def build_parser() -> argparse.ArgumentParser:
    """The parser of every registered command; nested names become nested subparsers. Every command's help shows
    its defaults and examples (`help.EXAMPLES`); a command that writes files takes --force."""
    parser = Parser(prog="pointfalip", description=__doc__.splitlines()[0], epilog=START)
    parser.add_argument("--version", action="version", version=f"pointfalip {__version__}")
    groups: dict[tuple, Any] = {(): parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)}
    parents: dict[str, Parser] = {"": parser}
    for name in sorted(COMMANDS, key=lambda n: (n.count(" "), n)):
        cmd = COMMANDS[name]
        words = tuple(name.split())
        for depth in range(1, len(words)):  # parents of a nested command
            prefix = words[:depth]
            if prefix not in groups:
                parent = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{' '.join(prefix)} commands",
                                                        description=f"{' '.join(prefix)} commands")
                parent.set_defaults(command=" ".join(prefix))  # no subcommand given: its usage is shown
                groups[prefix] = parent.add_subparsers(dest=f"sub_{depth}", metavar="COMMAND", parser_class=Parser)
                parents[" ".join(prefix)] = parent
        p = groups[words[:-1]].add_parser(words[-1], help=cmd.help, description=cmd.help, epilog=epilog(name))
        p.set_defaults(command=name)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("-v", "--verbose", action="store_true", help="say what the model saw")
        cmd.arguments(p)
        if any(o in OUTPUT_OPTIONS for a in p._actions for o in a.option_strings):
            p.add_argument("--force", action="store_true",
                           help="let the outputs you name replace existing files that pointfalip did not write")
        parents[name] = p
    parser.command_parsers = parents
    return parser


# ---- main ----------------------------------------------------------------------------------------------
class _Held(logging.Handler):
    """Our warnings (Python warnings and log records) held until the command ends: shown, one line each, when it
    succeeds; dropped when a user error ends it, so that the error stays one line. Third-party warnings (numpy,
    PIL, open3d) stay quiet."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def _add(self, text: str) -> None:
        text = _printable(" ".join(text.split()))
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


def _printable(text: str) -> str:
    """``text`` with what UTF-8 cannot hold (a name's undecodable byte, a lone surrogate) escaped (``\\udcfe``)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


MAX_ERROR_CHARS = 1000  # an error line longer than this keeps its start and its end (what to do)


def _one_line(text: str) -> str:
    """An error message as one line of at most `MAX_ERROR_CHARS` characters."""
    text = _printable(" ".join(text.split()))
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return f"{text[:MAX_ERROR_CHARS * 3 // 4]} [... {len(text) - MAX_ERROR_CHARS} characters cut ...] " \
           f"{text[-MAX_ERROR_CHARS // 4:]}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (one line on stderr, exit 2)
        return e.code if isinstance(e.code, int) else 0
    if args.command not in COMMANDS:  # `pointfalip` or `pointfalip fewshot` alone: the usage and the command list
        parser.command_parsers[args.command or ""].print_usage_and_commands()
        return 2
    from ..allocator import reuse_freed_memory

    reuse_freed_memory()  # the encoder's batches reuse freed pages instead of faulting fresh ones in
    if getattr(args, "device", "") is None:  # resolved here, not at parse time: --help imports no torch
        from ..model import default_device

        args.device = default_device()
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
                with replacing(getattr(args, "force", False)):
                    result = cmd.run(args)
            except InputError as e:
                print(f"pointfalip {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
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
    with contextlib.suppress(AttributeError, ValueError):  # a name with undecodable bytes prints escaped
        sys.stdout.reconfigure(errors="backslashreplace")
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
