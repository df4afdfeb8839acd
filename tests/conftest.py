import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

# Tests that do not test precision train in TEST_PRECISION: fp32 by default, so results do not depend
# on the CPU (AVX2-only, AVX512-BF16, AMX); `BFASEG_TEST_PRECISION=auto` (or bf16) runs them in bf16
# wherever the precision policy allows it (docs/BENCHMARKS.md, "bf16 on the CPU").
TEST_PRECISION = os.environ.get("BFASEG_TEST_PRECISION", "fp32")


def real_data_root() -> Path | None:
    root = os.environ.get("BFASEG_DATA")
    return Path(root) if root and Path(root).is_dir() else None


@pytest.fixture
def real_data():
    root = real_data_root()
    if root is None:
        pytest.skip("real data not available: set BFASEG_DATA to the folder holding la/ and acdc/ (e.g. ../shared/data)")
    return root


def tiny_config(method: str = "supervised", **train) -> dict:
    """A few-iteration synthetic 2-D config for fast tests."""
    cfg = {
        "data": {"dataset": "synthetic", "synthetic_ndim": 2, "synthetic_size": [32, 32], "patch_size": [32, 32],
                 "synthetic_cases": 10, "synthetic_val_cases": 2, "labeled_fraction": 0.2},
        "model": {"name": "unet2d", "num_classes": 3},
        "train": {"iterations": 6, "batch_labeled": 2, "batch_unlabeled": 2, "val_every": 3, "log_every": 3,
                  "checkpoint_every": 3, "threads": 1, "precision": TEST_PRECISION},
        "method": {"name": method},
    }
    cfg["train"].update(train)
    return cfg


def signal_when_ready(argv: list[str], ready, sig: int, start_timeout: float = 180, stop_timeout: float = 90):
    """Start ``argv``, send ``sig`` once ``ready()`` is true, wait for the exit: (return code, stderr)."""
    import subprocess
    import time

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + start_timeout
        while not ready():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=stop_timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode()


def _warm_up_for_mutation_testing() -> None:
    """Pay the one-off costs of a first Trainer (lazy imports such as TensorBoard, kernel set-up).

    mutmut forks one child per mutant from a process that has collected the tests; without this,
    every child paid ~3-4 s of set-up before its first test (benchmarks/mutation.sh sets the variable).
    """
    import tempfile

    from bfaseg.config import validate_config
    from bfaseg.models.vnet import VNet
    from bfaseg.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        raw = tiny_config("bfa", iterations=2, precision="fp32")
        raw["model"].update(base_channels=4)
        Trainer(validate_config(raw), Path(tmp) / "warm_up", progress=False).fit()
    vnet = VNet(1, 2, 4, False)
    vnet(torch.rand(2, 1, 16, 16, 16)).sum().backward()


# Once per process tree: pytest imports conftest again in every run of pytest.main (each mutant's
# child), and a warm-up there would pay the cost again and run the mutant outside any test.
if os.environ.get("BFASEG_MUTATION_WARMUP") == "1":
    os.environ["BFASEG_MUTATION_WARMUP"] = "done"
    _warm_up_for_mutation_testing()
