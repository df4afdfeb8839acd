"""Reference parity: the public SSL4MIS 2-D scripts beside bfaseg, at one bfaseg budget, one scorer.

    # train the reference (reads the scripts from YOUR checkout; nothing of it is copied into bfaseg)
    python benchmarks/parity.py train --reference ../SSL4MIS --method mean_teacher --seed 1 \\
        --config configs/acdc/cpu_converged.yaml --data ../shared/data/acdc --output runs/parity
    # score the reference's final model and bfaseg's last checkpoints with the same scorer and split
    python benchmarks/parity.py score --reference ../SSL4MIS --data ../shared/data/acdc --split val.list \\
        runs/parity/mean_teacher_s1 runs/acdc10_converged/mean_teacher_s1 --output runs/parity/scores.json

``train`` runs ``code/<script>`` of the reference checkout as ``__main__`` with the budget of the bfaseg
config (iterations, labeled/unlabeled batch, learning rate, input size, labeled patients) and ONLY these
run-time changes, none of them about the method (each is recorded in ``run.json``):

1. device: ``.cuda()`` of tensors and modules is a no-op (CPU);
2. precision: each network forward under bf16 autocast where bfaseg's ``precision: auto`` picks bf16
   on this CPU (fp32 elsewhere), outputs cast back to fp32, as bfaseg trains;
3. ``networks.net_factory`` is reduced to the reference's own ``networks.unet.UNet`` (its full factory
   imports Swin/nnU-Net dependencies and parses the command line at import);
4. no in-loop validation (``val_2D.test_single_volume`` returns zeros, so no "best" model is saved):
   the last model is kept, written to ``final.pth`` when the script returns;
5. DataLoader ``num_workers=0``: one process of ``--threads`` threads per run, as bfaseg's runs;
6. ``--patch_size`` (argparse ``type=list`` in the scripts, so not settable from the command line)
   set to the config's ``data.patch_size``;
7. paths: ``--root_path`` is a link named ``ACDC`` to ``--data`` in the run folder (the scripts pick
   ACDC's labeled-slice table only when "ACDC" is in the path, else Prostate's);
8. where the installed torchvision cannot load (no CPU wheel on PyPI matches torch 2.13), a stand-in
   with the one function the scripts use on this path, ``transforms.Compose``.

The consistency ramp: ``--rampup published`` keeps the scripts' ``--consistency_rampup 200`` "epochs" of
150 iterations (30000 iterations, whatever the budget); ``--rampup scaled`` sets it to the budget
(iterations / 150), as bfaseg scales its ramps to the run.

``score`` predicts each volume of ``--split`` slice by slice and scores it with bfaseg's metrics (the
scorer of ``bfaseg experiment``: medpy-compatible Dice, Jaccard, 95HD, ASD in voxels, NaN policy for empty
classes): reference runs with their training's image resize (``zoom_nearest``: SSL4MIS's
``RandomGenerator`` zooms images with order 0), bfaseg runs with bfaseg's (``zoom_linear``), each in the
precision it trained in. ``smoke`` (for CI) does both on a tiny stand-in checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = {
    "supervised": "train_fully_supervised_2D.py",
    "mean_teacher": "train_mean_teacher_2D.py",
    "ua_mt": "train_uncertainty_aware_mean_teacher_2D.py",
}
# SSL4MIS's patients_to_slices for ACDC: labeled patients -> the first N slices of train_slices.list
ACDC_PATIENTS = {68: 3, 136: 7, 256: 14, 396: 21, 512: 28, 664: 35, 1312: 140}
ITERATIONS_PER_EPOCH = 150  # the scripts' consistency "epoch": iter_num // 150


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def reference_args(cfg, method: str, seed: int, data_root: str, rampup: str, exp: str) -> list[str]:
    """The reference script's command line for a bfaseg config's budget."""
    tc = cfg.train
    slices = cfg.data.labeled
    if slices not in ACDC_PATIENTS:
        fail(f"data.labeled: {slices} slices is no patient count of SSL4MIS's table ({sorted(ACDC_PATIENTS)})")
    args = ["--root_path", data_root, "--exp", exp, "--model", "unet", "--max_iterations", str(tc.iterations),
            "--base_lr", str(tc.lr), "--seed", str(seed), "--num_classes", str(cfg.model.num_classes),
            "--labeled_num", str(ACDC_PATIENTS[slices])]
    if method == "supervised":
        return args + ["--batch_size", str(tc.batch_labeled)]
    args += ["--batch_size", str(tc.batch_labeled + tc.batch_unlabeled), "--labeled_bs", str(tc.batch_labeled)]
    if rampup == "scaled":
        args += ["--consistency_rampup", f"{tc.iterations / ITERATIONS_PER_EPOCH:.4f}"]
    return args


def git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# ------------------------------------------------------------------------------------------------ train
def cmd_train(a) -> int:
    from bfaseg.config import load_config
    from bfaseg.precision import bf16_is_fast

    code = Path(a.reference) / "code"
    script = code / SCRIPTS[a.method]
    if not script.is_file():
        fail(f"--reference {a.reference}: no {script.relative_to(a.reference)} (a checkout of SSL4MIS?)")
    data_root = Path(a.data).resolve()
    if not (data_root / "train_slices.list").is_file():
        fail(f"--data {a.data}: no train_slices.list (the ACDC layout of PROTOCOL.md)")
    cfg = load_config(a.config)
    name = f"{a.method}_s{a.seed}" + ("_published_ramp" if a.method != "supervised" and a.rampup == "published" else "")
    run = Path(a.output) / name
    if (run / "final.pth").is_file():
        print(f"[skip] {name}: done ({run / 'final.pth'})")
        return 0
    (run / "cwd").mkdir(parents=True, exist_ok=True)  # the scripts write ../model/<exp> relative to their cwd
    # paths: the scripts pick ACDC's slice table only when "ACDC" is in --root_path (else Prostate's)
    link = run / "ACDC"
    if not link.exists():
        link.symlink_to(data_root, target_is_directory=True)
    precision = "bf16" if cfg.train.precision in ("auto", "bf16") and bf16_is_fast("cpu") else "fp32"
    spec = {
        "code": str(code.resolve()), "script": script.name, "run": str(run.resolve()), "threads": a.threads,
        "precision": precision, "patch_size": list(cfg.data.patch_size), "num_classes": cfg.model.num_classes,
        "argv": reference_args(cfg, a.method, a.seed, str(run.resolve() / "ACDC"), a.rampup, f"parity/{name}"),
    }
    record = {"method": a.method, "seed": a.seed, "config": str(a.config), "reference": str(Path(a.reference).resolve()),
              "reference_commit": git_commit(Path(a.reference)), "script": f"code/{script.name}", "rampup": a.rampup,
              **spec, "changes": CHANGES}
    print(f"[run] {name}: {script.name} {' '.join(spec['argv'])}", flush=True)
    t0 = time.time()
    with open(run / "stdout.log", "w") as log:
        rc = subprocess.call([sys.executable, __file__, "_launch", json.dumps(spec)], cwd=run / "cwd",
                             stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
    if rc != 0 or not (run / "final.pth").is_file():
        fail(f"{name}: the reference script failed (exit {rc}); see {run / 'stdout.log'}")
    record["seconds"] = round(time.time() - t0, 1)
    (run / "run.json").write_text(json.dumps(record, indent=2))
    print(f"[done] {name}: {record['seconds'] / 60:.1f} min", flush=True)
    return 0


CHANGES = [
    "device: .cuda() of tensors and modules is a no-op",
    "precision: network forwards under bf16 autocast where precision auto picks bf16, outputs in fp32",
    "networks.net_factory reduced to the reference's networks.unet.UNet",
    "no in-loop validation; the last model is written to final.pth",
    "DataLoader num_workers=0",
    "--patch_size set to the config's data.patch_size",
    "paths: --root_path is a link named ACDC to the data (the scripts choose ACDC's slice table by that name)",
    "torchvision stand-in (transforms.Compose) only where torchvision cannot load",
]


def launch(spec: dict) -> None:
    """Inside the subprocess: apply the run-time changes, run the script as __main__, keep its student."""
    import argparse as _argparse
    import runpy
    import types

    import torch

    torch.set_num_threads(spec["threads"])
    sys.path.insert(0, spec["code"])
    # 1. device
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    # 7. torchvision only where it cannot load
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:  # a torchvision built for another torch raises RuntimeError/ImportError/OSError at import
        for mod in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[mod]

        class Compose:
            def __init__(self, transforms):
                self.transforms = transforms

            def __call__(self, x):
                for t in self.transforms:
                    x = t(x)
                return x

        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.transforms.Compose = Compose
        tv.utils = types.ModuleType("torchvision.utils")
        tv.utils.make_grid = lambda *a, **k: None
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms, "torchvision.utils": tv.utils})
    # 3. + 2. the network: the reference's UNet, forwards under autocast, every model kept (the student first)
    from networks.unet import UNet

    models = []

    def net_factory(net_type="unet", in_chns=1, class_num=4):
        if net_type != "unet":
            raise SystemExit(f"parity harness: only --model unet is supported (got {net_type})")
        net = UNet(in_chns=in_chns, class_num=class_num)
        if spec["precision"] == "bf16":
            forward = net.forward

            def autocast_forward(*args, **kwargs):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = forward(*args, **kwargs)
                return out.float() if torch.is_tensor(out) else out

            net.forward = autocast_forward
        models.append(net)
        return net

    factory = types.ModuleType("networks.net_factory")
    factory.net_factory = net_factory
    sys.modules["networks.net_factory"] = factory
    # 4. no in-loop validation
    import val_2D

    zeros = [(0.0, 0.0)] * (spec["num_classes"] - 1)
    val_2D.test_single_volume = lambda *a, **k: zeros
    val_2D.test_single_volume_ds = lambda *a, **k: zeros
    # 5. no worker processes
    loader_init = torch.utils.data.DataLoader.__init__

    def single_process_init(self, *args, **kwargs):
        kwargs["num_workers"] = 0
        kwargs.pop("worker_init_fn", None)
        kwargs["pin_memory"] = False
        loader_init(self, *args, **kwargs)

    torch.utils.data.DataLoader.__init__ = single_process_init
    # 6. the input size
    parse_args = _argparse.ArgumentParser.parse_args

    def parse_with_patch(self, *args, **kwargs):
        ns = parse_args(self, *args, **kwargs)
        if hasattr(ns, "patch_size"):
            ns.patch_size = list(spec["patch_size"])
        return ns

    _argparse.ArgumentParser.parse_args = parse_with_patch
    script = str(Path(spec["code"]) / spec["script"])
    sys.argv = [script, *spec["argv"]]
    runpy.run_path(script, run_name="__main__")
    if not models:
        raise SystemExit("parity harness: the script built no network")
    torch.save(models[0].state_dict(), Path(spec["run"]) / "final.pth")


# ------------------------------------------------------------------------------------------------ score
def reference_model(reference: Path, num_classes: int):
    sys.path.insert(0, str(reference / "code"))
    from networks.unet import UNet

    return UNet(in_chns=1, class_num=num_classes)


def score_volumes(forward, cases, patch, num_classes: int, image_resize: str, precision: str) -> dict:
    """bfaseg's scorer for slice-wise predictions (the rows of ``bfaseg experiment``): per case and mean."""
    from bfaseg.evaluation.evaluate import mean_of_rows, metric_row
    from bfaseg.evaluation.scoring import score_case
    from bfaseg.inference.slices2d import predict_slices

    rows = []
    for case in cases:
        labels, _ = predict_slices(case.image, forward, input_size=patch, precision=precision,
                                   image_resize=image_resize, num_classes=num_classes)
        rows.append(metric_row(case.case_id, score_case(labels, case.label, num_classes, None, "strict")))
    return {"mean": mean_of_rows(rows), "per_case": rows}


def cmd_score(a) -> int:
    import torch

    from bfaseg.data.readers import load_cases, read_list
    from bfaseg.inference.checkpoints import load_model_from_checkpoint
    from bfaseg.inference.predictor import run_precision

    torch.set_num_threads(a.threads)
    root = Path(a.data)
    ids = read_list(root / a.split)
    results = {}
    for run in map(Path, a.runs):
        if (run / "final.pth").is_file():  # a reference run of `train`
            info = json.loads((run / "run.json").read_text())
            model = reference_model(Path(a.reference or info["reference"]), info["num_classes"])
            model.load_state_dict(torch.load(run / "final.pth", map_location="cpu", weights_only=True))
            side, patch, k, resize, precision = "reference", info["patch_size"], info["num_classes"], "zoom_nearest", info["precision"]
            variant, seed, iterations = f"ssl4mis_{info['method']}", info["seed"], None
            seconds = info.get("seconds")
        elif (run / "checkpoints" / "last.pt").is_file():  # a bfaseg run
            ckpt = run / "checkpoints" / "last.pt"
            model, cfg, state = load_model_from_checkpoint(ckpt, "cpu")
            side, patch, k, resize = "bfaseg", list(cfg.data.patch_size), cfg.model.num_classes, "zoom_linear"
            precision = run_precision(ckpt, cfg, state, torch.device("cpu"))
            seed, iterations = cfg.train.seed, cfg.train.iterations
            variant = run.name.removesuffix(f"_s{seed}")
            seconds = None
        else:
            fail(f"{run}: neither a reference run (final.pth) nor a bfaseg run (checkpoints/last.pt)")
        model.eval()
        cases = load_cases("acdc", root, ids, kind="eval", num_classes=k)
        res = score_volumes(model, cases, patch, k, resize, precision)
        if side == "reference":
            iterations = int(info["argv"][info["argv"].index("--max_iterations") + 1])
        # an entry of `bfaseg experiment`'s results.json (docs/make_results_tables.py --add takes it)
        results[f"{variant}_s{seed}"] = {
            "variant": variant, "seed": seed, "eval_split": a.split, "eval_list": a.split, "side": side, "run": str(run),
            "image_resize": resize, "train_seconds": seconds,
            "train_summary": {"iterations": iterations, "precision": precision},
            "last": {"mean": res["mean"], "per_case": res["per_case"], "iteration": iterations},
        }
        m = res["mean"]
        fmt = lambda v, scale=1: "-" if v is None else f"{scale * v:.2f}"  # noqa: E731 (no case had a value)
        print(f"{run.name:<40} {side:<9} Dice {fmt(m['dice'], 100)}  95HD {fmt(m['hd95'])}  ASD {fmt(m['asd'])}", flush=True)
    if a.output:
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(json.dumps(results, indent=2))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_launch"]:
        launch(json.loads(argv[1]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a reference script at a bfaseg config's budget")
    t.add_argument("--reference", required=True, help="checkout of SSL4MIS (holds code/train_*_2D.py)")
    t.add_argument("--method", required=True, choices=sorted(SCRIPTS))
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--config", default="configs/acdc/cpu_converged.yaml")
    t.add_argument("--data", default="../shared/data/acdc")
    t.add_argument("--rampup", choices=("scaled", "published"), default="scaled")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--output", default="runs/parity")
    s = sub.add_parser("score", help="score reference and bfaseg runs with one scorer on one split")
    s.add_argument("runs", nargs="+", help="reference run folders (final.pth) and bfaseg run folders")
    s.add_argument("--reference", help="the SSL4MIS checkout (default: the one each run recorded)")
    s.add_argument("--data", default="../shared/data/acdc")
    s.add_argument("--split", default="val.list")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--output", help="write the scores as JSON here")
    a = ap.parse_args(argv)
    return cmd_train(a) if a.cmd == "train" else cmd_score(a)


if __name__ == "__main__":
    sys.exit(main())
