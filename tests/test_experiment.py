"""`bfaseg experiment`: trains each variant x seed once, evaluates, writes tables; re-runs skip or re-evaluate."""

import json

import yaml
from conftest import tiny_config

from bfaseg.cli.main import main


def test_experiment_runs_skips_and_reevaluates(tmp_path, capsys):
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config("bfa", iterations=4, val_every=2, checkpoint_every=2)))
    out = tmp_path / "exp"
    args = ["experiment", str(cfg), "--methods", "supervised,bfa_distance", "--seeds", "1", "--output", str(out),
            "--no-progress"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"supervised_s1", "bfa_distance_s1"}
    for entry in results.values():
        assert {"last", "best", "last_lcc"} <= set(entry)
        assert len(entry["last"]["per_case"]) == 2  # the synthetic validation cases
    table = (out / "results.md").read_text()
    assert "supervised" in table and "bfa_distance" in table and (out / "val_curves.png").exists()
    capsys.readouterr()

    # a second call trains nothing and reuses the stored evaluations
    true_dice = results["supervised_s1"]["last"]["mean"]["dice"]
    results["supervised_s1"]["last"]["mean"]["dice"] = -1.0
    (out / "results.json").write_text(json.dumps(results))
    assert main(args) == 0
    assert "[skip] supervised_s1: done" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["supervised_s1"]["last"]["mean"]["dice"] == -1.0

    # --reevaluate recomputes from the checkpoints (deterministic: the same numbers come back)
    assert main([*args, "--reevaluate"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["supervised_s1"]["last"]["mean"]["dice"] == true_dice
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # atomic writes leave no debris
