"""Semi-supervised methods: each is one small module on the shared trainer.

Adding a method = one module defining a ``Method`` subclass + one line in ``REGISTRY``.
"""

from __future__ import annotations

import importlib

from pydantic import ValidationError

from bfaseg.config import RunConfig
from bfaseg.errors import BfasegError

REGISTRY = {
    "supervised": "bfaseg.methods.supervised:Supervised",
    "mean_teacher": "bfaseg.methods.mean_teacher:MeanTeacher",
    "ua_mt": "bfaseg.methods.ua_mt:UAMT",
    "bcp": "bfaseg.methods.bcp:BCP",
    "bfa": "bfaseg.methods.bfa:BFA",
}


def get_method_class(name: str, source: str = "config"):
    if name not in REGISTRY:
        raise BfasegError(f"{source}: method.name: unknown method {name!r} (choose from {', '.join(REGISTRY)})")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def check_method_params(cfg: RunConfig, source: str = "config"):
    """The ``method`` section validated against the method's own Params (one-line error naming the key)."""
    cls = get_method_class(cfg.method.name, source=source)
    try:
        return cls.Params.model_validate(cfg.method_params())
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(["method", *(str(p) for p in err["loc"])])  # no loc: a check across keys
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise BfasegError(f"{source}: {key}: {msg}") from None


def build_method(cfg: RunConfig, trainer, source: str = "config"):
    return get_method_class(cfg.method.name, source=source)(check_method_params(cfg, source), trainer)


TEACHER_MODE_SET = "train.teacher_mode"
TEACHER_MODE_DEFAULT = "the method's default"


def resolve_teacher_mode(cfg: RunConfig, source: str = "config") -> tuple[str, str]:
    """How the method's EMA teacher predicts, ``"eval"`` or ``"train"``, and who decided it:
    ``train.teacher_mode`` when the config sets it, else the method's own default (its class attribute
    ``teacher_mode``)."""
    if cfg.train.teacher_mode is not None:
        return cfg.train.teacher_mode, TEACHER_MODE_SET
    return get_method_class(cfg.method.name, source=source).teacher_mode, TEACHER_MODE_DEFAULT
