"""Two CPU ranks (gloo) under Lightning's DDP, gradual unfreezing: `python tests/lightning_ddp.py OUT`.

Run by tests/test_lightning.py (a slow test). Lightning starts rank 1 by running this script again; each rank
trains on its own half of the data (Lightning's DistributedSampler) and saves its parameters to
OUT/rank{N}.pt. `--no-rewrap` turns the callback's re-wrap off, to show what it prevents
(the thawed blocks then differ between the ranks). `--lora` trains LoRA adapters (rank 2) and the
head instead, and saves the whole state (buffers too).
"""
import sys

import lightning.pytorch as L
import torch
from test_lightning import BATCH, STEPS, Batches, Classifier

from thawkit.plugins.lightning import ThawkitFinetuning


class DDPClassifier(Classifier):
    def train_dataloader(self):
        data = Batches(seed=1, steps=2 * STEPS)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x, data.y), batch_size=BATCH)

    def on_train_end(self):
        save(self, f"rank{self.global_rank}")


def save(module, name):
    values = module.model.state_dict() if "--lora" in sys.argv else dict(module.model.named_parameters())
    torch.save({k: v.detach().clone() for k, v in values.items()}, f"{sys.argv[1]}/{name}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    if "--lora" in sys.argv:
        callback = ThawkitFinetuning("lora", num_classes=3, rank=2)
    else:
        callback = ThawkitFinetuning("gradual", num_classes=3, every=1)
    if "--no-rewrap" in sys.argv:
        callback.on_train_start = lambda trainer, pl_module: None  # never learns about the DDP wrap
    module = DDPClassifier()
    save(module, "before")
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[callback])
    trainer.fit(module)
