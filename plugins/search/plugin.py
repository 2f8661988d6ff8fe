"""The search plugin's hook: the ``thawkit search`` command (torch and Optuna load when it runs)."""
from __future__ import annotations

import argparse
from typing import Any

from thawkit import ConfigError, hookimpl


def cmd_search(args: argparse.Namespace) -> int:
    import importlib.util

    from thawkit import load_recipe

    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("thawkit search needs Optuna: pip install 'thawkit[search]'")
    from .api import search

    recipe = load_recipe(args.recipe, overrides=list(args.set or []), pm=args.pm)
    output = args.output or f"{recipe.train.output}-search"
    try:
        search(recipe, output=output, budget=args.budget, trials=args.trials,
               strategies=args.strategies, jobs=args.jobs, storage=args.storage, seed=args.seed,
               holdout=args.holdout, train=args.train, confirm=args.confirm)
    except KeyboardInterrupt:
        return 130
    return 0


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


@hookimpl
def thawkit_register_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "search", help="choose strategy and learning rate from evidence, under a budget",
        description="Search the built-in strategies, their learning rates, layer decay and main "
                    "parameters with Optuna, picking on a hold-out carved from data.train; writes "
                    "leaderboard.md, search.json, search.png and best.yaml into --output. Run the same "
                    "command again to continue a stopped or killed search.")
    p.add_argument("recipe", help="YAML or JSON recipe (everything the search does not vary)")
    p.add_argument("--budget", metavar="DURATION", help="wall clock for the whole search: 90s, 10m, 1h")
    p.add_argument("--trials", type=_count, metavar="N", help="stop after N trials")
    p.add_argument("--strategies", metavar="A,B", help="candidates (default: every built-in that applies)")
    p.add_argument("--output", metavar="DIR", help="search folder (default: train.output + '-search')")
    p.add_argument("--jobs", type=_count, default=1, metavar="N", help="worker processes (1)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage shared by workers (default: sqlite:///DIR/study.db; "
                        "postgresql://user:password@host/db for several machines)")
    p.add_argument("--seed", type=_count, default=0, metavar="S", help="sampler and hold-out seed (0)")
    p.add_argument("--holdout", type=float, default=0.2, metavar="F",
                   help="share of data.train held out to pick on (0.2)")
    p.add_argument("--confirm", type=_count, default=2, metavar="N",
                   help="score the best 3 trials again on N more hold-out folds before the pick (2; 0: off)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field; repeatable")
    p.add_argument("--train", action="store_true", help="then train the pick (best.yaml) in full")
    p.set_defaults(func=cmd_search)
