"""The built-in inspection commands: ``strategies``, ``optimizers``, ``plugins``, ``schema``,
``models``, ``describe`` and ``plan``, contributed like any plugin's commands."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Literal

from thawkit import hookimpl

if TYPE_CHECKING:
    from thawkit import ThawkitPluginManager
    from thawkit.plugins.cli import Commands


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in out)


def _params_text(model: Any, skip: tuple[str, ...] = ("norm", "frozen_dropout")) -> str:
    parts = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        default = field.get_default(call_default_factory=True)
        parts.append(f"{name}={default!r}" if default is not None else name)
    return ", ".join(parts) or "-"


def cmd_strategies(args: argparse.Namespace) -> int:
    pm = args.pm
    reg = pm.strategies
    rows = [[name, reg.entries[name].plugin, reg.get(name).summary(), _params_text(reg.get(name).Params)]
            for name in reg.names()]
    print(_table(rows, ["strategy", "plugin", "description", "params (besides norm, frozen_dropout)"]))
    print("\nevery strategy also takes norm = frozen (default) | affine | train "
          "and frozen_dropout = keep (default) | off")
    return 0


def cmd_optimizers(args: argparse.Namespace) -> int:
    pm = args.pm
    reg = pm.optimizers
    print(_table([[n, reg.entries[n].plugin] for n in reg.names()], ["optimizer", "plugin"]))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    import os

    pm = args.pm
    rows = [[r["name"], r["version"] or "-", r["distribution"] or "-", ", ".join(r["hooks"])]
            for r in plugin_info(pm, include_builtin=args.all)]
    if rows:
        print(_table(rows, ["plugin", "version", "distribution", "hooks"]))
    elif pm.hidden:
        print("no third-party plugins loaded (built-ins: thawkit plugins --all)")
    else:
        print("no third-party plugins installed (built-ins: thawkit plugins --all)")
    if pm.hidden:
        n = len(pm.hidden)
        setting = os.environ.get("THAWKIT_PLUGINS", "")
        print(f"{n} installed plugin{'s are' if n > 1 else ' is'} hidden by THAWKIT_PLUGINS="
              f"{setting!r}: {', '.join(sorted(pm.hidden))} (name them there, or unset it, to load them)")
    for err in pm.load_errors.values():
        print(f"not loaded: {err}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(recipe_json_schema(args.pm), indent=2))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    pm = args.pm
    sources = [args.source] if args.source else [n for n in pm.sources.names()]
    total = 0
    for name in sources:
        src = pm.sources.get(name, where="--source")
        with pm.guard(pm.sources.entries[name].plugin, f"source {name!r}: list_models()"):
            models = src.list_models(args.pattern)
        total += len(models)
        for m in models:
            print(f"{name}:{m}")
    if total == 0:
        print(f"no model matches {args.pattern!r}" if args.pattern else "no models", file=sys.stderr)
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from thawkit import data_config, describe_layout, load_backbone

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
    none = "(none of its own: see below)" if layout.notes else "(none: built with num_classes=0)"
    print(f"head: classifier {', '.join(layout.classifiers) or none}"
          + (f"; auxiliary {', '.join(layout.aux)}" if layout.aux else "")
          + (f"; fed by {layout.feeds}" if layout.feeds else ""))
    for note in layout.notes:
        print(note)
    dc = data_config(model, pm=pm)
    print(f"data: input {tuple(dc.input_size)}, resize {dc.eval_resize} -> crop {dc.image_size}, "
          f"{dc.interpolation}, mean {tuple(round(x, 4) for x in dc.mean)}, "
          f"std {tuple(round(x, 4) for x in dc.std)} ({dc.origin})")
    return 0


#: Steps per epoch the plan's schedule check assumes (the data set decides them in a run).
PLAN_STEPS = 1000


def cmd_plan(args: argparse.Namespace) -> int:
    from thawkit import adapt_recipe, load_recipe

    from ._builders import optimizer_errors

    recipe = load_recipe(args.recipe, overrides=args.set, pm=args.pm)
    notes: list[str] = []
    if "train" in args.pm.recipe_sections and "data" in args.pm.recipe_sections:
        from thawkit.plugins.train.preflight import preflight

        # train's dry run: every check it makes before its first step, in the same words (the
        # data folders' too, unless --no-data or the recipe names none: a model-only recipe)
        folders = recipe.section("data").train or recipe.section("data").val
        notes = preflight(recipe, data=bool(folders) and not args.no_data).warnings
    adapted = adapt_recipe(recipe, meta=True, where=args.recipe)
    # the optimizer as train builds it (over the meta parameters), for its own checks of its
    # settings; not through adapted.optimizer(), which lists every plugin's optimizers (timm's too)
    pm, settings = recipe.plugin_manager, recipe.optimizer
    factory = pm.optimizers.get(settings.name, where="optimizer.name")
    groups = adapted.param_groups(settings)
    with optimizer_errors(settings.name, settings.kwargs):
        optimizer = factory(groups, lr=settings.lr, weight_decay=settings.weight_decay, **settings.kwargs)
    cache = []
    if "train" in pm.recipe_sections and "data" in pm.recipe_sections:
        from thawkit.plugins.train.session import make_scheduler

        make_scheduler(recipe, optimizer, PLAN_STEPS)  # the schedule's checks too
        # the training plugin's feature cache: per phase, on (what, how big) or off (why)
        from thawkit.plugins.train.cache import plan_decisions, summary_lines

        cache = plan_decisions(recipe, adapted)
    if args.json:
        print(json.dumps({**adapted.plan.to_dict(), "cache": [d.to_dict() for d in cache],
                          "warnings": notes}, indent=2))
    else:
        print(adapted.plan)
        for line in [*summary_lines(cache), *(f"warning: {note}" for note in notes)]:
            print(line)
    return 0


def plugin_info(pm: ThawkitPluginManager, include_builtin: bool = False) -> list[dict[str, Any]]:
    """Name, version, source and implemented hooks of every registered plugin."""
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked by name
            continue
        builtin = name in pm.builtin_names
        if builtin and not include_builtin:
            continue
        dist, version = pm.distribution(name)
        if builtin:
            from thawkit import __version__
            dist, version = "thawkit", __version__
        hooks = sorted(h.name for h in (pm.get_hookcallers(plugin) or []))
        rows.append({"name": name, "version": version, "distribution": dist,
                     "builtin": builtin, "hooks": hooks})
    return rows


def recipe_json_schema(pm: ThawkitPluginManager | None = None) -> dict[str, Any]:
    """JSON Schema of a recipe, with one alternative per registered strategy (for editors)."""
    from typing import Annotated, Union

    from pydantic import ConfigDict, Discriminator, Field, create_model
    from thawkit import default_plugin_manager, recipe_model

    pm = pm or default_plugin_manager()
    variants = []
    for name in pm.strategies.names():
        cls = pm.strategies.get(name)
        variants.append(create_model(
            f"Strategy_{name.replace('-', '_')}", __base__=cls.Params,
            name=(Literal[name], Field(description=cls.summary())),  # type: ignore[valid-type]
        ))
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in recipe_model(pm).model_fields.items()}
    if variants:
        union = Annotated[Union[tuple(variants)], Discriminator("name")]  # type: ignore[valid-type]  # noqa: UP007
        fields["strategy"] = (union, Field(description="Freezing strategy and its parameters."))
    model = create_model("ThawkitRecipe", __config__=ConfigDict(extra="forbid"), **fields)
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "thawkit recipe"
    return schema


@hookimpl
def thawkit_register_commands(subparsers: Commands) -> None:
    sub = subparsers
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
    p.add_argument("--no-data", action="store_true",
                   help="plan without the data folders (not here yet): all of train's checks but "
                        "theirs; the class count comes from head.num_classes")
    p.set_defaults(func=cmd_plan)
