"""The hook the command-line plugin adds to thawkit (through ``thawkit_add_hookspecs``)."""
from __future__ import annotations

import argparse

import pluggy

hookspec = pluggy.HookspecMarker("thawkit")


@hookspec
def thawkit_register_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add subcommands to the ``thawkit`` command line.

    Parameters:
        subparsers: the ``argparse`` subparsers of the ``thawkit`` parser; call
            ``subparsers.add_parser(name, help=...)`` and give the parser a handler with
            ``set_defaults(func=handler)``. ``handler(args)`` returns the exit code;
            ``args.pm`` is the plugin manager of this invocation. A handler raises
            :class:`thawkit.ThawkitError` for a user's mistake (one message, exit code 2).

    Returns: nothing (all implementations are called). Keep imports inside the
    handler: ``thawkit --help`` builds every parser and must stay fast.
    """
