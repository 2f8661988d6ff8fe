"""A tiny Hugging Face Trainer job, gradual unfreezing of a random BERT, two ways (benchmark group 7).

* ``hand``: a plain ``Trainer`` with a 15-line callback that flips ``requires_grad`` per epoch
  (the trainable sets thawkit's ``gradual`` computes), and ``torch.optim.AdamW`` over every
  parameter;
* ``thawkit``: ``thawkit.adapt`` + ``adapted.optimizer`` + ``ThawkitCallback``, the documented form.

Same model, data, seed and trainable set at every step; what differs is thawkit's work.
"""
from __future__ import annotations

import tempfile

import torch


def _texts(n: int):
    class Texts(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.ids = torch.randint(3, 99, (n, 16), generator=g)

        def __len__(self):
            return n

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i, 0] % 3}

    return Texts()


def _setup(n: int, epochs: int):
    import thawkit
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = thawkit.load_backbone("transformers:bert", task="sequence-classification", num_labels=3,
                                  vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37)
    out = tempfile.mkdtemp()
    args = transformers.TrainingArguments(
        output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=1e-3,
        seed=0, use_cpu=True, report_to=[], disable_tqdm=True, logging_strategy="no", save_strategy="no")
    return model, args, _texts(n)


def hand(n: int, epochs: int) -> None:
    import thawkit
    from transformers import Trainer, TrainerCallback

    model, args, data = _setup(n, epochs)
    # the same trainable sets, from thawkit.adapt on both sides: what differs is thawkit's
    # grouped optimizer and callback
    sets = thawkit.adapt(model, "gradual", every=1).phases
    model.requires_grad_(True)

    class Thaw(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            epoch = int(state.epoch or 0)
            trainable = max((p for p in sets if p.epoch <= epoch), key=lambda p: p.epoch).trainable
            for name, p in model.named_parameters():
                p.requires_grad_(name in trainable)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    _quiet_train(Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None),
                         callbacks=[Thaw()]))


def with_thawkit(n: int, epochs: int) -> None:
    import thawkit
    from thawkit.plugins.transformers import ThawkitCallback
    from transformers import Trainer

    model, args, data = _setup(n, epochs)
    adapted = thawkit.adapt(model, "gradual", every=1)
    _quiet_train(Trainer(model=adapted.model, args=args, train_dataset=data,
                         optimizers=(adapted.optimizer("adamw", lr=1e-3, weight_decay=0.01), None),
                         callbacks=[ThawkitCallback(adapted)]))


def _quiet_train(trainer) -> None:
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the summary it prints would interleave with the table
    trainer.train()
