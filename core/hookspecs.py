"""Every hook thawkit defines, in the order a run meets them. Read this file first.

A plugin is any module or object with functions decorated by :data:`hookimpl`
and named after a hook below. Built-in support (torchvision, timm, the
strategies, the optimizers, the training loop) is written as ordinary plugins,
registered before any third-party plugin.

Two kinds of hook, and one ordering rule for each:

* **collector hooks** (``thawkit_register_sources``, ``_strategies``, ``_optimizers``,
  ``thawkit_recipe_sections``) are handed a ``register`` callable. Plugins are called
  in registration order
  (built-ins first, then entry points, then runtime registrations), so a later
  plugin can override an earlier name with ``register(..., replace=True)``;
  the same name from two plugins without ``replace`` is an error naming both.
* **decision hooks** are ``firstresult``: pluggy asks the newest plugin first and
  the first non-``None`` answer wins, so a third-party plugin overrides a
  built-in by answering. The generic fallbacks (the built-in plugin ``thawkit.fallbacks``) are
  the only ``trylast`` implementations: they answer when no one else does.

``thawkit_adapted`` calls every plugin (newest first). Plugins may add hooks of their own
through :func:`thawkit_add_hookspecs`: the command-line plugin adds
``thawkit_register_commands`` that way, the training plugin ``thawkit_register_schedules``,
``thawkit_register_loggers`` and the events of a run (``thawkit_run_start``, ``thawkit_epoch_end``...).

Failures are contained: an exception other than a :class:`thawkit.ThawkitError`
in any implementation reaches the caller as a :class:`thawkit.PluginError` naming
the plugin and the hook, chained to the original. Raise ``ThawkitError``
subclasses (``ConfigError``, ``UnknownNameError``...) for a user's mistake. A
collector hook that raises, or registers a name another plugin has, unloads its
plugin as a whole. ``thawkit.plugins.testing`` checks each contract below.

Every hook's example is its part of ``examples/tiny_zoo.py``, one complete plugin that
implements them all and that the tests run; the hook reference (docs/hooks.md) shows
each part beside its hook.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from .adapted import Adapted
    from .backbone import BackboneSpec, DataConfig
    from .layout import Layout, Split
    from .plugin_manager import ThawkitPluginManager
    from .recipe import Recipe

#: Marks a function as the specification of a hook (thawkit's own use).
hookspec = pluggy.HookspecMarker("thawkit")
#: Marks a plugin's function as the implementation of a hook: ``@thawkit.hookimpl``.
hookimpl = pluggy.HookimplMarker("thawkit")


# -------------------------------------------------------------------------------------------
# plugin setup: extra hooks, recipe sections and files
# -------------------------------------------------------------------------------------------


@hookspec(historic=True)
def thawkit_add_hookspecs(pm: ThawkitPluginManager) -> None:
    """Add a plugin's own hook specifications to the plugin manager.

    Parameters:
        pm: the plugin manager; call ``pm.add_hookspecs(module_with_specs)``.

    Returns: nothing (all implementations are called). Historic: a plugin registered
    later is called on registration, so its specs exist before any plugin that
    implements them is validated.
    """


@hookspec
def thawkit_recipe_sections(register: Callable[..., None]) -> None:
    """Add top-level sections to the recipe (the training plugin adds ``data``, ``train`` and
    ``schedule``).

    Parameters:
        register: call ``register(name, model, replace=False)`` where ``model`` is a pydantic
            model whose fields all have defaults. The recipe validates the section with it
            (unknown keys are errors naming the field path). If the model defines
            ``resolve(self, pm, where) -> None`` it is called after validation, to check names
            against registries; it raises :class:`thawkit.ConfigError`.

    Returns: nothing (all implementations are called). Core's own sections
    (``backbone``, ``head``, ``strategy``, ``optimizer``, ``plugins``) cannot be replaced.
    """


@hookspec(firstresult=True)
def thawkit_read_recipe(path: Path, overrides: list[str]) -> dict[str, Any] | None:
    """Read a recipe file into a mapping, with ``--set`` overrides applied, for validation.

    Parameters:
        path: the recipe file as the user named it (``thawkit.load_recipe``, ``thawkit train``).
        overrides: ``key.path=value`` items from ``--set``, applied in order; the value is
            written in the file format's own syntax.

    Returns: the recipe as a mapping (core validates it), or ``None`` for a file this plugin
    does not read (decide by the suffix). First non-None result wins; the built-in reader
    (plugin ``thawkit.recipe_files``: JSON for ``.json``, YAML for any other file) is asked
    last.

    Contract: reads only ``path`` and changes nothing; a missing, unreadable or malformed
    file, or a bad override, raises :class:`thawkit.ConfigError` naming the file (line and
    column where there are some) or the override. Bound what a document may expand to.
    ``thawkit.plugins.testing.check_recipe_reader`` checks it.
    """


# -------------------------------------------------------------------------------------------
# loading a backbone
# -------------------------------------------------------------------------------------------


@hookspec
def thawkit_register_sources(register: Callable[..., None]) -> None:
    """Register backbone sources: the part before the colon in ``"torchvision:resnet18"``.

    Parameters:
        register: call ``register(name, source, replace=False)``. ``source`` is an
            object with ``load(name: str, options: dict) -> nn.Module`` and
            ``list_models(pattern: str | None = None) -> list[str]``; it may also
            define ``description: str``, and ``arch_options(name, options) -> dict``: the
            builder options that rebuild what ``load`` built without its weights
            (recorded in the model's spec, read by :func:`thawkit.arch_options`), and
            ``local_names = True`` when a name may be a local directory (``thawkit train``
            then keeps it absolute in the run's recipe, so ``--resume`` works from anywhere).

    Returns: nothing (all implementations are called).

    Contract: ``list_models`` returns the loadable names (distinct), filtered by an
    ``fnmatch`` pattern. ``load`` does not change ``options``; it honours
    ``device="meta"`` (build without memory, read no weights: plans use it) and
    passes other keys to the builder; an unknown name raises
    :class:`thawkit.UnknownNameError` (with the known names, for the closest).
    """


@hookspec(firstresult=True)
def thawkit_data_config(model: nn.Module, spec: BackboneSpec | None) -> DataConfig | None:
    """The input a backbone expects: size, mean/std, interpolation and crop fraction.

    Parameters:
        model: the backbone.
        spec: how it was loaded, or ``None``.

    Returns: a :class:`thawkit.DataConfig`, or ``None`` if this plugin does not know the
    model. First non-None result wins; core falls back to 224 px ImageNet statistics.
    ``input_size`` is (channels, height, width) that the model's forward accepts.
    """


@hookspec(firstresult=True)
def thawkit_example_input(model: nn.Module, spec: BackboneSpec | None, batch: int) -> Any:
    """A batch of inputs that ``model``'s forward takes, for checks that run the model.

    Parameters:
        model: the backbone (its head possibly replaced), on the CPU.
        spec: how it was loaded, or ``None``.
        batch: the number of examples in the batch.

    Returns: a tensor (called as ``model(x)``) or a mapping of tensors (called as
    ``model(**x)``), with random values drawn from torch's global generator; or ``None``
    if this plugin does not know the model. First non-None result wins; without an
    answer, a model takes images of :func:`thawkit_data_config`'s ``input_size``. A
    model whose input is not one image tensor (token ids and an attention mask, a
    waveform) needs a plugin's answer here.
    """


# -------------------------------------------------------------------------------------------
# describing a model
# -------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def thawkit_describe_layout(model: nn.Module, spec: BackboneSpec | None) -> Layout | None:
    """Describe ``model``'s layout: stem, ordered blocks, neck, head and classifier path(s).

    Parameters:
        model: the backbone (possibly on the meta device).
        spec: how it was loaded (source, name, options), or ``None`` for a model the
            user built themselves.

    Returns: a :class:`thawkit.Layout` for models this plugin knows, else ``None``.
    First non-None result wins; the generic fallback plugin (last ``nn.Linear`` is the
    head, top-level children are blocks) answers last for any ``nn.Module``.

    Contract: every parameter of ``model`` in exactly one block (checked by
    :meth:`thawkit.Layout.validate`), block names unique, at least one block, ordered
    input to output; the head holds the classifier's parameters and ``classifiers``
    names its module path(s). Reads names and shapes only (meta models), changes
    nothing, and describes the same model the same way every time.
    """


# -------------------------------------------------------------------------------------------
# adapting: new head, strategy, num_classes from a recipe
# -------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def thawkit_replace_head(
    model: nn.Module, layout: Layout, num_classes: int, dropout: float, keep_aux: bool
) -> nn.Module | None:
    """Replace the final classifier(s) of ``model`` with fresh ones for ``num_classes``.

    Parameters:
        model: the backbone, modified in place.
        layout: its layout (``layout.classifiers`` names the module paths).
        num_classes: number of outputs of the new head.
        dropout: probability of a dropout inserted before the new classifier (0: none).
        keep_aux: keep auxiliary heads (googlenet, inception), replaced as well,
            instead of removing them.

    Returns: the adapted model (usually ``model`` itself) when this plugin handled it,
    else ``None``. First non-None result wins; the generic fallback replaces an
    ``nn.Linear`` or 1x1 ``nn.Conv2d`` classifier on the same device and dtype.

    Contract: the model then outputs ``num_classes`` scores, its new head sits on the
    backbone's device and dtype (meta included), and its layout (described again) has
    the new classifier's parameters in the head.
    """


@hookspec
def thawkit_register_strategies(register: Callable[..., None]) -> None:
    """Register freezing strategies, picked by name in ``adapt()`` and recipes.

    Parameters:
        register: call ``register(StrategyClass, replace=False)``. The class subclasses
            :class:`thawkit.Strategy` and sets ``name``, ``description`` and,
            optionally, ``Params`` (a pydantic model validating its parameters).

    Returns: nothing (all implementations are called).

    Contract: :class:`thawkit.Strategy` states it (what ``phases()`` receives and
    returns, the head that always trains, the neck, norm layers, ``thaw_order``).
    """


@hookspec(firstresult=True)
def thawkit_infer_num_classes(recipe: Recipe, where: str) -> int | None:
    """The number of classes of a recipe whose ``head.num_classes`` is omitted.

    Parameters:
        recipe: the validated recipe.
        where: the recipe's file name, for error messages.

    Returns: the number of classes, or ``None`` when this plugin cannot tell. First
    non-None result wins. The training plugin counts the class folders of
    ``data.train`` (and raises :class:`thawkit.ConfigError` when that folder is missing).
    """


@hookspec
def thawkit_adapted(adapted: Adapted) -> None:
    """Called once ``adapt()`` has replaced the head and applied the strategy's first phase.

    Parameters:
        adapted: the :class:`thawkit.Adapted` object (model, layout, plan, strategy).

    Returns: nothing; use it to log, wrap or check. All implementations are called.
    """


# -------------------------------------------------------------------------------------------
# optimizing: optimizers, weight decay, layer-wise learning rates
# -------------------------------------------------------------------------------------------


@hookspec
def thawkit_register_optimizers(register: Callable[..., None]) -> None:
    """Register optimizers by name.

    Parameters:
        register: call ``register(name, factory, replace=False)`` where
            ``factory(param_groups: list[dict], **kwargs) -> torch.optim.Optimizer``;
            each group carries its own ``lr`` and ``weight_decay``. Names that take a slow
            import to list go through ``register.defer(contribute)``: ``contribute()`` returns
            ``(name, factory)`` pairs and runs only when a name no other plugin registers is
            asked for, or the list is shown (the timm plugin defers its optimizers).

    Returns: nothing (all implementations are called).

    Contract: the optimizer holds the groups as given (same order, parameters, names,
    ``lr`` and ``weight_decay``: ``kwargs`` are defaults only), leaves parameters
    without a gradient untouched, and restores from its ``state_dict()``.
    """


@hookspec
def thawkit_no_weight_decay(model: nn.Module) -> list[str] | None:
    """Parameter names (fnmatch patterns allowed) that must not be weight-decayed.

    Biases, normalisation weights and 1-D parameters are never decayed anyway; this
    hook adds model-specific names such as ``pos_embed`` or ``cls_token``.

    Parameters:
        model: the adapted model (head already replaced).

    Returns: an iterable of names or ``None``; results of all plugins are merged.
    The generic fallback returns ``model.no_weight_decay()`` when the model
    defines it (timm's convention).
    """


@hookspec(firstresult=True)
def thawkit_layer_scales(
    model: nn.Module, layout: Layout, layer_decay: float, min_scale: float
) -> dict[str, float] | None:
    """Learning-rate scale of every parameter under layer-wise LR decay.

    Parameters:
        model, layout: the adapted model and its layout.
        layer_decay: the decay factor (scale = layer_decay ** distance from the head).
        min_scale: lower bound on any scale.

    Returns: ``{param_name: scale}`` covering every parameter, or ``None``. First
    non-None result wins; the generic fallback uses the layout's blocks (stem, blocks,
    neck+head). The timm plugin answers with timm's fine ``group_matcher`` so scales
    equal ``timm.optim.param_groups_layer_decay``. Scales lie in ``[min_scale, 1]``,
    the head's is 1, and they never grow from the head towards the stem.
    """


# -------------------------------------------------------------------------------------------
# training: computing what stays frozen once (feature caching)
# -------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def thawkit_split_model(model: nn.Module, layout: Layout, block: str) -> Split | None:
    """Cut ``model`` just below block ``block`` into a ``prefix`` and the ``rest``.

    thawkit asks for the split below the lowest block that trains in a phase
    (:func:`thawkit.plugins.split.frozen_prefix`); when the prefix is frozen, its output is
    computed once per phase and cached instead of at every step.

    Parameters:
        model: the adapted model (head already replaced), possibly on the meta device.
        layout: its layout; ``block`` names one of ``layout.all_blocks``.
        block: the block the rest starts with: the prefix is everything the forward pass
            runs before that block's first layer. ``"head"`` asks for the pre-logits features.

    Returns: a :class:`thawkit.Split` with ``rest(prefix(x)) == model(x)`` in eval mode,
    whose ``prefix`` registers every module and parameter it runs (thawkit checks that
    they are frozen, that norms keep fixed statistics and that no dropout is active), or
    ``None`` when this plugin cannot split the model there. First non-None result wins;
    core has no fallback: without an answer there is no cache, never a wrong one.
    :func:`thawkit.plugins.split.split_sequential` builds a split from the steps of a
    forward pass.
    """
