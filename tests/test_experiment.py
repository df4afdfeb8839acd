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
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "supervised" in table and "bfa_distance" in table and (out / "val_curves.png").exists()
    capsys.readouterr()

    # a second call trains nothing and reuses the stored evaluations
    true_dice = results["supervised_s1"]["last"]["mean"]["dice"]
    results["supervised_s1"]["last"]["mean"]["dice"] = -1.0
    (out / "results.json").write_text(json.dumps(results))
    assert main(args) == 0
    assert "[skip] supervised_s1: done" in capsys.readouterr().err  # progress notes go to stderr
    assert json.loads((out / "results.json").read_text())["supervised_s1"]["last"]["mean"]["dice"] == -1.0

    # --reevaluate recomputes from the checkpoints (deterministic: the same numbers come back)
    assert main([*args, "--reevaluate"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["supervised_s1"]["last"]["mean"]["dice"] == true_dice
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # atomic writes leave no debris


def _tiny(tmp_path, method="supervised", **train):
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(method, precision="fp32", **train)))
    return cfg


def test_images_per_step_is_what_the_methods_forward(tmp_path):
    """The images-per-step columns count the student's and the teacher's forward batches of a real step."""
    import torch

    from bfaseg.config import validate_config
    from bfaseg.experiments import images_per_step, variant_config
    from bfaseg.training.trainer import Trainer

    base = tiny_config("supervised", precision="fp32", batch_labeled=4, batch_unlabeled=4)
    batch = {"image_l": torch.randn(4, 1, 32, 32), "label_l": torch.randint(0, 3, (4, 32, 32)),
             "image_u": torch.randn(4, 1, 32, 32)}
    expected = {"supervised": (4, 0, None), "mean_teacher": (8, 4, None), "ua_mt": (8, 4 * 9, None),
                "bcp": (4, 4, 2), "bfa": (8, 4, 6)}  # (student, teacher, student in pre-training)
    for method, (student, teacher, student_pre) in expected.items():
        cfg = validate_config({**base, "method": {"name": method}})
        trainer = Trainer(cfg, tmp_path / method, progress=False)
        seen = {"student": 0, "teacher": 0}
        for role, net in (("student", trainer.student), ("teacher", trainer.teacher)):
            if net is not None:
                net.register_forward_hook(
                    lambda m, inp, out, role=role: seen.__setitem__(role, seen[role] + len(inp[0])))
        last = cfg.train.iterations - 1  # after any pre-training
        trainer.method.on_iteration_start(last)
        trainer.method.training_step(batch, last)
        counts = images_per_step(cfg)
        assert (seen["student"], seen["teacher"]) == (counts["student"], counts["teacher"]) == (student, teacher)
        if student_pre is not None:
            seen.update(student=0, teacher=0)
            trainer.method.training_step(batch, 0)
            assert (seen["student"], seen["teacher"]) == (counts["student_pretrain"], 0) == (student_pre, 0)
    # the compute-matched controls see as many student images per step as BFA
    matched = variant_config({**base, "method": {"name": "bfa"}}, "full_matched", 1, [])
    assert matched.train.batch_labeled == 8 and matched.data.labeled_fraction is None


def test_arguments_are_checked_before_anything_trains(tmp_path, capsys):
    cfg = _tiny(tmp_path)
    out = tmp_path / "exp"
    for extra, message in ((["--methods", "supervised,bfa_typo"], "unknown variant 'bfa_typo'"),
                           (["--seeds", "1,x"], "--seeds"), (["--seeds", "1,1"], "given twice"),
                           (["--jobs", "0"], "--jobs"), (["--set", "train.iterations=0"], "train.iterations")):
        methods = [] if "--methods" in extra else ["--methods", "supervised"]  # an option given twice is refused
        assert main(["experiment", str(cfg), *methods, "--output", str(out), *extra]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists() or not any(out.iterdir())  # nothing trained, nothing written


def test_jobs_resume_and_partial_tables(tmp_path, capsys, monkeypatch):
    import bfaseg.experiments as experiments
    from bfaseg.methods.supervised import Supervised

    cfg = _tiny(tmp_path, iterations=4, val_every=2, checkpoint_every=2)
    out = tmp_path / "exp"
    args = ["experiment", str(cfg), "--methods", "supervised,bfa", "--seeds", "1", "--output", str(out),
            "--no-progress"]

    # a run interrupted mid-way (Ctrl-C after its checkpoint at iteration 2) ...
    step = Supervised.training_step

    def interrupted(self, batch, iteration):
        if iteration == 2:
            raise KeyboardInterrupt
        return step(self, batch, iteration)

    monkeypatch.setattr(Supervised, "training_step", interrupted)
    assert main(args) == 130
    run = out / "supervised_s1"
    assert (run / "checkpoints" / "last.pt").exists() and not (run / "train_summary.json").exists()
    before = (run / "log.jsonl").read_text()
    monkeypatch.setattr(Supervised, "training_step", step)

    # ... is resumed by the next call, here with two parallel jobs; tables are written as each run ends
    written = []
    write_tables = experiments.write_tables
    monkeypatch.setattr(experiments, "write_tables", lambda results, o: (written.append(len(results)),
                                                                         write_tables(results, o)))
    capsys.readouterr()
    assert main([*args, "--jobs", "2"]) == 0
    assert written[:2] == [1, 2]  # a partial table after the first finished run, then the full one
    after = (run / "log.jsonl").read_text()
    assert after.startswith(before) and len(after) > len(before)  # continued, not restarted
    assert json.loads((run / "train_summary.json").read_text())["iterations"] == 4
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"supervised_s1", "bfa_s1"}
    assert results["bfa_s1"]["images_per_step"] == {"student": 4, "teacher": 2, "student_pretrain": 3,
                                                     "teacher_pretrain": 0}
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "student images/step" in table and "| bfa | 1 | 4 (3 in pre-training) | 2 (0 in pre-training) |" in table
    assert "| supervised | 1 | 2 | 0 |" in table
    assert "val Dice gained over the last quarter" in table


def test_plateau_rule(tmp_path, capsys):
    from bfaseg.reporting import plateau

    curve = [{"iteration": i, "val_dice": d} for i, d in ((500, 0.70), (1000, 0.80), (1500, 0.835), (2000, 0.854))]
    rising = plateau(curve)
    assert rising["from_iteration"] == 1500 and round(rising["gain"] * 100, 2) == 1.9 and not rising["plateau"]
    assert plateau(curve[:-1] + [{"iteration": 2000, "val_dice": 0.84}])["plateau"]
    assert plateau(curve[:1]) is None
    # the running best, not the endpoint: a dip at 3/4 of the run does not make a flat curve "rising"
    noisy = [{"iteration": i, "val_dice": d} for i, d in ((1000, 0.80), (2000, 0.872), (3000, 0.862), (4000, 0.873))]
    flat = plateau(noisy)
    assert flat["plateau"] and round(flat["gain"] * 100, 2) == 0.1 and round(flat["endpoint_gain"] * 100, 2) == 1.1

    run = tmp_path / "full_s1"
    run.mkdir()
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    assert main(["report", str(run), "--plateau", "--overlay-cases", "0", "--output", str(tmp_path / "rep")]) == 0
    assert "+1.90 points over the last 25%: still rising" in capsys.readouterr().out


def test_converged_configs_are_valid():
    from pathlib import Path

    from bfaseg.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    acdc = load_config(root / "acdc" / "cpu_converged.yaml")
    la = load_config(root / "la" / "cpu_converged.yaml")
    assert acdc.train.precision == la.train.precision == "auto"
    assert acdc.data.patch_size == [128, 128] and la.data.downsample == 2
    assert all(s // 16 >= 3 for s in la.data.patch_size)  # V-Net bottleneck (4 halvings) >= 3 voxels per axis


def test_sigterm_to_the_parent_stops_parallel_runs_with_checkpoints(tmp_path):
    """`kill PID` of `experiment --jobs 2` (a scheduler's SIGTERM reaches that process only) stops the
    parallel runs at their next step with a checkpoint each, instead of waiting for them to finish."""
    import signal
    import sys

    from conftest import signal_when_ready

    cfg = _tiny(tmp_path, iterations=100000, val_every=100000, checkpoint_every=100000, log_every=1)
    out = tmp_path / "exp"
    logs = [out / name / "log.jsonl" for name in ("supervised_s1", "full_s1")]
    code, err = signal_when_ready(
        [sys.executable, "-m", "bfaseg", "experiment", str(cfg), "--methods", "supervised,full", "--seeds", "1",
         "--jobs", "2", "--output", str(out), "--no-progress"],
        lambda: all(p.exists() and p.read_text().strip() for p in logs), signal.SIGTERM)  # both runs train
    assert code != 0, err
    for log in logs:
        assert (log.parent / "checkpoints" / "last.pt").exists()  # written when the signal arrived
        assert not (log.parent / "train_summary.json").exists()


def test_mean_teacher_variants_teacher_modes():
    """``mean_teacher`` takes its method's default (train mode, the reference's); the variants measured with
    the eval-mode teacher of their time pin it, so their meaning does not change with the default."""
    from bfaseg.experiments import VARIANTS, variant_config
    from bfaseg.methods import resolve_teacher_mode

    base = tiny_config("supervised", precision="fp32")
    mode = {v: resolve_teacher_mode(variant_config(base, v, 1, []))
            for v in VARIANTS if VARIANTS[v]["method"]["name"] in ("mean_teacher", "ua_mt", "bcp")
            or v in ("bfa", "bfa_teacher_train")}
    assert mode == {"mean_teacher": ("train", "the method's default"),
                    "mean_teacher_teacher_eval": ("eval", "train.teacher_mode"),
                    "mean_teacher_no_consistency": ("eval", "train.teacher_mode"),
                    "ua_mt": ("train", "the method's default"),
                    "ua_mt_ln_k_teacher_eval": ("eval", "train.teacher_mode"),
                    "ua_mt_teacher_eval": ("eval", "train.teacher_mode"),
                    "ua_mt_entropy_ln_k": ("train", "the method's default"),
                    "ua_mt_consistency_div_k": ("train", "the method's default"),
                    "bcp": ("train", "the method's default"),
                    "bcp_teacher_eval": ("eval", "train.teacher_mode"),
                    "bcp_slow_teacher": ("eval", "train.teacher_mode"),
                    "bcp_constant_lr": ("train", "the method's default"),
                    "bcp_reference_data": ("train", "the method's default"),
                    "bcp_box_per_batch": ("train", "the method's default"),
                    "bcp_per_direction": ("train", "the method's default"),
                    "bcp_reference_data_per_direction": ("train", "the method's default"),
                    "bcp_resize_after_augment": ("train", "the method's default"),
                    "bcp_as_reference": ("train", "the method's default"),
                    "bfa": ("eval", "the method's default"),
                    "bfa_teacher_train": ("train", "train.teacher_mode")}
    assert "mean_teacher_teacher_train" not in VARIANTS and "bcp_teacher_train" not in VARIANTS  # the defaults now
    # --set train.teacher_mode still overrides a variant's pin
    assert variant_config(base, "mean_teacher_teacher_eval", 1, ["train.teacher_mode=train"]).train.teacher_mode == "train"
