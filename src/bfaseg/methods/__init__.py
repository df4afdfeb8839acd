"""Semi-supervised methods: each is one small module on the shared trainer.

Adding a method = one module defining a ``Method`` subclass + one line in ``REGISTRY``.
"""

from __future__ import annotations

import importlib

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


def build_method(name: str, params: dict, trainer):
    cls = get_method_class(name)
    return cls(cls.Params.model_validate(params), trainer)
