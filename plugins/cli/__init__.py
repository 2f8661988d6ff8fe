"""The ``thawkit`` command line, a built-in plugin (``thawkit.cli``): a front end over the
library, like the Lightning callback and the torchrun launcher.

It adds the hook ``thawkit_register_commands`` (:mod:`thawkit.plugins.cli.hookspecs`), and
every command comes from a plugin through it: the built-in ones too
(``thawkit.plugins.inspection``, the training plugin, the coverage plugin). Imports nothing
heavy until a command runs (``thawkit --help`` stays fast). Each invocation builds its own
plugin manager, with the ``--plugin`` modules, and hands it to the command as ``args.pm``.
``thawkit`` and ``python -m thawkit`` run :func:`main`.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from thawkit import hookimpl

if TYPE_CHECKING:
    from thawkit import ThawkitPluginManager


#: The most characters of one error message the CLI prints (``--debug`` shows it whole).
MESSAGE_LIMIT = 4000


@hookimpl
def thawkit_add_hookspecs(pm: ThawkitPluginManager) -> None:
    from . import hookspecs

    pm.add_hookspecs(hookspecs)


# -------------------------------------------------------------------- parser
def build_parser(pm: ThawkitPluginManager | None = None) -> argparse.ArgumentParser:
    """The ``thawkit`` parser with every plugin's commands (``pm``: a fresh manager when omitted)."""
    from thawkit import __version__

    parser = argparse.ArgumentParser(
        prog="thawkit",
        description="Adapt pretrained vision models to new tasks: strategies, heads, groups, runs.")
    parser.add_argument("--version", action="version", version=f"thawkit {__version__}")
    parser.add_argument("-p", "--plugin", action="append", metavar="MODULE_OR_FILE",
                        help="load an extra plugin (module name or .py file); repeatable")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, also print the traceback (with a plugin's original exception)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_command_parser)
    if pm is None:
        from thawkit import get_plugin_manager

        pm = get_plugin_manager()
    commands = Commands(sub, prog=parser.prog)
    pm.call_each("thawkit_register_commands", checkpoint=commands.checkpoint, subparsers=commands)
    commands.checkpoint("")  # adds the last plugin's commands
    return parser


def _command_parser(*, staged: argparse.ArgumentParser, **_: object) -> argparse.ArgumentParser:
    """The subparsers' ``parser_class``: a command's parser is the one its plugin built."""
    return staged


class Commands:
    """What ``thawkit_register_commands`` gets as ``subparsers``: ``add_parser(name, help=...,
    aliases=..., **parser_options)`` as on argparse's subparsers. A plugin's commands join the
    ``thawkit`` parser once its hook has returned, each remembering its plugin
    (``thawkit_plugin``); a plugin that fails leaves none of them behind. A name already taken
    is argparse's ``conflicting subparser`` error."""

    def __init__(self, subparsers: argparse._SubParsersAction, prog: str) -> None:
        self._subparsers, self._prog = subparsers, prog
        self._plugin, self._staged = "", []  # the plugin being asked, and what it added so far

    @property
    def choices(self) -> dict[str, argparse.ArgumentParser]:
        """The commands so far, by name (those of the plugin being asked included)."""
        staged = {n: parser for names, _, parser in self._staged for n in names}
        return {**self._subparsers.choices, **staged}

    def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
        aliases = list(kwargs.pop("aliases", ()))  # type: ignore[call-overload]
        options = {k: kwargs.pop(k) for k in ("help",) if k in kwargs}
        for taken in (name, *aliases):
            if taken in self.choices:
                kind = "subparser" if taken == name else "subparser alias"
                raise argparse.ArgumentError(None, f"conflicting {kind}: {taken}")
        kwargs.setdefault("prog", f"{self._prog} {name}")
        parser = argparse.ArgumentParser(**kwargs)  # type: ignore[arg-type]
        self._staged.append(([name, *aliases], options, parser))
        return parser

    def checkpoint(self, plugin: str) -> Callable[[], None]:
        """Add the commands of the plugin asked before (its hook returned), then collect
        ``plugin``'s; the undo drops what ``plugin`` added."""
        for (name, *aliases), options, parser in self._staged:
            if parser.get_default("thawkit_plugin") is None:
                parser.set_defaults(thawkit_plugin=self._plugin)
            self._subparsers.add_parser(name, aliases=aliases, staged=parser, **options)
        self._plugin, self._staged = plugin, []

        def undo() -> None:
            self._staged = []
        return undo


def _early(argv: list[str] | None) -> tuple[list[str], str, bool]:
    """The ``--plugin`` modules, the command's name and ``--debug``, read ahead of the full
    parse (a local plugin may add commands, and its errors name the command)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("-p", "--plugin", action="append", default=[])
    early.add_argument("--debug", action="store_true")
    known, rest = early.parse_known_args(argv)
    words = [w for w in rest if not w.startswith("-")]
    return known.plugin, f"thawkit {words[0]}" if words else "thawkit", known.debug


def _plugin_manager(refs: list[str]) -> ThawkitPluginManager:
    """A manager for this invocation, with the ``--plugin`` modules."""
    from thawkit import get_plugin_manager

    pm = get_plugin_manager()
    for ref in refs:
        pm.load_local(ref)
    return pm


def main(argv: list[str] | None = None) -> int:
    """Run the ``thawkit`` command line; returns the exit code (2 for a user's mistake)."""
    from thawkit import PluginError, ThawkitError

    refs, command, debug = _early(argv)
    try:
        pm = _plugin_manager(refs)
        parser = build_parser(pm)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        args.pm = pm
        command = f"thawkit {args.command}"
        try:
            return int(args.func(args) or 0)
        except (ThawkitError, BrokenPipeError):
            raise
        except Exception as exc:  # a bug in a command's handler: the plugin's, in one message
            owner = getattr(args, "thawkit_plugin", None) or None
            raise PluginError(f"{pm.describe_plugin(owner)} failed in command {args.command!r}: "
                              f"{type(exc).__name__}: {exc}") from exc
    except ThawkitError as exc:
        if debug:
            traceback.print_exception(exc)
        from thawkit import shorten

        print(f"{command}: error: {shorten(str(exc), MESSAGE_LIMIT)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
