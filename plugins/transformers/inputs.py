"""Example inputs of transformers models (``thawkit_example_input``), from the model's own
``main_input_name`` and config: token ids with an attention mask, a waveform, log-mel features
or images, and the decoder's first tokens for an encoder-decoder model."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

TOKENS = 8  # token ids per text
SAMPLES = 4000  # a quarter second at 16 kHz: enough frames for a wav2vec2 feature encoder


def example_input(model: nn.Module, batch: int) -> dict[str, Any] | None:
    """Random inputs ``model(**inputs)`` takes, or None for an input this does not know."""
    import torch

    config = model.config
    name = getattr(model, "main_input_name", None)
    if name == "input_ids":
        x = {"input_ids": _tokens(config, batch, TOKENS)}
        x["attention_mask"] = torch.ones_like(x["input_ids"])
    elif name == "input_values":
        x = {"input_values": torch.randn(batch, SAMPLES)}
    elif name == "input_features":
        bins = getattr(config, "num_mel_bins", None) or getattr(config, "input_feat_per_channel", 80)
        # Whisper's encoder takes exactly 2 frames per source position (its convolutions' strides)
        frames = 2 * getattr(config, "max_source_positions", 30)
        x = {"input_features": torch.randn(batch, bins, frames)}
    elif name == "pixel_values" and isinstance(getattr(config, "image_size", None), int):
        x = {"pixel_values": torch.randn(batch, getattr(config, "num_channels", 3),
                                         config.image_size, config.image_size)}
    else:
        return None
    if getattr(config, "is_encoder_decoder", False):
        start = getattr(config, "decoder_start_token_id", None)
        x["decoder_input_ids"] = _tokens(config, batch, 4) if start is None else \
            torch.full((batch, 4), int(start))
    return x


def _tokens(config: Any, batch: int, length: int) -> Any:
    """Ids in the vocabulary, none the pad id (a classifier on a decoder reads the last token
    that is not padding)."""
    import torch

    vocab = int(config.vocab_size)
    ids = torch.randint(0, vocab, (batch, length))
    pad = getattr(config, "pad_token_id", None)
    if pad is not None:
        ids[ids == pad] = (int(pad) + 1) % vocab
    return ids
