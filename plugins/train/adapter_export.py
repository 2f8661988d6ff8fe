"""Exporting a run trained with adapters (``lora``, ``loha``, ``lokr``): PEFT's format, or merged.

``thawkit export RUN_DIR OUT`` on such a run writes the directory ``OUT`` with

* ``adapter_model.safetensors`` and ``adapter_config.json``: the adapters in PEFT's format;
* ``head.safetensors``: the new head (thawkit's, not PEFT's ``modules_to_save``), plain names;
* ``config.json``: the backbone spec, its load options (the base weights) and the classes.

:func:`load_adapter_export` rebuilds the model from it: the base as ``config.json`` says, the
new head, then the adapters. ``--merge`` (``export_run(..., merge=True)``) instead folds the
adapters into the base layers (:func:`thawkit.plugins.adapters.merge_adapters`) and writes
plain weights that
``thawkit.load_backbone`` loads into the plain architecture, checked to give the adapter
model's logits.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import thawkit
from thawkit import ConfigError

from ..adapters import ADAPTER, adapter_layers, merge_adapters, save_adapters
from ..weights import read_weights
from .checkpoint import save_weights, write_json
from .run_model import plain_head

if TYPE_CHECKING:
    from thawkit import ThawkitPluginManager
    from torch import nn

# peft (the `peft` extra) is imported where adapters are loaded, so that a run without adapters
# never needs it.

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
    save_weights(out / "head.safetensors", plain_head(run.model, run.layout, state))
    config = {**config, "format": ADAPTER_EXPORT_FORMAT,
              "base_load_options": recipe.backbone.load_options(),
              "strategy": {"name": recipe.strategy.name, **recipe.strategy.params}}
    write_json(out / "config.json", config)
    return weights, out / "config.json"


def load_adapter_export(directory: str | Path, *,
                        pm: ThawkitPluginManager | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model of an adapter export, in eval mode, and its config: the base loaded with
    ``config["base_load_options"]`` (its pretrained weights), the new head from
    ``head.safetensors``, and the adapters injected and loaded through PEFT. The config has
    ``directory`` added, as :func:`~thawkit.plugins.train.load_exported`'s: ``exported_transform``
    and ``exported_batch`` serve it."""
    from peft import PeftConfig, inject_adapter_in_model, set_peft_model_state_dict

    directory = Path(directory)
    missing = [f for f in FILES if not (directory / f).is_file()]
    if missing:
        raise ConfigError(f"{str(directory)!r} is not an adapter export: it has no {', '.join(missing)}")
    config = json.loads((directory / "config.json").read_text())
    model = thawkit.load_backbone(config["spec"], pm=pm, **config["base_load_options"])
    model, _ = thawkit.replace_head(model, len(config["classes"]), pm=pm)
    head = read_weights(directory / "head.safetensors")
    result = model.load_state_dict(head, strict=False)
    if result.unexpected_keys or set(head) - set(model.state_dict()):
        raise ConfigError(f"{directory / 'head.safetensors'} does not fit the head of {config['spec']}")
    inject_adapter_in_model(PeftConfig.from_pretrained(str(directory)), model, adapter_name=ADAPTER)
    prefix = "base_model.model."
    state = {k[len(prefix):] if k.startswith(prefix) else k: v
             for k, v in read_weights(directory / "adapter_model.safetensors").items()}
    loaded = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    if getattr(loaded, "unexpected_keys", None):
        raise ConfigError(f"{directory / 'adapter_model.safetensors'} holds adapters the config does "
                          f"not describe: {', '.join(loaded.unexpected_keys[:3])}")
    return model.eval(), {**config, "directory": str(directory.resolve())}
