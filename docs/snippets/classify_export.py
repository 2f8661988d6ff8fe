"""Classify images with an exported model and its own preprocessing, as `thawkit predict` does.

    python docs/snippets/classify_export.py digits.safetensors img1.png img2.png
"""
import sys

import torch
from thawkit.plugins.train import exported_transform, load_exported


def classify(export: str, images: list[str]) -> list[str]:
    """The top class of each image."""
    model, config = load_exported(export)  # the model in eval mode, and the export's config
    transform = exported_transform(config)  # a path or a PIL image -> a 3 x H x W tensor
    with torch.no_grad():
        logits = model(torch.stack([transform(image) for image in images]))
    return [config["classes"][i] for i in logits.argmax(1).tolist()]


if __name__ == "__main__":
    for image, name in zip(sys.argv[2:], classify(sys.argv[1], sys.argv[2:])):
        print(f"{image}: {name}")
