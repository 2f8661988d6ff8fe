"""One rank of a 2-process Hugging Face Trainer run (gloo, CPU) with gradual thawing; started by
tests/test_transformers_trainer.py through torchrun. Writes this rank's parameters to OUT/rank<N>.pt.

``--naive`` leaves out what the callback does before the Trainer wraps the model, so DDP registers
only the parameters of phase 0: the test shows that the ranks then drift apart.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

import thawkit  # noqa: E402
from hf_tiny import build, quiet  # noqa: E402
from thawkit.plugins.transformers import ThawkitCallback  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402


class Texts(torch.utils.data.Dataset):
    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, 99, (n, 10), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i, 0] % 3}


def main(out, naive):
    quiet()
    torch.manual_seed(0)
    adapted = thawkit.adapt(build("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                            "gradual", num_classes=3, every=1)
    callback = ThawkitCallback(adapted)
    if naive:
        callback.on_init_end = lambda *a, **k: None
    args = TrainingArguments(output_dir=out, num_train_epochs=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, seed=0, use_cpu=True, ddp_backend="gloo", report_to=[],
                             disable_tqdm=True, logging_strategy="no", save_strategy="no")
    trainer = Trainer(model=adapted.model, args=args, train_dataset=Texts(),
                      optimizers=(adapted.optimizer("adamw", lr=1e-2), None), callbacks=[callback])
    trainer.train()
    rank = int(os.environ["RANK"])
    torch.save({n: p.detach().clone() for n, p in adapted.model.named_parameters()},
               os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], "--naive" in sys.argv)
