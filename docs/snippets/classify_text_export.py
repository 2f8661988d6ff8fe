"""Classify texts (or audio files) with an exported text (or audio) model, as `thawkit predict` does.

    python docs/snippets/classify_text_export.py reviews/model.safetensors "a good film" "an awful plot"
"""
import sys

import torch
from thawkit.plugins.train import exported_batch, load_exported


def classify(export: str, inputs: list[str]) -> list[str]:
    """The top class of each text (each audio file, for an audio export)."""
    model, config = load_exported(export)  # the model in eval mode, and the export's config
    batch = exported_batch(config)  # texts -> the model's keyword inputs, padded as predict pads
    with torch.no_grad():
        logits = model(**batch(inputs)).logits
    return [config["classes"][i] for i in logits.argmax(1).tolist()]


if __name__ == "__main__":
    for item, name in zip(sys.argv[2:], classify(sys.argv[1], sys.argv[2:])):
        print(f"{item}: {name}")
