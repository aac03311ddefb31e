"""Hydra's command line in the order people type it: flags anywhere among the overrides.

Hydra reads `sys.argv` with `parse_args`, whose positional list of overrides stops at the first
flag: `python run.py model=cnn3 -m activation=relu,tanh` fails with "unrecognized arguments".
Hydra's own parser stays the single source of truth: we parse with it, intermixed, and hand it
back the same arguments with its flags first. Its shell completion parses the line being typed
the same way, so that line (COMP_LINE) is reordered too.
"""

import contextlib
import io
import os

from hydra._internal.utils import get_args_parser
from hydra.plugins.completion_plugin import CompletionPlugin


def hydra_argv(argv: list[str]) -> list[str]:
    """`argv` with Hydra's flags (and their values) before the overrides, each in its own order."""
    parser = get_args_parser()
    parsed = vars(parser.parse_intermixed_args(argv))  # errors and --version exit here, as in Hydra
    flags: list[str] = []
    for action in parser._actions:  # argparse has no public list of its options
        value = parsed.get(action.dest)
        if not action.option_strings or value is None or value is False:
            continue
        flags.append(action.option_strings[0])
        if value is not True:  # an option with a value: --cfg job, -cn NAME, --info defaults
            flags.append(value)
    return flags + parsed["overrides"]


def reorder_completion_line() -> None:
    """Reorder COMP_LINE, the half-typed line Hydra's `-sc query=...` completes, like `hydra_argv`."""
    line = os.environ.get("COMP_LINE")
    if not line:
        return
    try:
        args = CompletionPlugin.strip_python_or_app_name(line)
        with contextlib.redirect_stderr(io.StringIO()):  # a half-typed flag is no error to show
            words = hydra_argv(args.split())
    except (RuntimeError, SystemExit):
        return  # leave the line as typed: Hydra completes what it can
    trailing = " " if line.endswith(" ") else ""  # a new word is being started
    os.environ["COMP_LINE"] = line[: len(line) - len(args)] + " ".join(words) + trailing


def main_argv(argv: list[str]) -> list[str]:
    """What run.py hands Hydra in place of `sys.argv[1:]`."""
    reordered = hydra_argv(argv)
    if "--shell-completion" in reordered:
        reorder_completion_line()
    return reordered
