"""NIfTI datasets in the nnU-Net / Medical Segmentation Decathlon layout.

Layout read by :func:`load_nifti_dataset`::

    ROOT/dataset.json            optional: "modality" (MSD) or "channel_names" (nnU-Net v2),
                                 "labels" ({"0": "background", ...} or {"background": 0, ...})
    ROOT/imagesTr/<case>_0000.nii.gz   (nnU-Net)   or   ROOT/imagesTr/<case>.nii.gz   (MSD)
    ROOT/labelsTr/<case>.nii.gz        a missing label makes the case unlabeled
    ROOT/imagesUnlabeled/...           optional, always unlabeled
    ROOT/imagesTs/...                  optional, read by :func:`load_nifti_test`

Each image is read by :func:`bfaseg.data.nifti.load_nifti_image` (reorientation, resampling,
normalisation), each label by :func:`bfaseg.data.nifti.load_nifti_label`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from bfaseg.data.cases import Case
from bfaseg.data.nifti import load_nifti_image, load_nifti_label, parse_modality
from bfaseg.errors import BfasegError
from bfaseg.io.nifti import CHANNEL_RE, NIFTI_SUFFIXES, is_nifti, strip_nifti_suffix

__all__ = ["group_images", "load_nifti_dataset", "load_nifti_test", "read_dataset_json"]


def read_dataset_json(root: str | os.PathLike) -> dict | None:
    """Parse and check ``ROOT/dataset.json``; None when absent.

    Returns ``{"modality": "CT"|"MR"|None, "labels": set[int]|None, "raw": dict}``.
    """
    path = Path(root) / "dataset.json"
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BfasegError(f"{path}: invalid JSON ({exc})") from None
    except OSError as exc:
        raise BfasegError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise BfasegError(f"{path}: expected a JSON object at the top level")

    modality = None
    for key in ("channel_names", "modality"):
        if key in raw:
            chans = raw[key]
            if isinstance(chans, str):
                chans = {"0": chans}
            if not isinstance(chans, dict) or not chans:
                raise BfasegError(f"{path}: '{key}' must be an object like {{\"0\": \"CT\"}}")
            if len(chans) > 1:
                raise BfasegError(
                    f"{path}: '{key}' lists {len(chans)} channels; only single-channel datasets are supported"
                )
            name = str(next(iter(chans.values())))
            modality = "CT" if name.strip().upper() == "CT" else "MR"
            break

    labels = None
    if "labels" in raw:
        spec = raw["labels"]
        if not isinstance(spec, dict) or not spec:
            raise BfasegError(f"{path}: 'labels' must be a non-empty object")
        labels = set()
        try:
            if all(re.fullmatch(r"\d+", str(k)) for k in spec):  # MSD: {"0": "background"}
                labels = {int(k) for k in spec}
            else:  # nnU-Net v2: {"background": 0, "tumor": [1, 2]}
                for v in spec.values():
                    if isinstance(v, (list, tuple)):
                        labels.update(int(x) for x in v)
                    else:
                        labels.add(int(v))
        except (TypeError, ValueError):
            raise BfasegError(f"{path}: 'labels' values must be integers") from None
        labels.add(0)
    return {"modality": modality, "labels": labels, "raw": raw, "path": str(path)}


def group_images(folder: Path) -> dict[str, Path]:
    """case id -> image file for one images folder (nnU-Net `_0000` or MSD naming)."""
    files = sorted(p for p in folder.iterdir() if is_nifti(p))
    stems = {strip_nifti_suffix(p.name): p for p in files}
    groups: dict[str, dict[int, Path]] = {}
    for stem, p in stems.items():
        m = CHANNEL_RE.match(stem)
        if m:
            groups.setdefault(m.group("case"), {})[int(m.group("channel"))] = p
    cases: dict[str, Path] = {}
    used: set[str] = set()
    for case, chans in groups.items():
        if 0 not in chans:
            continue  # e.g. MSD "pat_0003": not a channel suffix
        if sorted(chans) != list(range(len(chans))):
            continue
        if len(chans) > 1:
            raise BfasegError(
                f"{folder}: case {case!r} has {len(chans)} channels ({', '.join(p.name for p in chans.values())}); "
                "only single-channel images are supported"
            )
        cases[case] = chans[0]
        used.add(strip_nifti_suffix(chans[0].name))
    for stem, p in stems.items():
        if stem not in used:
            if stem in cases:
                raise BfasegError(f"{folder}: both {p.name} and {cases[stem].name} name case {stem!r}")
            cases[stem] = p
    return dict(sorted(cases.items()))


def _find_label(labels_dir: Path, case: str, image_path: Path) -> Path | None:
    if not labels_dir.is_dir():
        return None
    for suffix in NIFTI_SUFFIXES:
        for name in (case, strip_nifti_suffix(image_path.name)):
            p = labels_dir / f"{name}{suffix}"
            if p.is_file():
                return p
    return None


def _check_label_values(label: np.ndarray, allowed: set[int] | None, path: Path, ds_path: str | None) -> None:
    if allowed is None:
        return
    present = set(int(v) for v in np.unique(label))
    bad = sorted(present - allowed)
    if bad:
        raise BfasegError(f"label {path} has values {bad} not declared in {ds_path} 'labels' {sorted(allowed)}")


def _dataset_modality(root: Path, modality: str) -> tuple[str, dict | None]:
    """The modality to read a dataset's images with ("auto": dataset.json's, when it names one)
    and the parsed dataset.json (None when absent)."""
    info = read_dataset_json(root)
    mod = parse_modality(modality)
    if mod == "auto" and info and info["modality"]:
        mod = info["modality"]
        info["modality_declared_by"] = info["path"]  # checked against the voxels by load_nifti_image
    return mod, info


def _declared_by(info: dict | None, modality: str) -> str:
    return (info or {}).get("modality_declared_by") or ("data.modality" if parse_modality(modality) != "auto" else "")


def declared_modality(root: str | os.PathLike, modality: str) -> tuple[str | None, str | None]:
    """``(modality, declared_by)`` that every image of the dataset at ``root`` is read with, when one is declared
    for all of them (``modality`` "CT"/"MR", or "auto" and dataset.json names one); ``(None, None)`` when each
    image decides for itself ("auto" without a declaration). Stored in checkpoints (the trainer's ``data``
    record), so inference reads new images as training read these (:func:`inference_modality`)."""
    mod, info = _dataset_modality(Path(root), modality)
    return (None, None) if mod == "auto" else (mod, _declared_by(info, modality))


def inference_modality(modality: str, data_state: dict | None, root: str | os.PathLike | None = None
                       ) -> tuple[str, str | None]:
    """``(modality, declared_by)`` to read images with for a run's checkpoint, as its training read its own
    (issue 30, kind 4): with ``data.modality: auto`` training takes dataset.json's modality, while an image read on
    its own would decide by its minimum, so a CT dataset's image without air was windowed in training and
    z-scored at inference. In order: the config's ``modality`` when it names one; the one the training data
    declared (the checkpoint's ``data`` record, ``data_state``); for checkpoints before that record, ``root``'s
    dataset.json (``evaluate``/``suggest`` on the training folder); else "auto". The declared modality is then
    checked against the new images' voxels too (:func:`bfaseg.data.nifti.check_declared_modality`)."""
    if parse_modality(modality) != "auto":
        return modality, "data.modality"
    state = data_state or {}
    if "modality" in state:  # None: the training images decided one by one
        if state["modality"] is None:
            return "auto", None
        return state["modality"], f"the checkpoint's training data ({state.get('modality_declared_by') or 'data.modality'})"
    if root is not None and Path(root).is_dir():
        mod, by = declared_modality(root, modality)
        if mod is not None:
            return mod, by
    return "auto", None


def _iter_progress(items, desc: str, progress: bool):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="case")


def load_nifti_dataset(root: str | os.PathLike, target_spacing: float | Sequence[float] | None = None,
                       modality: str = "auto", *, progress: bool = False,
                       **image_options) -> tuple[list[Case], list[Case]]:
    """Read an nnU-Net/MSD folder; returns ``(labeled, unlabeled)`` lists of cases.

    Images in ``imagesTr`` without a label file and everything in ``imagesUnlabeled`` form the
    unlabeled pool. ``modality="auto"`` takes the modality from dataset.json when given there,
    else decides per image. Every image is read by :func:`~bfaseg.data.nifti.load_nifti_image`,
    with ``image_options`` (``canonical``, ``ct_window``).
    """
    root = Path(root)
    if not root.is_dir():
        raise BfasegError(f"NIfTI dataset folder not found: {root}")
    images_dir = root / "imagesTr"
    unl_dir = root / "imagesUnlabeled"
    labels_dir = root / "labelsTr"
    if not images_dir.is_dir() and not unl_dir.is_dir():
        raise BfasegError(f"{root}: no imagesTr/ (or imagesUnlabeled/) folder")
    mod, info = _dataset_modality(root, modality)
    allowed = info["labels"] if info else None
    ds_path = info["path"] if info else None

    jobs: list[tuple[str, Path, Path | None]] = []
    if images_dir.is_dir():
        tr = group_images(images_dir)
        for case, img_path in tr.items():
            jobs.append((case, img_path, _find_label(labels_dir, case, img_path)))
        if labels_dir.is_dir():
            known = set(tr) | {strip_nifti_suffix(p.name) for p in tr.values()}
            orphans = [p.name for p in sorted(labels_dir.iterdir()) if is_nifti(p) and strip_nifti_suffix(p.name) not in known]
            if orphans:
                warnings.warn(f"{labels_dir}: {len(orphans)} label file(s) without an image, ignored: {orphans[:5]}")
    if unl_dir.is_dir():
        seen = {j[0] for j in jobs}
        for case, img_path in group_images(unl_dir).items():
            if case in seen:
                raise BfasegError(f"{unl_dir}: case {case!r} also exists in {images_dir}")
            jobs.append((case, img_path, None))
    if not jobs:
        raise BfasegError(f"{root}: no NIfTI images found in imagesTr/ or imagesUnlabeled/")

    labeled: list[Case] = []
    unlabeled: list[Case] = []
    for case, img_path, lab_path in _iter_progress(jobs, "nifti", progress):
        c = load_nifti_image(img_path, target_spacing, mod, case_id=case,
                             declared_by=_declared_by(info, modality) or None, **image_options)
        if lab_path is None:
            c.meta["labeled"] = False
            unlabeled.append(c)
            continue
        c.label = load_nifti_label(lab_path, c)
        _check_label_values(c.label, allowed, lab_path, ds_path)
        c.meta["label_source"] = str(lab_path)
        c.meta["labeled"] = True
        labeled.append(c)
    return labeled, unlabeled


def load_nifti_test(root: str | os.PathLike, target_spacing: float | Sequence[float] | None = None,
                    modality: str = "auto", **image_options) -> list[Case]:
    """Read ``ROOT/imagesTs`` (no labels); an empty list when the folder is absent. Options as
    :func:`load_nifti_dataset`."""
    root = Path(root)
    ts = root / "imagesTs"
    if not ts.is_dir():
        return []
    mod, info = _dataset_modality(root, modality)
    return [
        load_nifti_image(p, target_spacing, mod, case_id=case, declared_by=_declared_by(info, modality) or None,
                         **image_options)
        for case, p in group_images(ts).items()
    ]
