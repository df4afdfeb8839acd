"""Reference parity: public reference training scripts beside bfaseg, at one bfaseg budget, one scorer.

    # train the reference (reads the scripts from YOUR checkout; nothing of it is copied into bfaseg)
    python benchmarks/parity.py train --reference ../SSL4MIS --method mean_teacher --seed 1 \\
        --config configs/acdc/cpu_converged.yaml --data ../shared/data/acdc --output runs/parity
    python benchmarks/parity.py train --reference ../SSL4MIS --method full --seed 1 \\
        --config configs/acdc/cpu_converged.yaml --data ../shared/data/acdc --output runs/parity
    python benchmarks/parity.py train --reference ../BCP --method bcp --seed 1 \\
        --config configs/acdc/cpu_converged.yaml --data ../shared/data/acdc --output runs/parity
    # score the reference's final model and bfaseg's last checkpoints with the same scorer and split
    python benchmarks/parity.py score --data ../shared/data/acdc --split val.list \\
        runs/parity/mean_teacher_s1 runs/acdc10_converged/mean_teacher_s1 --output runs/parity/scores.json

The references (benchmarks/parity_references.py): SSL4MIS's 2-D scripts (``--method supervised``,
``mean_teacher``, ``ua_mt``: code/train_*_2D.py; ``--method full``: the fully supervised script with every
training slice labeled, the reference beside bfaseg's ``full`` variant) and BCP's ACDC script
(``--method bcp``: code/ACDC_BCP_train.py, a pre-training then a self-training stage). ``train`` runs the
script of the reference checkout as ``__main__`` with the budget of the bfaseg config (iterations,
labeled/unlabeled batch, learning rate, input size, labeled patients; for ``full`` the labeled slices of
bfaseg's ``full`` variant, all of them; for BCP the pre-training iterations of bfaseg's ``bcp`` variant and
the rest as self-training) and ONLY these run-time changes, none of them about the method (each is
recorded in ``run.json`` with the argument mapping, ``budget``):

1. device: ``.cuda()`` of tensors and modules is a no-op (CPU);
2. precision: each network forward under bf16 autocast where bfaseg's ``precision: auto`` picks bf16
   on this CPU (fp32 elsewhere), outputs cast back to fp32, as bfaseg trains;
3. networks: SSL4MIS's ``networks.net_factory`` is reduced to its own ``networks.unet.UNet`` (its full
   factory imports Swin/nnU-Net dependencies and parses the command line at import); BCP's own
   ``BCP_net`` is kept;
4. no in-loop validation (``test_single_volume*`` of the scripts' validation module return zeros, so no
   "best" model is saved): the last model is kept, written to ``final.pth`` when the script returns
   (BCP: when ``self_train`` returns; ``pre_train``'s last model and optimizer are written to the file
   that ``self_train`` starts from, where the reference writes its best-on-val pre-training model);
5. DataLoader ``num_workers=0``: one process of ``--threads`` threads per run, as bfaseg's runs;
6. ``--patch_size`` (argparse ``type=list`` in the scripts, so not settable from the command line)
   set to the config's ``data.patch_size``;
7. paths: ``--root_path`` is a link named ``ACDC`` to ``--data`` in the run folder (the scripts pick
   ACDC's labeled-slice table only when "ACDC" is in the path, else Prostate's); for BCP a link named
   ``code`` to the checkout's code (its script copies ``../code/ACDC_BCP_train.py`` into its snapshot folder);
8. where the installed torchvision cannot load (no CPU wheel on PyPI matches torch 2.13), a stand-in
   with the one function the scripts use on this path, ``transforms.Compose``.

The consistency ramp of SSL4MIS's semi-supervised scripts: ``--rampup published`` keeps the scripts'
``--consistency_rampup 200`` "epochs" of 150 iterations (30000 iterations, whatever the budget);
``--rampup scaled`` sets it to the budget (iterations / 150), as bfaseg scales its ramps to the run.
(BCP's script only logs its consistency weight: ``--rampup`` does not apply.)

``score`` predicts each volume of ``--split`` slice by slice and scores it with bfaseg's metrics (the
scorer of ``bfaseg experiment``: medpy-compatible Dice, Jaccard, 95HD, ASD in voxels, NaN policy for empty
classes): reference runs with their own network class and their training's image resize (``zoom_nearest``:
SSL4MIS's and BCP's ``RandomGenerator`` zoom images with order 0), bfaseg runs with their own
(``data.slice_resize``: ``zoom_linear`` by default), each in the precision it trained in. tests/test_parity_harness.py runs both commands
on tiny stand-in checkouts (tests/parity_standin/, tests/parity_standin_bcp/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from parity_references import METHODS, REPOSITORIES, fail, script_args, script_for, supervised_only


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

    script = script_for(Path(a.reference), a.method)
    repo_name = METHODS[a.method][0]
    repo = REPOSITORIES[repo_name]
    data_root = Path(a.data).resolve()
    if not (data_root / "train_slices.list").is_file():
        fail(f"--data {a.data}: no train_slices.list (the ACDC layout of PROTOCOL.md)")
    cfg = load_config(a.config)
    ramped = repo_name == "ssl4mis" and not supervised_only(a.method)  # BCP's consistency weight is only logged
    ramp = "_published_ramp" if ramped and a.rampup == "published" else ""  # in the run's name and its variant
    name = f"{a.method}_s{a.seed}{ramp}"
    run = Path(a.output) / name
    if (run / "final.pth").is_file():
        print(f"[skip] {name}: done ({run / 'final.pth'})")
        return 0
    (run / "cwd").mkdir(parents=True, exist_ok=True)  # the scripts write ./model or ../model relative to their cwd
    # paths: the scripts pick ACDC's slice table only when "ACDC" is in --root_path (else Prostate's);
    # BCP's script copies ../code/ACDC_BCP_train.py (relative to its cwd) into its snapshot folder
    links = {"ACDC": data_root, **({"code": script.parent.resolve()} if repo_name == "bcp" else {})}
    for link, target in links.items():
        if not (run / link).exists():
            (run / link).symlink_to(target, target_is_directory=True)
    precision = "bf16" if cfg.train.precision in ("auto", "bf16") and bf16_is_fast("cpu") else "fp32"
    exp = name if repo_name == "bcp" else f"parity/{name}"  # BCP puts --exp into a folder name: no "/"
    args = script_args(cfg, a.method, a.seed, str(run.resolve() / "ACDC"), a.rampup, exp, a.config)
    spec = {
        "code": str(script.parent.resolve()), "script": script.name, "run": str(run.resolve()), "threads": a.threads,
        "precision": precision, "patch_size": list(cfg.data.patch_size), "num_classes": cfg.model.num_classes,
        "repository": repo_name, "argv": [str(x) for k, (v, _) in args.items() for x in (k, v)],
    }
    budget = {k: {"value": v, "from": src} for k, (v, src) in args.items()}
    budget["--patch_size"] = {"value": list(cfg.data.patch_size), "from": "data.patch_size (set after parse_args)"}
    iterations = cfg.train.iterations  # BCP: pre-training + self-training, as bfaseg counts its bcp run
    record = {"method": a.method, "seed": a.seed, "config": str(a.config), "reference": str(Path(a.reference).resolve()),
              "reference_commit": git_commit(Path(a.reference)), "script": f"code/{script.name}",
              "rampup": a.rampup if ramped else None, "variant": repo.variant.format(method=a.method) + ramp,
              "network": f"networks.unet.{repo.network}", "iterations": iterations,
              "image_resize": "zoom_nearest",  # as training: RandomGenerator zooms images with order 0
              **spec, "repository": repo.title, "budget": budget, "changes": list(repo.changes)}
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


def run_as_main(script: str, wrap: dict) -> None:
    """Run ``script`` as ``__main__``. ``wrap`` (function name -> wrapper) replaces module-level functions
    between their definition and the ``if __name__ == "__main__":`` block that calls them."""
    import ast
    import builtins
    import runpy

    if not wrap:
        runpy.run_path(script, run_name="__main__")
        return
    tree = ast.parse(Path(script).read_text(), script)
    main = next(i for i, node in enumerate(tree.body)
                if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))
    scope = {"__name__": "__main__", "__file__": script, "__builtins__": builtins}
    exec(compile(ast.Module(tree.body[:main], []), script, "exec"), scope)
    for name, wrapper in wrap.items():
        scope[name] = wrapper(scope[name])
    exec(compile(ast.Module(tree.body[main:], []), script, "exec"), scope)


def launch(spec: dict) -> None:
    """Inside the subprocess: apply the run-time changes, run the script as __main__, keep the student of
    its last stage."""
    import argparse as _argparse
    import importlib
    import types

    import torch

    torch.set_num_threads(spec["threads"])
    sys.path.insert(0, spec["code"])
    repo = REPOSITORIES[spec["repository"]]
    # device
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    # torchvision only where it cannot load
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
    # the networks: forwards under autocast, each recorded with the stage that built it
    models, optimizers, stage = [], [], ["main"]

    def track(net):
        if spec["precision"] == "bf16":
            forward = net.forward

            def autocast_forward(*args, **kwargs):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = forward(*args, **kwargs)
                return out.float() if torch.is_tensor(out) else out

            net.forward = autocast_forward
        models.append((stage[0], net))
        return net

    def student(of_stage: str):
        """The first network a stage built that trains (a teacher's parameters are detached)."""
        nets = [net for s, net in models if s == of_stage and any(p.requires_grad for p in net.parameters())]
        if not nets:
            raise SystemExit(f"parity harness: the script built no trained network in stage {of_stage}")
        return nets[0]

    wrap = {}
    if spec["repository"] == "ssl4mis":  # its factory imports Swin/nnU-Net dependencies and parses argv at import
        from networks.unet import UNet

        def net_factory(net_type="unet", in_chns=1, class_num=4):
            if net_type != "unet":
                raise SystemExit(f"parity harness: only --model unet is supported (got {net_type})")
            return track(UNet(in_chns=in_chns, class_num=class_num))

        factory = types.ModuleType("networks.net_factory")
        factory.net_factory = net_factory
        sys.modules["networks.net_factory"] = factory
    else:  # BCP: its own factory (it imports only its networks), each network it builds recorded
        factory = importlib.import_module("networks.net_factory")
        build = factory.BCP_net
        factory.BCP_net = lambda *a, **k: track(build(*a, **k))
        optimizer_init = torch.optim.Optimizer.__init__

        def recorded_init(self, *args, **kwargs):
            optimizer_init(self, *args, **kwargs)
            optimizers.append(self)

        torch.optim.Optimizer.__init__ = recorded_init

        def pre_train(fn):  # hand-over: self_train starts from <model>_best_model.pth, here the LAST pre-train model
            def run(args, snapshot_path, *rest, **kwargs):
                stage[0] = "pre_train"
                out = fn(args, snapshot_path, *rest, **kwargs)
                net = student("pre_train")
                mine = {id(p) for p in net.parameters()}
                opt = [o for o in optimizers if any(id(p) in mine for g in o.param_groups for p in g["params"])]
                if not opt or "save_net_opt" not in fn.__globals__:
                    raise SystemExit("parity harness: pre_train made no optimizer, or the script has no save_net_opt")
                fn.__globals__["save_net_opt"](net, opt[0], os.path.join(snapshot_path, f"{args.model}_best_model.pth"))
                return out
            return run

        def self_train(fn):
            def run(*args, **kwargs):
                stage[0] = "self_train"
                return fn(*args, **kwargs)
            return run

        wrap = {"pre_train": pre_train, "self_train": self_train}
    # no in-loop validation
    validation = importlib.import_module(repo.validation)
    zeros = [(0.0, 0.0)] * (spec["num_classes"] - 1)
    for name in [n for n in vars(validation) if n.startswith("test_single_volume")]:
        setattr(validation, name, lambda *a, **k: zeros)
    # no worker processes
    loader_init = torch.utils.data.DataLoader.__init__

    def single_process_init(self, *args, **kwargs):
        kwargs["num_workers"] = 0
        kwargs.pop("worker_init_fn", None)
        kwargs["pin_memory"] = False
        loader_init(self, *args, **kwargs)

    torch.utils.data.DataLoader.__init__ = single_process_init
    # the input size
    parse_args = _argparse.ArgumentParser.parse_args

    def parse_with_patch(self, *args, **kwargs):
        ns = parse_args(self, *args, **kwargs)
        if hasattr(ns, "patch_size"):
            ns.patch_size = list(spec["patch_size"])
        return ns

    _argparse.ArgumentParser.parse_args = parse_with_patch
    script = str(Path(spec["code"]) / spec["script"])
    sys.argv = [script, *spec["argv"]]
    run_as_main(script, wrap)
    torch.save(student(repo.final_stage).state_dict(), Path(spec["run"]) / "final.pth")


# ------------------------------------------------------------------------------------------------ score
def reference_model(reference: Path, num_classes: int, network: str = "UNet"):
    """The reference's own network class from its checkout's code/networks/unet.py (SSL4MIS's UNet, BCP's
    UNet_2d), imported afresh: another checkout's ``networks`` may be loaded for an earlier run."""
    import importlib

    for name in [m for m in sys.modules if m == "networks" or m.startswith("networks.")]:
        del sys.modules[name]
    sys.path.insert(0, str(reference / "code"))
    try:
        unet = importlib.import_module("networks.unet")
    finally:
        sys.path.remove(str(reference / "code"))
    return getattr(unet, network)(in_chns=1, class_num=num_classes)


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
    from bfaseg.inference.predictor import run_precision, slice_image_resize

    torch.set_num_threads(a.threads)
    root = Path(a.data)
    ids = read_list(root / a.split)
    results = {}
    for run in map(Path, a.runs):
        if (run / "final.pth").is_file():  # a reference run of `train`
            info = json.loads((run / "run.json").read_text())
            network = info.get("network", "networks.unet.UNet").rsplit(".", 1)[-1]  # runs before BCP: SSL4MIS's UNet
            model = reference_model(Path(a.reference or info["reference"]), info["num_classes"], network)
            model.load_state_dict(torch.load(run / "final.pth", map_location="cpu", weights_only=True))
            side, patch, k, precision = "reference", info["patch_size"], info["num_classes"], info["precision"]
            resize = info.get("image_resize", "zoom_nearest")  # the training's image zoom: order 0 in both
            variant, seed = info.get("variant", f"ssl4mis_{info['method']}"), info["seed"]
            iterations = info.get("iterations") or int(info["argv"][info["argv"].index("--max_iterations") + 1])
            seconds = info.get("seconds")
        elif (run / "checkpoints" / "last.pt").is_file():  # a bfaseg run
            ckpt = run / "checkpoints" / "last.pt"
            model, cfg, state = load_model_from_checkpoint(ckpt, "cpu")
            side, patch, k = "bfaseg", list(cfg.data.patch_size), cfg.model.num_classes
            resize = slice_image_resize(cfg)  # its training's slice zoom (data.slice_resize)
            precision = run_precision(ckpt, cfg, state, torch.device("cpu"))
            seed, iterations = cfg.train.seed, cfg.train.iterations
            variant = run.name.removesuffix(f"_s{seed}")
            seconds = None
        else:
            fail(f"{run}: neither a reference run (final.pth) nor a bfaseg run (checkpoints/last.pt)")
        model.eval()
        cases = load_cases("acdc", root, ids, kind="eval", num_classes=k)
        res = score_volumes(model, cases, patch, k, resize, precision)
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
    t.add_argument("--reference", required=True, help="checkout of SSL4MIS (code/train_*_2D.py) or of BCP (code/ACDC_BCP_train.py)")
    t.add_argument("--method", required=True, choices=sorted(METHODS))
    t.add_argument("--seed", type=int, default=1337)
    t.add_argument("--config", default="configs/acdc/cpu_converged.yaml")
    t.add_argument("--data", default="../shared/data/acdc")
    t.add_argument("--rampup", choices=("scaled", "published"), default="scaled")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--output", default="runs/parity")
    s = sub.add_parser("score", help="score reference and bfaseg runs with one scorer on one split")
    s.add_argument("runs", nargs="+", help="reference run folders (final.pth) and bfaseg run folders")
    s.add_argument("--reference", help="the reference checkout (default: the one each run recorded)")
    s.add_argument("--data", default="../shared/data/acdc")
    s.add_argument("--split", default="val.list")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--output", help="write the scores as JSON here")
    a = ap.parse_args(argv)
    return cmd_train(a) if a.cmd == "train" else cmd_score(a)


if __name__ == "__main__":
    sys.exit(main())
