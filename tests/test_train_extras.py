"""The training plugin's optional packages (``thawkit[train]``): a clean error where one is needed,
a run that carries on without the ones it can do without."""
from __future__ import annotations

import pytest
from test_train import load, make_data, recipe_dict

from thawkit.plugins.cli import main
from thawkit.plugins.train import extras


def missing(*modules: str):
    real = extras.available
    return lambda module: module not in modules and real(module)


@pytest.mark.parametrize("module, package", [("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")])
def test_demo_without_its_packages_is_one_clean_error(tmp_path, capsys, monkeypatch, module, package):
    monkeypatch.setattr(extras, "available", missing(module))
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("thawkit demo: error: ") and err.count("\n") == 1, err
    assert f"needs {package}, which is not installed" in err and "pip install 'thawkit[train]'" in err
    assert not out.exists(), "nothing is written before the check"


def test_training_without_matplotlib_and_tqdm_skips_plot_and_bar(tmp_path, monkeypatch, pm, capfd):
    from thawkit.plugins.train import train

    monkeypatch.setattr(extras, "available", missing("matplotlib", "tqdm"))
    lines: list[str] = []
    run_dir = tmp_path / "run"
    recipe = load(recipe_dict(make_data(tmp_path / "data"), run_dir), pm)
    outcome = train(recipe, log=lines.append, progress_bar=True)
    assert outcome.status == "finished"
    assert (run_dir / "model.safetensors").is_file() and not (run_dir / "curves.png").exists()
    notes = [line for line in lines if "matplotlib is not installed" in line]
    assert len(notes) == 1, lines  # said once, not every epoch
    assert "pip install 'thawkit[train]'" in notes[0]
    assert "it/s" not in capfd.readouterr().err, "no progress bar without tqdm"


def test_training_with_matplotlib_writes_the_plot(tmp_path, pm):
    pytest.importorskip("matplotlib")
    from thawkit.plugins.train import train

    run_dir = tmp_path / "run"
    train(load(recipe_dict(make_data(tmp_path / "data"), run_dir), pm), log=lambda _: None)
    assert (run_dir / "curves.png").is_file()


def test_a_run_puts_torch_determinism_flags_back(tmp_path, pm):
    """train.deterministic applies to the run; the calling process gets its own settings back."""
    import torch

    from thawkit.plugins.train import resume, train

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    torch.backends.cudnn.benchmark = True
    try:
        recipe = load(recipe_dict(make_data(tmp_path / "data"), tmp_path / "run"), pm)
        assert recipe.train.deterministic and not torch.are_deterministic_algorithms_enabled()
        seen = []
        probe = lambda trainer: seen.append(torch.are_deterministic_algorithms_enabled())  # noqa: E731
        train(recipe, log=lambda _: None, stop_after=1, on_step=probe)
        assert seen and all(seen), "the run itself is deterministic"
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark
        seen.clear()
        resume(tmp_path / "run", pm=pm, log=lambda _: None, on_step=probe)
        assert seen and all(seen)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
