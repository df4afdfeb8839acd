"""Tests of bfaseg.inference (tiny volumes and models; CPU only)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom

from bfaseg.data.transforms import resize
from bfaseg.errors import BfasegError
from bfaseg.inference import (
    gaussian_importance_map,
    largest_connected_component,
    predict_slices,
    predict_volume,
    sliding_window_probs,
    window_starts,
)
from test_reference_equivalence import ref_test_single_case  # the cited transcription of the reference loop


# ----------------------------------------------------------------- helpers
def _conv_net(ndim: int, in_ch: int = 1, classes: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
    net = torch.nn.Sequential(
        conv(in_ch, 4, 3, padding=1), torch.nn.ReLU(), conv(4, classes, 1)
    ).eval()
    return net


class _Banded(torch.nn.Module):
    """A 2-D or 3-D "network" whose class is the intensity band of each voxel: floor(x * classes), so its
    labels follow the image (a random conv net may predict one class everywhere and hide resizing bugs)."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        centres = torch.arange(self.classes, dtype=x.dtype).view(1, -1, *[1] * (x.ndim - 2)) + 0.5
        return -((x * self.classes - centres) ** 2)


def _smooth_volume(seed, shape):
    """Values in [0, 1) that form regions (so labels form regions with borders between every pair)."""
    from scipy.ndimage import gaussian_filter

    v = gaussian_filter(np.random.default_rng(seed).random(shape), sigma=(0, 3, 3))
    return ((v - v.min()) / (v.max() - v.min() + 1e-6)).astype(np.float32)


class _Counting:
    """Wraps a model and records the batch size of each call."""

    def __init__(self, model):
        self.model = model
        self.calls: list[int] = []

    def __call__(self, x):
        self.calls.append(int(x.shape[0]))
        return self.model(x)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    return 2.0 * inter / (a.sum() + b.sum())


def _blob_volume(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [s / 2 for s in shape]
    r2 = sum(((g - c) / (0.3 * s)) ** 2 for g, c, s in zip(grids, centre, shape))
    vol = (r2 < 1).astype(np.float32) * 2.0 - 1.0
    return (vol + 0.1 * rng.standard_normal(shape)).astype(np.float32)


# ------------------------------------------------------------ window grid
@pytest.mark.parametrize("patch", [16, 80, 112])
@pytest.mark.parametrize("stride", [1, 4, 16, 18, 200])
def test_window_starts_formula(patch, stride):
    for size in [1, 5, 15, 16, 17, 79, 80, 81, 88, 111, 112, 113, 150, 245]:
        padded = max(size, patch)
        n = math.ceil((padded - patch) / stride) + 1
        expected = [min(stride * i, padded - patch) for i in range(n)]
        got = window_starts(size, patch, stride)
        assert got == expected
        assert got[0] == 0 and got[-1] == padded - patch
        assert all(b > a for a, b in zip(got, got[1:]))  # no duplicate windows


def test_window_starts_la_example():
    # LA volume axis of 150 voxels, patch 112, stride 18: ceil(38/18)+1 = 4 windows.
    assert window_starts(150, 112, 18) == [0, 18, 36, 38]
    assert window_starts(88, 80, 4) == [0, 4, 8]
    assert window_starts(60, 80, 4) == [0]  # padded to the patch: one window
    with pytest.raises(BfasegError):
        window_starts(10, 4, 0)


def test_gaussian_importance_map():
    w = gaussian_importance_map((16, 9, 5))
    assert w.shape == (16, 9, 5) and w.dtype == torch.float32
    assert float(w.max()) == pytest.approx(1.0, abs=1e-6) and float(w.min()) > 0
    assert torch.equal(w, torch.flip(w, dims=(0, 1, 2)))  # symmetric


# ------------------------------------------------------------- paper mode
@pytest.mark.parametrize("shape", [(23, 19, 14), (13, 21, 9)])
def test_paper_mode_equals_reference_exactly(shape):
    net = _conv_net(3)
    vol = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    patch, sxy, sz = (16, 12, 10), 5, 3
    ref_labels, ref_probs = ref_test_single_case(net, vol, sxy, sz, patch, num_classes=3)
    counted = _Counting(net)
    labels, probs = predict_volume(
        vol, counted, patch, mode="paper", stride=(sxy, sxy, sz), return_probs=True
    )
    assert probs.shape == (3,) + shape and probs.dtype == torch.float32
    assert np.array_equal(probs.numpy(), ref_probs)
    assert np.array_equal(labels, ref_labels.astype(np.uint8)) and labels.dtype == np.uint8
    n_windows = np.prod([len(window_starts(s, p, st)) for s, p, st in zip(shape, patch, (sxy, sxy, sz))])
    assert counted.calls == [1] * n_windows  # one window per forward pass


def test_paper_mode_option_checks():
    net = _conv_net(3)
    vol = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(BfasegError):
        sliding_window_probs(vol, net, (4, 4, 4), mode="paper")  # stride missing
    with pytest.raises(BfasegError):
        sliding_window_probs(vol, net, (4, 4, 4), mode="paper", stride=2, batch_size=4)
    with pytest.raises(BfasegError):
        sliding_window_probs(vol, net, (4, 4, 4), mode="paper", stride=2, blend="gaussian")
    with pytest.raises(BfasegError):
        sliding_window_probs(vol, net, (4, 4, 4), mode="nope")


# -------------------------------------------------------------- fast mode
def test_fast_agrees_with_paper_on_equivariant_model():
    # A smoothing conv followed by a threshold: translation-equivariant away from window borders.
    conv = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0 / 27)

    def model(x):
        s = conv(x)
        return torch.cat([-4.0 * s, 4.0 * s], dim=1)

    vol = _blob_volume((41, 37, 26))
    patch = (24, 24, 16)
    paper_labels, paper_probs = predict_volume(vol, model, patch, mode="paper", stride=(6, 6, 4), return_probs=True)
    counted = _Counting(model)
    fast_labels, fast_probs = predict_volume(vol, counted, patch, mode="fast", batch_size=3, return_probs=True)
    assert fast_labels.shape == paper_labels.shape == vol.shape
    assert paper_labels.sum() > 100
    assert _dice(fast_labels == 1, paper_labels == 1) > 0.99
    assert torch.allclose(fast_probs.sum(0), torch.ones(vol.shape), atol=1e-5)
    # fast: stride = patch/2 -> 3*3*3 = 27 windows in batches of 3
    assert counted.calls == [3] * 9


def test_pointwise_model_blending_is_exact():
    # A 1x1 conv is exactly equivariant: any blending of the same values returns them.
    net = torch.nn.Conv3d(1, 2, 1)
    vol = np.random.default_rng(2).standard_normal((19, 17, 11)).astype(np.float32)
    with torch.no_grad():
        direct = torch.softmax(net(torch.from_numpy(vol)[None, None]), dim=1)[0]
    for mode, kw in [("fast", {}), ("paper", {"stride": 3}), ("fast", {"blend": "uniform", "overlap": 0.25})]:
        probs = sliding_window_probs(vol, net, (8, 8, 6), mode=mode, **kw)
        assert torch.allclose(probs, direct, atol=1e-5)


@pytest.mark.parametrize("mode", ["fast", "paper"])
@pytest.mark.parametrize(
    "shape,patch",
    [
        ((17, 13, 9), (8, 8, 8)),  # odd sizes
        ((5, 7, 3), (8, 8, 6)),  # smaller than the patch on every axis
        ((21, 5, 9), (8, 8, 6)),  # smaller on one axis only
        ((33, 29), (16, 16)),  # 2-D
        ((7, 40), (16, 16)),  # 2-D, one axis smaller
    ],
)
def test_output_shape_equals_input_shape(mode, shape, patch):
    net = _conv_net(len(shape), classes=2)
    vol = torch.randn(shape)  # a tensor input works too
    kw = {"stride": 3} if mode == "paper" else {}
    labels, probs = predict_volume(vol, net, patch, mode=mode, return_probs=True, **kw)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert probs.shape == (2,) + shape and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(0), torch.ones(shape), atol=1e-5)
    probs += 1  # an ordinary tensor, not an inference-mode one


def test_multichannel_input_and_num_classes():
    net = _conv_net(2, in_ch=2, classes=4)
    vol = np.random.default_rng(3).standard_normal((2, 20, 18)).astype(np.float32)
    probs = sliding_window_probs(vol, net, (8, 8), num_classes=4)
    assert probs.shape == (4, 20, 18)
    with pytest.raises(ValueError):
        sliding_window_probs(vol, net, (8, 8), num_classes=3)


def test_bf16_autocast():
    net = _conv_net(3, classes=2)
    vol = _blob_volume((20, 18, 12))
    fp32_labels, _ = predict_volume(vol, net, (12, 12, 8))
    labels, probs = predict_volume(vol, net, (12, 12, 8), precision="bf16", return_probs=True)
    assert probs.dtype == torch.float32 and probs.shape == (2, 20, 18, 12)
    assert torch.isfinite(probs).all()
    assert (labels == fp32_labels).mean() > 0.95


def test_tuple_output_is_rejected():
    net = _conv_net(3)
    with pytest.raises(TypeError, match="wrap"):
        sliding_window_probs(np.zeros((8, 8, 8), np.float32), lambda x: (net(x), x), 4)
    # wrapped, it works
    probs = sliding_window_probs(np.zeros((8, 8, 8), np.float32), lambda x: (net(x), x)[0], 4)
    assert probs.shape == (3, 8, 8, 8)


# ---------------------------------------------------------- 2-D slice-wise
def _reference_acdc_slices(image, net, size):
    """The reference ACDC loop: zoom order 0 in, argmax, zoom order 0 back, per slice."""
    prediction = np.zeros(image.shape, dtype=np.uint8)
    for ind in range(image.shape[0]):
        sl = image[ind]
        x, y = sl.shape
        sl = zoom(sl, (size[0] / x, size[1] / y), order=0)
        with torch.no_grad():
            out = torch.argmax(torch.softmax(net(torch.from_numpy(sl)[None, None].float()), dim=1), dim=1)[0]
        prediction[ind] = zoom(out.numpy(), (x / size[0], y / size[1]), order=0)
    return prediction


def test_predict_slices_matches_reference_nearest():
    net = _Banded(4)
    vol = _smooth_volume(4, (5, 37, 45))
    ref = _reference_acdc_slices(vol, net, (32, 32))
    assert len(np.unique(ref)) == 4
    labels, probs = predict_slices(vol, net, (32, 32), batch_size=2, image_resize="zoom_nearest")
    assert probs is None
    assert labels.shape == vol.shape and labels.dtype == np.uint8
    assert np.array_equal(labels, ref)


def test_predict_slices_default_resize_is_the_training_resize():
    """The network must see slices resized exactly as bfaseg's ACDC training resized them."""
    net = _Banded(4)
    # 22 -> 20 and 24 -> 22 are sizes where zoom's last coordinate lands a rounding error past the edge,
    # which only the zoom's own edge mode (constant) reproduces
    for shape, size in (((3, 37, 45), (32, 32)), ((2, 22, 24), (20, 22))):
        vol = _smooth_volume(6, shape)
        labels, probs = predict_slices(vol, net, size, return_probs=True)
        x = torch.from_numpy(np.stack([resize(sl, size, order=1) for sl in vol]))[:, None]
        with torch.no_grad():
            small = torch.softmax(net(x), 1)
        expected = np.stack([resize(s.argmax(0).numpy().astype(np.uint8), shape[1:], order=0) for s in small])
        assert len(np.unique(expected)) > 2 and np.array_equal(labels, expected)
        expected_probs = np.stack([resize(s.numpy(), (4,) + shape[1:], order=0) for s in small], axis=1)
        assert np.array_equal(probs.numpy(), expected_probs)
    bilinear, _ = predict_slices(vol, net, (32, 32), image_resize="bilinear")
    assert bilinear.shape == labels.shape


def test_predict_slices_default_and_options():
    net = _conv_net(2, classes=4)
    vol = np.random.default_rng(5).random((3, 37, 45)).astype(np.float32)
    counted = _Counting(net)
    labels, probs = predict_slices(vol, counted, (32, 32), batch_size=2, return_probs=True)
    assert counted.calls == [2, 1]
    assert labels.shape == (3, 37, 45) and probs.shape == (4, 3, 37, 45)
    # nearest resize back: probs are resampled with the same mapping as the labels
    assert np.array_equal(probs.numpy().argmax(0).astype(np.uint8), labels)
    # labels only take values predicted at the input size (nearest neighbour: no new values)
    x = torch.from_numpy(np.stack([resize(sl, (32, 32), order=1) for sl in vol]))[:, None]
    with torch.no_grad():
        small = net(x).argmax(1).numpy()
    assert np.array_equal(np.bincount(labels.ravel(), minlength=4) > 0, np.bincount(small.ravel(), minlength=4) > 0)

    labels_b, probs_b = predict_slices(vol, net, (32, 32), resize_back="probs_bilinear", return_probs=True)
    assert labels_b.shape == (3, 37, 45) and probs_b.shape == (4, 3, 37, 45)
    assert np.array_equal(probs_b.numpy().argmax(0).astype(np.uint8), labels_b)
    assert (labels_b == labels).mean() > 0.8

    labels_16, _ = predict_slices(vol, net, (32, 32), precision="bf16")
    assert labels_16.shape == vol.shape and (labels_16 == labels).mean() > 0.9

    # no resizing when the slice already has the input size
    same, _ = predict_slices(vol[:, :32, :32], net, (32, 32))
    with torch.no_grad():
        direct = net(torch.from_numpy(np.ascontiguousarray(vol[:, None, :32, :32]))).argmax(1).numpy()
    assert np.array_equal(same, direct)
    with pytest.raises(BfasegError):
        predict_slices(vol, net, (32, 32), resize_back="nearest")


# --------------------------------------------------------------- post-process
def test_largest_connected_component_per_class():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[0:3, 0:3, 0:3] = 1  # 27 voxels: largest of class 1
    lab[6:8, 6:8, 6:8] = 1  # 8 voxels: removed
    lab[5, 0, 0] = 2  # class 2: single voxel, kept (only component)
    lab[0, 9, 9] = 3  # class 3: two components, the larger is kept
    lab[9, 9, 0:3] = 3
    out = largest_connected_component(lab)
    assert out.dtype == lab.dtype and out.shape == lab.shape
    assert (out == 1).sum() == 27 and out[7, 7, 7] == 0
    assert out[5, 0, 0] == 2
    assert (out == 3).sum() == 3 and out[0, 9, 9] == 0
    # only class 1 filtered: class 3 unchanged
    only1 = largest_connected_component(lab, classes=[1])
    assert (only1 == 3).sum() == 4 and (only1 == 1).sum() == 27
    # an absent class stays absent, input untouched
    assert not (largest_connected_component(lab, classes=[4]) == 4).any()
    assert (lab == 1).sum() == 35


def test_largest_connected_component_full_connectivity():
    lab = np.zeros((5, 5, 5), np.uint8)
    lab[0, 0, 0] = 1
    lab[1, 1, 1] = 1  # touches (0,0,0) only at a corner
    lab[4, 4, 4] = 1
    lab[4, 4, 3] = 1
    lab[4, 3, 4] = 1
    full = largest_connected_component(lab)  # corner-connected pair is 2 < 3
    assert full.sum() == 3 and full[4, 4, 4] == 1
    lab[2, 2, 2] = 1  # diagonal chain of 3, tie with the other 3: first in raster order wins
    full = largest_connected_component(lab)
    assert full[0, 0, 0] == 1 and full[4, 4, 4] == 0
    faces = largest_connected_component(lab, connectivity=1)
    assert faces[4, 4, 4] == 1 and faces.sum() == 3
    assert largest_connected_component(np.zeros((4, 4), np.uint8)).sum() == 0
    b = largest_connected_component(np.array([[1, 0, 1, 1]], bool))
    assert b.dtype == bool and b.tolist() == [[False, False, True, True]]


def test_one_component_definition_full_connectivity():
    """Inference's largest-component filter, the methods' pseudo-label filter and the suggestions'
    component count share bfaseg.data.components: diagonal neighbours connect (full connectivity)."""
    import numpy as np

    from bfaseg.data.components import count_components, drop_small_components, largest_connected_component

    labels = np.zeros((6, 6), dtype=np.uint8)
    labels[0, 0] = labels[1, 1] = 1  # touching only diagonally: one component
    labels[4:6, 4:6] = 1  # a second, larger one
    assert count_components(labels, 2) == {1: 2}
    kept = largest_connected_component(labels)
    assert kept[0, 0] == 0 and kept[4, 4] == 1
    assert drop_small_components(labels, 2, min_fraction=0.5)[1, 1] == 1  # 2 voxels >= 0.5 * 4
    assert drop_small_components(labels, 2, min_fraction=0.6)[1, 1] == 0


# ------------------------------------------------------------ small pieces, with numbers
def test_pad_amounts_split_and_errors():
    from bfaseg.inference.sliding_window import pad_amounts

    assert pad_amounts(10, 16) == (3, 3) and pad_amounts(10, 13) == (1, 2) and pad_amounts(10, 11) == (0, 1)
    assert pad_amounts(12, 10) == (0, 0) and pad_amounts(10, 10) == (0, 0)
    with pytest.raises(BfasegError, match=r"^size must be a positive integer, got 0$"):
        pad_amounts(0, 4)
    with pytest.raises(BfasegError, match=r"^patch must be a positive integer, got 2\.5$"):
        pad_amounts(4, 2.5)


def test_fast_stride_rounds_and_bounds_the_overlap():
    from bfaseg.inference.sliding_window import _fast_stride

    assert _fast_stride((16, 15, 2), 0.5) == (8, 8, 1)  # 7.5 rounds up; never below 1
    assert _fast_stride((16, 3), 0.0) == (16, 3)  # no overlap: windows side by side
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(BfasegError, match=r"^overlap must be in \[0, 1\), got "):
            _fast_stride((16,), bad)


def test_per_axis_errors_name_the_option():
    vol = np.zeros((8, 8, 8), np.float32)
    net = _conv_net(3)
    with pytest.raises(BfasegError, match=r"^stride must have 3 entries \(one per spatial axis\), got \[4, 4\]$"):
        sliding_window_probs(vol, net, 4, stride=[4, 4])
    with pytest.raises(BfasegError, match=r"^patch_size must be a positive integer, got 0$"):
        sliding_window_probs(vol, net, [4, 0, 4])
    with pytest.raises(BfasegError, match=r"^mode must be one of \('fast', 'paper'\), got 'slow'$"):
        sliding_window_probs(vol, net, 4, mode="slow")
    with pytest.raises(BfasegError, match=r"^precision must be one of \('fp32', 'bf16'\), got 'fp16'$"):
        sliding_window_probs(vol, net, 4, precision="fp16")
    with pytest.raises(BfasegError, match=r"^volume of shape \(8, 8\) does not match a 3-D patch_size \(4, 4, 4\)"):
        sliding_window_probs(np.zeros((8, 8), np.float32), net, [4, 4, 4])


def test_gaussian_map_is_computed_in_float64_then_rounded():
    g = gaussian_importance_map((5, 7, 3))
    ref = np.ones(())
    for p in (5, 7, 3):
        c = np.arange(p, dtype=np.float64) - (p - 1) / 2
        ref = ref[..., None] * np.exp(-0.5 * (c / (p / 8)) ** 2)
    ref = (ref / ref.max()).astype(np.float32)
    ref = np.maximum(ref, ref[ref > 0].min())
    assert g.dtype == torch.float32 and np.array_equal(g.numpy(), ref)


def test_float64_volumes_are_predicted_in_float32():
    from bfaseg.inference.sliding_window import _as_float_tensor

    assert _as_float_tensor(np.zeros((2, 2), np.float64)).dtype == torch.float32
    assert _as_float_tensor(torch.zeros(2, 2, dtype=torch.float64)).dtype == torch.float32
    labels, probs = predict_volume(np.random.default_rng(0).random((8, 8, 8)), _conv_net(3), 4)
    assert probs is None and labels.dtype == np.uint8  # probabilities only when asked for


def test_option_errors_of_the_sliding_window():
    vol = np.zeros((8, 8, 8), np.float32)
    net = _conv_net(3)
    cases = [
        (dict(patch_size=4, mode="paper"), r"^mode='paper' needs an explicit stride \(LA: \(18, 18, 4\), Pancreas: 16\)$"),
        (dict(patch_size=4, mode="paper", stride=2, batch_size=2), r"^mode='paper' runs one window per forward pass; got batch_size=2$"),
        (dict(patch_size=4, mode="paper", stride=2, blend="gaussian"), r"^mode='paper' averages windows uniformly; got blend='gaussian'$"),
        (dict(patch_size=4, blend="max"), r"^blend must be one of \('gaussian', 'uniform'\), got 'max'$"),
        (dict(patch_size=4, stride=0), r"^stride must be a positive integer, got 0$"),
        (dict(patch_size=4, batch_size=0), r"^batch_size must be a positive integer, got 0$"),
        (dict(patch_size=4, num_classes=0), r"^num_classes must be a positive integer, got 0$"),
    ]
    for kwargs, message in cases:
        with pytest.raises(BfasegError, match=message):
            sliding_window_probs(vol, net, **kwargs)
    with pytest.raises(ValueError, match=r"^the model produced 3 classes, expected num_classes=2$"):
        sliding_window_probs(vol, net, 4, num_classes=2)
    with pytest.raises(BfasegError, match=r"^volume has an empty axis: shape \(1, 0, 8, 8\)$"):
        sliding_window_probs(np.zeros((0, 8, 8), np.float32), net, 4)
    with pytest.raises(BfasegError, match=r"^size must be a positive integer, got 0$"):
        window_starts(0, 4, 2)
    with pytest.raises(BfasegError, match=r"^patch must be a positive integer, got -1$"):
        window_starts(4, -1, 2)


def test_paper_options_that_are_allowed_and_thin_volumes():
    vol = np.random.default_rng(1).random((1, 7, 9)).astype(np.float32)  # one slice thick, odd sizes
    net = _conv_net(3)
    paper = sliding_window_probs(vol, net, (1, 4, 4), mode="paper", stride=(1, 2, 2), batch_size=1, blend="uniform")
    fast_uniform = sliding_window_probs(vol, net, (1, 4, 4), stride=(1, 2, 2), blend="uniform")
    assert paper.shape == (3, 1, 7, 9) and torch.allclose(paper, fast_uniform, atol=1e-6)
    padded = sliding_window_probs(vol, net, (1, 8, 10), stride=(1, 8, 10))  # pads (0, 1) on both axes: after only
    assert padded.shape == (3, 1, 7, 9) and torch.isfinite(padded).all()


class _WindowMean(torch.nn.Module):
    """Each window predicts one constant: class 0 with logit = the window's mean, class 1 with 0."""

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        m = x.mean(dim=(1, 2, 3, 4), keepdim=True).expand(-1, 1, *x.shape[2:])
        return torch.cat([m, torch.zeros_like(m)], 1)


def test_fast_mode_blends_windows_with_the_gaussian_and_four_per_pass():
    vol = np.zeros((12, 4, 4), np.float32)
    vol[6:] = 4.0  # windows see different means
    net = _WindowMean()
    probs = sliding_window_probs(vol, net, (4, 4, 4), stride=(1, 4, 4))  # 9 windows along the first axis
    assert net.calls == [4, 4, 1]  # the default batch of windows
    g = gaussian_importance_map((4, 4, 4)).double()
    num = torch.zeros(12, 4, 4, dtype=torch.float64)
    den = torch.zeros(12, 4, 4, dtype=torch.float64)
    t = torch.from_numpy(vol).double()
    for z in range(9):
        p0 = torch.sigmoid(t[z:z + 4].mean())  # softmax of (mean, 0) for class 0
        num[z:z + 4] += p0 * g
        den[z:z + 4] += g
    assert torch.allclose(probs[0].double(), num / den, atol=1e-6)
    uniform = sliding_window_probs(vol, net, (4, 4, 4), stride=(1, 4, 4), blend="uniform")
    assert not torch.allclose(uniform, probs, atol=1e-4)  # the blend changes the answer here


def test_predict_slices_errors_word_for_word():
    vol = np.zeros((2, 8, 8), np.float32)
    net = _Banded(3)
    cases = [
        (dict(resize_back="nearest"), r"^resize_back must be one of \('label_nearest', 'probs_bilinear'\), got 'nearest'$"),
        (dict(image_resize="cubic"), r"^image_resize must be one of \('bilinear', 'zoom_linear', 'zoom_nearest'\), got 'cubic'$"),
        (dict(precision="fp16"), r"^precision must be one of \('fp32', 'bf16'\), got 'fp16'$"),
        (dict(batch_size=0), r"^batch_size must be a positive integer, got 0$"),
        (dict(batch_size=1.5), r"^batch_size must be a positive integer, got 1\.5$"),
        (dict(input_size=(8,)), r"^input_size must be two positive integers, got \(8,\)$"),
        (dict(input_size=(8, 0)), r"^input_size must be two positive integers, got \(8, 0\)$"),
    ]
    for kwargs, message in cases:
        with pytest.raises(BfasegError, match=message):
            predict_slices(vol, net, **{"input_size": (8, 8), **kwargs})
    for bad in (np.zeros((8, 8), np.float32), np.zeros((0, 8, 8), np.float32)):
        with pytest.raises(BfasegError, match=r"^predict_slices needs a non-empty \(Z, Y, X\) volume, got shape "):
            predict_slices(bad, net, (8, 8))
    with pytest.raises(ValueError, match=r"^the model produced 3 classes, expected num_classes=4$"):
        predict_slices(vol, net, (8, 8), num_classes=4)


def test_predict_slices_bilinear_paths_match_interpolate():
    import torch.nn.functional as F

    net = _Banded(4)
    vol = _smooth_volume(7, (3, 21, 26)).astype(np.float64)  # float64 in: predicted in float32
    labels, probs = predict_slices(vol, net, (16, 16), batch_size=1, image_resize="bilinear",
                                   resize_back="probs_bilinear", return_probs=True)
    x = F.interpolate(torch.from_numpy(vol.astype(np.float32))[:, None], size=(16, 16), mode="bilinear", align_corners=False)
    up = F.interpolate(torch.softmax(net(x), 1), size=(21, 26), mode="bilinear", align_corners=False)
    assert probs.dtype == torch.float32 and torch.allclose(probs, up.transpose(0, 1), atol=1e-6)
    assert np.array_equal(labels, up.argmax(1).numpy().astype(np.uint8))
    same, none = predict_slices(vol, net, None)  # no resizing at all
    assert none is None and np.array_equal(same, net(torch.from_numpy(vol.astype(np.float32))[:, None]).argmax(1).numpy())


def test_for_validation_uses_the_run_eval_settings():
    from bfaseg.config import validate_config
    from bfaseg.inference.predictor import Predictor

    from conftest import tiny_config

    raw = tiny_config("supervised")
    raw["eval"] = {"mode": "paper", "stride": [2, 3, 4], "overlap": 0.25, "batch_size": 3, "largest_component": True}
    cfg = validate_config(raw)
    net = _Banded(3)
    for trained, validated in (("bf16", "bf16"), ("fp16", "fp32"), ("fp32", "fp32")):
        p = Predictor.for_validation(net, cfg, ndim=2, precision=trained, device="cpu")
        assert p.precision == validated
    assert (p.model, p.forward, p.state, p.ndim, p.device, p.checkpoint) == (net, net, {}, 2, "cpu", None)
    assert (p.mode, p.stride, p.overlap, p.batch_size, p.largest_component) == ("paper", [2, 3, 4], 0.25, 3, True)


def test_model_output_errors_word_for_word():
    from bfaseg.inference.sliding_window import forward_logits

    batch = torch.zeros(2, 1, 4, 4)
    cpu = torch.device("cpu")
    with pytest.raises(TypeError, match=r"^the model returned tuple, not a torch\.Tensor; wrap it so that it returns "
                                        r"the segmentation logits, e\.g\. `lambda x: net\(x\)\[0\]`$"):
        forward_logits(lambda x: (x,), batch, "fp32", cpu)
    wrong = {  # one thing wrong at a time
        "batch": lambda x: torch.zeros(1, 3, 4, 4),
        "spatial": lambda x: torch.zeros(2, 3, 4, 5),
        "ndim": lambda x: torch.zeros(2, 3, 4, 4, 1),
    }
    for name, model in wrong.items():
        out = tuple(model(batch).shape)
        message = rf"^the model mapped an input of shape \(2, 1, 4, 4\) to {re.escape(str(out))}; expected \(N, K, \*same spatial shape\)$"
        with pytest.raises(ValueError, match=message):
            forward_logits(model, batch, "fp32", cpu)
    logits = forward_logits(lambda x: torch.ones(2, 3, 4, 4, dtype=torch.float64), batch, "fp32", cpu)
    assert logits.dtype == torch.float32


def test_probs_to_labels_takes_numpy_and_up_to_256_classes():
    from bfaseg.inference.sliding_window import probs_to_labels

    probs = np.zeros((256, 2), np.float32)
    probs[255, 0] = probs[3, 1] = 1.0
    assert probs_to_labels(probs).tolist() == [255, 3] and probs_to_labels(torch.from_numpy(probs)).dtype == np.uint8
    with pytest.raises(ValueError, match=r"^257 classes do not fit a uint8 label map$"):
        probs_to_labels(np.zeros((257, 2), np.float32))


def test_predict_slices_inputs_and_defaults():
    net = _conv_net(2)
    vol = _smooth_volume(9, (20, 12, 10)).astype(np.float64)  # float64 in: the conv net needs float32
    counting = _Counting(net)
    labels, probs = predict_slices(vol, counting, (8, 8), return_probs=True)
    assert counting.calls == [16, 4]  # sixteen slices per pass by default
    tensor_labels, tensor_probs = predict_slices(torch.from_numpy(vol), net, (8, 8), return_probs=True)
    assert np.array_equal(tensor_labels, labels) and torch.equal(tensor_probs, probs)
    same, same_probs = predict_slices(vol, net, None, image_resize="bilinear", return_probs=True)  # no resizing
    x = torch.from_numpy(vol.astype(np.float32))[:, None]
    assert torch.allclose(same_probs, torch.softmax(net(x), 1).transpose(0, 1), atol=1e-6)
    assert np.array_equal(same, predict_slices(vol, net, None)[0])
    thin, _ = predict_slices(vol[:2], _Banded(3), (1, 8))  # a one-pixel-high input is still an input
    assert thin.shape == (2, 12, 10)


def test_autocast_context_checks_the_precision_itself():
    from bfaseg.inference.sliding_window import autocast_context

    with pytest.raises(BfasegError, match=r"^precision must be one of \('fp32', 'bf16'\), got 'fp16'$"):
        autocast_context("fp16", torch.device("cpu"))
    with autocast_context("bf16", torch.device("cpu")):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
