"""Adapt a wav2vec2 speech recognizer (CTC) to new speakers: feature encoder frozen, top layer thawed.

The accent case: the convolutional feature encoder and the lower transformer layers keep their
pretrained weights, the top layer and the CTC head (its vocabulary unchanged) train. The model is
tiny and RANDOM, built from a config (nothing is downloaded), and the "speech" is noise: this shows
what trains and that the rest stays bit-identical, not recognition. With a real checkpoint, load
``thawkit.load_backbone("transformers:./wav2vec2-base-960h", pretrained=True)``.
"""
import torch
from transformers import logging

import thawkit

logging.set_verbosity_error()
torch.manual_seed(0)
model = thawkit.load_backbone("transformers:wav2vec2", task="ctc", vocab_size=32, hidden_size=16,
                              conv_dim=(32, 32, 32), conv_stride=(4, 4, 4), conv_kernel=(8, 8, 8),
                              num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
                              mask_time_prob=0.0)  # SpecAugment off (numpy's unseeded random): reproducible
adapted = thawkit.adapt(model, "last-block", blocks=1)  # no num_classes: the CTC head stays
optimizer = adapted.optimizer("adamw", lr=1e-3)
print(adapted.plan)

before = {n: p.detach().clone() for n, p in model.named_parameters()}
audio = torch.randn(4, 1024)                    # 4 clips of 1,024 samples
labels = torch.randint(1, 32, (4, 3))           # 3 characters each (0 is the CTC blank)
model.train()
for step in range(3):
    loss = model(input_values=audio, labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}: CTC loss {loss.item():.3f}")

changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
encoder = [n for n in before if n.startswith("wav2vec2.feature_extractor.")]
print(f"feature encoder: {len(encoder)} tensors, {sum(n in changed for n in encoder)} changed")
block_of = adapted.layout.block_of()
print("blocks that changed:", ", ".join(sorted({block_of[n] for n in changed})))
