"""What the command line says when asked or when a command line is wrong: help with defaults and examples, usage
with the command list, and the nearest option or command for a misspelt one (argparse's own ``suggest_on_error``
where this Python has it, else `difflib`)."""
from __future__ import annotations

import argparse
import difflib
import inspect
import sys
from typing import Optional, Sequence

# one or two command lines a command's --help ends with (they run from a `pointfalip samples` folder)
EXAMPLES: dict[str, tuple[str, ...]] = {
    "classify": ('pointfalip classify chair.off scan.pcd --dataset modelnet40 --up-axis z --top-k 3',
                 'pointfalip classify cloud.npy --labels "mug,bowl,bottle" --json --per-view'),
    "render": ("pointfalip render chair.off -o views.png",),
    "ros2": ('pointfalip ros2 --labels "mug,bowl,bottle" --transport dds --input-topic /camera/depth/points',
             'pointfalip ros2 --dataset modelnet40 --preset robot_fast --transport dds'),
    "demo": ("pointfalip demo", "pointfalip demo --pretrained none --model ViT-B-32"),
    "classify-image": ('pointfalip classify-image street.jpg --labels "car,bus,bicycle" --box 40,60,200,180',
                       'pointfalip classify-image street.jpg --labels "car,bus" --mask region.png --prompt blur'),
    "refer": ('pointfalip refer photo.jpg --boxes "0,0,100,120;150,30,300,200" --caption "the dog on the left"',),
    "segment": ('pointfalip segment chair.ply --parts "back,seat,leg,arm" -o parts.ply --render parts.png',
                "pointfalip segment mug.pcd --category mug --json"),
    "scene": ('pointfalip scene table.pcd --labels "mug,bowl,bottle,book" --render top.png',
              'pointfalip scene run_42/ --topic /camera/points --labels "chair,table" --mcap run_42.mcap'),
    "fewshot build": ("pointfalip fewshot build --dataset folder --root my_objects/ --shots 16 -o objects.fewshot",),
    "evaluate": ("pointfalip evaluate --dataset modelnet40 --root DATA/modelnet40_ply_hdf5_2048 --compare",
                 "pointfalip evaluate --dataset folder --root my_scans/ --out scans.json"),
    "samples": ("pointfalip samples pointfalip_samples && cd pointfalip_samples",),
    "models": ("pointfalip models", "pointfalip models --all --json"),
}
START = ("start here: pointfalip samples pointfalip_samples && cd pointfalip_samples   (every input the README "
         "uses)\n            pointfalip COMMAND --help   (a command's options, defaults and examples)")
SUGGEST_ON_ERROR = "suggest_on_error" in inspect.signature(argparse.ArgumentParser).parameters  # Python 3.14+


def epilog(name: str) -> Optional[str]:
    """The examples a command's help ends with."""
    lines = EXAMPLES.get(name)
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) if lines else None


def nearest(word: str, choices: Sequence[str]) -> Optional[str]:
    """The choice closest to a misspelt ``word`` (difflib's ratio ≥ 0.6), or None."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return close[0] if close else None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; each option's default shown when its help does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" not in text and default is not None and not isinstance(default, bool)
                and default is not argparse.SUPPRESS and action.option_strings):
            shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            text += f" (default: {shown})"
        return text


class Parser(argparse.ArgumentParser):
    """argparse with the tool's manners: errors are one line naming the command (``pointfalip classify: error:
    ...``) and suggest the nearest option or choice; exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        if SUGGEST_ON_ERROR:
            kwargs.setdefault("suggest_on_error", True)
        super().__init__(*args, **kwargs)
        self.command_parsers: dict[str, "Parser"] = {}  # filled on the top parser: command name -> its parser

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")

    def _check_value(self, action, value):  # a choice outside the list: name the nearest
        if SUGGEST_ON_ERROR or action.choices is None or value in action.choices:
            return super()._check_value(action, value)
        choices = [str(c) for c in action.choices]
        close = nearest(str(value), choices)
        hint = f"; did you mean '{close}'?" if close else ""
        if isinstance(action, argparse._SubParsersAction):  # "pointfalip: error: unknown command 'x'; ..."
            raise argparse.ArgumentError(None, f"unknown command '{value}'{hint} (commands: {', '.join(choices)})")
        raise argparse.ArgumentError(action, f"unknown choice '{value}'{hint} (choose from {', '.join(choices)})")

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:  # said by the command's own parser, with the nearest of its options
            target = self.command_parsers.get(getattr(namespace, "command", None) or "", self)
            options = [o for a in target._actions for o in a.option_strings]
            hints = []
            for word in extras:
                close = nearest(word.split("=", 1)[0], options) if word.startswith("-") else None
                if close:
                    hints.append(f"'{word}': did you mean {close}?")
            hint = f" ({'; '.join(hints)})" if hints else f" (see {target.prog} --help)"
            target.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return namespace

    def print_usage_and_commands(self, file=None) -> None:
        """The full help (usage and the command list): what a bare ``pointfalip`` or ``pointfalip fewshot`` shows."""
        self.print_help(file or sys.stderr)
