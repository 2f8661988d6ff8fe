"""Early stopping as a plugin of ``thawkit train``: stop once val_loss stops improving.

    python examples/early_stopping.py

The rule is an ordinary plugin object: ``train(..., callbacks=[EarlyStopping()])`` registers
it for one run. Published as an entry point, or named in a recipe's ``plugins:`` (as a
module-level ``thawkit_epoch_end``), it would join every run instead.
"""
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import thawkit
from thawkit.plugins.train import Run, train


class EarlyStopping:
    """Stop when val_loss has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, patience=2, min_delta=0.0):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.waited = float("inf"), 0

    @thawkit.hookimpl
    def thawkit_run_start(self, run: Run):
        self.best, self.waited = float("inf"), 0  # a resumed run counts afresh

    @thawkit.hookimpl
    def thawkit_epoch_end(self, run: Run, epoch, metrics):
        if metrics["val_loss"] < self.best - self.min_delta:
            self.best, self.waited = metrics["val_loss"], 0
            return
        self.waited += 1
        if self.waited >= self.patience:  # the run ends after this epoch, with its checkpoint
            run.request_stop(f"val_loss has not improved on {self.best:.4f} for "
                             f"{self.waited} epochs")


def image_folders(root: Path, classes=("red", "green", "blue")) -> Path:
    """``root/{train,val}/<class>/<i>.png``: noise tinted by class, so there is something to learn."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 120, (16, 16, 3))
                pixels[..., c] += 120
                Image.fromarray(pixels.astype("uint8")).save(folder / f"{i}.png")
    return root


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        data = image_folders(Path(tmp) / "data")
        recipe = thawkit.validate_recipe({
            "backbone": {"source": "python", "name": "thawkit.plugins.train.demo_model:small_cnn",
                         "kwargs": {"width": 4}},
            "strategy": {"name": "full"},
            "optimizer": {"name": "adamw", "lr": 0.05},
            "data": {"train": str(data / "train"), "val": str(data / "val"), "image_size": 16,
                     "batch_size": 8},
            "train": {"epochs": 20, "device": "cpu", "output": str(Path(tmp) / "run")}})
        outcome = train(recipe, callbacks=[EarlyStopping(patience=2, min_delta=0.01)],
                        progress_bar=False)
        print(outcome.message.split(";")[0])  # stopped after N of 20 epochs: the rule's reason
