"""What benchmarks/parity.py knows of each public reference repository it runs: which script a ``--method``
runs, how a checkout is recognised, how a bfaseg config's budget maps onto the script's arguments, and the
run-time changes each run records in ``run.json``. None of the references' code is here: their scripts are
read from the user's checkout at run time.

* SSL4MIS (HiLab-git/SSL4MIS), ``code/train_*_2D.py``: one training loop, which builds its networks with
  ``networks.net_factory.net_factory``. Its fully supervised script reads the first
  ``patients_to_slices(root, --labeled_num)`` slices of ``train_slices.list`` (``BaseDataSets(num=...)``);
  its ACDC table maps 140 to 1312, every slice of the 70 training patients (140 volumes: two frames each),
  which is what ``--method full`` (bfaseg's ``full`` variant) passes.
* BCP (DeepMed-Lab-ECNU/BCP), ``code/ACDC_BCP_train.py``: its ``__main__`` block calls
  ``pre_train(args, snapshot_path)`` (labeled-labeled copy-paste for ``--pre_iterations``) then
  ``self_train(args, pre_snapshot_path, snapshot_path)`` (for ``--max_iterations``), which starts from the
  model file ``pre_train/<model>_best_model.pth`` that pre-training saves when in-loop validation improves.
  Both stages build ``networks.net_factory.BCP_net`` (its ``networks.unet.UNet_2d``) and draw
  ``--batch_size`` slices per step, of which ``--labeled_bs`` labeled.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


@dataclass(frozen=True)
class Repository:
    title: str
    checkout: str  # "needs <checkout>"
    network: str  # the class of the checkout's code/networks/unet.py that its ACDC scripts train
    patients: dict  # labeled slices -> labeled patients: the script's patients_to_slices table for ACDC
    validation: str  # the module whose test_single_volume* functions in-loop validation calls
    final_stage: str  # the stage whose student is kept ("main": the whole script)
    variant: str  # its runs' variant in `score`'s results.json
    changes: tuple


DEVICE = "device: .cuda() of tensors and modules is a no-op"
PRECISION = "precision: network forwards under bf16 autocast where precision auto picks bf16, outputs in fp32"
WORKERS = "DataLoader num_workers=0"
PATCH = "--patch_size set to the config's data.patch_size"
ACDC_LINK = "paths: --root_path is a link named ACDC to the data (the scripts choose ACDC's slice table by that name)"
TORCHVISION = "torchvision stand-in (transforms.Compose) only where torchvision cannot load"

SSL4MIS = Repository(
    title="SSL4MIS", checkout="an SSL4MIS checkout", network="UNet",
    patients={68: 3, 136: 7, 256: 14, 396: 21, 512: 28, 664: 35, 1312: 140}, validation="val_2D",
    final_stage="main", variant="ssl4mis_{method}",
    changes=(DEVICE, PRECISION, "networks.net_factory reduced to the reference's networks.unet.UNet",
             "no in-loop validation; the last model is written to final.pth", WORKERS, PATCH, ACDC_LINK, TORCHVISION),
)
BCP = Repository(
    title="BCP", checkout="a BCP checkout", network="UNet_2d",
    patients={32: 1, 68: 3, 136: 7, 256: 14, 396: 21, 512: 28, 664: 35, 1312: 70}, validation="utils.val_2d",
    final_stage="self_train", variant="bcp_reference",
    changes=(DEVICE, PRECISION,
             "networks: the script's own networks.net_factory.BCP_net (its UNet_2d), every network it builds recorded",
             "no in-loop validation: utils.val_2d.test_single_volume* return zeros, so neither stage saves a "
             "best-on-val model",
             "stage hand-over: when pre_train returns, its last model and optimizer are written with the script's "
             "save_net_opt to pre_train/<model>_best_model.pth, the file self_train starts from (the reference "
             "starts from its best-on-val pre-training model)",
             "the last self-training student is written to final.pth when self_train returns (the reference keeps "
             "its best-on-val model)",
             WORKERS, PATCH, ACDC_LINK,
             "paths: a link named code in the run folder to the checkout's code (the script copies "
             "../code/ACDC_BCP_train.py into its snapshot folder); its model/BCP/... snapshot folders are under cwd/",
             TORCHVISION),
)
REPOSITORIES = {"ssl4mis": SSL4MIS, "bcp": BCP}
METHODS = {  # --method -> (repository, script under code/, what the script is)
    "supervised": ("ssl4mis", "train_fully_supervised_2D.py", "fully supervised 2-D script"),
    # the full-supervision anchor: the same script and arguments, every training slice labeled (bfaseg's `full`)
    "full": ("ssl4mis", "train_fully_supervised_2D.py", "fully supervised 2-D script"),
    "mean_teacher": ("ssl4mis", "train_mean_teacher_2D.py", "mean teacher 2-D script"),
    "ua_mt": ("ssl4mis", "train_uncertainty_aware_mean_teacher_2D.py", "UA-MT 2-D script"),
    "bcp": ("bcp", "ACDC_BCP_train.py", "ACDC script"),
}
ITERATIONS_PER_EPOCH = 150  # the scripts' consistency "epoch": iter_num // 150


def supervised_only(method: str) -> bool:
    """``--method`` runs SSL4MIS's fully supervised script (no unlabeled batch, no consistency ramp)."""
    return METHODS[method][1] == "train_fully_supervised_2D.py"


def script_for(reference: Path, method: str) -> Path:
    """The script ``--method`` runs in this checkout; a one-line error when the checkout is not its repository."""
    repo, script, what = METHODS[method]
    path = reference / "code" / script
    if path.is_file():
        return path
    found = sorted({REPOSITORIES[r].checkout for r, s, _ in METHODS.values() if (reference / "code" / s).is_file()})
    found = f" ({reference} is {' and '.join(found)})" if found else ""
    fail(f"--reference {reference}: no code/{script} ({REPOSITORIES[repo].title}'s {what}); "
         f"--method {method} needs {REPOSITORIES[repo].checkout}{found}")


def bcp_pretrain_iterations(config: str | Path, seed: int) -> tuple[int, object]:
    """Pre-training iterations of bfaseg's ``bcp`` variant of this config (``bfaseg experiment --methods bcp``):
    its ``method.pretrain`` (a fraction of ``train.iterations``, or a count if > 1), counted by BCP's own rule."""
    from bfaseg.config import load_yaml
    from bfaseg.experiments import variant_config
    from bfaseg.methods.bcp import BCP

    cfg = variant_config(load_yaml(config), "bcp", seed, [])
    pretrain = BCP.Params.model_validate(cfg.method_params()).pretrain
    clock = types.SimpleNamespace(t=types.SimpleNamespace(total_iterations=cfg.train.iterations))
    return BCP.fraction_to_iterations(clock, pretrain), pretrain


def labeled_slices(cfg, method: str, seed: int, data_root: str, config: str) -> tuple[int | None, str]:
    """``(labeled slices, where the count comes from)``: the config's ``data.labeled``; for ``--method full``
    the labeled slices of bfaseg's ``full`` variant of the config (``bfaseg experiment --methods full``:
    ``data.labeled`` None, every slice of the training list of ``--data``)."""
    if method != "full":
        return cfg.data.labeled, "data.labeled"
    from bfaseg.config import load_yaml
    from bfaseg.data.build import benchmark_split_ids
    from bfaseg.errors import BfasegError
    from bfaseg.experiments import variant_config

    try:
        full = variant_config(load_yaml(config), "full", seed, [])
        labeled, _, _, _ = benchmark_split_ids(full.data, Path(data_root))
    except BfasegError as exc:
        fail(f"bfaseg's full variant of {config}: {exc}")
    listed = full.data.train_list or "train_slices.list"
    return len(labeled), f"bfaseg's full variant of the config: data.labeled None = every slice of {listed}"


def script_args(cfg, method: str, seed: int, data_root: str, rampup: str, exp: str, config: str) -> dict:
    """``--argument -> (value, where it comes from)``: the script's command line for a bfaseg config's budget,
    and the mapping that run.json records. ``supervised`` and ``full`` differ only in the labeled count."""
    repo = REPOSITORIES[METHODS[method][0]]
    tc = cfg.train
    slices, source = labeled_slices(cfg, method, seed, data_root, config)
    if slices not in repo.patients:
        fail(f"{source}: {slices} slices is no patient count of {repo.title}'s table ({sorted(repo.patients)})")
    key = repo.patients[slices]  # the script's labeled count: its patients_to_slices(ACDC, key) = slices
    patients = (key, f"{source}: {slices} slices = {key} ({repo.title}'s patients_to_slices for ACDC maps {key} "
                     f"to {slices})")
    args = {"--root_path": (data_root, "--data, through a link named ACDC in the run folder"),
            "--exp": (exp, "the run's name")}
    batches = {"--batch_size": (tc.batch_labeled + tc.batch_unlabeled, "train.batch_labeled + train.batch_unlabeled"),
               "--labeled_bs": (tc.batch_labeled, "train.batch_labeled")}
    if repo is SSL4MIS:
        args |= {"--model": ("unet", "the reference's UNet"), "--max_iterations": (tc.iterations, "train.iterations")}
    else:
        if tc.batch_labeled != tc.batch_unlabeled:  # it pastes each labeled half into an unlabeled half of its size
            fail(f"train.batch_labeled {tc.batch_labeled} != train.batch_unlabeled {tc.batch_unlabeled}: BCP's script "
                 "mixes labeled and unlabeled halves of equal size")
        pre, pretrain = bcp_pretrain_iterations(config, seed)
        if not 0 < pre < tc.iterations:
            fail(f"method.pretrain: {pre} of {tc.iterations} iterations; BCP's script runs both stages, each for "
                 "at least one iteration")
        args |= {"--pre_iterations": (pre, f"pre-training of bfaseg's bcp variant: method.pretrain {pretrain} "
                                           f"of train.iterations {tc.iterations}"),
                 "--max_iterations": (tc.iterations - pre, "self-training: train.iterations - --pre_iterations")}
    args |= {"--base_lr": (tc.lr, "train.lr"), "--seed": (seed, "--seed"),
             "--num_classes": (cfg.model.num_classes, "model.num_classes")}
    if repo is BCP:
        return args | batches | {"--labelnum": patients}
    args["--labeled_num"] = patients
    if supervised_only(method):
        return args | {"--batch_size": (tc.batch_labeled, "train.batch_labeled")}
    args |= batches
    if rampup == "scaled":
        args["--consistency_rampup"] = (f"{tc.iterations / ITERATIONS_PER_EPOCH:.4f}",
                                        f"train.iterations / {ITERATIONS_PER_EPOCH} (--rampup scaled)")
    return args
