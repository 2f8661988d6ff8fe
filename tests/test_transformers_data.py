"""Text tables and audio folders for transformers models: reading, tokenizing, resampling, padding
per batch, and one message for each kind of bad input."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
soundfile = pytest.importorskip("soundfile")

import numpy as np  # noqa: E402
import thawkit  # noqa: E402
import torch  # noqa: E402
from thawkit.plugins.transformers.data import (AudioClassificationData, TextClassificationData,  # noqa: E402
                                               load_audio, read_text_table, scan_audio_folder)

from hf_tiny import quiet, sentences, tokenizer  # noqa: E402


def write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    return path


def test_csv_and_jsonl_read_the_same_rows(tmp_path):
    rows = sentences(6)
    write_csv(tmp_path / "a.csv", rows)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"label": y, "text": t}) + "\n" for t, y in rows))
    expected = ([t for t, _ in rows], [str(y) for _, y in rows])
    assert read_text_table(tmp_path / "a.csv") == expected
    assert read_text_table(tmp_path / "a.jsonl") == expected


@pytest.mark.parametrize("content, message", [
    ("", r"no rows \(an empty file\)"),
    ("text,stars\n\"good film\",5\n", r"no column 'label'; its columns are 'text', 'stars'"),
    ("text,label\n\"good film\",\n", r"row 1 has no 'label'"),
])
def test_bad_csv_gets_one_message_naming_the_file(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(thawkit.ConfigError, match=rf"bad.csv: {message}"):
        read_text_table(tmp_path / "bad.csv")


def test_bad_jsonl_names_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(thawkit.ConfigError, match=r"bad.jsonl: line 2 is not JSON"):
        read_text_table(tmp_path / "bad.jsonl")
    with pytest.raises(thawkit.ConfigError, match="does not exist"):
        read_text_table(tmp_path / "none.csv")


def test_text_data_tokenizes_and_pads_per_batch(tmp_path):
    quiet()
    tok = tokenizer()
    rows = [("good film", "pos"), ("a very very boring awful plot", "neg"), ("fun", "pos")]
    data = TextClassificationData(write_csv(tmp_path / "t.csv", rows), tok, max_length=4)
    assert data.classes == ["neg", "pos"] and len(data) == 3
    assert len(data[1]["input_ids"]) == 4  # truncated to max_length
    batch = data.collate([data[0], data[2]])
    assert batch["input_ids"].shape == (2, 2)  # padded to the longest of this batch only
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["labels"].tolist() == [1, 1]
    with pytest.raises(thawkit.ConfigError, match=r"labels 'meh' are not among the classes 'neg', 'pos'"):
        TextClassificationData(write_csv(tmp_path / "v.csv", [("ok", "meh")]), tok, classes=data.classes)


def tone(path, hz, rate, seconds=0.25):
    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(str(path), (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)


def test_audio_is_resampled_to_the_feature_extractors_rate(tmp_path):
    tone(tmp_path / "a.flac", 440, 8000)
    wave = load_audio(str(tmp_path / "a.flac"), 16000)
    assert wave.dtype == np.float32 and len(wave) == 4000
    peak = np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave)
    assert abs(peak - 440) < 8


def test_audio_folder_feeds_a_wav2vec2_feature_extractor(tmp_path):
    from transformers import Wav2Vec2FeatureExtractor

    for name, hz, rate in (("low", 200, 16000), ("high", 2000, 22050)):
        (tmp_path / name).mkdir()
        tone(tmp_path / name / "1.wav", hz, rate)
        tone(tmp_path / name / "2.flac", hz, rate, seconds=0.1)
    data = AudioClassificationData(tmp_path, Wav2Vec2FeatureExtractor(sampling_rate=16000))
    assert data.classes == ["high", "low"] and len(data) == 4
    batch = data.collate([data[0], data[1]])
    assert batch["input_values"].shape == (2, 4000) and batch["labels"].tolist() == [0, 0]
    assert torch.isfinite(batch["input_values"]).all()


def test_unreadable_or_missing_audio_gets_one_message(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "broken.wav").write_bytes(b"RIFF not really a wav")
    with pytest.raises(thawkit.ConfigError, match=r"broken.wav: not a readable audio file"):
        scan_audio_folder(tmp_path)
    with pytest.raises(thawkit.ConfigError, match="no class sub-directories"):
        scan_audio_folder(tmp_path / "cat")
    (tmp_path / "cat" / "broken.wav").unlink()
    with pytest.raises(thawkit.ConfigError, match="no .wav or .flac files"):
        scan_audio_folder(tmp_path)


def test_a_csv_trains_in_the_trainer_with_per_batch_padding(tmp_path):
    from thawkit.plugins.transformers import thawkit_trainer
    from transformers import TrainingArguments

    quiet()
    tok = tokenizer()
    data = TextClassificationData(write_csv(tmp_path / "t.csv", sentences(16)), tok, max_length=8)
    torch.manual_seed(0)
    model = thawkit.load_backbone("transformers:bert", task="sequence-classification", vocab_size=len(tok),
                                  hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37)
    adapted = thawkit.adapt(model, "last-block", num_classes=len(data.classes), blocks=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=1,
                             per_device_train_batch_size=4, use_cpu=True, report_to=[], disable_tqdm=True,
                             save_strategy="no", logging_strategy="no", remove_unused_columns=False)
    thawkit_trainer(adapted, args, train_dataset=data, data_collator=data.collate).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= adapted.trainable
    assert not changed & set(adapted.layout.stem.params)
