"""The training plugin's hooks: its own hook specs, its commands, its recipe sections, its
loggers, the number of classes of a recipe read from its training folder, and the split of its demo model."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError, hookimpl

if TYPE_CHECKING:
    from thawkit import Layout, Recipe, Split, ThawkitPluginManager
    from torch import nn


@hookimpl
def thawkit_add_hookspecs(pm: ThawkitPluginManager) -> None:
    from . import hookspecs
    from .schedules import read_schedule

    pm.add_hookspecs(hookspecs)
    pm.collectors["thawkit_register_schedules"] = ("schedule", read_schedule)
    pm.collectors["thawkit_register_loggers"] = ("logger", lambda name, factory: (name, factory))


@hookimpl
def thawkit_register_loggers(register: Any) -> None:
    from .loggers import register_builtin_loggers

    register_builtin_loggers(register)


@hookimpl
def thawkit_register_commands(subparsers: argparse._SubParsersAction) -> None:
    from .commands import add_commands

    add_commands(subparsers)


@hookimpl
def thawkit_recipe_sections(register: Any) -> None:
    from .sections import DataSection, ScheduleSection, TrainSection

    register("schedule", ScheduleSection)
    register("data", DataSection)
    register("train", TrainSection)


def count_classes(directory: str) -> int | None:
    """Number of class folders in an ImageFolder directory, or None if it does not exist."""
    path = Path(directory)
    if not path.is_dir():
        return None
    return sum(1 for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


@hookimpl
def thawkit_infer_num_classes(recipe: Recipe, where: str) -> int | None:
    folder = recipe.section("data").train
    if folder is None:
        return None
    n = count_classes(folder)
    if n is None:
        raise ConfigError(f"{where}: data.train: directory {folder!r} does not exist (needed to "
                          "infer head.num_classes; or set head.num_classes)")
    return n


@hookimpl
def thawkit_split_model(model: nn.Module, layout: Layout, block: str) -> Split | None:
    """The demo's small CNN: stem, three blocks, pooling (with its dropout) and the classifier."""
    if type(model).__name__ != "SmallCNN" or type(model).__module__ != f"{__package__}.demo_model":
        return None
    from thawkit.plugins.split import split_sequential

    steps = [model.stem, model.block1, model.block2, model.block3, *model.pool, model.fc]
    return split_sequential(model, layout, block, steps)
