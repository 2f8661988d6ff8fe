"""Exporting a run trained with adapters (``lora``, ``loha``, ``lokr``): PEFT's format, or merged.

``thawkit export RUN_DIR OUT`` on such a run writes the directory ``OUT`` with

* ``adapter_model.safetensors`` and ``adapter_config.json``: the adapters in PEFT's format;
* ``head.safetensors``: the new head (thawkit's, not PEFT's ``modules_to_save``), plain names;
* ``config.json``: the backbone spec, its load options (the base weights) and the classes.

``--merge`` (``export_run(..., merge=True)``) instead folds the adapters into the base layers
(:func:`thawkit.plugins.adapters.merge_adapters`) and writes plain weights that
``thawkit.load_backbone`` loads into the plain architecture, checked to give the adapter
model's logits.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thawkit import ConfigError

from ..adapters import adapter_layers, merge_adapters, save_adapters
from .checkpoint import save_weights, write_json

if TYPE_CHECKING:
    from torch import nn

ADAPTER_EXPORT_FORMAT = "thawkit-adapters/1"
FILES = ("adapter_model.safetensors", "adapter_config.json", "head.safetensors", "config.json")


def has_adapters(model: nn.Module) -> bool:
    return bool(adapter_layers(model))


def merge_run(run: Any) -> nn.Module:
    """Merge the adapters of ``run.model`` in place; returns a copy of the unmerged model."""
    if not has_adapters(run.model):
        raise ConfigError(f"export --merge: this run's strategy ({run.recipe.strategy.name}) adds no "
                          "adapters; export it without --merge")
    reference = copy.deepcopy(run.model)
    merge_adapters(run.model)
    return reference


def export_adapters(run: Any, out: str | Path, config: dict[str, Any], *,
                    force: bool = False) -> tuple[Path, Path]:
    """Write the adapters (PEFT's format), the head and the config into the directory ``out``."""
    from .inference import _plain_head

    out = Path(out)
    if out.suffix == ".safetensors":
        raise ConfigError(f"export: this run trained adapters ({run.recipe.strategy.name}); they "
                          f"export to a directory ({', '.join(FILES)}): name a directory instead of "
                          f"{str(out)!r}, or pass --merge for one file of plain weights")
    existing = [str(out / f) for f in FILES if (out / f).exists()]
    if existing and not force:
        raise ConfigError(f"export: {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''};"
                          " choose another OUT or pass --force to overwrite")
    recipe = run.recipe
    weights, _ = save_adapters(run.model, out, base_model=recipe.backbone.spec)
    head = set(run.layout.head.params)
    state = {k: v for k, v in run.model.state_dict().items() if k in head}
    save_weights(out / "head.safetensors", _plain_head(run.model, run.layout, state))
    config = {**config, "format": ADAPTER_EXPORT_FORMAT,
              "base_load_options": recipe.backbone.load_options(),
              "strategy": {"name": recipe.strategy.name, **recipe.strategy.params}}
    write_json(out / "config.json", config)
    return weights, out / "config.json"
