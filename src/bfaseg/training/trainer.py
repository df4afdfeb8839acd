"""The one training loop every method shares.

The trainer owns the student, the optional EMA teacher, the optimizer and schedule,
precision, checkpoints, validation, logging and resume. A method only says how one
iteration turns a two-stream batch into a loss (``bfaseg.methods``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bfaseg.config import RunConfig
from bfaseg.data.batches import TwoStreamBatches, make_loader
from bfaseg.data.build import DataBundle, build_data
from bfaseg.errors import BfasegError, Interrupted, TrainingDiverged
from bfaseg.io import checkpoint as ckpt
from bfaseg.io.files import atomic_write_bytes, jsonable
from bfaseg.methods import build_method, resolve_teacher_mode
from bfaseg.models import build_model
from bfaseg.precision import check_fits_in_memory, resolve_device, resolve_training_precision
from bfaseg.training.distributed import (
    DistInfo, average_buffers, barrier, cpu_sync_batchnorm, init_distributed,
)
from bfaseg.training.ema import ema_decay, ema_update
from bfaseg.training.run_record import config_diff, recorded_config, resolved_config, write_run_config
from bfaseg.training.validation import validate

log = logging.getLogger(__name__)

# torch's BatchNorm in training, given one value per channel (one image whose deepest feature map is one voxel)
ONE_VALUE_PER_CHANNEL = "Expected more than 1 value per channel when training"


def lr_factor(cfg, iteration: int) -> float:
    if cfg.schedule == "poly":
        return (1 - iteration / cfg.iterations) ** cfg.poly_power
    if cfg.schedule == "step":
        return cfg.step_gamma ** sum(iteration >= m for m in cfg.step_milestones)
    return 1.0


def set_deterministic(enabled: bool) -> None:
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = enabled
        torch.backends.cudnn.benchmark = not enabled


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        output_dir: str | Path,
        *,
        resume: bool = False,
        force: bool = False,
        data: DataBundle | None = None,
        progress: bool = True,
    ):
        """``force``: a run already in ``output_dir`` is moved aside (``<output_dir>.replaced-N``, nothing is
        deleted) and a fresh one starts; back in place if start-up fails. Contradicts ``resume``."""
        if force and resume:  # the CLI refuses the two options by name (cli/train.py)
            raise ValueError("force starts the run over, which resume contradicts")
        self.cfg = cfg
        tc = cfg.train
        self.device = resolve_device(tc.device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        # refused (fp16 on CPU, wrong bf16 gradients) before anything is created
        self.precision, self.precision_reason = resolve_training_precision(
            tc.precision, self.device, tuple(cfg.data.patch_size), force=tc.force_precision
        )
        if tc.deterministic:
            set_deterministic(True)
        self.output_dir = Path(output_dir)
        self.ckpt_dir = self.output_dir / "checkpoints"
        self.progress = progress and self.dist.is_main
        self._created_dirs: list[Path] = []
        self._moved_aside: Path | None = None  # where --force moved the earlier run (rank 0)
        self._prepare_output(resume, force)
        try:
            self._setup(cfg, resume, data)
        except BaseException:
            self._remove_created_dirs()
            self._put_back_moved_aside()
            raise
        if self._moved_aside is not None:  # said once start-up succeeded (a failed one put the run back)
            log.info(f"[replaced] {self.output_dir}: moved the earlier run ({self._replaced_why}) to "
                     f"{self._moved_aside}; a fresh run starts here")
        self._stop_signal: int | None = None
        self.tb = None

    def _setup(self, cfg: RunConfig, resume: bool, data: DataBundle | None) -> None:
        tc = cfg.train
        torch.manual_seed(tc.seed)
        np.random.seed(tc.seed % 2**32)
        # a lower bound of one training step: the labeled patches' first feature map, refused before any data
        # is read when even that exceeds the device's memory (instead of an allocator error in the first step)
        check_fits_in_memory(
            tc.batch_labeled * cfg.model.base_channels * int(np.prod(cfg.data.patch_size)) * 4,
            f"data.patch_size {list(cfg.data.patch_size)}: the first feature map of a batch (train.batch_labeled "
            f"{tc.batch_labeled} x model.base_channels {cfg.model.base_channels} channels)",
            "choose a smaller data.patch_size, train.batch_labeled or model.base_channels", self.device)

        self.data = data if data is not None else build_data(cfg.data, cfg.model.num_classes, progress=self.progress)
        self.num_classes = cfg.model.num_classes
        self.train_ndim = self.data.train_ndim
        self.patch_size = tuple(cfg.data.patch_size)
        self.total_iterations = tc.iterations

        self.method = build_method(cfg, self)
        # eval or train, resolved once: train.teacher_mode, else the method's default (teacher_forward, BCP's passes)
        self.teacher_mode, self.teacher_mode_from = resolve_teacher_mode(cfg)
        if self.method.uses_unlabeled and not self.data.unlabeled:
            raise BfasegError(f"method {cfg.method.name!r} needs unlabeled data but every training case is labeled")
        student = build_model(cfg.model)
        if cfg.model.ndim != self.train_ndim:
            raise BfasegError(f"model.name: {cfg.model.name} is {cfg.model.ndim}-D but the data trains {self.train_ndim}-D")
        bad = [p for p in self.patch_size if p % 16]
        if bad:  # four 2x downsamplings: odd sizes would break the skip connections
            raise BfasegError(
                f"data.patch_size: {list(self.patch_size)} must be divisible by 16 for {cfg.model.name} (got {bad[0]})"
            )
        self.method.configure_model(student)
        if self.device.type == "cpu":
            cpu_sync_batchnorm(student)  # model.sync_batchnorm under gloo: PyTorch's SyncBatchNorm is GPU-only
        self.memory_format = (
            (torch.channels_last_3d if self.train_ndim == 3 else torch.channels_last)
            if tc.channels_last
            else torch.contiguous_format
        )
        student = student.to(self.device, memory_format=self.memory_format)
        self.teacher: nn.Module | None = None
        if self.method.needs_teacher:
            self.teacher = copy.deepcopy(student)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.student = student  # the bare module (weights, EMA source, checkpoints)
        self.forward_model: nn.Module = student  # what the method calls (DDP / compiled wrapper)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = nn.parallel.DistributedDataParallel(
                student, device_ids=ids, find_unused_parameters=self.method.may_leave_parameters_unused
            )
        if tc.compile:
            self.forward_model = torch.compile(self.forward_model)

        params = [p for p in self.student.parameters() if p.requires_grad]
        if tc.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(tc, it))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

        self.start_iteration = 0
        self.best = {"dice": -1.0, "iteration": None}
        self.history: list[dict] = []
        self.running: dict[str, torch.Tensor] = {}  # loss sums since the last log record (checkpointed)
        if resume:
            self._resume()

    # ----------------------------------------------------------------- set-up
    def _prepare_output(self, resume: bool, force: bool = False) -> None:
        if not self.dist.is_main:  # under torchrun only rank 0 checks, moves and creates folders
            return
        last = self.ckpt_dir / "last.pt"
        if last.exists() and not resume:
            try:
                diffs = config_diff(recorded_config(self.output_dir) or {}, self.cfg.model_dump())
            except BfasegError:  # an unreadable record: the run is there all the same
                diffs = []
            if force:
                from bfaseg.io.output import move_aside

                out = self.output_dir
                self._moved_aside = move_aside(out, out.parent, f"{out.name}.replaced")
                self._replaced_why = f"another config: differs in {', '.join(diffs)}" if diffs else "same config"
            elif diffs:
                raise BfasegError(f"{self.output_dir}: a run with another config already exists here (it differs in "
                                  f"{', '.join(diffs)}); pass --force to start over (the run is moved aside) or "
                                  "choose another --output")
            else:
                raise BfasegError(f"{self.output_dir}: a run already exists here; pass --resume to continue it, "
                                  "--force to start over (the run is moved aside) or choose another --output")
        if resume and not last.is_file():  # checked before anything is created or loaded
            raise BfasegError(f"--resume: no checkpoint to resume at {last}")
        try:
            for d in (self.output_dir, self.ckpt_dir):
                if not d.is_dir():
                    d.mkdir(parents=True)
                    self._created_dirs.append(d)
            probe = self.output_dir / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            self._remove_created_dirs()
            self._put_back_moved_aside()
            raise BfasegError(f"--output {self.output_dir}: not writable ({exc.strerror or exc})") from None

    def _put_back_moved_aside(self) -> None:
        """Start-up failed after --force moved the earlier run aside: it goes back where it was."""
        if self._moved_aside is not None and not os.path.lexists(self.output_dir):
            try:
                os.rename(self._moved_aside, self.output_dir)
            except OSError as exc:  # the start-up error is the one to report; say where the run is
                log.warning(f"the earlier run stays at {self._moved_aside} (cannot move it back: {exc.strerror})")
            else:
                self._moved_aside = None

    def _remove_created_dirs(self) -> None:
        """Start-up failed: remove the (still empty) folders this run created, nothing else."""
        for d in reversed(self._created_dirs):
            try:
                d.rmdir()
            except OSError:
                pass
        self._created_dirs = []

    def _resume(self) -> None:
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            raise BfasegError(f"--resume: no checkpoint to resume at {path}")
        state = ckpt.load_checkpoint(path, map_location=self.device)
        diffs = config_diff(state.get("config", {}), self.cfg.model_dump())
        if diffs:
            raise BfasegError(f"--resume: the config differs from the run's in {', '.join(diffs)}")
        made = state.get("teacher_mode")  # recorded since the per-method default: a later default must not change it
        if self.teacher is not None and made is not None and made != self.teacher_mode:
            raise BfasegError(f"--resume: the run's teacher predicted in {made} mode ({state.get('teacher_mode_from')}), "
                              f"this config's would in {self.teacher_mode} mode ({self.teacher_mode_from}); "
                              f"set train.teacher_mode={made} to continue it")
        try:
            self.student.load_state_dict(state["student"])
            if self.teacher is not None and state.get("teacher") is not None:
                self.teacher.load_state_dict(state["teacher"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.method.load_state_dict(state.get("method", {}))
            ckpt.set_rng_state(state["rng"])
            self.start_iteration = int(state["iteration"])
            self.best = dict(state.get("best", self.best))
            self.running = {k: v.to(self.device) for k, v in (state.get("running") or {}).items()}
        except KeyError as exc:  # a checkpoint of another schema, or hand-made
            raise BfasegError(f"{path}: cannot resume from this checkpoint (no {exc})") from None
        except (RuntimeError, ValueError, TypeError) as exc:
            detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])[:160]
            raise BfasegError(f"{path}: cannot resume from this checkpoint ({detail})") from None
        if self.dist.is_main:
            self._truncate_log(self.start_iteration)
            for tmp in self.ckpt_dir.glob(".*.tmp"):  # temp files of a write cut short by a kill
                tmp.unlink(missing_ok=True)

    def _truncate_log(self, iteration: int) -> None:
        """Drop log records after the checkpoint (they are produced again) and any torn last line."""
        path = self.output_dir / "log.jsonl"
        if not path.is_file():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and int(record.get("iteration", 0)) <= iteration:
                keep.append(line + "\n")
        atomic_write_bytes(path, lambda f: f.write("".join(keep).encode()))

    # ------------------------------------------------------------ utilities
    def autocast(self):
        precision = self.precision
        if precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        # images (N, C, *spatial) only: 3-D labels (N, D, H, W) are rank 4 but not channels_last material
        return x.contiguous(memory_format=self.memory_format) if x.ndim == self.train_ndim + 2 else x

    @torch.no_grad()
    def teacher_forward(self, x: torch.Tensor, return_extras: bool = False):
        """Teacher prediction under no_grad and autocast, in the resolved ``teacher_mode`` (``train.teacher_mode``,
        else the method's default, its class attribute ``teacher_mode``)."""
        assert self.teacher is not None
        self.teacher.train(self.teacher_mode == "train")
        with self.autocast():
            out = self.teacher(x, return_extras=return_extras)
        if return_extras:
            return {k: (v.float() if torch.is_tensor(v) else v) for k, v in out.items()}
        return out.float()

    def _teacher_mode_record(self) -> dict[str, str | None]:
        """How the teacher predicted and who decided it (train.teacher_mode or the method's default); None
        for methods without a teacher."""
        if self.teacher is None:
            return {"teacher_mode": None, "teacher_mode_from": None}
        return {"teacher_mode": self.teacher_mode, "teacher_mode_from": self.teacher_mode_from}

    def copy_student_to_teacher(self) -> None:
        assert self.teacher is not None
        self.teacher.load_state_dict(self.student.state_dict())

    # -------------------------------------------------------------- the loop
    def state_dict(self, iteration: int) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "method_name": self.cfg.method.name,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "method": self.method.state_dict(),
            "rng": ckpt.rng_state(),
            "config": resolved_config(self.cfg),  # every method parameter: a later default cannot pass for this one
            "best": dict(self.best),
            "running": {k: v.detach().float().cpu() for k, v in self.running.items()},
            "precision": self.precision,  # what auto chose: inference of this checkpoint repeats it
            **self._teacher_mode_record(),
            "data": {"train_ndim": self.train_ndim, "val_split": self.data.val_split,
                     "val_ids": self.data.val_ids, "train_ids": self.data.train_ids,
                     # NIfTI: the modality the training images were read with, so inference reads alike
                     "modality": self.data.modality, "modality_declared_by": self.data.modality_declared_by},
        }

    def save(self, name: str, iteration: int) -> Path:
        path = self.ckpt_dir / f"{name}.pt"
        if self.dist.is_main:
            ckpt.save_checkpoint(path, self.state_dict(iteration))
        return path

    def _save_periodic(self, iteration: int) -> None:
        self._check_weights(iteration)  # never replace the last good checkpoint with NaN weights
        self.save("last", iteration)
        keep = self.cfg.train.keep_checkpoints
        if keep and self.dist.is_main:
            self.save(f"iter_{iteration:07d}", iteration)
            periodic = sorted(self.ckpt_dir.glob("iter_*.pt"))
            for old in periodic[:-keep]:
                old.unlink(missing_ok=True)

    def log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        self.history.append(record)
        with open(self.output_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(jsonable(record), allow_nan=False) + "\n")  # strict JSON: a NaN Dice is null
        if self.tb is not None:
            it = record["iteration"]
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key.replace("val_", "val/").replace("loss_", "loss/"), value, it)

    def _open_tensorboard(self) -> None:
        if not self.dist.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            # drop events logged after the checkpoint (resume) or by a run that never checkpointed
            self.tb = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=self.start_iteration + 1)
        except ImportError:  # tensorboard is optional at run time
            self.tb = None

    def _handle_signal(self, signum, frame):
        self._stop_signal = signum

    def run_validation(self, iteration: int) -> dict:
        model = self.teacher if (self.teacher is not None and self.cfg.eval.model == "teacher") else self.student
        result = validate(
            model, self.data.val, cfg=self.cfg, train_ndim=self.train_ndim, precision=self.precision,
            device=self.device,
        )
        record = {"iteration": iteration, "val_dice": result["dice"]}
        for k, d in enumerate(result["dice_per_class"], start=1):
            record[f"val_dice_class{k}"] = d
        # a NaN Dice (every class absent from both prediction and label: validation.summarize) is logged
        # (null in log.jsonl) but never compares greater, so it never becomes the best checkpoint
        if result["dice"] > self.best["dice"]:
            self.best = {"dice": result["dice"], "iteration": iteration}
            self.save("best", iteration)
        record["best_dice"] = self.best["dice"]
        self.log(record)
        return record

    def _check_finite(self, iteration: int, loss: torch.Tensor, logs: dict[str, torch.Tensor]) -> None:
        if bool(torch.isfinite(loss)):
            return
        bad = [k for k, v in logs.items() if torch.is_tensor(v) and not bool(torch.isfinite(v).all())]
        term = bad[0] if bad else "loss"
        raise TrainingDiverged(
            f"iteration {iteration}: loss term '{term}' is {float(logs.get(term, loss).detach())}; "
            f"stopped, last good checkpoint kept at {self.ckpt_dir / 'last.pt'}"
        )

    def _check_teacher(self, iteration: int) -> None:
        if self.teacher is None:
            return
        flat = [p for p in self.teacher.parameters()]
        norms = torch._foreach_norm(flat)
        if not bool(torch.isfinite(torch.stack(norms)).all()):
            raise TrainingDiverged(
                f"iteration {iteration}: the teacher's weights are NaN/Inf (teacher diverged); "
                f"stopped, last good checkpoint kept at {self.ckpt_dir / 'last.pt'}"
            )

    def _check_weights(self, iteration: int) -> None:
        """Before a checkpoint: losses since the last log record, student and teacher weights all finite.

        On GPU the loss is checked only every ``log_every`` iterations (no host sync per step),
        so this keeps a diverged state out of ``last.pt``.
        """
        bad = [k for k, v in self.running.items() if not bool(torch.isfinite(v).all())]
        if bad:
            term = next((k for k in bad if k != "loss"), "loss")
            raise TrainingDiverged(
                f"iteration {iteration}: loss term '{term}' became NaN/Inf since the last log record; "
                f"stopped, last good checkpoint kept at {self.ckpt_dir / 'last.pt'}"
            )
        norms = torch._foreach_norm([p.detach() for p in self.student.parameters()])
        if not bool(torch.isfinite(torch.stack(norms)).all()):
            raise TrainingDiverged(
                f"iteration {iteration}: the student's weights are NaN/Inf; "
                f"stopped, last good checkpoint kept at {self.ckpt_dir / 'last.pt'}"
            )
        self._check_teacher(iteration)

    def _too_small_for_batchnorm(self, iteration: int) -> BfasegError:
        """BatchNorm refuses one value per channel in training (torch's ``ONE_VALUE_PER_CHANNEL``): a patch whose
        deepest feature map is one voxel (every side 16: four 2x poolings) in a forward of one image, e.g.
        supervised-only with ``train.batch_labeled: 1``, or a phase of a method that forwards part of the batch.
        Whichever method and phase, it is these keys, named (issue 30, kind 5)."""
        deepest = [p // 16 for p in self.patch_size]
        return BfasegError(
            f"data.patch_size {list(self.patch_size)}: the network's deepest feature map is {deepest} voxels per "
            f"image, and a forward of {self.cfg.method.name}'s training step (iteration {iteration}) held a single "
            f"image there (train.batch_labeled {self.cfg.train.batch_labeled}, "
            f"train.batch_unlabeled {self.cfg.train.batch_unlabeled}); BatchNorm needs more than one value per "
            "channel: choose a patch of at least 32 along one axis or a larger batch")

    def fit(self) -> dict:
        tc = self.cfg.train
        batches = TwoStreamBatches.from_config(
            self.cfg, self.data.labeled, self.data.unlabeled if self.method.uses_unlabeled else [],
            patch_size=self.patch_size, total_iterations=self.total_iterations, rank=self.dist.rank,
            world_size=self.dist.world_size)
        loader = make_loader(batches, self.start_iteration, self.cfg.data.num_workers)
        if self.start_iteration == 0 and self.dist.is_main:
            # a fresh run: a log left by an earlier run that never reached a checkpoint describes nothing kept
            (self.output_dir / "log.jsonl").unlink(missing_ok=True)
        if self.dist.is_main:  # what this folder was made with (run_record): reuse with another config is refused
            write_run_config(self.output_dir, resolved_config(self.cfg))
        self._open_tensorboard()
        if self.dist.is_main and self.start_iteration == 0 and "wrong" in self.precision_reason:
            # auto fell back (or bf16 was forced) because bf16 gradients are wrong here: say so once
            log.warning("precision: %s (train.precision %s: %s)", self.precision, tc.precision, self.precision_reason)
        old_int = signal.signal(signal.SIGINT, self._handle_signal)
        old_term = signal.signal(signal.SIGTERM, self._handle_signal)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=self.total_iterations, initial=self.start_iteration, desc=f"train {self.cfg.method.name}",
                unit="it", dynamic_ncols=True,
            )
        self.student.train()
        iteration = self.start_iteration
        t0 = time.perf_counter()
        running = self.running  # restored on resume, so the first record after it averages the same steps
        try:
            for iteration, batch in enumerate(loader, start=self.start_iteration):
                # every iteration draws its randomness (dropout, noise, boxes) from (seed, iteration, rank)
                torch.manual_seed((tc.seed * 1_000_003 + iteration * 131 + self.dist.rank) % 2**63)
                batch = {k: self.to_device(v) for k, v in batch.items()}
                self.method.on_iteration_start(iteration)
                with self.autocast():
                    try:
                        loss, logs = self.method.training_step(batch, iteration)
                    except ValueError as exc:
                        if ONE_VALUE_PER_CHANNEL not in str(exc):
                            raise
                        raise self._too_small_for_batchnorm(iteration + 1) from None
                loss = loss.float()
                if self.device.type == "cpu" or (iteration + 1) % tc.log_every == 0:
                    self._check_finite(iteration + 1, loss, logs)  # 1-based, as in log.jsonl
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                if self.dist.enabled:  # BatchNorm statistics follow each rank's shard: keep them (and the teacher) identical
                    average_buffers(self.student, self.dist)
                if self.teacher is not None and self.method.ema_active(iteration):
                    ema_update(self.teacher, self.student, ema_decay(iteration, self.method.teacher_decay(tc.ema_decay)))
                if self.dist.enabled and self.teacher is not None and self.teacher_mode == "train":
                    # a train-mode teacher's forward moved its running statistics toward this rank's shard
                    average_buffers(self.teacher, self.dist)
                for k, v in {"loss": loss, **logs}.items():  # accumulate on device; no sync per step
                    running[k] = running.get(k, 0) + v.detach().float()
                done = iteration + 1
                if done % tc.log_every == 0 or done == self.total_iterations:
                    n = (done - 1) % tc.log_every + 1
                    record = {"iteration": done, **{f"loss_{k}" if k != "loss" else k: float(v) / n for k, v in running.items()}}
                    record["lr"] = self.optimizer.param_groups[0]["lr"]
                    record["time"] = round(time.perf_counter() - t0, 3)
                    running.clear()
                    self.log(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.4f}", best=f"{max(self.best['dice'], 0):.3f}")
                    self._check_teacher(done)
                if done % tc.val_every == 0 or done == self.total_iterations:
                    if self.dist.is_main:
                        rec = self.run_validation(done)
                        if bar is not None:
                            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", val=f"{rec['val_dice']:.3f}")
                    barrier(self.dist)
                if done % tc.checkpoint_every == 0 or done == self.total_iterations:
                    self._save_periodic(done)
                if bar is not None:
                    bar.update(1)
                if self._stop_signal is not None:
                    self._save_periodic(done)
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            raise Interrupted(
                f"interrupted at iteration {iteration + 1}; checkpoint kept at {self.ckpt_dir / 'last.pt'} "
                f"(continue with --resume)"
            ) from None
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            if bar is not None:
                bar.close()
            if self.tb is not None:
                self.tb.close()
        summary = {
            "iterations": self.total_iterations,
            "best_dice": self.best["dice"],
            "best_iteration": self.best["iteration"],
            "val_split": self.data.val_split,
            "val_ids": self.data.val_ids,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            **self._teacher_mode_record(),
            "last_checkpoint": str(self.ckpt_dir / "last.pt"),
            "best_checkpoint": str(self.ckpt_dir / "best.pt") if self.best["iteration"] is not None else None,
        }
        if self.dist.is_main:
            atomic_write_bytes(self.output_dir / "train_summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
        return summary
