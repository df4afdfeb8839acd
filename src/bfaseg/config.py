"""Run configuration: YAML files validated by pydantic.

Every section forbids unknown keys, so a typo is an error naming the key.
``--set a.b=value`` overrides are parsed as YAML scalars and validated the same way.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bfaseg.errors import BfasegError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    dataset: Literal["acdc", "la", "pancreas", "synthetic", "nifti"] = "synthetic"
    root: str | None = None
    train_list: str | None = None  # default per dataset (train.list / train_slices.list)
    val_list: str | None = None  # evaluation split used for model selection
    val_cases: int | None = None  # LA/Pancreas: hold out the LAST n cases of train_list for validation
    labeled: int | None = Field(default=None, ge=1)  # first N entries of the training list are labeled
    labeled_fraction: float | None = Field(default=None, gt=0, le=1)
    split_file: str | None = None  # YAML/JSON with `labeled:` and `unlabeled:` id lists
    patch_size: list[int] = Field(default_factory=lambda: [64, 64])
    downsample: float = Field(default=1.0, ge=1.0)  # LA/Pancreas: shrink volumes by this factor at load time
    rotation: Literal["rot90_flip", "rotate", "both"] = "both"  # 2-D augmentation
    num_workers: int = Field(default=0, ge=0)
    # synthetic data
    synthetic_ndim: Literal[2, 3] = 2
    synthetic_cases: int = Field(default=40, ge=2)
    synthetic_size: list[int] = Field(default_factory=lambda: [64, 64])
    synthetic_classes: int = Field(default=3, ge=2)
    synthetic_val_cases: int = Field(default=6, ge=1)
    # NIfTI folders
    target_spacing: list[float] | None = None
    modality: Literal["auto", "CT", "MR"] = "auto"

    @field_validator("patch_size", "synthetic_size")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(int(s) < 8 for s in v):
            raise ValueError("every size must be >= 8")
        return [int(s) for s in v]


class ModelConfig(_Section):
    name: Literal["unet2d", "vnet"] = "unet2d"
    in_channels: int = Field(default=1, ge=1)
    num_classes: int = Field(default=4, ge=2)
    base_channels: int = Field(default=16, ge=2)
    dropout: bool = True
    sync_batchnorm: bool = False


class TrainConfig(_Section):
    iterations: int = Field(default=1000, ge=1)
    batch_labeled: int = Field(default=4, ge=1)
    batch_unlabeled: int = Field(default=4, ge=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    schedule: Literal["poly", "step", "constant"] = "poly"
    poly_power: float = 0.9
    step_milestones: list[int] = Field(default_factory=list)
    step_gamma: float = 0.1
    # auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX) where its gradients are right
    # (bfaseg.precision), fp32 elsewhere (emulated bf16 is ~10x slower)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    force_precision: bool = False  # train in bf16 even where bfaseg.precision knows its gradients are wrong
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"
    seed: int = 1337
    deterministic: bool = False
    val_every: int = Field(default=200, ge=1)
    log_every: int = Field(default=20, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)
    keep_checkpoints: int = Field(default=2, ge=0)  # periodic checkpoints kept besides last/best
    teacher_mode: Literal["eval", "train"] = "eval"
    ema_decay: float = Field(default=0.99, ge=0, le=1)
    threads: int | None = None


class EvalConfig(_Section):
    mode: Literal["fast", "paper"] = "fast"
    stride: list[int] | None = None  # paper mode strides (LA 18,18,4; Pancreas 16,16,16)
    overlap: float = Field(default=0.5, ge=0, lt=1)
    batch_size: int = Field(default=4, ge=1)
    largest_component: bool = False
    max_cases: int | None = None  # validate on the first n cases only (faster validation)
    model: Literal["student", "teacher"] = "student"  # which network validation scores (same for all methods)


class MethodConfig(BaseModel):
    """``name`` picks the method; the other keys are validated by that method's Params."""

    model_config = ConfigDict(extra="allow")
    name: str = "supervised"


class RunConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    output: str | None = None

    def method_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.method.model_dump().items() if k != "name"}


def _format_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{source}: {key}: {msg}"


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise BfasegError(f"--set {text!r}: expected key=value (e.g. train.iterations=100)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides or []:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise BfasegError(f"--set {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return raw


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BfasegError(f"config file not found: {path}")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)  # safe loader: no Python objects from YAML tags
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or "").split())[:120]
        raise BfasegError(f"{path}: invalid YAML{where}" + (f": {problem}" if problem else "")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BfasegError(f"{path}: cannot read config ({exc.__class__.__name__})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BfasegError(f"{path}: the config must be a mapping of sections (data, model, train, ...)")
    return raw


def validate_config(raw: dict, source: str = "config") -> RunConfig:
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise BfasegError(_format_validation_error(exc, source)) from None
    # method params are validated against the method's own schema
    from bfaseg.methods import get_method_class

    cls = get_method_class(cfg.method.name, source=source)
    try:
        cls.Params.model_validate(cfg.method_params())
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "method." + ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise BfasegError(f"{source}: {key}: {msg}") from None
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, source=str(path) if path else "config")
