"""The ``thawkit`` command line: core's commands, plus those plugins add (``thawkit_register_commands``).

Imports nothing heavy until a command runs (``thawkit --help`` stays fast). Each
invocation builds its own plugin manager, with the ``--plugin`` modules, and
hands it to the command as ``args.pm``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plugin_manager import ThawkitPluginManager


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in out)


def _params_text(model: Any, skip: tuple[str, ...] = ("norm",)) -> str:
    parts = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        default = field.get_default(call_default_factory=True)
        parts.append(f"{name}={default!r}" if default is not None else name)
    return ", ".join(parts) or "-"


# ------------------------------------------------------------------ commands
def cmd_strategies(args: argparse.Namespace) -> int:
    pm = args.pm
    reg = pm.strategies
    rows = [[name, reg.entries[name].plugin, reg.get(name).summary(), _params_text(reg.get(name).Params)]
            for name in reg.names()]
    print(_table(rows, ["strategy", "plugin", "description", "params (besides norm)"]))
    print("\nevery strategy also takes norm = frozen (default) | affine | train")
    return 0


def cmd_optimizers(args: argparse.Namespace) -> int:
    pm = args.pm
    reg = pm.optimizers
    print(_table([[n, reg.entries[n].plugin] for n in reg.names()], ["optimizer", "plugin"]))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    pm = args.pm
    rows = [[r["name"], r["version"] or "-", r["distribution"] or "-", ", ".join(r["hooks"])]
            for r in pm.plugin_info(include_builtin=args.all)]
    if rows:
        print(_table(rows, ["plugin", "version", "distribution", "hooks"]))
    else:
        print("no third-party plugins installed (built-ins: thawkit plugins --all)")
    for name, err in pm.load_errors.items():
        print(f"skipped {name}: {err}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from .recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(args.pm), indent=2))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    pm = args.pm
    sources = [args.source] if args.source else [n for n in pm.sources.names()]
    total = 0
    for name in sources:
        src = pm.sources.get(name, where="--source")
        models = src.list_models(args.pattern)
        total += len(models)
        for m in models:
            print(f"{name}:{m}")
    if total == 0:
        print(f"no model matches {args.pattern!r}" if args.pattern else "no models", file=sys.stderr)
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from .api import data_config, describe_layout
    from .backbone import load_backbone

    pm = args.pm
    options: dict[str, Any] = {"device": "meta"} if not args.weights else {"weights": args.weights}
    model = load_backbone(args.spec, pm=pm, **options)
    layout = describe_layout(model, pm=pm, require_head=False)
    if args.json:
        print(json.dumps({"spec": args.spec, "class": type(model).__name__, "layout": layout.to_dict(),
                          "data_config": data_config(model, pm=pm).to_dict()}, indent=2))
        return 0
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    print(f"{args.spec}: {type(model).__name__}, {total:,} parameters, layout from {layout.source}")
    rows = []
    for b in layout.all_blocks:
        n = sum(params[p].numel() for p in b.params)
        mods = ", ".join(b.modules[:4]) + (f" (+{len(b.modules) - 4})" if len(b.modules) > 4 else "")
        rows.append([b.name, b.role, f"{n:,}", str(len(b.params)), mods])
    print(_table(rows, ["block", "role", "params", "tensors", "modules"]))
    print(f"head: classifier {', '.join(layout.classifiers) or '(none: built with num_classes=0)'}"
          + (f"; auxiliary {', '.join(layout.aux)}" if layout.aux else "")
          + (f"; fed by {layout.feeds}" if layout.feeds else ""))
    dc = data_config(model, pm=pm)
    print(f"data: input {tuple(dc.input_size)}, resize {dc.eval_resize} -> crop {dc.image_size}, "
          f"{dc.interpolation}, mean {tuple(round(x, 4) for x in dc.mean)}, "
          f"std {tuple(round(x, 4) for x in dc.std)} ({dc.origin})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .recipe import adapt_recipe, load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set, pm=args.pm)
    adapted = adapt_recipe(recipe, meta=True, where=args.recipe)
    adapted.param_groups(recipe.optimizer)
    if args.json:
        print(adapted.plan.to_json())
    else:
        print(adapted.plan)
    return 0


# -------------------------------------------------------------------- parser
def build_parser(pm: ThawkitPluginManager | None = None) -> argparse.ArgumentParser:
    """The ``thawkit`` parser with core's commands and every plugin's (from ``pm``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="thawkit",
        description="Adapt pretrained vision models to new tasks: strategies, heads, groups, runs.")
    parser.add_argument("--version", action="version", version=f"thawkit {__version__}")
    parser.add_argument("-p", "--plugin", action="append", metavar="MODULE_OR_FILE",
                        help="load an extra plugin (module name or .py file); repeatable")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("strategies", help="list freezing strategies and their parameters")
    p.set_defaults(func=cmd_strategies)
    p = sub.add_parser("optimizers", help="list optimizers by name")
    p.set_defaults(func=cmd_optimizers)
    p = sub.add_parser("plugins", help="list installed plugins and the hooks they implement")
    p.add_argument("--all", action="store_true", help="include the built-in plugins")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("schema", help="print the recipe's JSON Schema (for editor completion)")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("models", help="list models, optionally matching a wildcard pattern")
    p.add_argument("pattern", nargs="?", help="e.g. 'resnet*' or '*vit*'")
    p.add_argument("--source", help="only this source (torchvision, timm, ...)")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("describe", help="print a model's layout, head and data config")
    p.add_argument("spec", help="e.g. torchvision:resnet50 or timm:vit_tiny_patch16_224")
    p.add_argument("--weights", help="load this local weights file (default: build on the meta device)")
    p.add_argument("--json", action="store_true", help="print the layout and data config as JSON")
    p.set_defaults(func=cmd_describe)
    p = sub.add_parser("plan", help="print the plan of a recipe without training")
    p.add_argument("recipe", help="YAML or JSON recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set optimizer.lr=0.01")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)
    if pm is not None:
        pm.hook.thawkit_register_commands(subparsers=sub)
    return parser


def _early(argv: list[str] | None) -> tuple[list[str], str]:
    """The ``--plugin`` modules and the command's name, read ahead of the full parse (a local
    plugin may add commands, and its errors name the command)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("-p", "--plugin", action="append", default=[])
    known, rest = early.parse_known_args(argv)
    words = [w for w in rest if not w.startswith("-")]
    return known.plugin, f"thawkit {words[0]}" if words else "thawkit"


def _plugin_manager(refs: list[str]) -> ThawkitPluginManager:
    """A manager for this invocation, with the ``--plugin`` modules."""
    from .plugin_manager import get_plugin_manager

    pm = get_plugin_manager()
    for ref in refs:
        pm.load_local(ref)
    return pm


def main(argv: list[str] | None = None) -> int:
    """Run the ``thawkit`` command line; returns the exit code (2 for a user's mistake)."""
    from .errors import ThawkitError

    refs, command = _early(argv)
    try:
        pm = _plugin_manager(refs)
        parser = build_parser(pm)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        args.pm = pm
        command = f"thawkit {args.command}"
        return int(args.func(args) or 0)
    except ThawkitError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
