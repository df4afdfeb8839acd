"""Training-step benchmark: a reference-style fp32 loop vs bfaseg's methods, on synthetic data.

    python benchmarks/train_step.py                 # LA 3-D + ACDC 2-D settings, table on stdout
    python benchmarks/train_step.py --json          # exactly one JSON object on stdout
    python benchmarks/train_step.py --quick         # smaller patches, fewer steps: a fast check

Configurations, each in a FRESH subprocess (so peak memory, VmHWM from /proc/self/status,
is per configuration and nothing is shared between them):

* ``reference_fp32``: what the reference code (UA-MT/BCP for LA, SSL4MIS for ACDC) does per
  iteration, written as a plain PyTorch loop: crop/rot/flip a batch with numpy, V-Net (or U-Net)
  forward in fp32 and contiguous format, (CE + Dice)/2, backward, SGD step, poly learning rate.
  The batch is the protocol's whole batch (LA 2+2 = 4 volumes, ACDC 12+12 = 24 slices).
* ``supervised``, ``mean_teacher``, ``bcp``, ``bfa``: bfaseg's Trainer and methods
  (``Trainer.fit`` itself: batch drawing, autocast, channels_last, one student forward, losses,
  backward, SGD, EMA teacher, ...) with ``train.precision`` = ``--precision`` (``auto``: bf16 where
  the hardware runs bf16 natively, fp32 otherwise) and the LA protocol batch (2 labeled + 2
  unlabeled; ``supervised`` gets the same 4 volumes, all labeled). The step is measured after the
  method's pre-training phase (iteration 600 of 1000), i.e. the full BCP/BFA step with teacher
  pseudo-labels, the connected-component filter, boundaries and alignment.
* matmul peaks: fp32 and bf16 ``n x n`` matmul (n = 4096; bf16 on a CPU without native bf16 is
  emulated at ~1 GFLOP/s, so there it is measured at n = 1024 unless ``--matmul-size`` is given).

Per configuration: the step time (median over ``--steps`` iterations after ``--warmup``), the
student forward+backward time inside the step (from the student's forward to the optimizer step,
minus the teacher's forwards in between; includes the losses), the FLOPs of one whole step and of
the student's forward+backward (``torch.utils.flop_counter.FlopCounterMode`` on the first warm-up
iteration), the achieved FLOP/s, and the peak resident memory (whole process, and during the steps).

The synthetic data: phantoms (``bfaseg.data.synthetic``) slightly larger than the patch, 2 classes
(LA) / 4 classes (ACDC), generated once and shared by every configuration. The networks are
untrained, so pseudo-labels are those of a random teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ["reference_fp32", "supervised", "mean_teacher", "bcp", "bfa"]
SETTINGS = {
    # name: model, classes, patch, volume (phantom size, >= patch), labeled / unlabeled batch, cases (labeled, unlabeled)
    "la": {"model": "vnet", "classes": 2, "patch": [112, 112, 80], "volume": [120, 120, 88], "bl": 2, "bu": 2,
           "cases": [2, 2], "label": "LA: V-Net 3-D"},
    "acdc": {"model": "unet2d", "classes": 4, "patch": [256, 256], "volume": [256, 256], "bl": 12, "bu": 12,
             "cases": [6, 6], "label": "ACDC: U-Net 2-D"},
}
QUICK = {
    "la": {"patch": [48, 48, 32], "volume": [56, 56, 40]},
    "acdc": {"patch": [128, 128], "volume": [128, 128], "bl": 4, "bu": 4},
}
START_ITERATION, ITERATIONS = 600, 1000  # after every method's pre-training (BCP 20%, BFA 30%)
GOALS = {"bfa_vs_reference": 0.5, "student_vs_bf16_peak": 0.25, "memory_vs_reference": 1.0}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- child side
def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024  # kB -> bytes
    return out


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the step peak excludes set-up."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Stop(Exception):
    pass


class StepRecorder:
    """Per-iteration timestamps (and FLOP counts on the counted iteration) from hooks."""

    def __init__(self, warmup: int, steps: int, count_flops: bool = True):
        from torch.utils.flop_counter import FlopCounterMode

        self.warmup, self.steps = warmup, steps
        self.iters: list[dict] = []
        self.fc = FlopCounterMode(display=False) if count_flops else None
        self.counting = False
        self.total_flops = None

    def flops(self) -> int:
        return self.fc.get_total_flops() if self.counting else 0

    def start(self, k: int) -> None:
        t = time.perf_counter()
        if self.iters:
            self.iters[-1]["end"] = t
        if self.counting:
            self.fc.__exit__(None, None, None)
            self.counting = False
            self.total_flops = self.fc.get_total_flops()
        if k >= self.warmup + self.steps:
            raise _Stop
        self.iters.append({"k": k, "start": t, "student": None, "teacher": [], "opt": None})
        if k == 0 and self.fc is not None:
            self.fc.__enter__()
            self.counting = True

    # hooks
    def student_pre(self, *_):
        if self.iters and self.iters[-1]["student"] is None:
            self.iters[-1]["student"] = (time.perf_counter(), self.flops())

    def teacher_pre(self, *_):
        self._teacher = (time.perf_counter(), self.flops())

    def teacher_post(self, *_):
        t0, f0 = self._teacher
        self.iters[-1]["teacher"].append((t0, time.perf_counter(), f0, self.flops()))

    def opt_pre(self, *_):
        if self.iters and self.iters[-1]["opt"] is None:
            self.iters[-1]["opt"] = (time.perf_counter(), self.flops())

    def summary(self) -> dict:
        def student_part(it, idx):  # student fwd+bwd (+ losses) = its forward .. optimizer step, minus teacher calls
            (s, sf), (o, of) = it["student"], it["opt"]
            inside = [x for x in it["teacher"] if x[0] >= s and x[1] <= o]
            return (o - s - sum(x[1] - x[0] for x in inside)) if idx == 0 else (of - sf - sum(x[3] - x[2] for x in inside))

        timed = [it for it in self.iters if it["k"] >= self.warmup and "end" in it]
        out = {
            "step_times": [it["end"] - it["start"] for it in timed],
            "student_times": [student_part(it, 0) for it in timed],
            "teacher_times": [sum(x[1] - x[0] for x in it["teacher"]) for it in timed],
        }
        out["step_s"] = statistics.median(out["step_times"])
        out["student_s"] = statistics.median(out["student_times"])
        out["teacher_s"] = statistics.median(out["teacher_times"])
        if self.total_flops is not None:
            first = self.iters[0]
            out["step_flops"] = self.total_flops
            out["student_flops"] = student_part(first, 1)
            out["teacher_flops"] = sum(x[3] - x[2] for x in first["teacher"])
        return out


def _load_cases(path: str, n_labeled: int):
    import numpy as np

    from bfaseg.data.cases import Case

    arrays = np.load(path)
    images, labels = arrays["images"], arrays["labels"]
    labeled = [Case(f"l{i}", images[i], labels[i]) for i in range(n_labeled)]
    unlabeled = [Case(f"u{i}", images[i], None) for i in range(n_labeled, len(images))]
    return labeled, unlabeled, labels


def child_bfaseg(spec: dict) -> dict:
    import torch

    from bfaseg.config import validate_config
    from bfaseg.data.build import DataBundle
    from bfaseg.training.trainer import Trainer

    from bfaseg.experiments import VARIANTS

    s, method = spec["setting"], spec["method"]
    method_cfg = dict(VARIANTS[method]["method"]) if method in VARIANTS else {"name": method}  # a variant's method
    torch.set_num_threads(spec["threads"])
    labeled, unlabeled, _ = _load_cases(spec["data"], s["cases"][0])
    bl, bu = (s["bl"] + s["bu"], 0) if method_cfg["name"] == "supervised" else (s["bl"], s["bu"])
    never = 10**9
    raw = {
        "data": {"dataset": "synthetic", "synthetic_ndim": len(s["patch"]), "patch_size": s["patch"],
                 "synthetic_size": s["volume"], "synthetic_classes": s["classes"]},
        "model": {"name": s["model"], "num_classes": s["classes"]},
        "train": {"iterations": ITERATIONS, "batch_labeled": bl, "batch_unlabeled": bu,
                  "precision": spec["precision"], "channels_last": spec["channels_last"], "compile": spec["compile"],
                  "device": "cpu", "threads": spec["threads"], "val_every": never, "log_every": never,
                  "checkpoint_every": never, "keep_checkpoints": 0},
        "method": method_cfg,
    }
    data = DataBundle(labeled, unlabeled, [], len(s["patch"]), "benchmark phantoms")
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(validate_config(raw), Path(out) / "run", data=data, progress=False)
        setup = _proc_status()
        reset = _reset_peak()
        rec = StepRecorder(spec["warmup"], spec["steps"], count_flops=not spec["compile"])
        original = trainer.method.on_iteration_start

        def on_iteration_start(iteration):
            rec.start(iteration - START_ITERATION)
            original(iteration)

        trainer.method.on_iteration_start = on_iteration_start
        trainer.forward_model.register_forward_pre_hook(rec.student_pre)
        if trainer.teacher is not None:
            trainer.teacher.register_forward_pre_hook(rec.teacher_pre)
            trainer.teacher.register_forward_hook(rec.teacher_post)
        trainer.optimizer.register_step_pre_hook(rec.opt_pre)
        trainer.start_iteration = START_ITERATION
        with _maybe_profile(spec, rec):
            try:
                trainer.fit()
            except _Stop:
                pass
        steps = _proc_status()
    result = rec.summary()
    result.update(_memory(setup, steps, reset))
    return result


class _maybe_profile:
    """``--profile``: torch.profiler over the timed steps, top ops (self CPU time) printed to stderr."""

    def __init__(self, spec: dict, rec: StepRecorder):
        self.on = bool(spec.get("profile"))
        self.rec = rec

    def __enter__(self):
        if self.on:
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=bool(os.environ.get("BENCH_SHAPES")))
            start = self.rec.start

            def start_and_profile(k):
                if k == self.rec.warmup:
                    self.prof.__enter__()
                start(k)

            self.rec.start = start_and_profile
        return self

    def __exit__(self, *exc):
        if self.on:
            self.prof.__exit__(None, None, None)
            by_shape = bool(os.environ.get("BENCH_SHAPES"))
            table = self.prof.key_averages(group_by_input_shape=by_shape).table(
                sort_by="self_cpu_time_total", row_limit=40 if by_shape else 30, max_name_column_width=50
            )
            print(table, file=sys.stderr)
        return False


def _memory(setup: dict, steps: dict, reset: bool) -> dict:
    mb = 1 / 2**20
    return {
        "peak_rss_mb": max(setup["VmHWM"], steps["VmHWM"]) * mb,  # whole process life
        "setup_rss_mb": setup["VmRSS"] * mb,
        "step_peak_rss_mb": steps["VmHWM"] * mb if reset else None,  # peak during the steps (VmHWM reset)
        "step_working_set_mb": (steps["VmHWM"] - setup["VmRSS"]) * mb if reset else None,
    }


def child_reference(spec: dict) -> dict:
    """The reference training loop (UA-MT train_LA.py / SSL4MIS train_fully_supervised_2D.py), plain PyTorch."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    from bfaseg.models import UNet2D, VNet

    s = spec["setting"]
    torch.set_num_threads(spec["threads"])
    _, _, labels_all = _load_cases(spec["data"], s["cases"][0])
    images_all = np.load(spec["data"])["images"]
    torch.manual_seed(1337)
    model = (VNet if s["model"] == "vnet" else UNet2D)(1, s["classes"], 16, True)  # fp32, contiguous
    model.train()
    base_lr = 0.01
    opt = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    batch_size = s["bl"] + s["bu"]
    patch = s["patch"]

    def sample():
        i = int(rng.integers(len(images_all)))
        image, label = images_all[i], labels_all[i]
        if len(patch) == 3:  # RandomRotFlip + RandomCrop
            k, axis = int(rng.integers(4)), int(rng.integers(2))
            image = np.flip(np.rot90(image, k), axis=axis)
            label = np.flip(np.rot90(label, k), axis=axis)
            st = [int(rng.integers(0, a - p + 1)) for a, p in zip(image.shape, patch)]
            sl = tuple(slice(a, a + p) for a, p in zip(st, patch))
            return image[sl].copy(), label[sl].copy()
        if rng.random() > 0.5:  # SSL4MIS RandomGenerator: rot/flip or rotate, then zoom to the output size
            k, axis = int(rng.integers(4)), int(rng.integers(2))
            image, label = np.flip(np.rot90(image, k), axis=axis), np.flip(np.rot90(label, k), axis=axis)
        else:
            angle = float(rng.uniform(-20, 20))
            image = ndimage.rotate(image, angle, order=0, reshape=False)
            label = ndimage.rotate(label, angle, order=0, reshape=False)
        return image.copy(), label.copy()

    def dice_loss(probs, target):  # UA-MT: class 1 of 2; SSL4MIS DiceLoss: mean over classes
        classes = range(1, 2) if s["classes"] == 2 else range(s["classes"])
        total = 0
        for c in classes:
            score, t = probs[:, c], (target == c).float()
            inter = (score * t).sum()
            total = total + 1 - (2 * inter + 1e-5) / ((score * score).sum() + (t * t).sum() + 1e-5)
        return total / len(classes)

    rec = StepRecorder(spec["warmup"], spec["steps"])
    setup = _proc_status()
    reset = _reset_peak()
    with _maybe_profile(spec, rec):
        _reference_loop(rec, model, opt, sample, dice_loss, batch_size, base_lr)
    result = rec.summary()
    result.update(_memory(setup, _proc_status(), reset))
    return result


def _reference_loop(rec, model, opt, sample, dice_loss, batch_size, base_lr):
    import numpy as np
    import torch
    import torch.nn.functional as F

    try:
        for it in range(START_ITERATION, ITERATIONS):
            rec.start(it - START_ITERATION)
            pairs = [sample() for _ in range(batch_size)]
            x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None].astype(np.float32))
            y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
            rec.student_pre()
            out = model(x)
            loss = 0.5 * (F.cross_entropy(out, y) + dice_loss(torch.softmax(out, 1), y))
            opt.zero_grad()
            loss.backward()
            rec.opt_pre()
            opt.step()
            for group in opt.param_groups:
                group["lr"] = base_lr * (1 - it / ITERATIONS) ** 0.9
    except _Stop:
        pass


def child_matmul(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n = spec["sizes"][name]
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)  # warm-up
        reps = spec["reps"][name]
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
        t = statistics.median(times)
        out[name] = {"n": n, "seconds": t, "flops_per_s": 2 * n**3 / t}
    return out


def run_child_main(spec: dict) -> None:
    fn = {"bfaseg": child_bfaseg, "reference": child_reference, "matmul": child_matmul}[spec["kind"]]
    result = fn(spec)
    sys.stdout.write("\n" + json.dumps(result) + "\n")


# --------------------------------------------------------------------------------- parent side
def _child(spec: dict, timeout: float) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {spec.get('method', spec['kind'])} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_data(setting: dict, path: Path) -> None:
    import numpy as np

    from bfaseg.data.synthetic import make_synthetic_cases

    cases = make_synthetic_cases(sum(setting["cases"]), tuple(setting["volume"]), setting["classes"], seed=3)
    np.savez(path, images=np.stack([c.image for c in cases]), labels=np.stack([c.label for c in cases]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout (nothing else)")
    p.add_argument("--quick", action="store_true", help="small patches (LA 48x48x32, ACDC 128x128 4+4), 2 steps")
    p.add_argument("--settings", default="la,acdc", help="comma list of: la, acdc (default both)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma list of {', '.join(METHODS)} or of `bfaseg experiment` variants (e.g. bfa_align_prototype)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="bfaseg steps' train.precision; auto = bf16 where native (CUDA-less: AVX512-BF16/AMX), else fp32")
    p.add_argument("--warmup", type=int, help="warm-up iterations (the first is FLOP-counted); default 1")
    p.add_argument("--steps", type=int, help="timed iterations (median reported); default 3 (quick: 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    p.add_argument("--matmul-size", type=int, help="n of the n x n matmul peaks (default 4096; emulated bf16: 1024)")
    p.add_argument("--compile", action="store_true", help="also time the bfaseg steps with train.compile: true")
    p.add_argument("--no-channels-last", action="store_true", help="bfaseg steps with train.channels_last: false")
    p.add_argument("--profile", action="store_true", help="torch.profiler top ops of the timed steps (stderr)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds over all configurations, interleaved (order alternates); medians over all rounds")
    p.add_argument("--timeout", type=float, default=7200, help="seconds per configuration and round")
    p.add_argument("--save", help="also write the JSON results to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_precision(choice: str) -> tuple[str, bool]:
    from bfaseg.precision import native_bf16_on_cpu

    native = native_bf16_on_cpu()
    if choice == "auto":
        return ("bf16" if native else "fp32"), native
    return choice, native


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        run_child_main(json.loads(args.child))
        return 0
    import torch

    precision, native = resolve_precision(args.precision)
    warmup = 1 if args.warmup is None else args.warmup
    steps = args.steps or (2 if args.quick else 3)
    settings = [x for x in args.settings.split(",") if x]
    methods = [m for m in args.methods.split(",") if m]
    from bfaseg.experiments import VARIANTS

    unknown = [x for x in settings if x not in SETTINGS] + [m for m in methods if m not in METHODS and m not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown setting/method: {', '.join(unknown)}")
    info = {
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native, "precision": precision, "threads": args.threads, "cores": os.cpu_count(),
        "machine": platform.machine(), "quick": args.quick, "warmup": warmup, "steps": steps, "repeat": args.repeat,
        "load_average_start": os.getloadavg()[0],
        "command": " ".join(["python", "benchmarks/train_step.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    results: dict = {"setting": info, "details": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bfaseg_bench_"))
    try:
        jobs = []
        for name in settings:
            setting = dict(SETTINGS[name], **(QUICK[name] if args.quick else {}))
            data = tmp / f"{name}.npz"
            log(f"[{name}] generating {sum(setting['cases'])} phantoms of {setting['volume']}")
            make_data(setting, data)
            results["details"][name] = {"config": setting}
            variants = [(m, False) for m in methods]
            if args.compile:
                variants += [(m, True) for m in methods if m != "reference_fp32"]
            for method, compiled in variants:
                spec = {"kind": "reference" if method == "reference_fp32" else "bfaseg", "method": method,
                        "setting": setting, "data": str(data), "threads": args.threads, "warmup": warmup,
                        "steps": steps, "precision": "fp32" if method == "reference_fp32" else precision,
                        "compile": compiled, "channels_last": not args.no_channels_last, "profile": args.profile}
                if compiled:
                    spec["warmup"] = max(warmup, 2)  # compilation happens in the first iterations
                jobs.append((name, method + ("_compiled" if compiled else ""), spec))
        runs: dict = {}
        for rnd in range(args.repeat):
            # interleaved rounds, alternating order: slow drifts of a shared machine hit every configuration alike
            for name, key, spec in (jobs if rnd % 2 == 0 else jobs[::-1]):
                t0 = time.perf_counter()
                log(f"[{name}] round {rnd + 1}/{args.repeat} {key}: running ({spec['precision']}) ...")
                res = _child(spec, args.timeout)
                runs.setdefault((name, key), []).append(res)
                log(f"[{name}] round {rnd + 1}/{args.repeat} {key}: step {res['step_s']:.3f} s "
                    f"(median of {len(res['step_times'])}), peak RSS {res['peak_rss_mb']:.0f} MB, "
                    f"wall {time.perf_counter() - t0:.0f} s")
        for (name, key), rounds in runs.items():
            spec = next(j[2] for j in jobs if j[0] == name and j[1] == key)
            results["details"][name][key] = merge_rounds(rounds, spec["precision"])
        mm = _matmul_spec(args, native)
        log(f"matmul peaks: fp32 n={mm['sizes']['fp32']}, bf16 n={mm['sizes']['bf16']} ...")
        results["matmul"] = _child(mm, args.timeout)
    finally:
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()
    info["load_average_end"] = os.getloadavg()[0]
    summarize(results, settings)
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print_table(results, settings)
    return 0


def merge_rounds(rounds: list[dict], precision: str) -> dict:
    """Medians over every timed step of every round; FLOPs from the first round; memory: median of the rounds."""
    out = dict(rounds[0])
    for key in ("step_times", "student_times", "teacher_times"):
        out[key] = [t for r in rounds for t in r[key]]
    out["step_s"] = statistics.median(out["step_times"])
    out["student_s"] = statistics.median(out["student_times"])
    out["teacher_s"] = statistics.median(out["teacher_times"])
    out["step_min_s"], out["step_max_s"] = min(out["step_times"]), max(out["step_times"])
    for key in ("peak_rss_mb", "setup_rss_mb", "step_peak_rss_mb", "step_working_set_mb"):
        values = [r[key] for r in rounds if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    out["rounds"] = len(rounds)
    out["precision"] = precision
    return out


def _matmul_spec(args, native: bool) -> dict:
    n32 = args.matmul_size or 4096
    n16 = args.matmul_size or (4096 if native else 1024)
    return {"kind": "matmul", "threads": args.threads, "sizes": {"fp32": n32, "bf16": n16},
            "reps": {"fp32": 5, "bf16": 5 if native or n16 <= 1024 else 1}}


def summarize(results: dict, settings: list[str]) -> None:
    """Top-level step times (LA), ratios vs the reference and vs the matmul peaks, goals."""
    peak32 = results["matmul"]["fp32"]["flops_per_s"]
    peak16 = results["matmul"]["bf16"]["flops_per_s"]
    results["matmul_fp32_flops_per_s"] = peak32
    results["matmul_bf16_flops_per_s"] = peak16
    ratios: dict = {}
    for name in settings:
        d = results["details"][name]
        ref = d.get("reference_fp32")
        r = ratios[name] = {}
        for key, res in d.items():
            if key == "config":
                continue
            if "student_flops" in res:
                res["student_flops_per_s"] = res["student_flops"] / res["student_s"]
                res["step_flops_per_s"] = res["step_flops"] / res["step_s"]
                peak = peak16 if res["precision"] == "bf16" else peak32
                res["student_vs_own_peak"] = res["student_flops_per_s"] / peak
                res["student_vs_bf16_peak"] = res["student_flops_per_s"] / peak16
            if ref is not None:
                res["step_vs_reference"] = res["step_s"] / ref["step_s"]
                res["memory_vs_reference"] = res["peak_rss_mb"] / ref["peak_rss_mb"]
            r[key] = {k: res.get(k) for k in ("step_vs_reference", "memory_vs_reference", "student_vs_bf16_peak",
                                               "student_vs_own_peak")}
    results["ratios"] = ratios
    main_setting = "la" if "la" in settings else settings[0]
    for key, res in results["details"][main_setting].items():
        if key != "config":
            results[key] = res["step_s"]
    if "acdc" in settings and main_setting != "acdc":
        results["acdc"] = {k: v["step_s"] for k, v in results["details"]["acdc"].items() if k != "config"}
    goals = {}
    for name in settings:
        d = results["details"][name]
        if "bfa" in d and "reference_fp32" in d:
            bfa = d["bfa"]
            goals[name] = {
                "bfa_vs_reference": {"value": bfa["step_vs_reference"], "goal": f"<= {GOALS['bfa_vs_reference']}",
                                     "met": bfa["step_vs_reference"] <= GOALS["bfa_vs_reference"]},
                "student_vs_bf16_peak": {"value": bfa.get("student_vs_bf16_peak"),
                                         "goal": f">= {GOALS['student_vs_bf16_peak']}",
                                         "met": (bfa.get("student_vs_bf16_peak") or 0) >= GOALS["student_vs_bf16_peak"]},
                "memory_vs_reference": {"value": bfa["memory_vs_reference"], "goal": "<= 1.0",
                                        "met": bfa["memory_vs_reference"] <= GOALS["memory_vs_reference"]},
            }
    results["goals"] = goals


def print_table(results: dict, settings: list[str]) -> None:
    info = results["setting"]
    gf = 1e-9
    print(f"torch {info['torch']}, CPU {info['cpu_capability']} ({info['cores']} cores, {info['threads']} threads), "
          f"native bf16: {'yes' if info['native_bf16'] else 'no'}; bfaseg steps in {info['precision']}, channels_last")
    print(f"command: {info['command']}")
    print(f"load average (1 min) at start / end: {info['load_average_start']:.1f} / {info['load_average_end']:.1f}")
    mm = results["matmul"]
    print(f"matmul peak: fp32 {mm['fp32']['flops_per_s'] * gf:.1f} GFLOP/s (n={mm['fp32']['n']}), "
          f"bf16 {mm['bf16']['flops_per_s'] * gf:.1f} GFLOP/s (n={mm['bf16']['n']})")
    for name in settings:
        d = results["details"][name]
        c = d["config"]
        print()
        print(f"{c['label']}, patch {'x'.join(map(str, c['patch']))}, batch {c['bl']}+{c['bu']} "
              f"(median of {info['steps']} steps after {info['warmup']} warm-up, x {info['repeat']} interleaved rounds)")
        head = (f"{'config':<24}{'prec':>5}{'step s':>9}{'min-max':>13}{'vs ref':>8}{'student s':>10}{'teacher s':>10}{'step GF':>9}{'stud GF':>9}"
                f"{'stud GF/s':>10}{'%peak':>7}{'%bf16pk':>8}{'peak MB':>9}{'step MB':>9}{'mem/ref':>8}")
        print(head)
        for key, r in d.items():
            if key == "config":
                continue
            fmt = lambda v, f: (format(v, f) if v is not None else "-")  # noqa: E731
            spread = f"{r['step_min_s']:.2f}-{r['step_max_s']:.2f}"
            print(f"{key:<24}{r['precision']:>5}{r['step_s']:>9.2f}{spread:>13}{fmt(r.get('step_vs_reference'), '.2f'):>8}"
                  f"{r['student_s']:>10.2f}{r['teacher_s']:>10.2f}{fmt(r.get('step_flops', 0) * gf or None, '.0f'):>9}"
                  f"{fmt(r.get('student_flops', 0) * gf or None, '.0f'):>9}"
                  f"{fmt((r.get('student_flops_per_s') or 0) * gf or None, '.1f'):>10}"
                  f"{fmt(100 * r['student_vs_own_peak'] if 'student_vs_own_peak' in r else None, '.0f'):>7}"
                  f"{fmt(100 * r['student_vs_bf16_peak'] if 'student_vs_bf16_peak' in r else None, '.0f'):>8}"
                  f"{r['peak_rss_mb']:>9.0f}{fmt(r.get('step_working_set_mb'), '.0f'):>9}"
                  f"{fmt(r.get('memory_vs_reference'), '.2f'):>8}")
    for name, goals in results["goals"].items():
        print()
        print(f"goals ({name}):")
        for key, g in goals.items():
            value = g["value"]
            shown = f"{value:.2f}" if value is not None else "-"
            print(f"  {key:<22} {shown:>6}  goal {g['goal']:<7} {'met' if g['met'] else 'MISSED'}")


if __name__ == "__main__":
    raise SystemExit(main())
