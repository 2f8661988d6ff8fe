"""Gradual unfreezing and layer-wise learning-rate decay inside the Hugging Face Trainer.

A BERT-style classifier, fine-tuned the way ELECTRA and DeBERTa are: the head first, one more
layer every epoch, each layer down the stack at 0.8 times the rate of the one above it, the
embeddings lowest. The model and its word-level tokenizer are tiny and RANDOM (built from a
config and trained in memory here, so nothing is downloaded): the numbers show the mechanics,
not accuracy. With a real model, load it with
``thawkit.load_backbone("transformers:./my-bert", pretrained=True, task="sequence-classification")``.
"""
import random
import tempfile

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (PreTrainedTokenizerFast, PrinterCallback, Trainer, TrainerCallback,
                          TrainingArguments, logging)

import thawkit
from thawkit.plugins.transformers import ThawkitCallback

logging.set_verbosity_error()
torch.manual_seed(0)
WORDS = "the a film plot actor was very not good great bad awful fun boring".split()

# a word-level tokenizer trained in memory
core = Tokenizer(models.WordLevel(unk_token="[UNK]"))
core.pre_tokenizer = pre_tokenizers.Whitespace()
core.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]")

# a tiny random BERT with a 3-class head (num_classes sets config.num_labels and id2label too)
model = thawkit.load_backbone("transformers:bert", task="sequence-classification",
                              vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=64)
adapted = thawkit.adapt(model, "gradual", num_classes=3, every=1)

rng = random.Random(0)
texts = [" ".join(rng.sample(WORDS, 6)) for _ in range(48)]
labels = [("good" in t or "great" in t) + ("bad" in t or "awful" in t) for t in texts]
encoded = tokenizer(texts, padding=True, return_tensors="pt")
data = [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i],
         "labels": labels[i]} for i in range(len(texts))]


class Show(TrainerCallback):
    def on_epoch_begin(self, args, state, control, **kwargs):
        trainable = sum(p.numel() for p in adapted.model.parameters() if p.requires_grad)
        print(f"epoch {round(state.epoch)}: {trainable:,} parameters train "
              f"(phase {adapted.phase}: {adapted.phases[adapted.phase].label})")


with tempfile.TemporaryDirectory() as out:
    args = TrainingArguments(output_dir=out, num_train_epochs=4, per_device_train_batch_size=8,
                             use_cpu=True, report_to=[], disable_tqdm=True, logging_strategy="no",
                             save_strategy="no", seed=0)
    trainer = Trainer(model=adapted.model, args=args, train_dataset=data,
                      optimizers=(adapted.optimizer("adamw", lr=2e-3, layer_decay=0.8), None),
                      callbacks=[ThawkitCallback(adapted), Show()])
    trainer.remove_callback(PrinterCallback)  # its timings differ from run to run
    groups = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups if "no_decay" not in g["name"]}
    print("learning rates:", ", ".join(f"{name} {lr:.2e}" for name, lr in groups.items()))
    trainer.train()
print(adapted.plan.summary())
