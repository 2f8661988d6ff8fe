"""thawkit demo --quick: offline, every number in its table read back from the runs."""
from __future__ import annotations

import json

import pytest



@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from thawkit.plugins.train.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "out"
    lines: list[str] = []
    rows = run_demo(out, quick=True, log=lines.append)
    return out, rows, "\n".join(lines)


def test_table_numbers_come_from_the_runs(demo):
    from thawkit.plugins.train.demo import QUICK

    out, rows, text = demo
    assert [r.strategy for r in rows] == ["head-only", "last-block", "gradual", "full", "lp-ft",
                                          "full"]
    for r in rows:
        metrics = [json.loads(x) for x in (out / "runs" / r.run_dir.split("/")[-1] /
                                            "metrics.jsonl").read_text().splitlines()]
        assert len(metrics) == r.epochs == QUICK.epochs
        assert r.final_top1 == metrics[-1]["val_top1"]
        assert r.best_top1 == max(m["val_top1"] for m in metrics)
        assert r.first_top1 == metrics[0]["val_top1"]
        assert (r.trainable_first, r.trainable_last) == (metrics[0]["trainable_params"],
                                                         metrics[-1]["trainable_params"])
        assert r.wall_seconds >= sum(m["seconds"] for m in metrics) - 0.1
        assert "val_top5" not in metrics[0]  # five classes: top-5 would always read 100%
        line = next(x for x in text.splitlines() if x.startswith(r.name + "  "))
        assert f"{100 * r.final_top1:.1f}%" in line and r.trainable in line
    head, last, gradual, full, lpft, scratch = rows
    assert head.trainable_last < last.trainable_last < full.trainable_last == scratch.trainable_last
    assert gradual.trainable_first == head.trainable_last == lpft.trainable_first
    assert gradual.trainable_last == full.trainable_last == lpft.trainable_last
    # lp-ft's probe is the head-only run (same lr, seed and schedule) until it switches
    assert lpft.first_top1 == head.first_top1
    saved = json.loads((out / "results.json").read_text())
    assert [a["final_top1"] for a in saved["adapt"]] == [r.final_top1 for r in rows]
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "results.md").read_text().strip() in text


def test_pretrained_weights_load_like_a_users_own(demo):
    import thawkit
    import torch
    from thawkit.plugins.train.demo import PRETRAIN_CLASSES, QUICK, SPEC

    out, _, text = demo
    weights = out / "pretrained-digits-0-4.safetensors"
    model = thawkit.load_backbone(SPEC, weights=str(weights), width=QUICK.width,
                                  num_classes=len(PRETRAIN_CLASSES))
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, len(PRETRAIN_CLASSES))
    recipe = (out / "runs" / "full" / "recipe.yaml").read_text()
    assert str(weights) in recipe
    assert "weights" not in (out / "runs" / "scratch" / "recipe.yaml").read_text().split("head:")[0] \
        or "weights: null" in (out / "runs" / "scratch" / "recipe.yaml").read_text()
    assert "thawkit.load_backbone" in text


def test_demo_refuses_a_non_empty_directory(demo, capsys):
    from thawkit.plugins.cli import main

    out, _, _ = demo
    assert main(["demo", "--output", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_example_recipe_continues_from_the_demo(demo, tmp_path):
    """examples/recipes/digits_gradual.yaml runs on what the demo wrote (paths overridden)."""
    from pathlib import Path

    import thawkit
    from thawkit.plugins.train import train

    out, _, _ = demo
    recipe = Path(__file__).parent.parent / "examples" / "recipes" / "digits_gradual.yaml"
    r = thawkit.load_recipe(recipe, overrides=[
        f"backbone.weights={out / 'pretrained-digits-0-4.safetensors'}",
        f"data.train={out / 'data' / 'target' / 'train'}",
        f"data.val={out / 'data' / 'target' / 'val'}", "backbone.kwargs.width=16"])
    lines: list[str] = []
    outcome = train(r, run_dir=tmp_path / "run", stop_after=1, log=lines.append)
    assert outcome.status == "stopped" and "5 classes" in lines[0] and "gradual" in lines[0]
