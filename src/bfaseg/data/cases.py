"""The in-memory unit every reader produces and every loader consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bfaseg.io.geometry import Geometry


@dataclass
class Case:
    """One image (2-D slice or 3-D volume) with an optional label map.

    ``image`` is float32 with spatial dims only, in the file's own axis order
    (LA/Pancreas (x, y, z); ACDC volumes (z, y, x); ACDC slices (y, x)).
    ``label`` is uint8 with the same shape, or None for unlabeled data.
    ``spacing`` follows the same axis order (mm), None when the file has none.
    ``geometry`` (NIfTI cases) records the source file's grid and the reorientation and
    resampling that led to ``image``, to map a prediction back; ``meta`` carries the rest
    (source file, modality, normalisation, label file).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    geometry: Geometry | None = None

    @property
    def ndim(self) -> int:
        return self.image.ndim
