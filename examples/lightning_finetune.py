"""Gradual unfreezing in PyTorch Lightning: the callback and the optimizer helper are all the glue.

Needs `pip install 'thawkit[lightning]'`. Trains a ResNet-18 (random weights and random 32 px
images stand in for yours) for 3 epochs, thawing one more block each epoch, then resumes a second
Trainer from the checkpoint of epoch 0 and checks that it ends with the same weights.
"""
import tempfile

# [lightning]
import lightning.pytorch as L
import thawkit
import torch
import torch.nn.functional as F
from thawkit.plugins.lightning import ThawkitFinetuning, configure_optimizers


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = thawkit.load_backbone("torchvision:resnet18", weights=None)  # weights="DEFAULT"

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loss = F.cross_entropy(self.model(images), labels)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        # named groups (stem, layer1, ..., head) over every parameter that will ever thaw, and a
        # cosine schedule over all of them: a block thaws at the scheduled rate of that moment
        return configure_optimizers(self, "sgd", lr=0.05, momentum=0.9, layer_decay=0.7, schedule="cosine")


def trainer(folder):
    thaw = ThawkitFinetuning("gradual", num_classes=10, every=1)  # adapts Classifier.model in setup
    keep = L.callbacks.ModelCheckpoint(dirpath=folder, filename="{epoch}", save_top_k=-1)
    return L.Trainer(max_epochs=3, accelerator="cpu", callbacks=[thaw, keep], logger=False,
                     enable_progress_bar=False, enable_model_summary=False)
# [end]


def loader():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=8)


folder = tempfile.mkdtemp()
torch.manual_seed(0)
first, module = trainer(folder), Classifier()
first.fit(module, train_dataloaders=loader())
adapted = first.callbacks[0].adapted
print(f"after {first.current_epoch} epochs: phase {adapted.phase}, "
      f"{int(first.callback_metrics['thawkit/trainable_params']):,} parameters train")
print("groups:", ", ".join(g["name"] for g in first.optimizers[0].param_groups))

# a new Trainer resumes from the end of epoch 0: the callback restores the phase by itself
second, again = trainer(folder), Classifier()
second.fit(again, train_dataloaders=loader(), ckpt_path=f"{folder}/epoch=0.ckpt")
same = all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), again.state_dict().values()))
print("resumed run equals the uninterrupted one:", same)
assert same
