"""The io layer: one h5 reader/writer, one resampler, the Geometry record."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from nibabel.orientations import io_orientation
from scipy import ndimage

from bfaseg.errors import BfasegError
from bfaseg.io.geometry import Geometry, array_geometry, restore_geometry
from bfaseg.io.h5 import read_h5, write_h5_atomic
from bfaseg.io.resample import resample


def test_h5_round_trip_and_errors_name_the_file(tmp_path):
    path = write_h5_atomic(tmp_path / "a.h5", {"image": np.ones((3, 4), np.float32), "label": None},
                           {"spacing": (1.0, 2.0), "source": None})
    arrays, spacing = read_h5(path, ("image", "label"), required=("image",))
    assert arrays["label"] is None and arrays["image"].shape == (3, 4) and spacing == (1.0, 2.0)
    with pytest.raises(BfasegError, match=r"a\.h5: missing key 'label' \(keys: \['image'\]\)"):
        read_h5(path, ("label",), required=("label",))
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_group("image")
    with pytest.raises(BfasegError, match=r"g\.h5: 'image' is a group, not a dataset"):
        read_h5(tmp_path / "g.h5", ("image",))
    (tmp_path / "junk.h5").write_bytes(b"not h5")
    with pytest.raises(BfasegError, match=r"junk\.h5: cannot read h5 file"):
        read_h5(tmp_path / "junk.h5", ("image",))
    with pytest.raises(BfasegError, match=r"none\.h5: h5 file not found"):
        read_h5(tmp_path / "none.h5", ("image",))


@pytest.mark.parametrize("order, dtype", [(0, np.uint8), (1, np.float32)])
def test_resample_corner_aligned_equals_scipy_zoom(order, dtype):
    rng = np.random.default_rng(0)
    for _ in range(30):
        shape_in = tuple(int(n) for n in rng.integers(1, 30, 3))
        shape_out = tuple(int(n) for n in rng.integers(1, 30, 3))
        a = (rng.random(shape_in) * 5).astype(dtype)
        zoomed = ndimage.zoom(a, [o / i for i, o in zip(shape_in, shape_out)], order=order, grid_mode=False)
        np.testing.assert_array_equal(resample(a, shape_out, order, mode="constant"), zoomed)


def test_geometry_round_trip_through_reorientation_and_resampling():
    affine = np.array([[0.0, -0.8, 0, 40], [-0.8, 0, 0, 25], [0, 0, 2.5, -12], [0, 0, 0, 1]])
    g = Geometry(source="x.nii.gz", affine=affine, shape=(12, 10, 4), spacing=(0.8, 0.8, 2.5),
                 orientation=io_orientation(affine)).resampled_to((0.4, 0.4, 2.5))
    assert g.canonical_shape == (10, 12, 4) and g.array_shape == (20, 24, 4)
    np.testing.assert_allclose(g.canonical_spacing, (0.8, 0.8, 2.5))
    label = np.random.default_rng(1).integers(0, 3, g.shape).astype(np.uint8)
    np.testing.assert_array_equal(restore_geometry(g.to_array_grid(label, order=0), g), label)
    plain = array_geometry((5, 6, 7), (1.0, 2.0, 3.0), "a.h5")
    assert not plain.reoriented and not plain.resampled and plain.array_shape == (5, 6, 7)
