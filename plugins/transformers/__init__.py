"""Hugging Face transformers support: the ``transformers:`` source, layouts, heads and the
``Trainer`` callback (the extra ``thawkit[transformers]``).

Loading (nothing is ever downloaded; see :mod:`.source`)::

    thawkit.load_backbone("transformers:./my-bert", pretrained=True, task="sequence-classification")
    thawkit.load_backbone("transformers:bert", task="sequence-classification",
                          hidden_size=32, num_hidden_layers=2, num_attention_heads=4)   # config only

Layouts come from the model's own structure (:mod:`.layout`): the embeddings are the stem, each
layer of the stack(s) a block, a final norm the neck, the task head the head.
``num_classes`` replaces a classification head and sets ``config.num_labels`` (:mod:`.heads`).

Inside the Hugging Face ``Trainer``::

    from thawkit.plugins.transformers import ThawkitCallback

    adapted = thawkit.adapt(model, "gradual", num_classes=3, every=1)
    trainer = Trainer(model=adapted.model, args=args, train_dataset=ds,
                      optimizers=(adapted.optimizer("adamw", lr=2e-5, layer_decay=0.8), None),
                      callbacks=[ThawkitCallback(adapted)])

This module imports neither torch nor transformers until a hook is called: a model is a
transformers model only when transformers is already imported.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from thawkit import hookimpl

if TYPE_CHECKING:
    from thawkit import BackboneSpec, DataConfig, Layout
    from torch import nn

__all__ = ["ThawkitCallback", "thawkit_trainer"]


def __getattr__(name: str) -> Any:
    # the callback needs transformers at import: loaded when asked for, never by the plugin manager
    if name in __all__:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _known(model: Any) -> bool:
    from .layout import is_transformers

    return is_transformers(model)


@hookimpl
def thawkit_register_sources(register: Callable[..., None]) -> None:
    from .source import TransformersSource

    register("transformers", TransformersSource())


@hookimpl
def thawkit_register_readers(register: Callable[..., None]) -> None:
    """``data.reader: text`` (CSV or JSON Lines) and ``audio`` (a folder per class of WAV/FLAC)."""
    from .readers import AudioReader, TextReader

    register("text", TextReader())
    register("audio", AudioReader())


@hookimpl
def thawkit_describe_layout(model: nn.Module, spec: BackboneSpec | None) -> Layout | None:
    """Stem (embeddings), the layers of each stack, neck (final norm) and the task head."""
    if not _known(model):
        return None
    from .layout import describe

    return describe(model)


@hookimpl
def thawkit_replace_head(model: nn.Module, layout: Layout, num_classes: int, dropout: float,
                         keep_aux: bool) -> nn.Module | None:
    """A fresh classifier (``classifier``, ``score``...) and ``config.num_labels``; other heads refuse."""
    if not _known(model):
        return None
    from .heads import replace_classifier

    return replace_classifier(model, layout, num_classes, dropout)


@hookimpl
def thawkit_data_config(model: nn.Module, spec: BackboneSpec | None) -> DataConfig | None:
    """Vision models: the config's ``image_size`` and ``num_channels``, mean and std 0.5 (the
    ViT image processor's); text and speech models have no image input: the default answers."""
    if not _known(model):
        return None
    config = model.config
    size = getattr(config, "image_size", None)
    if not isinstance(size, int):
        return None
    from thawkit import DataConfig

    channels = int(getattr(config, "num_channels", 3))
    return DataConfig(input_size=(channels, size, size), mean=(0.5,) * channels, std=(0.5,) * channels,
                      crop_pct=1.0, origin="transformers config (image_size), ViT image processor statistics")


@hookimpl
def thawkit_example_input(model: nn.Module, spec: BackboneSpec | None, batch: int) -> Any:
    """Token ids and an attention mask, a waveform, log-mel features or images, as the model's
    ``main_input_name`` says (:mod:`.inputs`)."""
    if not _known(model):
        return None
    from .inputs import example_input

    return example_input(model, batch)


@hookimpl
def thawkit_no_weight_decay(model: nn.Module) -> list[str] | None:
    """Learned special-token vectors (ViT's ``cls_token`` and ``mask_token``, wav2vec2's
    ``masked_spec_embed``), as timm excludes them; biases and norms are never decayed anyway."""
    if not _known(model):
        return None
    return ["*cls_token", "*mask_token", "*masked_spec_embed"]
