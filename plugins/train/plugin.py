"""The training plugin's hooks: its own hook specs, its commands, its recipe sections, its
loggers, the number of classes of a recipe read from its training folder, and the split of its demo model."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from thawkit import hookimpl

if TYPE_CHECKING:
    from thawkit import Layout, Recipe, Split, ThawkitPluginManager
    from thawkit.plugins.cli import Commands
    from torch import nn

# The hooks import what they need when called: every thawkit process registers this plugin, and
# `thawkit --help` must stay fast.


@hookimpl
def thawkit_add_hookspecs(pm: ThawkitPluginManager) -> None:
    from . import hookspecs
    from .readers import read_reader
    from .schedules import read_schedule

    pm.add_hookspecs(hookspecs)
    pm.add_collector("thawkit_register_schedules", "schedule", read_schedule)
    pm.add_collector("thawkit_register_loggers", "logger", lambda name, factory: (name, factory))
    pm.add_collector("thawkit_register_readers", "data reader", read_reader)


@hookimpl
def thawkit_register_readers(register: Any) -> None:
    from .readers import ImageReader

    register("images", ImageReader())


@hookimpl
def thawkit_register_loggers(register: Any) -> None:
    from .loggers import register_builtin_loggers

    register_builtin_loggers(register)


@hookimpl
def thawkit_register_commands(subparsers: Commands) -> None:
    from .commands import add_commands

    add_commands(subparsers)


@hookimpl
def thawkit_recipe_sections(register: Any) -> None:
    from .sections import DataSection, ScheduleSection, TrainSection

    register("schedule", ScheduleSection)
    register("data", DataSection)
    register("train", TrainSection)


@hookimpl
def thawkit_infer_num_classes(recipe: Recipe, where: str) -> int | None:
    """The class count of ``data.train``, as the recipe's data reader reads it."""
    if recipe.section("data").train is None:
        return None
    from .readers import reader_for

    return reader_for(recipe).count_classes(recipe, where)


@hookimpl
def thawkit_split_model(model: nn.Module, layout: Layout, block: str) -> Split | None:
    """The demo's small CNN: stem, three blocks, pooling (with its dropout) and the classifier."""
    if type(model).__name__ != "SmallCNN" or type(model).__module__ != f"{__package__}.demo_model":
        return None
    from thawkit import split_sequential

    steps = [model.stem, model.block1, model.block2, model.block3, *model.pool, model.fc]
    return split_sequential(model, layout, block, steps)
