"""The in-memory unit every reader produces and every loader consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Case:
    """One image (2-D slice or 3-D volume) with an optional label map.

    ``image`` is float32 with spatial dims only, in the file's own axis order
    (LA/Pancreas (x, y, z); ACDC volumes (z, y, x); ACDC slices (y, x)).
    ``label`` is uint8 with the same shape, or None for unlabeled data.
    ``spacing`` follows the same axis order (mm), None when the file has none.
    ``meta`` carries anything needed to map a prediction back to the source
    (e.g. the NIfTI affine and the resampling applied).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return self.image.ndim
