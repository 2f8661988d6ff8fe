"""``thawkit check-plugin NAME_OR_FILE``: the conformance kit from the command line."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from thawkit import hookimpl

if TYPE_CHECKING:
    from thawkit.plugins.cli import Commands


def cmd_check_plugin(args: argparse.Namespace) -> int:
    from .runner import run_check_plugin

    return run_check_plugin(args)


@hookimpl
def thawkit_register_commands(subparsers: Commands) -> None:
    p = subparsers.add_parser(
        "check-plugin", help="run the conformance kit on an installed or local plugin",
        description="Load a plugin (an installed entry point or distribution name, a module, or a "
                    ".py file), run thawkit.plugins.testing on everything it registers and print "
                    "a report. Exit code 0: every check passed; 1: a check failed; 2: no such plugin.")
    p.add_argument("plugin", metavar="NAME_OR_FILE",
                   help="entry point or distribution name, module name, or .py file")
    p.add_argument("--model", action="append", default=[], metavar="SPEC",
                   help="also check strategies, layouts and heads on this backbone "
                        "(e.g. torchvision:resnet18); repeatable")
    p.add_argument("--recipe", metavar="FILE",
                   help="a recipe in the plugin's own format, for the checks of a recipe reader "
                        "(thawkit_read_recipe): read it, with and without --set overrides")
    p.add_argument("-v", "--verbose", action="store_true", help="list every check, not only failures")
    p.set_defaults(func=cmd_check_plugin)
