"""auto-rgn in thawkit train: per-block rates follow the measured relative gradient norms from
the second epoch on, every parameter stays in one group, and a resumed run ends bit-identical."""
from __future__ import annotations

import json

from safetensors.torch import load_file

from test_train import load, make_data, recipe_dict


def test_auto_rgn_rates_follow_the_norms_and_resume_exactly(tmp_path, pm):
    from thawkit.plugins.train import resume, train

    data = make_data(tmp_path)
    sections = {"strategy": {"name": "auto-rgn", "batches": 2}, "train": {"epochs": 3},
                "schedule": {"name": "constant", "warmup_epochs": 0}}
    out = train(load(recipe_dict(data, tmp_path / "a", **sections), pm), log=lambda s: None)
    assert out.status == "finished"
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    first, second = rows[0]["lrs"], rows[1]["lrs"]
    assert len(set(first.values())) == 1  # nothing measured before the first epoch
    assert max(second.values()) == first["head"] or max(second.values()) <= first["head"]
    assert len({round(v, 12) for v in second.values()}) > 2  # blocks got different rates
    assert all(v <= first["head"] + 1e-12 for v in second.values())

    stopped = train(load(recipe_dict(data, tmp_path / "b", **sections), pm),
                    stop_after=2, log=lambda s: None)
    assert stopped.status == "stopped"
    assert resume(tmp_path / "b", pm=pm, log=lambda s: None).status == "finished"
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
