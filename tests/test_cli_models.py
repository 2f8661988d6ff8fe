"""The model commands: describe, models, coverage (in-process through thawkit.plugins.cli.main)."""
import json

import pytest

from thawkit.plugins.cli import main


@pytest.fixture(autouse=True)
def fresh_default_manager():
    import thawkit

    thawkit.reset_plugin_manager()
    yield
    thawkit.reset_plugin_manager()


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_describe_prints_blocks_head_and_data_config(capsys):
    code, out, _ = run(capsys, "describe", "torchvision:resnet50")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("torchvision:resnet50: ResNet, 25,557,032 parameters")
    for block in ("stem", "layer1", "layer2", "layer3", "layer4", "head"):
        assert any(line.split()[:1] == [block] for line in lines), block
    assert "head: classifier fc" in out
    assert "resize 232 -> crop 224" in out


def test_describe_json(capsys):
    code, out, _ = run(capsys, "describe", "timm:vit_tiny_patch16_224", "--json")
    assert code == 0
    data = json.loads(out)
    names = [b["name"] for b in data["layout"]["blocks"]]
    assert names[0] == "stem" and names[-1] == "head" and "blocks.11" in names
    assert "cls_token" in data["layout"]["blocks"][0]["params"]
    assert data["data_config"]["input_size"] == [3, 224, 224]


def test_describe_headless_timm_model(capsys):
    code, out, _ = run(capsys, "describe", "timm:vit_small_patch14_dinov2")
    assert code == 0 and "(none: built with num_classes=0)" in out


def test_describe_unknown_model_suggests_the_closest_and_exits_2(capsys):
    code, out, err = run(capsys, "describe", "torchvision:resnet5O")
    assert code == 2 and out == ""
    assert "unknown torchvision model 'resnet5O'; did you mean 'resnet50'" in err
    assert "Traceback" not in err


def test_describe_unknown_source(capsys):
    code, _, err = run(capsys, "describe", "torchvison:resnet50")
    assert code == 2 and "did you mean 'torchvision'" in err


def test_describe_bad_weights_file_names_it(capsys, tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "describe", "torchvision:resnet18", "--weights", str(bad))
    assert code == 2 and "broken.pth" in err and "Traceback" not in err


def test_models_with_pattern_and_source(capsys):
    code, out, _ = run(capsys, "models", "resnet1*", "--source", "torchvision")
    assert code == 0
    assert out.split() == ["torchvision:resnet101", "torchvision:resnet152", "torchvision:resnet18"]
    code, out, _ = run(capsys, "models", "convnext_at*")
    assert code == 0 and "timm:convnext_atto" in out.split()


def test_coverage_on_a_pattern(capsys):
    code, out, _ = run(capsys, "coverage", "resnet1*", "--source", "torchvision", "-v")
    assert code == 0
    assert out.strip().endswith("coverage: 3/3 torchvision (pattern 'resnet1*')")
    assert "ok   torchvision:resnet18 [meta] 4 blocks" in out


def test_coverage_reports_failures_with_exit_1(capsys):
    code, out, _ = run(capsys, "coverage", "qwen3_vit_88m_enc", "--source", "timm")
    assert code == 1
    assert "FAIL timm:qwen3_vit_88m_enc" in out and "coverage: 0/1 timm" in out
