"""Heads of transformers models: a new classification head for ``num_classes``, with the config
updated to match; language-model and CTC heads stay (their outputs are the vocabulary)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from thawkit import ConfigError

from .source import TASKS

if TYPE_CHECKING:
    from thawkit import Layout
    from torch import nn

CLASSIFICATION = ("sequence-classification", "audio-classification", "image-classification")


def task_of(model: nn.Module) -> str | None:
    """The task whose Auto class builds exactly ``model``'s class for its config, if any."""
    import transformers

    for task, auto in TASKS.items():
        mapping = getattr(transformers, auto)._model_mapping
        try:
            if mapping[type(model.config)] is type(model):
                return task
        except KeyError:
            continue
    return None


def replace_classifier(model: nn.Module, layout: Layout, num_classes: int, dropout: float) -> nn.Module:
    """Swap the classification head's final Linear for a fresh one with ``num_classes`` outputs and
    set ``config.num_labels`` (which resets ``id2label`` and ``label2id``) and the model's own
    ``num_labels``, which its loss uses."""
    from thawkit import new_classifier, set_submodule

    task = task_of(model)
    name = type(model).__name__
    if task not in CLASSIFICATION:
        what = f"a {task} model" if task else "not a classification model"
        hint = ("it was built without a task head: load it with task=sequence-classification "
                "(or audio-classification, image-classification; backbone.kwargs.task in a recipe)"
                if task == "base" else
                "its head is kept as it is: leave num_classes out, or load it with "
                "task=sequence-classification for a classifier")
        raise ConfigError(f"head.num_classes: {name} is {what}, whose head does not predict classes; {hint}")
    if len(layout.classifiers) != 1:
        raise ConfigError(f"head.num_classes: cannot tell {name}'s classifier "
                          f"(found {layout.classifiers or 'none'})")
    path = layout.classifiers[0]
    set_submodule(model, path, new_classifier(model.get_submodule(path), num_classes, dropout))
    model.config.num_labels = num_classes
    if isinstance(getattr(model, "num_labels", None), int):  # the copy the loss reshapes logits with
        model.num_labels = num_classes
    return model
