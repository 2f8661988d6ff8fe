"""The hook the command-line plugin adds to thawkit (through ``thawkit_add_hookspecs``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from . import Commands

hookspec = pluggy.HookspecMarker("thawkit")


@hookspec
def thawkit_register_commands(subparsers: Commands) -> None:
    """Add subcommands to the ``thawkit`` command line.

    Parameters:
        subparsers: the commands of the ``thawkit`` parser (:class:`thawkit.plugins.cli.Commands`),
            used like ``argparse`` subparsers: call ``subparsers.add_parser(name, help=...)``
            (an ``argparse.ArgumentParser``) and give the parser a handler with
            ``set_defaults(func=handler)``. ``handler(args)`` returns the exit code;
            ``args.pm`` is the plugin manager of this invocation. A handler raises
            :class:`thawkit.ThawkitError` for a user's mistake (one message, exit code 2).

    Returns: nothing (all implementations are called). Keep imports inside the
    handler: ``thawkit --help`` builds every parser and must stay fast.
    """
