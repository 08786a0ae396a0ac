"""Every Triton kernel, with every autotune configuration its launcher keeps, compiles for sm_90
(H100/H200) and sm_80 (A100) with the installed Triton's own compiler, at Criteo shapes and a
wide one, within the shared-memory limit of a block (tools/triton_aot.py). Runs on a CPU:
nothing is launched. The table of registers, spills and shared memory is printed (pytest -rP)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

AOT = Path(__file__).resolve().parents[1] / "tools" / "triton_aot.py"


def test_every_kernel_compiles_for_sm90_and_sm80_within_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # One process per target, side by side (each compile is single-threaded).
    runs = {
        arch: subprocess.Popen(
            [sys.executable, str(AOT), "--arch", arch],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for arch in ("90", "80")
    }
    failures = []
    for arch, run in runs.items():
        out, _ = run.communicate(timeout=1500)
        print(out)
        if run.returncode != 0:
            bad = [
                line
                for line in out.splitlines()
                if line.startswith("|") and not line.endswith("| ok |") and "sm_" in line
            ]
            failures.append(
                f"sm_{arch}: rc={run.returncode}\n" + "\n".join(bad or out.splitlines()[-20:])
            )
    assert not failures, "\n".join(failures)
