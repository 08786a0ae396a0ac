import os
import subprocess
import sys

import pytest
import torch

# Without a GPU, Triton kernels run through Triton's CPU interpreter. The variable must be set
# before Triton compiles anything, so it is set here, before any test module imports fastme.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(params=["atomic", "deterministic"])
def grad_mode(request, monkeypatch):
    """Both table-gradient paths (16-bit tables take the fixed-order path in both)."""
    monkeypatch.setenv("FASTME_DETERMINISTIC", "1" if request.param == "deterministic" else "0")
    return request.param


@pytest.fixture
def matmul_precision():
    """Sets torch's float32 matmul precision for one test (restored afterwards)."""
    previous = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(previous)


@pytest.fixture
def float64_default():
    """float64 as the default dtype for one test (restored afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def run_lock_holder():
    """hold(path) starts a second process that holds the run lock of directory `path` and returns
    it once the lock is taken; every such process is killed at teardown."""
    holders = []

    def hold(path):
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time; from fastme.train.trainer import lock_run_dir\n"
                f"with lock_run_dir({str(path)!r}):\n"
                "    print('locked', flush=True); time.sleep(60)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        holders.append(holder)
        assert holder.stdout.readline().strip() == "locked"
        return holder

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()


@pytest.fixture
def interrupt_epoch(monkeypatch):
    """interrupt_epoch(n): the n-th training epoch the trainer starts from now on raises
    KeyboardInterrupt, as Ctrl-C would; the epochs after it run as usual."""
    import fastme.train.trainer as trainer

    def arm(n):
        real, calls = trainer._train_one_epoch, []

        def maybe_stop(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(trainer, "_train_one_epoch", maybe_stop)

    return arm
