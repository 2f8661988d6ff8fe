"""Exports of text and audio runs used from your own code: ``load_exported`` and the export's
``exported_batch`` / ``exported_transform`` give the model the inputs ``thawkit predict`` gives it
(same probabilities), from the export alone (its tokenizer or feature extractor saved beside the
weights); bad input is one ConfigError. Tiny random models, one short run per reader."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("transformers")
pytest.importorskip("soundfile")

import thawkit  # noqa: E402
import torch  # noqa: E402
from thawkit.plugins.train import (  # noqa: E402
    export_run,
    exported_batch,
    exported_transform,
    load_exported,
    predict,
    train,
)

from test_transformers_cli import audio_recipe, text_recipe, tone  # noqa: E402

TEXTS = ["good", "a good film", "the plot was really boring and the actor was not fun at all",
         "awful", "loved the story"]


def one_epoch_run(root: Path, make) -> Path:
    recipe = make(root)
    data = yaml.safe_load(recipe.read_text())
    data["train"]["epochs"] = 1
    recipe.write_text(yaml.safe_dump(data))
    outcome = train(thawkit.load_recipe(str(recipe)), run_dir=root / "run", log=lambda s: None)
    assert outcome.status == "finished"
    return root / "run"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    return one_epoch_run(tmp_path_factory.mktemp("text"), text_recipe)


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    run = one_epoch_run(root, audio_recipe)
    for i, seconds in enumerate((0.05, 0.2, 0.12)):  # clips of three lengths, two rates
        tone(root / f"clip{i}.wav", 300 + 700 * i, 8000 if i == 1 else 16000, seconds)
    return run


def probabilities(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits.float().softmax(1)


def assert_same_as_predict(predicted: list, probs: torch.Tensor, classes: list[str]):
    """``predict``'s answers (all classes) are these probabilities."""
    for (item, top), row in zip(predicted, probs, strict=True):
        assert len(top) == len(classes)
        assert [name for name, _ in top] == [classes[i] for i in row.argsort(descending=True)], item
        assert [p for _, p in top] == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-6)


@contextlib.contextmanager
def only_the_export(run: Path, items: list[str]):
    """Yields predict's inputs and answers for ``items``, then leaves only the model's config
    (and weights) in the backbone directory: the tokenizer or feature extractor the run used is
    gone, so only the export's own copy can serve, until the block ends."""
    from thawkit.plugins.train.run_model import load_run_model

    model = load_run_model(run)
    expected = model.reader.predict_inputs(items, model.prep, model.recipe)
    predicted = predict(run, items, top_k=2)
    backbone = Path(model.recipe.backbone.name)
    hidden = [f for f in backbone.iterdir() if f.name not in ("config.json", "model.safetensors")]
    for f in hidden:
        f.rename(f.with_name(f".hidden-{f.name}"))
    try:
        yield expected, predicted
    finally:
        for f in hidden:
            f.with_name(f".hidden-{f.name}").rename(f)


def test_text_export_batch_gives_predicts_probabilities(text_run, tmp_path):
    out = tmp_path / "reviews"
    weights, config_path = export_run(text_run, out)
    config = json.loads(config_path.read_text())
    assert config["reader"] == "text"
    # the tokenizer is saved in the export, recorded relative to it
    assert config["preprocess"]["tokenizer"] == "preprocess"
    assert (out / "preprocess" / "tokenizer_config.json").is_file()
    assert config["preprocess"]["max_length"] == 8

    with only_the_export(text_run, TEXTS) as (expected, predicted):
        model, loaded = load_exported(weights)
        assert loaded["directory"] == str(out.resolve())
        batch = exported_batch(loaded)(TEXTS)
        # the run's own tokenizer is gone: predict says so (transformers would build an empty
        # one from config.json, every word unknown)
        with pytest.raises(thawkit.ConfigError, match="no tokenizer in .*no vocabulary"):
            predict(text_run, TEXTS)
    assert batch.keys() == expected.keys() and all(torch.equal(batch[k], expected[k]) for k in batch)
    assert batch["attention_mask"].sum(1).tolist() == [1, 3, 8, 1, 3]  # padded, truncated at 8
    probs = probabilities(model, batch)
    assert_same_as_predict(predicted, probs, config["classes"])

    # one text: the model's keyword inputs for a batch of one, the same answer as in the batch
    transform = exported_transform(loaded)
    one = transform(TEXTS[1])
    assert one["input_ids"].shape == (1, 3)
    assert torch.allclose(probabilities(model, one)[0], probs[1], atol=1e-6)


def test_audio_export_batch_gives_predicts_probabilities(audio_run, tmp_path):
    weights, config_path = export_run(audio_run, tmp_path / "tones.safetensors")
    config = json.loads(config_path.read_text())
    assert config["reader"] == "audio"
    assert config["preprocess"]["feature_extractor"] == "tones.preprocess"
    assert config["preprocess"]["sampling_rate"] == 16000
    assert (tmp_path / "tones.preprocess" / "preprocessor_config.json").is_file()

    clips = [str(audio_run.parent / f"clip{i}.wav") for i in range(3)]
    with only_the_export(audio_run, clips) as (expected, predicted):
        model, loaded = load_exported(weights)
        batch = exported_batch(loaded)(clips)
        one = exported_transform(loaded)(clips[1])
    assert batch.keys() == expected.keys() and all(torch.equal(batch[k], expected[k]) for k in batch)
    assert batch["input_values"].shape == (3, 3200)  # 0.2 s at 16 kHz: the longest, resampled
    assert_same_as_predict(predicted, probabilities(model, batch), config["classes"])
    assert torch.equal(one["input_values"], expected["input_values"][1:2])


def test_export_of_a_text_run_writes_its_tokenizer_once_and_force_replaces_it(text_run, tmp_path):
    out = tmp_path / "reviews.safetensors"
    export_run(text_run, out)
    folder = tmp_path / "reviews.preprocess"
    (folder / "stale.txt").write_text("from an older export")
    with pytest.raises(thawkit.ConfigError, match="already exist"):
        export_run(text_run, out)
    export_run(text_run, out, force=True)
    assert not (folder / "stale.txt").exists() and (folder / "tokenizer_config.json").is_file()
    out.unlink()
    out.with_suffix(".json").unlink()
    with pytest.raises(thawkit.ConfigError, match="reviews.preprocess already exists.*--force"):
        export_run(text_run, out)  # the folder alone is not overwritten either
    assert not out.exists() and (folder / "tokenizer_config.json").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_older_text_export_without_a_reader_entry_still_serves(text_run, tmp_path):
    """Exports written before ``reader`` was recorded: the preprocessing names its reader and
    the tokenizer's absolute path (the backbone directory)."""
    from thawkit.plugins.train.session import read_data_info

    weights, _ = export_run(text_run, tmp_path / "reviews.safetensors")
    _, config = load_exported(weights)
    old = {k: v for k, v in config.items() if k not in ("reader", "directory")}
    old["preprocess"] = read_data_info(text_run)["preprocess"]
    assert Path(old["preprocess"]["tokenizer"]).is_absolute()
    assert torch.equal(exported_batch(old)(TEXTS)["input_ids"], exported_batch(config)(TEXTS)["input_ids"])


# ------------------------------------------------------------------ bad input
def test_bad_export_configs_are_one_config_error(text_run, tmp_path):
    weights, _ = export_run(text_run, tmp_path / "reviews.safetensors")
    _, config = load_exported(weights)
    for make in (exported_transform, exported_batch):
        with pytest.raises(thawkit.ConfigError, match="no valid 'preprocess' entry"):
            make({"spec": config["spec"]})
        with pytest.raises(thawkit.ConfigError, match="no valid 'preprocess' entry.*max_length"):
            make({**config, "preprocess": {k: v for k, v in config["preprocess"].items()
                                           if k != "max_length"}})
        with pytest.raises(thawkit.ConfigError) as info:
            make({**config, "reader": "txt"})
        message = str(info.value)
        assert "data reader 'txt'" in message and "did you mean 'text'" in message
        assert "audio, images, text" in message and "thawkit[transformers]" in message
    # a config read from the JSON file by hand has no directory: the tokenizer is not found
    # where it is resolved, and the message says how to fix that
    by_hand = {k: v for k, v in config.items() if k != "directory"}
    with pytest.raises(thawkit.ConfigError, match="tokenizer.*load_exported"):
        exported_transform(by_hand)
    assert exported_transform({**by_hand, "directory": str(tmp_path)})("good")["input_ids"].shape == (1, 1)


def test_bad_inputs_to_an_exports_transform_are_one_config_error(text_run, audio_run, tmp_path):
    weights, _ = export_run(text_run, tmp_path / "reviews.safetensors")
    _, config = load_exported(weights)
    with pytest.raises(thawkit.ConfigError, match="text 0 is int.*a string"):
        exported_transform(config)(5)
    with pytest.raises(thawkit.ConfigError, match="text 1 is bytes"):
        exported_batch(config)(["good", b"bad"])
    with pytest.raises(thawkit.ConfigError, match="a list"):
        exported_batch(config)("a good film")
    with pytest.raises(thawkit.ConfigError, match="no inputs"):
        exported_batch(config)([])

    weights, _ = export_run(audio_run, tmp_path / "tones.safetensors")
    _, config = load_exported(weights)
    missing = tmp_path / "nowhere.wav"
    with pytest.raises(thawkit.ConfigError, match=f"audio file '{missing}' does not exist"):
        exported_transform(config)(str(missing))
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    with pytest.raises(thawkit.ConfigError, match="notes.wav: not a readable audio file"):
        exported_batch(config)([str(not_audio)])
    with pytest.raises(thawkit.ConfigError, match="audio 0 is list.*path"):
        exported_transform(config)([0.0, 0.1])



def test_the_snippet_docs_show_classifies_as_predict(text_run, audio_run, tmp_path):
    import runpy

    snippet = runpy.run_path(str(Path(__file__).parent.parent / "docs" / "snippets" /
                                 "classify_text_export.py"))
    clips = [str(audio_run.parent / f"clip{i}.wav") for i in range(3)]
    for run, items in ((text_run, TEXTS), (audio_run, clips)):
        weights, _ = export_run(run, tmp_path / run.parent.name)
        assert snippet["classify"](str(weights), items) == [top[0][0] for _, top in predict(run, items)]


def test_an_adapter_export_of_a_text_run_serves_its_inputs(tmp_path):
    """``lora`` on a saved tiny BERT, exported in PEFT's format: the directory holds the
    tokenizer too, and ``load_adapter_export`` + ``exported_batch`` give predict's answers."""
    from thawkit.plugins.train.adapter_export import load_adapter_export
    from transformers import BertConfig, BertForSequenceClassification

    from hf_tiny import TEXT

    pytest.importorskip("peft")
    recipe = text_recipe(tmp_path)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**TEXT)).save_pretrained(tmp_path / "tiny-bert")
    data = yaml.safe_load(recipe.read_text())
    data["backbone"]["pretrained"] = True
    data["strategy"] = {"name": "lora", "rank": 2}
    data["train"]["epochs"] = 1
    recipe.write_text(yaml.safe_dump(data))
    assert train(thawkit.load_recipe(str(recipe)), run_dir=tmp_path / "run",
                 log=lambda s: None).status == "finished"
    export_run(tmp_path / "run", tmp_path / "export")
    assert (tmp_path / "export" / "adapter_model.safetensors").is_file()
    with only_the_export(tmp_path / "run", TEXTS) as (expected, predicted):
        model, config = load_adapter_export(tmp_path / "export")
        assert config["reader"] == "text" and config["preprocess"]["tokenizer"] == "preprocess"
        batch = exported_batch(config)(TEXTS)
    assert all(torch.equal(batch[k], expected[k]) for k in expected)
    assert_same_as_predict(predicted, probabilities(model, batch), config["classes"])
