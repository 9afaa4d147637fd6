"""The Triton kernels compile for sm_90 (Hopper) on the CPU, for mods the interpreter
tests cannot vouch for: the interpreter never compiles, and a GPU-only compile error
(a constexpr rebound inside tl.static_range) once slipped through it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_compile_probe.py")


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, PROBE], capture_output=True, text=True, timeout=900, env=env)
    lines = [line for line in p.stdout.splitlines() if ": " in line]
    assert p.returncode == 0 and len(lines) == 4, p.stdout[-3000:] + p.stderr[-3000:]
    failed = [line for line in lines if not line.endswith(": ok")]
    assert not failed, "\n".join(failed)
