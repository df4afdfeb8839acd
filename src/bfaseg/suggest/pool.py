"""Which cases to score: a run's unlabeled pool, a list of ids, or its validation cases.

Cases are read with the project's readers (:mod:`bfaseg.data`) in their file's geometry, one at a
time (``PoolCase.load``) so a large pool is never held in memory (NIfTI folders are the exception:
:func:`bfaseg.data.nifti_dataset.load_nifti_dataset` reads the folder at once).

Layouts: ``la`` / ``pancreas`` (h5 volumes), ``acdc`` (the unit of annotation is the volume
``patientXXX_frameYY``: slice ids of the training list are mapped to their volume), ``nifti``
(nnU-Net folder) and ``synthetic`` (the phantoms the run trained on; no folder).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bfaseg.data.cases import Case
from bfaseg.errors import BfasegError

LAYOUTS = ("la", "pancreas", "acdc", "nifti", "synthetic")
_SLICE = re.compile(r"_slice_\d+$")


@dataclass
class PoolCase:
    case_id: str
    load: Callable[[], Case]  # image (+ label when known) in the file's own geometry
    xyz: bool = False  # NIfTI (x, y, z): 2-D networks predict its z-slices


def acdc_volume_id(case_id: str) -> str:
    """``patient001_frame01_slice_3`` -> ``patient001_frame01``."""
    return _SLICE.sub("", case_id)


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _slice_number(case_id: str) -> int:
    return int(case_id.rsplit("_slice_", 1)[1])


def _h5_cases(dataset: str, root: Path, ids: list[str], num_classes: int, need_label: bool) -> list[PoolCase]:
    from bfaseg.data.readers import acdc_volume_path, load_cases

    slices: dict[str, list[str]] = {}
    if dataset == "acdc":
        for i in ids:
            if _SLICE.search(i):
                slices.setdefault(acdc_volume_id(i), []).append(i)
        ids = _unique([acdc_volume_id(i) for i in ids])

    def loader(case_id: str):
        parts = sorted(slices.get(case_id, []), key=_slice_number)
        if parts and not acdc_volume_path(root, case_id).is_file():
            # distributions may ship only the training SLICES (data/slices/) for training patients:
            # the volume is its slices stacked in order
            return lambda: _stack_slices(case_id, load_cases(dataset, root, parts, kind="train",
                                                              need_label=need_label, num_classes=num_classes))
        return lambda: load_cases(dataset, root, [case_id], kind="eval", need_label=need_label,
                                  num_classes=num_classes)[0]

    return [PoolCase(i, loader(i)) for i in ids]


def _stack_slices(case_id: str, cases: list[Case]) -> Case:
    import numpy as np

    shapes = {c.image.shape for c in cases}
    if len(shapes) != 1:
        raise BfasegError(f"case {case_id!r}: its slices differ in size ({', '.join(map(str, sorted(shapes)))})")
    label = None if any(c.label is None for c in cases) else np.stack([c.label for c in cases])
    return Case(case_id=case_id, image=np.stack([c.image for c in cases]), label=label)


def _nifti_run_cases(cfg, root: Path):
    from bfaseg.data.build import split_nifti_cases
    from bfaseg.data.nifti_dataset import load_nifti_dataset

    labeled_all, unlabeled = load_nifti_dataset(root, target_spacing=cfg.data.target_spacing, modality=cfg.data.modality)
    return split_nifti_cases(cfg.data.model_copy(update={"root": str(root)}), labeled_all, unlabeled)


def _in_memory(cases: list[Case], xyz: bool) -> list[PoolCase]:
    return [PoolCase(c.case_id, (lambda c=c: c), xyz) for c in cases]


def _check_root(root: Path | None, dataset: str) -> Path:
    if root is None:
        raise BfasegError(f"--data: a dataset root is needed for the {dataset} layout")
    if not root.is_dir():
        raise BfasegError(f"--data: folder not found: {root}")
    return root


def run_cases(cfg, root: Path | None, dataset: str, which: str) -> list[PoolCase]:
    """The run's ``unlabeled`` pool (training entries not labeled in its config) or its ``val`` cases,
    with ``root`` in place of the run's ``data.root``."""
    from bfaseg.data.build import benchmark_split_ids, build_data

    if dataset not in LAYOUTS:
        raise BfasegError(f"--dataset: unknown layout {dataset!r}; choose from {', '.join(LAYOUTS)}")
    if dataset != cfg.data.dataset:
        raise BfasegError(f"--dataset {dataset}: the run trained on {cfg.data.dataset!r} data, so its unlabeled "
                          f"pool is not defined in this layout; give --split LIST")
    num_classes = cfg.model.num_classes
    if dataset == "synthetic":
        bundle = build_data(cfg.data, num_classes, progress=False)
        cases = bundle.unlabeled if which == "unlabeled" else bundle.val
        return _in_memory([Case(c.case_id, c.image if c.image.ndim == 3 else c.image[None],
                                None if c.label is None else (c.label if c.label.ndim == 3 else c.label[None]))
                           for c in cases], False)
    root = _check_root(root, dataset)
    if dataset == "nifti":
        _, unlabeled, val, _ = _nifti_run_cases(cfg, root)
        return _in_memory(unlabeled if which == "unlabeled" else val, True)
    labeled, unlabeled, val, _ = benchmark_split_ids(cfg.data.model_copy(update={"root": str(root)}), root)
    if which == "val":
        return _h5_cases(dataset, root, val, num_classes, need_label=True)
    if dataset == "acdc":  # a volume is unlabeled when none of its slices is labeled
        done = {acdc_volume_id(i) for i in labeled}
        unlabeled = [i for i in unlabeled if acdc_volume_id(i) not in done]
    return _h5_cases(dataset, root, unlabeled, num_classes, need_label=False)


def list_cases(cfg, root: Path | None, dataset: str, ids: list[str], data_state: dict | None = None) -> list[PoolCase]:
    """The cases named in a list file (ACDC slice ids are mapped to their volumes). NIfTI images are read with
    the modality the run's training read its own with (``data_state``: the checkpoint's ``data`` record)."""
    if dataset not in LAYOUTS:
        raise BfasegError(f"--dataset: unknown layout {dataset!r}; choose from {', '.join(LAYOUTS)}")
    if dataset == "synthetic":
        raise BfasegError("--split: synthetic runs have no files to list; give --data ROOT --dataset la|acdc|nifti")
    root = _check_root(root, dataset)
    if dataset != "nifti":
        return _h5_cases(dataset, root, ids, cfg.model.num_classes, need_label=False)
    from bfaseg.data.nifti import load_nifti_image
    from bfaseg.data.nifti_dataset import group_images

    found: dict[str, Path] = {}
    for sub in ("imagesTr", "imagesTs", "imagesUnlabeled"):
        if (root / sub).is_dir():
            for case_id, path in group_images(root / sub).items():
                found.setdefault(case_id, path)
    missing = [i for i in ids if i not in found]
    if missing:
        raise BfasegError(f"--split: case {missing[0]!r} has no image in {root}/imagesTr, imagesTs or imagesUnlabeled")

    from bfaseg.data.nifti_dataset import inference_modality

    modality, declared_by = inference_modality(cfg.data.modality, data_state, root)

    def loader(case_id: str):
        return lambda: load_nifti_image(found[case_id], cfg.data.target_spacing, modality, case_id=case_id,
                                        declared_by=declared_by)

    return [PoolCase(i, loader(i), True) for i in ids]
