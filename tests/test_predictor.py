"""predict_array and Predictor.predict on fixed tiny networks, against the window and slice code called
by hand: every setting reaches that code, and labels and probabilities come back in the image's geometry.

No training here (fractions of a second), so these tests are in the selection mutation testing runs
(benchmarks/mutation.sh); tests/test_evaluate_predict.py covers the same path end to end on trained models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from bfaseg.config import validate_config
from bfaseg.data.components import largest_connected_component
from bfaseg.data.transforms import downsample_case_arrays, resize
from bfaseg.errors import BfasegError
from bfaseg.inference import predict_slices, predict_volume
from bfaseg.inference.predictor import Predictor, predict_array

from conftest import tiny_config
from test_inference import _Banded, _conv_net, _Counting, _smooth_volume


def _cfg(ndim: int, classes: int = 3, **eval_settings):
    raw = tiny_config("supervised")
    if ndim == 3:
        raw["data"].update(synthetic_ndim=3, synthetic_size=[16, 16, 16], patch_size=[8, 8, 8])
        raw["model"].update(name="vnet")
    else:
        raw["data"].update(patch_size=[16, 12])  # not square: a swapped axis shows
    raw["model"].update(num_classes=classes)
    raw["eval"] = eval_settings
    return validate_config(raw)


def _volume(seed: int, shape) -> np.ndarray:
    """Smooth values in [0, 1) in every axis, so intensity bands form 3-D regions."""
    v = gaussian_filter(np.random.default_rng(seed).random(shape), sigma=2)
    return ((v - v.min()) / (v.max() - v.min() + 1e-6)).astype(np.float32)


def _predictor(net, cfg, ndim, **fields) -> Predictor:
    settings = dict(mode="fast", stride=None, largest_component=False, overlap=None, batch_size=None, precision="fp32")
    settings.update(fields)
    return Predictor(checkpoint=None, model=net, cfg=cfg, state={}, ndim=ndim, device="cpu", forward=net, **settings)


# ----------------------------------------------------------------- predict_array, 2-D networks
def test_2d_networks_predict_slices_at_the_patch_size_sixteen_per_pass():
    cfg = _cfg(2)
    net = _Banded(3)
    vol = _smooth_volume(0, (20, 21, 26))
    counting = _Counting(net)
    labels, probs, settings = predict_array(net, cfg, vol, ndim=2, mode="paper", return_probs=True, forward=counting)
    want_labels, want_probs = predict_slices(vol, net, (16, 12), return_probs=True)
    assert np.array_equal(labels, want_labels) and torch.equal(probs, want_probs)
    assert counting.calls == [16, 4]
    assert settings == {"mode": "slice-wise", "requested_mode": "paper", "precision": "fp32", "patch_size": [16, 12],
                        "image_resize": "zoom_linear", "largest_component": False}
    assert len(np.unique(labels)) == 3  # the bands show: a resize or axis bug would change the labels
    without, none, _ = predict_array(net, cfg, vol, ndim=2, forward=counting)
    assert none is None and np.array_equal(without, labels)

    one, one_probs, _ = predict_array(net, cfg, vol[5], ndim=2, return_probs=True, forward=net)  # a single slice
    assert np.array_equal(one, labels[5]) and torch.equal(one_probs, probs[:, 5])
    one, none, _ = predict_array(net, cfg, vol[5], ndim=2, forward=net)
    assert none is None and np.array_equal(one, labels[5])


def test_2d_networks_check_the_class_count_and_honour_the_precision():
    vol = _smooth_volume(1, (3, 21, 26))
    with pytest.raises(ValueError, match=r"^the model produced 3 classes, expected num_classes=4$"):
        predict_array(_Banded(3), _cfg(2, classes=4), vol, ndim=2)
    net = _conv_net(2)  # convolutions run in bf16 under autocast (the banded net has none)
    fp32 = predict_array(net, _cfg(2), vol, ndim=2, return_probs=True)
    bf16 = predict_array(net, _cfg(2), vol, ndim=2, return_probs=True, precision="bf16")
    assert torch.equal(bf16[1], predict_slices(vol, net, (16, 12), precision="bf16", return_probs=True)[1])
    assert not torch.equal(bf16[1], fp32[1]) and bf16[2]["precision"] == "bf16"
    assert torch.equal(fp32[1], predict_slices(vol, net, (16, 12), return_probs=True)[1])  # no forward: the model


# ----------------------------------------------------------------- predict_array, 3-D networks
def test_3d_fast_mode_takes_overlap_and_batch_from_eval_unless_given():
    cfg = _cfg(3, overlap=0.25, batch_size=3)
    net = _conv_net(3)
    vol = _volume(2, (19, 13, 10))
    counting = _Counting(net)
    labels, probs, settings = predict_array(net, cfg, vol, ndim=3, return_probs=True, forward=counting)
    want = predict_volume(vol, net, (8, 8, 8), overlap=0.25, batch_size=3, return_probs=True)
    assert np.array_equal(labels, want[0]) and torch.equal(probs, want[1])
    assert counting.calls[0] == 3 and max(counting.calls) == 3
    assert settings == {"mode": "fast", "precision": "fp32", "patch_size": [8, 8, 8], "overlap": 0.25, "batch_size": 3,
                        "blend": "gaussian", "stride": None, "largest_component": False}

    counting.calls.clear()
    given = predict_array(net, cfg, vol, ndim=3, overlap=0.5, batch_size=2, return_probs=True, forward=counting)
    want = predict_volume(vol, net, (8, 8, 8), overlap=0.5, batch_size=2, return_probs=True)
    assert torch.equal(given[1], want[1]) and not torch.equal(given[1], probs)
    assert counting.calls[0] == 2 and (given[2]["overlap"], given[2]["batch_size"]) == (0.5, 2)

    strided = predict_array(net, cfg, vol, ndim=3, stride=(3, 5, 2), return_probs=True, forward=net)
    want = predict_volume(vol, net, (8, 8, 8), stride=[3, 5, 2], batch_size=3, return_probs=True)
    assert torch.equal(strided[1], want[1]) and strided[2]["stride"] == [3, 5, 2]
    assert not torch.equal(strided[1], probs)
    with pytest.raises(ValueError, match=r"^the model produced 3 classes, expected num_classes=2$"):
        predict_array(net, _cfg(3, classes=2), vol, ndim=3, forward=net)
    bf16 = predict_array(net, cfg, vol, ndim=3, precision="bf16", return_probs=True, forward=net)
    want = predict_volume(vol, net, (8, 8, 8), overlap=0.25, batch_size=3, precision="bf16", return_probs=True)
    assert torch.equal(bf16[1], want[1]) and not torch.equal(bf16[1], probs)


def test_3d_paper_mode_uses_the_paper_stride_one_window_per_pass():
    cfg = _cfg(3)
    net = _conv_net(3)
    vol = _volume(3, (13, 12, 10))
    counting = _Counting(net)
    labels, probs, settings = predict_array(net, cfg, vol, ndim=3, mode="paper", return_probs=True, forward=counting)
    want = predict_volume(vol, net, (8, 8, 8), mode="paper", stride=[2, 2, 2], return_probs=True)  # patch // 4
    assert np.array_equal(labels, want[0]) and torch.equal(probs, want[1])
    assert set(counting.calls) == {1} and len(counting.calls) == 4 * 3 * 2  # ceil((size - 8) / 2) + 1 per axis
    assert settings == {"mode": "paper", "precision": "fp32", "patch_size": [8, 8, 8], "stride": [2, 2, 2],
                        "batch_size": 1, "blend": "uniform", "largest_component": False}
    given = predict_array(net, cfg, vol, ndim=3, mode="paper", stride=(5, 4, 2), return_probs=True, forward=net)
    want = predict_volume(vol, net, (8, 8, 8), mode="paper", stride=[5, 4, 2], return_probs=True)
    assert torch.equal(given[1], want[1]) and given[2]["stride"] == [5, 4, 2]
    assert not torch.equal(given[1], probs)
    own = predict_array(net, cfg, vol, ndim=3, mode="paper", stride=(5, 4, 2), return_probs=True)  # no forward given
    assert torch.allclose(own[1], given[1], atol=1e-6)  # the model itself, in channels-last 3-D


@pytest.mark.parametrize("ndim", [2, 3])
def test_largest_component_is_applied_to_the_labels(ndim):
    net = _Banded(3)
    vol = _smooth_volume(4, (4, 30, 30)) if ndim == 2 else _volume(4, (20, 20, 20))
    plain, _, _ = predict_array(net, _cfg(ndim), vol, ndim=ndim, forward=net)
    kept, _, settings = predict_array(net, _cfg(ndim), vol, ndim=ndim, largest_component=True, forward=net)
    assert np.array_equal(kept, largest_connected_component(plain)) and settings["largest_component"] is True
    assert not np.array_equal(kept, plain)  # the bands break into several components here


# ----------------------------------------------------------------- Predictor.predict
def test_predictor_passes_its_settings_on():
    cfg = _cfg(3, overlap=0.5, batch_size=4)
    net = _conv_net(3)
    vol = _volume(5, (15, 12, 10))
    fields = dict(mode="fast", stride=[3, 5, 2], overlap=0.25, batch_size=2, largest_component=True)
    labels, probs, settings = _predictor(net, cfg, 3, **fields).predict(vol, probabilities=True)
    want = predict_array(net, cfg, vol, ndim=3, return_probs=True, forward=net, **fields)
    assert np.array_equal(labels, want[0]) and settings == want[2]
    assert isinstance(probs, np.ndarray) and probs.dtype == np.float32 and np.array_equal(probs, want[1].numpy())
    paper = _predictor(net, cfg, 3, mode="paper", stride=[5, 4, 2]).predict(vol)
    assert paper[1] is None and paper[2] == predict_array(net, cfg, vol, ndim=3, mode="paper", stride=[5, 4, 2],
                                                          forward=net)[2]
    bf16 = _predictor(_conv_net(3), cfg, 3, precision="bf16").predict(vol, probabilities=True)
    assert bf16[2]["precision"] == "bf16" and np.array_equal(
        bf16[1], predict_array(net, cfg, vol, ndim=3, precision="bf16", return_probs=True, forward=net)[1].numpy())
    with pytest.raises(BfasegError, match=r"^a 3-D network needs 3-D images$"):
        _predictor(net, cfg, 3).predict(vol[0])


def test_predictor_downsamples_3d_images_and_resizes_back():
    cfg = _cfg(3)
    net = _Banded(3)
    image = _volume(6, (22, 19, 17))
    labels, probs, _ = _predictor(net, cfg, 3).predict(image, downsample=2, probabilities=True)
    work, _ = downsample_case_arrays(image, None, 2)
    assert work.shape == (11, 10, 8)
    small_labels, small_probs, _ = predict_array(net, cfg, work, ndim=3, return_probs=True, forward=net)
    assert labels.shape == image.shape and probs.shape == (3, *image.shape)
    assert np.array_equal(labels, resize(small_labels, image.shape, order=0))
    assert np.allclose(probs, np.stack([resize(p, image.shape, order=1) for p in small_probs.numpy()]), atol=1e-6)
    full, _, _ = _predictor(net, cfg, 3).predict(image)
    assert not np.array_equal(labels, full)  # the downsampling happened
    labels_only, none, _ = _predictor(net, cfg, 3).predict(image, downsample=2)
    assert none is None and np.array_equal(labels_only, labels)
    same, _, _ = _predictor(net, cfg, 3).predict(image, xyz=True)  # 3-D networks take (x, y, z) volumes as they are
    assert np.array_equal(same, full)


def test_predictor_2d_networks_read_xyz_volumes_as_z_slices():
    cfg = _cfg(2)
    net = _Banded(3)
    vol = _smooth_volume(7, (5, 21, 26))  # (z, y, x) slices
    want_labels, want_probs = predict_slices(vol, net, (16, 12), return_probs=True)
    xyz = np.asfortranarray(vol.transpose(2, 1, 0))  # as nibabel gives it
    labels, probs, _ = _predictor(net, cfg, 2).predict(xyz, xyz=True, probabilities=True)
    assert labels.shape == xyz.shape and probs.shape == (3, *xyz.shape)
    assert np.array_equal(labels, want_labels.transpose(2, 1, 0))
    assert np.array_equal(probs, want_probs.numpy().transpose(0, 3, 2, 1))
    assert labels.flags.c_contiguous and probs.flags.c_contiguous
    labels, none, _ = _predictor(net, cfg, 2).predict(xyz, xyz=True)
    assert none is None and np.array_equal(labels, want_labels.transpose(2, 1, 0))
    as_slices, _, _ = _predictor(net, cfg, 2).predict(vol)
    assert np.array_equal(as_slices, want_labels)


def test_predictor_2d_images_ignore_the_downsampling():
    cfg = _cfg(2)
    net = _Banded(3)
    image = _smooth_volume(8, (1, 21, 26))[0]
    labels, probs, _ = _predictor(net, cfg, 2).predict(image, downsample=2, probabilities=True)
    want_labels, want_probs = predict_slices(image[None], net, (16, 12), return_probs=True)
    assert np.array_equal(labels, want_labels[0]) and np.array_equal(probs, want_probs[:, 0].numpy())
    vol = _smooth_volume(8, (4, 21, 26))  # a 3-D image is downsampled on every axis, slices included
    labels, _, _ = _predictor(net, cfg, 2).predict(vol, downsample=2)
    work, _ = downsample_case_arrays(vol, None, 2)
    assert labels.shape == vol.shape
    assert np.array_equal(labels, resize(predict_slices(work, net, (16, 12))[0], vol.shape, order=0))
