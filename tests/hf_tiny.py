"""Tiny transformers models and a tokenizer, built offline for the tests (random weights)."""
from __future__ import annotations

TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
AUDIO = dict(hidden_size=16, conv_dim=(32, 32, 32), conv_stride=(4, 4, 4), conv_kernel=(8, 8, 8),
             num_hidden_layers=2, num_attention_heads=2, intermediate_size=20, vocab_size=32)
WHISPER = dict(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=20, decoder_ffn_dim=20, num_mel_bins=80,
               vocab_size=99, max_source_positions=30, max_target_positions=30, pad_token_id=0,
               bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
DECODER = dict(TEXT, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)

#: (id, model type, task, config overrides, family) for every family the plugin covers
FAMILIES = [
    ("bert", "bert", "sequence-classification", TEXT),
    ("roberta", "roberta", "sequence-classification", dict(TEXT, pad_token_id=1)),
    ("deberta-v2", "deberta-v2", "sequence-classification",
     dict(TEXT, relative_attention=True, position_buckets=8, norm_rel_ebd="layer_norm",
          pos_att_type=["p2c", "c2p"])),
    ("electra", "electra", "sequence-classification", dict(TEXT, embedding_size=16)),
    ("distilbert", "distilbert", "sequence-classification",
     dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37)),
    ("vit", "vit", "image-classification", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=37, image_size=32, patch_size=8)),
    ("wav2vec2-ctc", "wav2vec2", "ctc", AUDIO),
    ("wav2vec2-stable", "wav2vec2", "audio-classification",
     dict(AUDIO, do_stable_layer_norm=True, feat_extract_norm="layer")),
    ("hubert", "hubert", "audio-classification", AUDIO),
    ("whisper-encoder", "whisper", "audio-classification", WHISPER),
    ("whisper", "whisper", "speech-seq2seq", WHISPER),
    ("llama", "llama", "causal-lm", dict(DECODER, tie_word_embeddings=True)),
    ("mistral", "mistral", "sequence-classification", DECODER),
    ("qwen2", "qwen2", "causal-lm", DECODER),
    ("gpt2", "gpt2", "causal-lm", dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, bos_token_id=1,
                                       eos_token_id=2, pad_token_id=0)),
]
BY_ID = {f[0]: f for f in FAMILIES}


def quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


def build(family: str, pm=None, **extra):
    """The tiny model of ``family`` through the ``transformers:`` source (a model type + sizes)."""
    import thawkit

    quiet()
    _, model_type, task, config = BY_ID[family]
    return thawkit.load_backbone(f"transformers:{model_type}", pm=pm, task=task, **{**config, **extra})


def inputs(family: str, batch: int = 2, seed: int = 0):
    """A batch the model accepts (token ids, pixel values, waveforms or mel features)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    _, model_type, task, _ = BY_ID[family]
    if model_type == "vit":
        return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=g)}
    if model_type in ("wav2vec2", "hubert"):
        return {"input_values": torch.randn(batch, 1024, generator=g)}
    if model_type == "whisper":
        out = {"input_features": torch.randn(batch, 80, 60, generator=g)}
        if task == "speech-seq2seq":
            out["decoder_input_ids"] = torch.randint(3, 99, (batch, 5), generator=g)
        return out
    return {"input_ids": torch.randint(3, 99, (batch, 12), generator=g),
            "attention_mask": torch.ones(batch, 12, dtype=torch.long)}


WORDS = ("the a good bad great awful film movie plot actor was is very not really boring fun "
         "loved hated story scene").split()


def tokenizer(max_length: int = 32):
    """A word-level tokenizer trained in memory, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.train_from_iterator([" ".join(WORDS)] * 3, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", model_max_length=max_length)


def sentences(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` (text, label) pairs: label 1 when the text has 'good' or 'great'."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(WORDS, 5)
        out.append((" ".join(words), int(any(w in ("good", "great", "loved") for w in words))))
    return out
