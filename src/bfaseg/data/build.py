"""Turn a ``DataConfig`` into labeled / unlabeled / validation cases held in memory."""

from __future__ import annotations

import json
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from bfaseg.config import DataConfig, RunConfig, safe_load_unique
from bfaseg.data.cases import Case
from bfaseg.data.readers import DEFAULT_LISTS, load_cases, read_list
from bfaseg.data.synthetic import make_synthetic_cases
from bfaseg.data.transforms import downsample_case_arrays, resize
from bfaseg.errors import BfasegError


@dataclass
class DataBundle:
    labeled: list[Case]
    unlabeled: list[Case]
    val: list[Case]
    train_ndim: int  # 2 = slice-wise network, 3 = volumetric network
    val_split: str  # what the validation cases are, in words, recorded in summaries
    # NIfTI data: the modality every image was read with when one was declared for all (dataset.json or
    # data.modality), and where; None when each image decided. Stored in checkpoints for inference.
    modality: str | None = None
    modality_declared_by: str | None = None

    @property
    def val_ids(self) -> list[str]:
        """The validation split as ids: stored in checkpoints and summaries, never re-derived."""
        return [c.case_id for c in self.val]

    @property
    def train_ids(self) -> list[str]:
        """Every case the run trained on (labeled and unlabeled)."""
        return [c.case_id for c in self.labeled + self.unlabeled]


def _num_labeled(cfg: DataConfig, n_total: int) -> int:
    if cfg.labeled is not None:
        n = cfg.labeled
    elif cfg.labeled_fraction is not None:
        n = max(1, int(round(cfg.labeled_fraction * n_total)))
    else:
        n = n_total
    if n <= 0:
        raise BfasegError("data.labeled: zero labeled cases; at least one labeled case is needed")
    if n > n_total:
        raise BfasegError(f"data.labeled: {n} labeled cases requested but the training list has {n_total}")
    return n


def _downsample_all(cases: list[Case], factor: float) -> None:
    """``data.downsample`` every case, refusing a factor that leaves an axis under 2 voxels."""
    for c in cases:
        shape = c.image.shape
        c.image, c.label = downsample_case_arrays(c.image, c.label, factor)
        if min(c.image.shape) < 2 <= min(shape):
            raise BfasegError(f"data.downsample: {factor:g} shrinks case {c.case_id!r} from {tuple(shape)} to "
                              f"{tuple(c.image.shape)}; use a smaller factor")


def _read_split_file(path: str) -> tuple[list[str], list[str]]:
    p = Path(path)
    if not p.is_file():
        raise BfasegError(f"data.split_file not found: {p}")
    try:
        raw = json.loads(p.read_text()) if p.suffix == ".json" else safe_load_unique(p.read_text())
    except (ValueError, yaml.YAMLError) as exc:
        problem = " ".join(str(getattr(exc, "problem", None) or "").split())[:120]
        raise BfasegError(f"{p}: cannot parse split file" + (f" ({problem})" if problem else "")) from None
    if not isinstance(raw, dict) or "labeled" not in raw:
        raise BfasegError(f"{p}: split file needs a 'labeled' list (and optionally 'unlabeled')")
    lists = {}
    for key in ("labeled", "unlabeled"):
        ids = raw.get(key) or []
        if not isinstance(ids, list) or any(isinstance(i, (list, dict, bool)) or i is None for i in ids):
            raise BfasegError(f"{p}: '{key}' must be a list of case ids")
        ids = [str(i) for i in ids]
        dup = next((i for n, i in enumerate(ids) if i in ids[:n]), None)
        if dup is not None:
            raise BfasegError(f"{p}: case {dup!r} is listed twice in '{key}'")
        lists[key] = ids
    if not lists["labeled"]:
        raise BfasegError(f"{p}: 'labeled' is empty; at least one labeled case is needed")
    both = next((i for i in lists["labeled"] if i in set(lists["unlabeled"])), None)
    if both is not None:
        raise BfasegError(f"{p}: case {both!r} is both labeled and unlabeled")
    return lists["labeled"], lists["unlabeled"]


def _split_ids(cfg: DataConfig, train_ids: list[str]) -> tuple[list[str], list[str]]:
    if cfg.split_file:
        labeled, unlabeled = _read_split_file(cfg.split_file)
        unknown = [i for i in labeled + unlabeled if i not in set(train_ids)]
        if unknown:
            raise BfasegError(f"{cfg.split_file}: unknown id {unknown[0]!r} (not in the training list)")
        return labeled, unlabeled
    n = _num_labeled(cfg, len(train_ids))
    return train_ids[:n], train_ids[n:]


def benchmark_split_ids(cfg: DataConfig, root: Path) -> tuple[list[str], list[str], list[str], str]:
    """``(labeled, unlabeled, val ids, val split name)`` of an LA / Pancreas / ACDC run (ACDC: training
    ids are slices, validation ids volumes)."""
    train_name, val_name = DEFAULT_LISTS[cfg.dataset]
    train_ids = read_list(root / (cfg.train_list or train_name))
    val_ids: list[str]
    if cfg.dataset == "acdc":
        val_ids = read_list(root / (cfg.val_list or val_name))
        val_split = cfg.val_list or val_name
    elif cfg.val_list:
        val_ids, val_split = read_list(root / cfg.val_list), cfg.val_list
    else:
        n_val = cfg.val_cases if cfg.val_cases is not None else max(1, len(train_ids) // 5)
        if n_val >= len(train_ids):
            raise BfasegError(f"data.val_cases: {n_val} leaves no training cases out of {len(train_ids)}")
        val_ids, train_ids = train_ids[-n_val:], train_ids[:-n_val]
        val_split = f"last {n_val} of {cfg.train_list or train_name}"
    labeled_ids, unlabeled_ids = _split_ids(cfg, train_ids)
    return labeled_ids, unlabeled_ids, val_ids, val_split


def build_data(cfg: DataConfig, num_classes: int, progress: bool = True) -> DataBundle:
    if cfg.slice_resize != "linear" and cfg.dataset != "acdc":
        raise BfasegError(f"data.slice_resize: only ACDC resizes its 2-D slices, not {cfg.dataset!r} (keep 'linear')")
    if cfg.dataset == "synthetic":
        return _build_synthetic(cfg, num_classes)
    if cfg.dataset == "nifti":
        return _build_nifti(cfg, num_classes)
    if not cfg.root:
        raise BfasegError(f"data.root: required for dataset {cfg.dataset!r}")
    root = Path(cfg.root)
    if not root.is_dir():
        raise BfasegError(f"data.root: folder not found: {root}")
    labeled_ids, unlabeled_ids, val_ids, val_split = benchmark_split_ids(cfg, root)
    load = lambda ids, kind, need: load_cases(  # noqa: E731
        cfg.dataset, root, ids, kind=kind, need_label=need, num_classes=num_classes, progress=progress
    )
    labeled = load(labeled_ids, "train", True)
    unlabeled = load(unlabeled_ids, "train", False) if unlabeled_ids else []
    val = load(val_ids, "eval", True)
    if cfg.dataset == "acdc":
        size = tuple(cfg.patch_size)
        if len(size) != 2:
            raise BfasegError(f"data.patch_size: ACDC trains 2-D slices, got {list(size)}")
        if cfg.slice_resize != "nearest_after_augment":  # that one resizes every draw (data/batches.py)
            image_order = {"linear": 1, "nearest": 0}[cfg.slice_resize]
            for c in labeled + unlabeled:  # resize once at load, not every iteration
                c.image = resize(c.image, size, order=image_order)
                if c.label is not None:
                    c.label = resize(c.label, size, order=0)
        train_ndim = 2
    else:
        if len(cfg.patch_size) != 3:
            raise BfasegError(f"data.patch_size: {cfg.dataset} trains 3-D patches, got {cfg.patch_size}")
        _downsample_all(labeled + unlabeled + val, cfg.downsample)
        train_ndim = 3
    for c in unlabeled:
        c.label = None  # the unlabeled pool never carries labels into training
    return DataBundle(labeled, unlabeled, val, train_ndim, val_split)


def _build_synthetic(cfg: DataConfig, num_classes: int) -> DataBundle:
    size = tuple(cfg.synthetic_size)
    if len(size) != cfg.synthetic_ndim:
        raise BfasegError(f"data.synthetic_size: {list(size)} does not match synthetic_ndim={cfg.synthetic_ndim}")
    if cfg.synthetic_classes != num_classes:
        raise BfasegError(
            f"data.synthetic_classes ({cfg.synthetic_classes}) must equal model.num_classes ({num_classes})"
        )
    from bfaseg.precision import check_fits_in_memory

    check_fits_in_memory(cfg.synthetic_cases * math.prod(size) * 5,  # float32 image + uint8 label per case
                         f"data.synthetic_size {list(size)} x data.synthetic_cases {cfg.synthetic_cases}",
                         "choose fewer or smaller phantoms")
    cases = make_synthetic_cases(cfg.synthetic_cases, size, num_classes, seed=1)
    val = make_synthetic_cases(cfg.synthetic_val_cases, size, num_classes, seed=2, prefix="synth_val")
    labeled_ids, _ = _split_ids(cfg, [c.case_id for c in cases])
    labeled = [c for c in cases if c.case_id in set(labeled_ids)]
    unlabeled = [Case(c.case_id, c.image, None) for c in cases if c.case_id not in set(labeled_ids)]
    if cfg.synthetic_ndim == 2:  # 2-D cases are validated as one-slice volumes (z, y, x)
        val = [Case(c.case_id, c.image[None], c.label[None]) for c in val]
    return DataBundle(labeled, unlabeled, val, cfg.synthetic_ndim, "synthetic validation phantoms")


def split_nifti_cases(cfg: DataConfig, labeled_all: list[Case], unlabeled: list[Case]):
    """``(labeled, unlabeled, val, n_val)`` of a NIfTI run: the last ``val_cases`` labeled scans validate;
    labeled scans outside ``data.labeled`` / the split file join the unlabeled pool without their label."""
    if not labeled_all:
        raise BfasegError(f"{cfg.root}: no labeled cases (labelsTr is empty)")
    n_val = cfg.val_cases if cfg.val_cases is not None else max(1, math.ceil(len(labeled_all) / 5))
    if n_val >= len(labeled_all):
        raise BfasegError(f"data.val_cases: {n_val} leaves no labeled training cases of {len(labeled_all)}")
    val, train = labeled_all[-n_val:], labeled_all[:-n_val]
    labeled_ids, _ = _split_ids(cfg, [c.case_id for c in train])
    labeled = [c for c in train if c.case_id in set(labeled_ids)]
    unlabeled = unlabeled + [dataclasses.replace(c, label=None) for c in train if c not in labeled]
    return labeled, unlabeled, val, n_val


def stored_validation_cases(cfg: RunConfig, data_state: dict, root: Path | None, n: int | None = None) -> list[Case]:
    """The first ``n`` validation cases of a run, preprocessed as in training (``data.downsample``).

    ``data_state`` is the checkpoint's ``data`` record: its ``val_ids`` name the cases. Checkpoints
    written before the ids were stored get the split recomputed from the config, by the same
    functions :func:`build_data` uses.
    """
    data = cfg.data
    K = cfg.model.num_classes
    if data.dataset == "synthetic":
        return _build_synthetic(data, K).val[:n]
    if root is None:
        raise BfasegError("--data is needed for the validation cases of runs on real data")
    ids = data_state.get("val_ids")
    if data.dataset == "nifti":
        from bfaseg.data.nifti_dataset import load_nifti_dataset

        labeled_all, _ = load_nifti_dataset(root, data.target_spacing, data.modality)
        if ids is None:
            ids = [c.case_id for c in split_nifti_cases(data, labeled_all, [])[2]]
        by_id = {c.case_id: c for c in labeled_all}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise BfasegError(f"{root}: validation case {missing[0]!r} of the run is not in labelsTr")
        cases = [by_id[i] for i in ids[:n]]
    else:
        if ids is None:
            ids = benchmark_split_ids(data, root)[2]
        cases = load_cases(data.dataset, root, ids[:n], kind="eval", num_classes=K)
    if data.dataset != "acdc":
        for c in cases:
            c.image, c.label = downsample_case_arrays(c.image, c.label, data.downsample)
    return cases


def _build_nifti(cfg: DataConfig, num_classes: int) -> DataBundle:
    from bfaseg.data.nifti_dataset import load_nifti_dataset

    if not cfg.root:
        raise BfasegError("data.root: required for dataset 'nifti' (a folder with imagesTr/labelsTr)")
    labeled_all, unlabeled = load_nifti_dataset(cfg.root, target_spacing=cfg.target_spacing, modality=cfg.modality)
    if not labeled_all:
        raise BfasegError(f"{cfg.root}: no labeled cases (labelsTr is empty)")
    for c in labeled_all:
        if c.label is not None and c.label.max() >= num_classes:
            raise BfasegError(f"case {c.case_id}: label {int(c.label.max())} >= model.num_classes ({num_classes})")
    labeled, unlabeled, val, n_val = split_nifti_cases(cfg, labeled_all, unlabeled)
    _downsample_all(labeled + unlabeled + val, cfg.downsample)
    from bfaseg.data.nifti_dataset import declared_modality

    modality, declared_by = declared_modality(cfg.root, cfg.modality)
    return DataBundle(labeled, unlabeled, val, len(cfg.patch_size), f"last {n_val} labeled cases", modality,
                      declared_by)
