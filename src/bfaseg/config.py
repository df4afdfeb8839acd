"""Run configuration: YAML files validated by pydantic.

Every section forbids unknown keys, so a typo is an error naming the key.
``--set a.b=value`` overrides are parsed as YAML scalars and validated the same way.

Every numeric field has bounds, and every integer is strict (``iterations: true`` is
an error, not 1); the checks between fields live in :meth:`RunConfig._cross_checks`.
All of it runs before a command creates any output.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, field_validator

from bfaseg.errors import BfasegError


def _not_bool(value):
    if isinstance(value, bool):  # YAML `true` is not the number 1
        raise ValueError(f"Input should be a number, not {str(value).lower()}")
    return value


Int = Annotated[int, Strict()]  # a YAML int: no bool, no float, no string
# int or float (or a YAML-1.1 "1e-3" string); no bool, NaN or Inf
Num = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]


def _expand_user(value):
    # `root: ~/data/LA` means the user's home, as it would in a shell
    return str(Path(value).expanduser()) if isinstance(value, str) and value.startswith("~") else value


UserPath = Annotated[str, BeforeValidator(_expand_user)]


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, but a key given twice in one mapping is an error, not "the last one wins"."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (a second one would silently replace the first)",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(stream):
    """``yaml.safe_load`` that refuses duplicate keys (configs, split files)."""
    return yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    dataset: Literal["acdc", "la", "pancreas", "synthetic", "nifti"] = "synthetic"
    root: UserPath | None = None
    train_list: str | None = None  # default per dataset (train.list / train_slices.list)
    val_list: str | None = None  # evaluation split used for model selection
    val_cases: Int | None = Field(default=None, ge=1)  # LA/Pancreas: hold out the LAST n cases of train_list for validation
    labeled: Int | None = Field(default=None, ge=1)  # first N entries of the training list are labeled
    labeled_fraction: Num | None = Field(default=None, gt=0, le=1)
    split_file: UserPath | None = None  # YAML/JSON with `labeled:` and `unlabeled:` id lists
    patch_size: list[Int] = Field(default_factory=lambda: [64, 64])
    downsample: Num = Field(default=1.0, ge=1.0)  # LA/Pancreas: shrink volumes by this factor at load time
    # 2-D augmentation: rot90+flip, a small rotation, either (half each), or BCP's split (half rot90+flip, a quarter
    # rotation, a quarter unaugmented)
    rotation: Literal["rot90_flip", "rotate", "both", "both_or_none"] = "both"
    # the rotation's angle and image interpolation: bfaseg's (a real angle, linear) or the references' (an integer
    # angle in [-20, 20), nearest: SSL4MIS's and BCP's random_rotate)
    rotation_style: Literal["bfaseg", "reference"] = "bfaseg"
    # ACDC: how 2-D slices are resized to data.patch_size, in training and at inference: linear once at load
    # (bfaseg), nearest once at load, or nearest after each draw's augmentation (the references' zoom(order=0) in
    # their RandomGenerator: a quarter turn of a non-square slice then changes its aspect ratio); inference: nearest
    # for both nearest modes (test_single_volume's zoom)
    slice_resize: Literal["linear", "nearest", "nearest_after_augment"] = "linear"
    # how batches draw samples: independently with replacement (random) or, as the references' TwoStreamBatchSampler,
    # each labeled sample once per cycle of len(labeled) // batch_labeled steps, the unlabeled from a fresh
    # permutation each cycle (epoch)
    sampler: Literal["random", "epoch"] = "random"
    num_workers: Int = Field(default=0, ge=0)
    # synthetic data
    synthetic_ndim: Literal[2, 3] = 2
    synthetic_cases: Int = Field(default=40, ge=2)
    synthetic_size: list[Int] = Field(default_factory=lambda: [64, 64])
    synthetic_classes: Int = Field(default=3, ge=2)
    synthetic_val_cases: Int = Field(default=6, ge=1)
    # NIfTI folders
    target_spacing: list[Annotated[Num, Field(gt=0)]] | None = None
    modality: Literal["auto", "CT", "MR"] = "auto"

    @field_validator("patch_size", "synthetic_size")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(int(s) < 8 for s in v):
            raise ValueError("every size must be >= 8")
        return [int(s) for s in v]


class ModelConfig(_Section):
    name: Literal["unet2d", "vnet"] = "unet2d"
    in_channels: Int = Field(default=1, ge=1)
    num_classes: Int = Field(default=4, ge=2)
    base_channels: Int = Field(default=16, ge=2)
    dropout: bool = True
    sync_batchnorm: bool = False

    @property
    def ndim(self) -> int:
        """2 for the slice-wise U-Net, 3 for the volumetric V-Net."""
        return {"unet2d": 2, "vnet": 3}[self.name]


class TrainConfig(_Section):
    iterations: Int = Field(default=1000, ge=1)
    batch_labeled: Int = Field(default=4, ge=1)
    batch_unlabeled: Int = Field(default=4, ge=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Num = Field(default=0.01, gt=0)
    momentum: Num = Field(default=0.9, ge=0, lt=1)
    weight_decay: Num = Field(default=1e-4, ge=0)
    schedule: Literal["poly", "step", "constant"] = "poly"
    poly_power: Num = Field(default=0.9, gt=0)
    step_milestones: list[Annotated[int, Strict(), Field(ge=1)]] = Field(default_factory=list)
    step_gamma: Num = Field(default=0.1, gt=0, le=1)
    # auto: bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX) where its gradients are right
    # (bfaseg.precision), fp32 elsewhere (emulated bf16 is ~10x slower)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    force_precision: bool = False  # train in bf16 even where bfaseg.precision knows its gradients are wrong
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"
    seed: Int = Field(default=1337, ge=0, lt=2**32)
    deterministic: bool = False
    val_every: Int = Field(default=200, ge=1)
    log_every: Int = Field(default=20, ge=1)
    checkpoint_every: Int = Field(default=500, ge=1)
    keep_checkpoints: Int = Field(default=2, ge=0)  # periodic checkpoints kept besides last/best
    # how the EMA teacher predicts: eval (BatchNorm running statistics, no dropout) or train (batch statistics,
    # dropout); None: the method's own default (its class attribute ``teacher_mode``: train for the mean teacher)
    teacher_mode: Literal["eval", "train"] | None = None
    ema_decay: Num = Field(default=0.99, ge=0, le=1)
    threads: Int | None = Field(default=None, ge=1)


class EvalConfig(_Section):
    mode: Literal["fast", "paper"] = "fast"
    stride: list[Annotated[int, Strict(), Field(ge=1)]] | None = None  # paper mode strides (LA 18,18,4; Pancreas 16,16,16)
    overlap: Num = Field(default=0.5, ge=0, lt=1)
    batch_size: Int = Field(default=4, ge=1)
    largest_component: bool = False
    max_cases: Int | None = Field(default=None, ge=1)  # validate on the first n cases only (faster validation)
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
    path = key.strip().split(".")
    if not all(part.strip() for part in path):
        raise BfasegError(f"--set {text!r}: the key has an empty part; give a dotted key such as train.iterations")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return [part.strip() for part in path], value


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


PACKAGED_CONFIGS = Path(__file__).parent / "configs"  # the protocol configs, shipped in the wheel


def resolve_config_path(name: str | Path) -> Path:
    """A config file: ``name`` as a path when it exists, else a packaged config by name.

    ``acdc/bfa_10``, ``acdc/bfa_10.yaml`` and ``configs/acdc/bfa_10.yaml`` all name
    the packaged ``configs/acdc/bfa_10.yaml``, so the commands in the docs also work
    from an installed wheel, outside the repository.
    """
    path = Path(name)
    if path.is_file() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    if parts:
        packaged = PACKAGED_CONFIGS.joinpath(*parts)
        if packaged.suffix not in (".yaml", ".yml"):
            packaged = packaged.with_name(packaged.name + ".yaml")
        if packaged.is_file():
            return packaged
    return path


def packaged_config_names() -> list[str]:
    """``benchmark/name`` of every packaged config, e.g. ``acdc/bfa_10``."""
    return sorted(p.relative_to(PACKAGED_CONFIGS).with_suffix("").as_posix() for p in PACKAGED_CONFIGS.glob("*/*.yaml"))


def load_yaml(path: str | Path) -> dict:
    path = resolve_config_path(path)
    if path.is_dir():
        raise BfasegError(f"{path}: is a folder, not a config file")
    if not path.is_file():
        raise BfasegError(f"config file not found: {path} (or a packaged name such as acdc/bfa_10)")
    try:
        with open(path) as f:
            raw = safe_load_unique(f)  # safe loader: no Python objects from YAML tags
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or "").split())[:120]
        raise BfasegError(f"{path}: invalid YAML{where}" + (f": {problem}" if problem else "")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BfasegError(f"{path}: cannot read config ({exc.__class__.__name__})") from None
    if raw is None:  # an empty file would silently train the built-in defaults
        raise BfasegError(f"{path}: the config is empty; give at least the data, model and train sections")
    if not isinstance(raw, dict):
        raise BfasegError(f"{path}: the config must be a mapping of sections (data, model, train, ...)")
    return raw


def _cross_checks(cfg: RunConfig) -> tuple[str, str] | None:
    """The checks between fields, in one place: ``(key, message)`` of the first that fails."""
    d, e, t = cfg.data, cfg.eval, cfg.train
    if len(d.patch_size) not in (2, 3):
        return "data.patch_size", (f"{len(d.patch_size)} entries {d.patch_size}; {cfg.model.name} "
                                   f"(model.name) needs {cfg.model.ndim}")
    if d.dataset == "synthetic" and len(d.synthetic_size) != d.synthetic_ndim:
        return "data.synthetic_size", f"{d.synthetic_size} does not match synthetic_ndim={d.synthetic_ndim}"
    if d.target_spacing is not None and len(d.target_spacing) not in (1, 3):
        return "data.target_spacing", f"one number or three (x, y, z), got {d.target_spacing}"
    if e.stride is not None and len(e.stride) not in (1, 3):
        return "eval.stride", f"one number or three (one per axis), got {e.stride}"
    if t.step_milestones != sorted(set(t.step_milestones)):
        return "train.step_milestones", f"must be strictly increasing, got {t.step_milestones}"
    return None


def validate_config(raw: dict, source: str = "config") -> RunConfig:
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise BfasegError(_format_validation_error(exc, source)) from None
    problem = _cross_checks(cfg)
    if problem:
        raise BfasegError(f"{source}: {problem[0]}: {problem[1]}")
    # the method section is checked by the methods layer (bfaseg.methods.check_method_params),
    # which owns each method's Params: config sits below methods and does not import them
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    raw = load_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, source=str(path) if path else "config")
