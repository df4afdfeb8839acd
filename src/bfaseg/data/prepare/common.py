"""Shared pieces of the converters: atomic writes, splits, reading, the integrity check."""

from __future__ import annotations

import logging
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from bfaseg.errors import BfasegError
from bfaseg.io.h5 import open_h5, write_h5_atomic

log = logging.getLogger(__name__)


@dataclass
class PrepareSummary:
    """What a converter wrote."""

    dataset: str
    out: Path
    cases: list[str] = field(default_factory=list)
    lists: dict[str, list[str]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = ", ".join(f"{name} {len(items)}" for name, items in self.lists.items())
        dropped = f", {len(self.dropped)} dropped" if self.dropped else ""
        return (
            f"{self.dataset}: {len(self.cases)} cases, {len(self.files)} h5 files checked OK "
            f"({parts}{dropped}) -> {self.out}"
        )

    def write_case(self, path: Path, image: np.ndarray, label: np.ndarray, attrs: dict) -> None:
        """Write one ``image``/``label`` h5 file atomically and record it for the final check."""
        make_out_dir(Path(path).parent)
        self.files.append(write_h5_atomic(path, {"image": image, "label": label}, attrs))


def say(msg: str) -> None:
    """A progress note (the command line shows it on stderr)."""
    log.info(msg)


def warn(msg: str) -> None:
    """Something the user should check; shown even when no logging is configured."""
    log.warning(msg)


def progress(items: Sequence, desc: str, enabled: bool = True) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="case", file=sys.stderr)


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise BfasegError(f"{what} folder not found: {path}")
    if not path.is_dir():
        raise BfasegError(f"{what} is not a folder: {path}")
    return path


def make_out_dir(path: Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BfasegError(f"cannot create output folder {path}: {exc}") from None
    return path


def atomic_write_lines(path: Path, lines: Sequence[str]) -> Path:
    from bfaseg.io.files import atomic_write_bytes

    path = Path(path)
    make_out_dir(path.parent)
    text = "".join(f"{line}\n" for line in lines)
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))
    return path


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_counts(n: int, fractions: Sequence[float], names: Sequence[str]) -> list[int]:
    """Sizes of the held-out parts (``fractions`` of ``n``, rounded); the rest is training.

    Each part with a positive fraction gets at least one case while training keeps at
    least one, as far as ``n`` allows (parts listed first are served first).
    """
    for frac, name in zip(fractions, names):
        if not 0.0 <= frac < 1.0:
            raise BfasegError(f"--{name}-fraction must be in [0, 1), got {frac}")
    if sum(fractions) >= 1.0:
        raise BfasegError(f"the held-out fractions ({', '.join(names)}) must sum to less than 1")
    counts = [_round_half_up(n * f) for f in fractions]
    for i, frac in enumerate(fractions):
        if frac > 0 and counts[i] == 0 and n - sum(counts) >= 2:
            counts[i] = 1
    while n - sum(counts) < 1 and any(counts):  # keep one training case
        j = max(range(len(counts)), key=lambda k: counts[k])
        counts[j] -= 1
    return counts


def train_test_lists(ids: Sequence[str], test_fraction: float) -> dict[str, list[str]]:
    """``train.list``: the first ids; ``test.list``: the last ``test_fraction`` of them."""
    ids = list(ids)
    (n_test,) = split_counts(len(ids), [test_fraction], ["test"])
    return {"train.list": ids[: len(ids) - n_test], "test.list": ids[len(ids) - n_test :]}


def read_sitk(path: Path, what: str):
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise BfasegError(f"{what} not found: {path}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise BfasegError(f"cannot read {what} {path}: {sitk_error_detail(exc)}") from None


def sitk_error_detail(exc: Exception) -> str:
    """The informative last part of a SimpleITK/ITK exception text, on one line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return "unreadable file"
    detail = lines[-1]
    for marker in ("sitk::ERROR:", "ERROR:"):
        if marker in detail:
            detail = detail.split(marker, 1)[1].strip()
    detail = detail.replace('"', "")
    return detail[:200] or "unreadable file"


def sitk_array(image, path: Path, what: str) -> np.ndarray:
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise BfasegError(f"{what} {path}: expected a scalar image, got a vector image")
    if image.GetDimension() != 3:
        raise BfasegError(f"{what} {path}: expected a 3-D image, got {image.GetDimension()}-D")
    return sitk.GetArrayFromImage(image)


def read_image_label(image_path: Path, label_path: Path, what: str, *, xyz: bool = False):
    """-> (SimpleITK image, image array float32, label array) of one case, shapes checked.

    Arrays are (z, y, x) as SimpleITK gives them, or (x, y, z) with ``xyz``.
    """
    img = read_sitk(image_path, f"{what} image")
    lab = read_sitk(label_path, f"{what} label")
    image = sitk_array(img, image_path, f"{what} image")
    label = sitk_array(lab, label_path, f"{what} label")
    if xyz:
        image, label = image.transpose(2, 1, 0), label.transpose(2, 1, 0)
    image = image.astype(np.float32)
    if image.shape != label.shape:
        raise BfasegError(
            f"{what} label {label_path} has shape {label.shape} but image {image_path} has {image.shape}"
        )
    return img, image, label


def minmax_scale(image: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] (all zeros for a constant image)."""
    lo, hi = float(image.min()), float(image.max())
    return ((image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)).astype(np.float32)


def binarize_label(label: np.ndarray, path: Path) -> np.ndarray:
    """{0,1} or {0,255} -> uint8 {0,1}; other values are an error naming the file."""
    values = set(np.unique(label).tolist())
    if values <= {0, 1}:
        return label.astype(np.uint8)
    if values <= {0, 255}:
        return (label == 255).astype(np.uint8)
    shown = sorted(values)[:8]
    raise BfasegError(f"label {path} must be binary ({{0,1}} or {{0,255}}), found values {shown}")


def bbox(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (lo, hi) per axis of the non-zero voxels."""
    idx = np.nonzero(mask)
    return [(int(a.min()), int(a.max())) for a in idx]


def crop_or_pad(array: np.ndarray, starts: Sequence[int], sizes: Sequence[int], fill) -> np.ndarray:
    """Window ``array[start:start+size]`` per axis; parts outside the array are ``fill``."""
    out = np.full(tuple(int(s) for s in sizes), fill, dtype=array.dtype)
    src, dst = [], []
    for start, size, n in zip(starts, sizes, array.shape):
        lo, hi = max(start, 0), min(start + size, n)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - start, lo - start + max(hi - lo, 0)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def check_h5(
    path: Path,
    *,
    ndim: int,
    label_values: set[int],
    value_range: tuple[float, float] | None = None,
    attrs: Sequence[str] = (),
) -> tuple[int, ...]:
    """Re-open a written file: keys, dtypes, equal shapes, label values, finite image."""
    problem = None
    try:
        with open_h5(path) as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                problem = f"missing key(s) {missing}"
            else:
                image, label = f["image"][()], f["label"][()]
                if image.dtype != np.float32:
                    problem = f"image dtype {image.dtype}, expected float32"
                elif label.dtype != np.uint8:
                    problem = f"label dtype {label.dtype}, expected uint8"
                elif image.ndim != ndim or image.shape != label.shape:
                    problem = f"shapes image {image.shape} / label {label.shape}, expected equal {ndim}-D"
                elif not np.all(np.isfinite(image)):
                    problem = "image has NaN/Inf"
                elif value_range and (image.min() < value_range[0] - 1e-5 or image.max() > value_range[1] + 1e-5):
                    problem = f"image values [{image.min()}, {image.max()}] outside {value_range}"
                elif not set(np.unique(label).tolist()) <= label_values:
                    problem = f"label values {sorted(set(np.unique(label).tolist()))} not in {sorted(label_values)}"
                else:
                    absent = [a for a in attrs if a not in f.attrs]
                    if absent:
                        problem = f"missing attribute(s) {absent}"
                    shape = image.shape
    except BfasegError as exc:
        problem = f"cannot re-open ({exc})"
    if problem:
        raise BfasegError(f"integrity check failed for {path}: {problem}")
    return shape


def verify_lists(out: Path, lists: dict[str, list[str]], h5_path: Callable[[str, str], Path]) -> None:
    """Every list file reads back as written and names existing outputs (``h5_path(list, entry)``)."""
    for name, items in lists.items():
        path = out / name
        got = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if got != list(items):
            raise BfasegError(f"integrity check failed for {path}: content differs from what was written")
        for item in items:
            if not h5_path(name, item).is_file():
                raise BfasegError(f"integrity check failed for {path}: entry {item!r} has no h5 file")


def finish(
    summary: PrepareSummary,
    check_file: Callable[[Path], object],
    h5_path: Callable[[str, str], Path],
) -> PrepareSummary:
    """The end of every converter, inside :func:`staged`: write ``summary.lists``, re-check every written h5
    file (``check_file``, e.g. :func:`check_h5`) and every list."""
    for name, items in summary.lists.items():
        atomic_write_lines(summary.out / name, items)
    for path in summary.files:
        check_file(path)
    verify_lists(summary.out, summary.lists, h5_path)
    return summary


@contextmanager
def staged(out: Path):
    """All or nothing (issue 30, kind 6): the converter writes into a hidden ``.staging.<random>.tmp`` folder
    inside ``out`` (yielded) and the files move into ``out`` only when every case converted and passed
    :func:`finish`'s checks (:func:`bfaseg.io.output.staged_outputs`). A bad scan half-way through the
    release, or Ctrl-C, leaves nothing of the cases before it (not even a new ``out`` folder), and a folder
    an earlier ``prepare`` filled keeps exactly what it held."""
    from bfaseg.io.output import check_output_dir, remove_stale_temporaries, staged_outputs

    remove_stale_temporaries(out)  # a staging folder left by an earlier prepare killed with SIGKILL
    with staged_outputs(check_output_dir(out, option="OUT"), keep_finished_on_interrupt=False) as stage:
        yield stage


def published(summary: PrepareSummary, stage: Path, out: Path, note: str = "") -> PrepareSummary:
    """``summary`` of a conversion made in ``stage`` (:func:`staged`) once its files are in ``out``: the paths
    rebased onto ``out``, and its summary line printed (+ ``note``)."""
    summary.files = [out / Path(p).relative_to(stage) for p in summary.files]
    summary.out = out
    say(summary.line() + note)
    return summary
