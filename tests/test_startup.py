"""What a command imports: a torchvision run never imports timm, and setting up a run that keeps
torch's default determinism does not import torch's inductor (torch.use_deterministic_algorithms
does, on every call; torch.optim and torchvision.ops import it later in a training run anyway)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from test_train import make_data, recipe_dict, write_recipe

import thawkit


def test_a_torchvision_plan_and_train_do_not_import_timm(tmp_path):
    """timm registers its optimizers deferred (listing them imports timm); asking for adamw, which
    torch gives, must not resolve them."""
    data = make_data(tmp_path)
    d = recipe_dict(data, tmp_path / "run", train={"epochs": 1}, schedule={"warmup_epochs": 0})
    d["backbone"] = {"source": "torchvision", "name": "mobilenet_v3_small", "weights": None}
    recipe = write_recipe(tmp_path / "r.yaml", d)
    code = textwrap.dedent(f"""
        import sys
        from thawkit.plugins.cli import main
        assert main(["plan", {str(recipe)!r}]) == 0
        assert "timm" not in sys.modules, "thawkit plan imported timm"
        assert main(["train", {str(recipe)!r}]) == 0
        assert "timm" not in sys.modules, "thawkit train imported timm"
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "THAWKIT_PLUGINS": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_determinism_is_set_only_when_a_run_changes_it():
    """seed_everything(deterministic=False) leaves torch's default alone, so torch's inductor is
    not imported for it; deterministic=True sets the flags, and they are restored after."""
    code = textwrap.dedent("""
        import sys
        import torch
        from thawkit.plugins.train.session import seed_everything, torch_flags_restored
        with torch_flags_restored():
            seed_everything(0, False)
            assert not torch.are_deterministic_algorithms_enabled()
        assert "torch._inductor" not in sys.modules, "inductor imported for deterministic=False"
        with torch_flags_restored():
            seed_everything(0, True)
            assert torch.are_deterministic_algorithms_enabled()
            assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_registry_resolves_deferred_names_only_for_a_name_it_lacks():
    calls = []

    def contribute():
        calls.append(1)
        return [("late", "L")]

    registry = thawkit.Registry("optimizer")
    registry.add("early", "E", "plugin-a")
    registry.defer("plugin-b", contribute)
    assert registry.entry("early").obj == "E" and registry.get("early") == "E"
    assert "early" in registry and calls == []
    assert registry.entry("late").plugin == "plugin-b" and calls == [1]
    with pytest.raises(thawkit.UnknownNameError, match="late"):  # the closest names are offered
        registry.entry("lat")
