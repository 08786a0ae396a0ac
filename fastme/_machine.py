"""What the machine is, in the words every record of a measurement uses (docs/results.md, the
benches): the processor's model name and its widest vector / matrix units."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_description() -> str:
    """The processor's model name and its widest vector / matrix units (Linux; else the
    platform's words)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
                break
    except OSError:
        pass
    units = [
        label
        for flag, label in (("amx_bf16", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
        if flag in flags
    ]
    return f"{name}{' (' + ', '.join(units[:2]) + ')' if units else ''}"
