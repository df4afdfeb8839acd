"""``bfaseg evaluate``: score a checkpoint on a labeled split, write ``summary.json``.

    bfaseg evaluate --checkpoint runs/la/checkpoints/best.pt --data /data/LA --split test.list

Cases are read in the benchmark layouts (LA / Pancreas h5 volumes, ACDC 3-D volumes
``data/<case>.h5``, or an nnU-Net NIfTI folder with ``--dataset nifti``) and
preprocessed as in training:

* LA / Pancreas: the run's ``data.downsample`` is applied to the image AND the label
  (``downsample_case_arrays``, linear / nearest), so a model trained at half resolution
  is scored at half resolution: metrics are then in DOWNSAMPLED voxels (and with
  ``--spacing auto`` the h5 spacing is scaled by the factor). ``summary.json`` records this.
* ACDC: 2-D networks predict each slice of the (Z, Y, X) volume resized to the run's
  patch size; the prediction is resized back (nearest), as the reference protocol.
* NIfTI: images are reoriented/resampled/normalised as in training (``data.target_spacing``,
  ``data.modality``); the prediction is mapped back to the source grid and scored against
  the label file there (``--spacing auto``: the header voxel size, mm).

Metrics (``bfaseg.metrics``): Dice, Jaccard, HD95, ASD (directed, as the papers), ASSD, HD,
per class for multi-class runs; distances in voxels unless ``--spacing`` is given.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bfaseg.errors import BfasegError

DATASETS = ("la", "pancreas", "acdc", "nifti")
MAIN_METRICS = ("dice", "jaccard", "hd95", "asd")


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a checkpoint on a labeled split (Dice, Jaccard, HD95, ASD, ...)",
        description="Predict every case of a split with a checkpoint and score it; writes OUTPUT/summary.json.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (runs/<run>/checkpoints/best.pt)")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root folder")
    p.add_argument("--split", required=True, metavar="LIST",
                   help="list file of case ids, relative to ROOT (e.g. test.list, val.list) or a path")
    p.add_argument("--dataset", choices=DATASETS, help="layout of ROOT (default: the checkpoint's data.dataset)")
    p.add_argument("--mode", choices=("fast", "paper"), default="fast",
                   help="3-D sliding window: fast (overlap, batched, Gaussian; default) or paper (reference protocol)")
    p.add_argument("--stride", type=int, nargs="+", metavar="S",
                   help="window stride per axis (paper default: LA 18 18 4 / Pancreas 16 16 16, divided by "
                   "data.downsample; fast default: from --overlap)")
    p.add_argument("--overlap", type=float, help="fast mode window overlap (default: the run's eval.overlap)")
    p.add_argument("--batch-size", type=int, help="fast mode windows per forward pass (default: eval.batch_size)")
    p.add_argument("--spacing", nargs="+", metavar="S",
                   help="voxel size SX SY SZ in mm for HD95/ASD, or 'auto' (h5 'spacing' attribute / NIfTI "
                   "header); default: distances in voxels, as the reference code")
    p.add_argument("--policy", choices=("strict", "worst", "paper"), default="strict",
                   help="empty-mask policy of the metrics (see `bfaseg metrics --help`)")
    p.add_argument("--largest-component", action="store_true", help="keep the largest connected component per class")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="auto",
                   help="forward-pass precision (auto: fp32 for paper; bf16 for fast where it is fast)")
    p.add_argument("--model", choices=("student", "teacher"),
                   help="which weights to use (default: the network the run validated, eval.model)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--output", metavar="DIR", help="where summary.json goes (default: beside the checkpoint, "
                   "<run>/eval_<split>_<mode>)")
    p.add_argument("--max-cases", type=int, help="evaluate only the first N cases of the split")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------- helpers (shared with predict)
def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BfasegError(f"--device {name}: no CUDA device is available")
    try:
        torch.device(name)
    except RuntimeError:
        raise BfasegError(f"--device: unknown device {name!r}") from None
    return name


def parse_spacing(values: list[str] | None, ndim: int = 3) -> tuple[float, ...] | str | None:
    """None, ``"auto"`` or a tuple of positive floats (one value = isotropic)."""
    if not values:
        return None
    if len(values) == 1 and values[0].lower() == "auto":
        return "auto"
    try:
        nums = [float(v) for v in values]
    except ValueError:
        raise BfasegError(f"--spacing: expected {ndim} numbers (SX SY SZ) or 'auto', got {' '.join(values)}") from None
    if len(nums) == 1:
        nums = nums * ndim
    if len(nums) != ndim or not all(math.isfinite(v) and v > 0 for v in nums):
        raise BfasegError(f"--spacing: expected {ndim} positive numbers (SX SY SZ) or 'auto', got {' '.join(values)}")
    return tuple(nums)


def jsonable(value: Any) -> Any:
    """NaN/Inf -> None, numpy scalars -> Python, int dict keys -> str (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, data: dict) -> None:
    from bfaseg.io.files import atomic_write_bytes

    text = json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def progress_iter(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="case", dynamic_ncols=True, file=sys.stderr)


def score_case(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing, policy: str) -> dict:
    """Metrics of one case (``compute_case``): binary floats for 2 classes, ``{class: value}`` otherwise."""
    from bfaseg.metrics import compute_case

    classes = None if num_classes <= 2 else list(range(1, num_classes))
    if num_classes <= 2:
        pred, gt = pred > 0, gt > 0
    return compute_case(pred, gt, spacing=spacing, classes=classes, policy=policy)


def case_row(case_id: str, result: dict) -> dict:
    from bfaseg.metrics import METRICS

    row: dict[str, Any] = {"case": case_id}
    for k in METRICS:
        v = result[k]
        if isinstance(v, dict):
            row[k] = {str(c): float(x) for c, x in v.items()}
            vals = [x for x in v.values() if not math.isnan(x)]
            row[f"{k}_mean"] = float(np.mean(vals)) if vals else math.nan
        else:
            row[k] = float(v)
    status = result["status"]
    row["status"] = {str(c): s for c, s in status.items()} if isinstance(status, dict) else status
    return row


def summarize(results: list[dict]) -> dict:
    """``mean``, ``std`` (per metric; ``per_class`` for multi-class), ``n_failed``, ``n_cases``."""
    from bfaseg.metrics import METRICS, aggregate

    agg = aggregate(results)
    mean: dict[str, Any] = {k: agg[k]["mean"] for k in METRICS}
    std: dict[str, Any] = {k: agg[k]["std"] for k in METRICS}
    if "per_class" in agg["dice"]:
        mean["per_class"] = {k: {str(c): s["mean"] for c, s in agg[k]["per_class"].items()} for k in METRICS}
        std["per_class"] = {k: {str(c): s["std"] for c, s in agg[k]["per_class"].items()} for k in METRICS}
    out = {"mean": mean, "std": std, "n_cases": agg["n_cases"], "n_failed": agg["n_failed"],
           "n_both_empty": agg["n_both_empty"]}
    if "n_failed_per_class" in agg:
        out["n_failed_per_class"] = {str(c): n for c, n in agg["n_failed_per_class"].items()}
    return out


def summary_metrics(results: list[dict], policy: str, units: str) -> dict:
    """The metric fields of ``summary.json``: mean, std, case counts, empty-mask policy, units."""
    summary = summarize(results)
    fields = {k: summary[k] for k in ("mean", "std", "n_cases", "n_failed", "n_both_empty")}
    if "n_failed_per_class" in summary:
        fields["n_failed_per_class"] = summary["n_failed_per_class"]
    fields.update(policy=policy, units=units)
    return fields


@dataclass
class Predictor:
    """A checkpoint's network and the inference options of ``evaluate`` and ``predict``."""

    checkpoint: Path
    model: Any
    cfg: Any
    state: dict
    ndim: int
    device: str
    precision: str
    forward: Any
    mode: str
    stride: list[int] | None
    largest_component: bool
    overlap: float | None = None
    batch_size: int | None = None

    @classmethod
    def from_args(cls, args) -> Predictor:
        """Load ``--checkpoint`` (``--model`` weights) on ``--device``; check ``--stride`` against the network."""
        from bfaseg.inference.checkpoints import (
            inference_fn,
            load_model_from_checkpoint,
            model_ndim,
        )
        from bfaseg.precision import resolve_precision

        device = resolve_device(args.device)
        checkpoint = Path(args.checkpoint)
        model, cfg, state = load_model_from_checkpoint(checkpoint, device, which=args.model)
        ndim = model_ndim(cfg, state)
        stride = args.stride
        if stride is not None:
            if ndim == 2:
                raise BfasegError("--stride: the checkpoint is a 2-D network (slice-wise inference has no windows)")
            if len(stride) == 1:
                stride = stride * 3
            if len(stride) != 3 or min(stride) < 1:
                raise BfasegError(f"--stride: expected 3 positive integers, got {stride}")
        return cls(
            checkpoint=checkpoint, model=model, cfg=cfg, state=state, ndim=ndim, device=device,
            precision=resolve_precision(args.precision, args.mode, device), forward=inference_fn(model, ndim, device),
            mode=args.mode, stride=stride, largest_component=args.largest_component,
            overlap=getattr(args, "overlap", None), batch_size=getattr(args, "batch_size", None),
        )

    def predict(self, image: np.ndarray, *, xyz: bool = False, downsample: float = 1.0, probabilities: bool = False):
        """``(labels uint8, probs (K, *shape) numpy or None, settings)`` in the geometry of ``image``.

        A 3-D ``image`` is first downsampled by ``downsample`` (``data.downsample``) and the result
        resized back. 2-D networks predict the slices of axis 0, or the z-slices of (x, y, z) NIfTI
        volumes (``xyz``).
        """
        from bfaseg.data.transforms import downsample_case_arrays, resize
        from bfaseg.inference.checkpoints import predict_array

        work = image
        if downsample != 1 and work.ndim == 3:
            work, _ = downsample_case_arrays(work, None, downsample)
        z_slices = self.ndim == 2 and xyz  # 2-D networks see (x, y, z) volumes as (z, y, x) slices
        if z_slices:
            work = np.ascontiguousarray(work.transpose(2, 1, 0))
        if self.ndim == 3 and work.ndim != 3:
            raise BfasegError("a 3-D network needs 3-D images")
        labels, probs, settings = predict_array(
            self.model, self.cfg, work, ndim=self.ndim, mode=self.mode, stride=self.stride, overlap=self.overlap,
            batch_size=self.batch_size, precision=self.precision, device=self.device,
            largest_component=self.largest_component, return_probs=probabilities, forward=self.forward,
        )
        probs = probs.numpy() if probs is not None else None
        if z_slices:
            labels = np.ascontiguousarray(labels.transpose(2, 1, 0))
            probs = np.ascontiguousarray(probs.transpose(0, 3, 2, 1)) if probs is not None else None
        if labels.shape != image.shape:  # undo the downsampling
            labels = resize(labels, image.shape, order=0)
            if probs is not None:
                probs = np.stack([resize(p, image.shape, order=1) for p in probs])
        return labels, probs, settings

    def describe(self, settings: dict) -> dict:
        """The inference fields of ``summary.json``: settings, mode, checkpoint provenance."""
        from bfaseg.inference.checkpoints import describe_checkpoint

        return {
            "inference": {**settings, "device": self.device, "weights": self.state.get("_loaded_weights")},
            "mode": self.mode,
            "checkpoint": describe_checkpoint(self.checkpoint, self.state),
        }


def format_table(rows: list[dict], summary: dict, units: str) -> str:
    def f(v, digits=4):
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    def line(name: str, vals, per_class=None) -> str:
        """name, dice, jaccard, hd95, asd (+ Dice per class)."""
        text = f"{name[:28]:<28} {f(vals[0]):>7} {f(vals[1]):>7} {f(vals[2], 2):>8} {f(vals[3], 2):>8}"
        if multi and per_class is not None:
            text += "  " + " ".join(f"{f(per_class[c]):>7}" for c in classes)
        return text

    multi = rows and isinstance(rows[0]["dice"], dict)
    classes = list(rows[0]["dice"]) if multi else []
    head = f"{'case':<28} {'dice':>7} {'jaccard':>7} {'hd95':>8} {'asd':>8}"
    if multi:
        head += "  " + " ".join(f"{'dice' + c:>7}" for c in classes)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(line(r["case"], [r[f"{k}_mean"] if multi else r[k] for k in MAIN_METRICS], r["dice"]))
    lines.append("-" * len(head))
    m, s = summary["mean"], summary["std"]
    lines.append(line("mean", [m[k] for k in MAIN_METRICS], m.get("per_class", {}).get("dice")))
    lines.append(line("std", [s[k] for k in MAIN_METRICS]))
    lines.append(f"{summary['n_cases']} cases, {summary['n_failed']} failed (empty prediction or reference); "
                 f"distances in {units}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- split / data
def resolve_split(root: Path, split: str) -> Path:
    cand = root / split
    if cand.is_file():
        return cand
    p = Path(split)
    if p.is_file():
        return p
    raise BfasegError(f"--split: list file not found: {cand}" + ("" if p.is_absolute() else f" (nor {p.resolve()})"))


def training_ids(cfg, root: Path) -> tuple[set[str], str | None]:
    """Ids the run trained on (labeled + unlabeled), as volume ids; and the list's name."""
    from bfaseg.data.readers import DEFAULT_LISTS, read_list

    dataset = cfg.data.dataset
    if dataset not in DEFAULT_LISTS:
        return set(), None
    name = cfg.data.train_list or DEFAULT_LISTS[dataset][0]
    path = root / name
    if not path.is_file():
        return set(), name
    try:
        ids = read_list(path)
    except BfasegError:
        return set(), name
    if dataset != "acdc" and not cfg.data.val_list:  # LA/Pancreas hold out the last val_cases of the list
        n_val = cfg.data.val_cases if cfg.data.val_cases is not None else max(1, len(ids) // 5)
        ids = ids[:-n_val] if 0 < n_val < len(ids) else ids
    if dataset == "acdc":  # slices patientXXX_frameYY_slice_K -> volumes patientXXX_frameYY
        ids = [re.sub(r"_slice_\d+$", "", i) for i in ids]
    return set(ids), name


def find_nifti(folder: Path, case_id: str, channel: bool) -> Path | None:
    names = ([f"{case_id}_0000"] if channel else []) + [case_id]
    for n in names:
        for suffix in (".nii.gz", ".nii"):
            p = folder / f"{n}{suffix}"
            if p.is_file():
                return p
    return None


def read_nifti_label_raw(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as exc:
        raise BfasegError(f"cannot read label {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.dtype.kind == "f":
        data = np.rint(data)
    return data.astype(np.int32), zooms


# ----------------------------------------------------------------------------- command
def run(args) -> int:
    import torch

    from bfaseg.data.readers import load_cases, read_list
    from bfaseg.data.transforms import downsample_case_arrays

    root = Path(args.data)
    if not root.is_dir():
        raise BfasegError(f"--data: folder not found: {root}")
    split_path = resolve_split(root, args.split)
    ids = read_list(split_path)
    if args.max_cases is not None:
        if args.max_cases < 1:
            raise BfasegError("--max-cases: must be at least 1")
        ids = ids[: args.max_cases]
    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise BfasegError(f"--overlap: must be in [0, 1), got {args.overlap}")
    if args.batch_size is not None and args.batch_size < 1:
        raise BfasegError("--batch-size: must be at least 1")
    spacing_opt = parse_spacing(args.spacing)
    predictor = Predictor.from_args(args)
    cfg = predictor.cfg
    dataset = args.dataset or cfg.data.dataset
    if dataset not in DATASETS:
        raise BfasegError(f"--dataset: the checkpoint was trained on {dataset!r} data; pass --dataset "
                          f"({', '.join(DATASETS)}) to say how {root} is laid out")
    ndim = predictor.ndim
    num_classes = cfg.model.num_classes
    downsample = cfg.data.downsample if dataset in ("la", "pancreas") else 1.0

    warn: list[str] = []
    train_set, train_name = training_ids(cfg, root)
    overlap_ids = [i for i in ids if i in train_set]
    if overlap_ids:
        msg = (f"{len(overlap_ids)} of the {len(ids)} cases of {split_path.name} were in the run's training list "
               f"({train_name}); these scores are not held-out")
        if set(ids) == train_set:
            msg = (f"the split {split_path.name} is the run's training list ({train_name}); "
                   f"these scores are not held-out")
        warn.append(msg)
        print(f"warning: {msg}", file=sys.stderr)

    output = Path(args.output) if args.output else (
        predictor.checkpoint.resolve().parent.parent / f"eval_{split_path.stem}_{args.mode}"
    )
    rows, results, times = [], [], []
    units = "voxel"
    for case_id in progress_iter(ids, f"evaluate {split_path.name}", not args.no_progress):
        t0 = time.perf_counter()
        if dataset == "nifti":
            from bfaseg.data.nifti import load_nifti_image, restore_geometry

            img_path = find_nifti(root / "imagesTr", case_id, True) or find_nifti(root / "imagesTs", case_id, True)
            if img_path is None:
                raise BfasegError(f"case {case_id!r}: no image {case_id}_0000.nii.gz or {case_id}.nii.gz in "
                                  f"{root / 'imagesTr'} or {root / 'imagesTs'}")
            lab_path = find_nifti(root / "labelsTr", case_id, False) or find_nifti(root / "labelsTs", case_id, False)
            if lab_path is None:
                raise BfasegError(f"case {case_id!r}: no label {case_id}.nii.gz in {root / 'labelsTr'}")
            case = load_nifti_image(img_path, cfg.data.target_spacing, cfg.data.modality, case_id=case_id)
            gt, zooms = read_nifti_label_raw(lab_path)
            labels, _, settings = predictor.predict(case.image, xyz=True, downsample=cfg.data.downsample)
            pred = restore_geometry(labels, case.meta, order=0)
            if pred.shape != gt.shape:
                raise BfasegError(f"label {lab_path}: shape {gt.shape} differs from image {img_path} {pred.shape}")
            spacing = zooms if spacing_opt == "auto" else spacing_opt
        else:
            case = load_cases(dataset, root, [case_id], kind="eval", need_label=True, num_classes=num_classes)[0]
            image, gt = case.image, case.label
            if ndim == 3 and image.ndim != 3:
                raise BfasegError(f"case {case_id!r}: a 3-D network needs 3-D volumes, got shape {image.shape}")
            orig_shape = image.shape
            if downsample != 1:
                image, gt = downsample_case_arrays(image, gt, downsample)
            pred, _, settings = predictor.predict(image)
            if spacing_opt == "auto":
                if case.spacing is None:
                    raise BfasegError(f"--spacing auto: case {case_id!r} has no 'spacing' attribute in its h5 file; "
                                      f"give --spacing SX SY SZ")
                spacing = tuple(s * o / n for s, o, n in zip(case.spacing, orig_shape, image.shape))
            else:
                spacing = spacing_opt
        result = score_case(pred, gt, num_classes, spacing, args.policy)
        units = result["units"]
        results.append(result)
        row = case_row(case_id, result)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if spacing is not None:
            row["spacing"] = [float(s) for s in spacing]
        rows.append(row)
        times.append(row["seconds"])

    resolution = None
    if downsample != 1:
        resolution = (f"images and labels downsampled x{downsample:g} as in training "
                      f"(data.downsample); metrics are in downsampled voxels")
    elif dataset == "nifti":
        resolution = "prediction mapped back to the source NIfTI grid; metrics in the label file's geometry"
    doc = {
        **summary_metrics(results, args.policy, units),
        "per_case": rows,
        "spacing": "auto" if spacing_opt == "auto" else (list(spacing_opt) if spacing_opt else None),
        "resolution": resolution,
        "downsample": downsample,
        "classes": list(range(1, num_classes)),
        **predictor.describe(settings),
        "split": {"list": str(split_path), "name": split_path.name, "dataset": dataset, "root": str(root),
                  "n_cases": len(ids), "ids": ids},
        "warnings": warn,
        "seconds_per_case": float(np.mean(times)) if times else None,
        "torch": torch.__version__,
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / "summary.json", doc)
    print(format_table(rows, doc, units))
    print(f"wrote {output / 'summary.json'}")
    return 0

