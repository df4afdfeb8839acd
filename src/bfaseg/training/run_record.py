"""What a run folder was made with: ``<run>/config.json``, and the one comparison of two configs.

A run writes its validated config (``RunConfig.model_dump()``) to ``config.json`` when it starts;
its checkpoints hold the same config. Every command that reuses a run folder (``train --resume``,
``train`` on an existing run, ``experiment`` skipping or resuming a run) compares the config it
would use with the recorded one through :func:`config_diff` and refuses a difference, naming the
keys, instead of continuing or presenting another config's results as its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bfaseg.errors import BfasegError
from bfaseg.io.files import jsonable, write_json_atomic

__all__ = ["RESUMABLE_CHANGES", "RUN_CONFIG", "config_diff", "recorded_config", "write_run_config"]

RUN_CONFIG = "config.json"
# keys that may change when an interrupted run is continued: they change neither the data nor the maths
# of the steps already taken (iterations: the run goes on longer or stops earlier)
RESUMABLE_CHANGES = {("train", "iterations"), ("train", "num_workers"), ("data", "num_workers"), ("train", "threads")}


def config_diff(old: dict, new: dict, allowed: set[tuple[str, str]] = RESUMABLE_CHANGES) -> list[str]:
    """The dotted keys (``section.key``) in which two config dumps differ, ``allowed`` changes left out.
    Both are compared as JSON would store them (a tuple equals its list, NaN is null), with the defaults of
    keys that a newer bfaseg added filled in (a run recorded before a key existed used its default) and
    ``train.teacher_mode`` as the mode it resolves to (unset: the method's default)."""
    old, new = _as_json(_completed(old)), _as_json(_completed(new))
    diffs = []
    for section in set(old) | set(new):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in set(a) | set(b):
                if a.get(key) != b.get(key) and (section, key) not in allowed:
                    diffs.append(f"{section}.{key}")
        elif a != b and section != "output":
            diffs.append(section)
    return sorted(diffs)


def resolved_config(cfg) -> dict:
    """A validated config as runs record it: its method section with every parameter, the method's defaults
    included, so that a later change of a default cannot make a reuse of the run look like the same config."""
    from bfaseg.methods import check_method_params

    dump = cfg.model_dump()
    try:
        params = check_method_params(cfg)
    except BfasegError:  # an unknown method or bad parameters: recorded as given
        return dump
    dump["method"] = {"name": cfg.method.name, **params.model_dump()}
    return dump


def _completed(config: dict) -> dict:
    from bfaseg.config import RunConfig
    from bfaseg.methods import resolve_teacher_mode

    try:
        cfg = RunConfig.model_validate(config or {})
    except ValueError:  # pydantic's ValidationError: compared as recorded, the keys that differ are named
        return config or {}
    completed = resolved_config(cfg)
    # train.teacher_mode unset means the method's default: compared as the mode it resolves to, so a run recorded
    # with an explicit "eval" (every run before the per-method default) matches a config that leaves BCP's eval
    # to the method, and a mean-teacher run made in eval mode does not match the mean teacher's train default
    try:
        completed["train"]["teacher_mode"] = resolve_teacher_mode(cfg)[0]
    except BfasegError:  # an unknown method: compared as recorded
        pass
    return completed


def _as_json(config: dict) -> dict:
    return json.loads(json.dumps(jsonable(config or {})))


def write_run_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / RUN_CONFIG, config)


def recorded_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run folder was made with: ``config.json``, else (runs from before it was written)
    the one in ``checkpoints/last.pt``; None when the folder holds neither."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_CONFIG
    if path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BfasegError(f"{path}: cannot read the run's config record ({exc})") from None
        if not isinstance(raw, dict):
            raise BfasegError(f"{path}: the run's config record is not a JSON object")
        return raw
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        from bfaseg.io.checkpoint import load_checkpoint

        config = load_checkpoint(last).get("config")
        return config if isinstance(config, dict) else None
    return None
