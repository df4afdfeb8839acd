"""Rebuilding a network from a checkpoint, and the Predictor's settings, without training a real model.

The checkpoints come from a two-iteration run of the tiny synthetic config (a fraction of a second),
so these tests stay in the fast selection that mutation testing runs (benchmarks/mutation.sh);
tests/test_evaluate_predict.py covers the same code end to end on trained models.
"""

import re
from types import SimpleNamespace

import pytest
import torch

from bfaseg.config import validate_config
from bfaseg.errors import BfasegError
from bfaseg.inference.checkpoints import (checkpoint_config, describe_checkpoint, load_model_from_checkpoint,
                                          strip_prefixes)
from bfaseg.inference.predictor import Predictor, inference_fn, paper_stride, run_precision
from bfaseg.io.checkpoint import checkpoint_digest, load_checkpoint, save_checkpoint
from bfaseg.methods import get_method_class
from bfaseg.training.trainer import Trainer

from conftest import tiny_config


def _run(tmp_path_factory, method, **params):
    raw = tiny_config(method, iterations=2, precision="fp32", val_every=2, checkpoint_every=2)
    raw["model"].update(base_channels=4)
    raw["method"].update(params)
    out = tmp_path_factory.mktemp(method)
    Trainer(validate_config(raw), out, progress=False).fit()
    return out / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def bfa_ckpt(tmp_path_factory):
    return _run(tmp_path_factory, "bfa", pretrain=0.5)


@pytest.fixture(scope="module")
def supervised_ckpt(tmp_path_factory):
    return _run(tmp_path_factory, "supervised")


def _rewrite(src, dst, change):
    state = load_checkpoint(src)
    change(state)
    for k in ("schema", "bfaseg_version"):
        state.pop(k, None)
    save_checkpoint(dst, state)
    return dst


def test_strip_prefixes_removes_wrappers_in_any_order_and_only_at_the_front():
    t = torch.zeros(1)
    out = strip_prefixes({"module._orig_mod.a": t, "_orig_mod.module.b": t, "module.module.c": t,
                          "x.module.d": t, "e": t})
    assert list(out) == ["a", "b", "c", "x.module.d", "e"]


def test_checkpoint_config_errors_name_the_file(tmp_path):
    with pytest.raises(BfasegError, match=r"ck\.pt: the checkpoint has no run config"):
        checkpoint_config({}, tmp_path / "ck.pt")
    with pytest.raises(BfasegError, match=r"ck\.pt: the checkpoint's config is not valid"):
        checkpoint_config({"config": {"model": {"name": "no-such-net"}}}, tmp_path / "ck.pt")
    cfg = checkpoint_config({"config": validate_config(tiny_config("bcp")).model_dump()}, "x")
    assert cfg.method.name == "bcp"


def test_bfa_checkpoint_rebuilds_head_and_loads_each_network(bfa_ckpt):
    state = load_checkpoint(bfa_ckpt)
    for which in ("student", "teacher"):
        model, cfg, loaded = load_model_from_checkpoint(bfa_ckpt, which=which)
        assert not model.training and loaded["_loaded_weights"] == which
        assert model.boundary_head is not None  # BFA's head re-added before the strict load
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[which][k]), (which, k)
    default, cfg, loaded = load_model_from_checkpoint(bfa_ckpt)
    assert loaded["_loaded_weights"] == cfg.eval.model
    with pytest.raises(BfasegError, match="--model: expected 'student' or 'teacher'"):
        load_model_from_checkpoint(bfa_ckpt, which="ema")


def test_missing_teacher_falls_back_only_when_not_asked_for(supervised_ckpt, tmp_path):
    with pytest.raises(BfasegError, match=r"^--model teacher: .*last\.pt has no teacher weights \(method supervised\); use --model student$"):
        load_model_from_checkpoint(supervised_ckpt, which="teacher")
    as_teacher = _rewrite(supervised_ckpt, tmp_path / "t.pt",
                          lambda s: s["config"]["eval"].update(model="teacher"))
    model, _, state = load_model_from_checkpoint(as_teacher)  # the run's default: no teacher -> student
    assert state["_loaded_weights"] == "student" and getattr(model, "boundary_head", None) is None


def test_a_checkpoint_without_config_is_named(supervised_ckpt, tmp_path):
    bare = _rewrite(supervised_ckpt, tmp_path / "bare.pt", lambda s: s.pop("config"))
    with pytest.raises(BfasegError, match=r"bare\.pt: the checkpoint has no run config; cannot rebuild the model$"):
        load_model_from_checkpoint(bare)


def test_sync_batchnorm_runs_load_as_plain_batchnorm(supervised_ckpt, tmp_path):
    synced = _rewrite(supervised_ckpt, tmp_path / "sync.pt", lambda s: s["config"]["model"].update(sync_batchnorm=True))
    model, cfg, _ = load_model_from_checkpoint(synced)  # no process group needed for inference
    assert cfg.model.sync_batchnorm and not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())


def test_window_starts_errors_name_the_argument():
    from bfaseg.inference.sliding_window import window_starts

    with pytest.raises(BfasegError, match=r"^stride must be a positive integer, got 0$"):
        window_starts(8, 4, 0)
    with pytest.raises(BfasegError, match=r"^size must be a positive integer, got 'a'$"):
        window_starts("a", 4, 2)


def test_wrapped_nonfinite_and_misfitting_weights(supervised_ckpt, tmp_path):
    wrapped = _rewrite(supervised_ckpt, tmp_path / "w.pt",
                       lambda s: s.update(student={"module." + k: v for k, v in s["student"].items()}))
    model, _, _ = load_model_from_checkpoint(wrapped)
    ref, _, _ = load_model_from_checkpoint(supervised_ckpt)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))

    def poison(s):
        key = next(k for k, v in s["student"].items() if v.is_floating_point())
        s["student"][key] = s["student"][key].clone().fill_(float("nan"))

    with pytest.raises(BfasegError, match=r"n\.pt: the student weights hold NaN/Inf \(1 tensors, first .*diverged"):
        load_model_from_checkpoint(_rewrite(supervised_ckpt, tmp_path / "n.pt", poison))
    bigger = _rewrite(supervised_ckpt, tmp_path / "m.pt",
                      lambda s: s["config"]["model"].update(base_channels=8))
    with pytest.raises(BfasegError, match=r"m\.pt: the weights do not fit the model in its config"):
        load_model_from_checkpoint(bigger)


def test_bfa_restore_modules_follows_the_weights_and_the_stage():
    from bfaseg.models import UNet2D

    cls = get_method_class("bfa")
    raw = tiny_config("bfa")
    raw["method"]["boundary_stage"] = 2
    cfg = validate_config(raw)
    for maps, fuse in ((1, False), (2, True)):  # one boundary map (not K - 1 = 2), with and without fusion
        trained = UNet2D(1, 3, 4)
        trained.add_boundary_head(2, maps, fuse=fuse)
        weights = trained.state_dict()
        model = UNet2D(1, 3, 4)
        cls.restore_modules(model, cfg, weights)
        model.load_state_dict(weights, strict=True)  # same stage, size and fusion
    bare = UNet2D(1, 3, 4)
    cls.restore_modules(bare, cfg, UNet2D(1, 3, 4).state_dict())
    assert getattr(bare, "boundary_head", None) is None
    weights.pop("boundary_head.predict.weight")
    with pytest.raises(ValueError, match="^the boundary head's weights lack boundary_head.predict.weight$"):
        cls.restore_modules(UNet2D(1, 3, 4), cfg, weights)


def test_describe_checkpoint_provenance(bfa_ckpt, tmp_path):
    _, _, state = load_model_from_checkpoint(bfa_ckpt, which="student")
    d = describe_checkpoint(bfa_ckpt, state)
    assert d == {
        "path": str(bfa_ckpt.resolve()), "iteration": 2, "sha256": checkpoint_digest(bfa_ckpt),
        "method": "bfa", "weights": "student", "best": state["best"], "val_split": state["data"]["val_split"],
        "bfaseg_version": state["bfaseg_version"],
    }
    other = tmp_path / "x.pt"
    other.write_bytes(b"x")
    assert describe_checkpoint(other, {"config": {"method": {"name": "bcp"}}})["method"] == "bcp"
    assert describe_checkpoint(other, {"method_name": "bfa", "config": {"method": {"name": "bcp"}}})["method"] == "bfa"
    assert describe_checkpoint(other, {})["weights"] == "student"
    assert describe_checkpoint(other, {"_loaded_weights": "teacher"})["weights"] == "teacher"


def test_predictor_from_checkpoint_settings_and_errors(bfa_ckpt, caplog):
    p = Predictor.from_checkpoint(bfa_ckpt, device="cpu", precision="fp32", which="teacher", mode="fast",
                                  largest_component=True)
    assert (p.ndim, p.device, p.precision, p.mode, p.overlap, p.batch_size, p.largest_component) == \
        (2, "cpu", "fp32", "fast", None, None, True)
    for option, kw in (("--overlap", {"overlap": 0.25}), ("--batch-size", {"batch_size": 3})):
        with pytest.raises(BfasegError, match=f"^{option}: the checkpoint is a 2-D network"):  # was silently dropped
            Predictor.from_checkpoint(bfa_ckpt, device="cpu", **kw)
    assert p.state["_loaded_weights"] == "teacher" and p.checkpoint == bfa_ckpt
    labels, _, settings = p.predict(torch.rand(2, 32, 32).numpy())
    assert labels.shape == (2, 32, 32) and settings["largest_component"] is True
    described = p.describe(settings)
    assert described["inference"]["weights"] == "teacher" and described["inference"]["device"] == "cpu"
    assert described["mode"] == "fast" and described["checkpoint"]["iteration"] == 2
    with caplog.at_level("WARNING"):
        Predictor.from_checkpoint(bfa_ckpt, device="cpu", mode="paper")
    assert "2-D network, predicted slice by slice" in caplog.text
    with pytest.raises(BfasegError, match="--stride: the checkpoint is a 2-D network"):
        Predictor.from_checkpoint(bfa_ckpt, device="cpu", stride=[2, 2, 2])
    args = SimpleNamespace(checkpoint=bfa_ckpt, device="cpu", precision="bf16", model="teacher", mode="paper",
                           stride=None, overlap=None, batch_size=None, largest_component=True)
    q = Predictor.from_args(args)
    assert (q.precision, q.mode, q.overlap, q.batch_size, q.largest_component, q.state["_loaded_weights"]) == \
        ("bf16", "paper", None, None, True, "teacher")
    assert q.warnings == ["--mode paper: the checkpoint is a 2-D network, predicted slice by slice "
                          "(no sliding window; for ACDC this is the reference protocol)"]  # also in summary.json
    args = SimpleNamespace(checkpoint=bfa_ckpt, device="cpu", precision="fp32", model="student", mode="fast",
                           stride=None, largest_component=False)  # predict has no --overlap / --batch-size
    q = Predictor.from_args(args)
    assert (q.precision, q.overlap, q.batch_size, q.state["_loaded_weights"]) == ("fp32", None, None, "student")
    if not torch.cuda.is_available():  # the device option reaches the device check
        with pytest.raises(BfasegError, match="--device: 'cuda' requested but no CUDA device"):
            Predictor.from_args(SimpleNamespace(**{**vars(args), "device": "cuda"}))
    assert Predictor.from_checkpoint(bfa_ckpt, device="run", precision="run").precision == "fp32"


def test_stride_checks_on_a_3d_network(tmp_path_factory):
    raw = tiny_config("supervised", iterations=2, precision="fp32", val_every=2, checkpoint_every=2)
    raw["data"].update(synthetic_ndim=3, synthetic_size=[16, 16, 16], patch_size=[16, 16, 16])
    raw["model"].update(name="vnet", base_channels=4, num_classes=3)
    out = tmp_path_factory.mktemp("vnet")
    Trainer(validate_config(raw), out, progress=False).fit()
    ckpt = out / "checkpoints" / "last.pt"
    p = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32", stride=[4])
    assert p.ndim == 3 and p.stride == [4, 4, 4]
    assert Predictor.from_checkpoint(ckpt, device="cpu", stride=[1, 1, 1]).stride == [1, 1, 1]  # 1 is allowed
    args = SimpleNamespace(checkpoint=ckpt, device="cpu", precision="fp32", model=None, mode="paper",
                           stride=[2, 3, 4], largest_component=False)
    assert Predictor.from_args(args).stride == [2, 3, 4]
    for bad in ([4, 4], [4, 0, 4]):
        with pytest.raises(BfasegError, match=rf"^--stride: expected 3 positive integers, got {re.escape(str(bad))}$"):
            Predictor.from_checkpoint(ckpt, device="cpu", stride=bad)


@pytest.mark.parametrize("fast", [True, False])
def test_run_precision_prefers_what_the_run_chose(tmp_path, monkeypatch, fast):
    from bfaseg.inference import predictor

    monkeypatch.setattr(predictor, "bf16_is_fast", lambda device: fast)
    auto = validate_config(tiny_config("supervised", precision="auto"))
    fp32 = validate_config(tiny_config("supervised", precision="fp32"))
    ck = tmp_path / "run" / "checkpoints" / "last.pt"
    ck.parent.mkdir(parents=True)
    summary = tmp_path / "run" / "train_summary.json"
    # no record of the run's choice: the config, with auto resolved on this device
    assert run_precision(ck, auto, {}, "cpu") == ("bf16" if fast else "fp32")
    assert run_precision(ck, fp32, {}, "cpu") == "fp32"
    # the choice stored in the checkpoint wins over the summary and the config
    summary.write_text('{"precision": "bf16"}')
    assert run_precision(ck, auto, {"precision": "fp32"}, "cpu") == "fp32"
    assert run_precision(ck, auto, {"precision": "fp16"}, "cpu") == "fp32"  # fp16 runs validated in fp32
    assert run_precision(ck, fp32, {"precision": "bf16"}, "cpu") == "bf16"
    # older checkpoints: the run's train_summary.json
    assert run_precision(ck, fp32, {}, "cpu") == "bf16"
    summary.write_text('{"precision": "fp32"}')
    assert run_precision(ck, auto, {}, "cpu") == "fp32"
    summary.write_text("{not json")  # unreadable: back to the config
    assert run_precision(ck, auto, {}, "cpu") == ("bf16" if fast else "fp32")


def test_paper_stride():
    def cfg(dataset, downsample=1, stride=None):
        return SimpleNamespace(eval=SimpleNamespace(stride=stride), data=SimpleNamespace(dataset=dataset, downsample=downsample))

    assert paper_stride(cfg("la"), (112, 112, 80)) == [18, 18, 4]
    assert paper_stride(cfg("la", downsample=2), (64, 64, 48)) == [9, 9, 2]
    assert paper_stride(cfg("pancreas", downsample=3), (96, 96, 96)) == [5, 5, 5]
    assert paper_stride(cfg("la", stride=[7, 6, 5]), (64, 64, 48)) == [7, 6, 5]
    assert paper_stride(cfg("la", downsample=4), (32, 32, 24)) == [4, 4, 1]  # never below 1 voxel
    assert paper_stride(cfg("synthetic"), (18, 12, 3)) == [4, 3, 1]  # a quarter, rounded down
    assert paper_stride(cfg("la"), (64, 64)) == [16, 16]  # 2-D patch: no published stride


@pytest.mark.parametrize("ndim", [2, 3])
def test_inference_fn_is_the_model_in_channels_last(ndim):
    from bfaseg.models import UNet2D, VNet

    torch.manual_seed(0)
    model = (UNet2D(1, 3, 4) if ndim == 2 else VNet(1, 2, 4, False)).eval()
    x = torch.rand((1, 1) + (16,) * ndim)
    with torch.no_grad():
        ref = model(x)
        out = inference_fn(model, ndim)(x)  # on the CPU by default
    fmt = torch.channels_last if ndim == 2 else torch.channels_last_3d
    # a kernel with several input channels: with one, channels-last and contiguous are the same layout
    weight = next(p for p in model.parameters() if p.ndim == ndim + 2 and p.shape[1] > 1 and p.shape[2] > 1)
    assert weight.is_contiguous(memory_format=fmt)
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("method,params,expected", [
    ("supervised", {}, {"student": 8, "teacher": 0}),
    ("mean_teacher", {}, {"student": 16, "teacher": 8}),
    ("ua_mt", {"mc_passes": 8}, {"student": 16, "teacher": 72}),
    ("bcp", {}, {"student": 8, "teacher": 8, "student_pretrain": 4, "teacher_pretrain": 0}),
    ("bcp", {"pretrain": 0.0, "supervised_weight": 1.0}, {"student": 16, "teacher": 8}),
    ("bfa", {}, {"student": 16, "teacher": 8, "student_pretrain": 12, "teacher_pretrain": 0}),
])
def test_images_per_step(method, params, expected):
    raw = tiny_config(method)
    raw["method"].update(params)
    cfg = validate_config(raw)
    cls = get_method_class(method)
    params = cls.Params.model_validate(cfg.method_params())
    assert cls.images_per_step(params, 8, 8) == expected
    if method in ("bcp", "bfa"):  # unequal batches: pairs are limited by the smaller one
        assert cls.images_per_step(params, 8, 4)["teacher"] == 4


def test_predictor_defaults_device_and_precision_options(bfa_ckpt, tmp_path, monkeypatch, caplog):
    import bfaseg.precision

    p = Predictor.from_checkpoint(bfa_ckpt)
    assert (p.mode, p.largest_component, p.stride) == ("fast", False, None)
    assert p.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert isinstance(p.model, torch.nn.Module) and callable(p.forward) and p.forward is not p.model
    with caplog.at_level("WARNING"):
        Predictor.from_checkpoint(bfa_ckpt, device="cpu", mode="fast")
    assert caplog.text == ""  # the slice-by-slice warning is for --mode paper only
    with caplog.at_level("WARNING"):
        Predictor.from_checkpoint(bfa_ckpt, device="cpu", mode="paper")
    assert ("--mode paper: the checkpoint is a 2-D network, predicted slice by slice (no sliding window; for ACDC "
            "this is the reference protocol)") in caplog.text
    with pytest.raises(BfasegError, match=r"^--stride: the checkpoint is a 2-D network \(slice-wise inference has no windows\)$"):
        Predictor.from_checkpoint(bfa_ckpt, device="cpu", stride=[2, 2, 2])
    with pytest.raises(BfasegError, match=r"^--device: unknown device 'tpu0'$"):
        Predictor.from_checkpoint(bfa_ckpt, device="tpu0")
    # auto precision follows the mode: bf16 for fast inference where bf16 is fast, fp32 for paper mode
    monkeypatch.setattr(bfaseg.precision, "bf16_is_fast", lambda device: True)
    assert Predictor.from_checkpoint(bfa_ckpt, device="cpu", precision="auto", mode="fast").precision == "bf16"
    assert Predictor.from_checkpoint(bfa_ckpt, device="cpu", precision="auto", mode="paper").precision == "fp32"
    # --precision run without a stored choice or summary: the run's config
    moved = tmp_path / "elsewhere" / "checkpoints" / "last.pt"
    moved.parent.mkdir(parents=True)

    def bf16_run(s):
        s.pop("precision")
        s["config"]["train"]["precision"] = "bf16"

    assert Predictor.from_checkpoint(_rewrite(bfa_ckpt, moved, bf16_run), device="cpu", precision="run").precision == "bf16"
    if not torch.cuda.is_available():
        on_cuda = _rewrite(bfa_ckpt, tmp_path / "cuda.pt", lambda s: s["config"]["train"].update(device="cuda"))
        with pytest.raises(BfasegError, match=r"^train.device: 'cuda' requested but no CUDA device is available$"):
            Predictor.from_checkpoint(on_cuda, device="run")


def test_load_errors_name_the_file_and_the_first_lines_of_the_reason(supervised_ckpt, bfa_ckpt, tmp_path):
    extra = _rewrite(supervised_ckpt, tmp_path / "x.pt", lambda s: s["student"].update(extra_key=torch.zeros(1)))
    with pytest.raises(BfasegError) as err:
        load_model_from_checkpoint(extra)
    assert str(err.value) == (f"{extra}: the weights do not fit the model in its config (Error(s) in loading "
                              'state_dict for UNet2D: Unexpected key(s) in state_dict: "extra_key".)')
    bigger = _rewrite(supervised_ckpt, tmp_path / "m.pt", lambda s: s["config"]["model"].update(base_channels=8))
    with pytest.raises(BfasegError) as err:
        load_model_from_checkpoint(bigger)
    detail = re.fullmatch(rf"{re.escape(str(bigger))}: the weights do not fit the model in its config \((.*)\)",
                          str(err.value)).group(1)
    assert len(detail) == 160 and detail.startswith("Error(s) in loading state_dict for UNet2D: size mismatch for ")
    assert "\n" not in detail

    unknown = _rewrite(supervised_ckpt, tmp_path / "u.pt", lambda s: s["config"]["method"].update(name="nope"))
    with pytest.raises(BfasegError, match=rf"^{re.escape(str(unknown))}: method\.name: unknown method 'nope'"):
        load_model_from_checkpoint(unknown)
    headless = _rewrite(bfa_ckpt, tmp_path / "h.pt", lambda s: s["student"].pop("boundary_head.predict.weight"))
    with pytest.raises(BfasegError, match=rf"^{re.escape(str(headless))}: cannot rebuild the bfa modules \(.+\)$"):
        load_model_from_checkpoint(headless, which="student")
    with pytest.raises(BfasegError, match=r"^x\.pt: the checkpoint's config is not valid for this bfaseg: "
                                          r"model\.name: Input should be 'unet2d' or 'vnet'$"):  # the key path, issue 30
        checkpoint_config({"config": {"model": {"name": "no-such-net"}}}, "x.pt")


def test_a_load_error_shows_its_first_two_lines_only(supervised_ckpt, tmp_path):
    def swap(s):
        s["student"].pop("head.bias")
        s["student"]["extra_key"] = torch.zeros(1)

    swapped = _rewrite(supervised_ckpt, tmp_path / "s.pt", swap)
    with pytest.raises(BfasegError) as err:
        load_model_from_checkpoint(swapped)
    assert str(err.value) == (f"{swapped}: the weights do not fit the model in its config (Error(s) in loading "
                              'state_dict for UNet2D: Missing key(s) in state_dict: "head.bias".)')
