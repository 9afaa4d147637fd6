"""The CuTeDSL emitter's functions compile for sm_90a and sm_100a inside a small
test kernel, with no GPU (CUTE_DSL_ARCH); on a Hopper/Blackwell GPU the same
script runs them and compares with the IR's torch evaluator."""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("cutlass")

PROBE = os.path.join(os.path.dirname(__file__), "cute_mod_probe.py")


@pytest.mark.parametrize("arch", ["sm_90a", "sm_100a"])
def test_generated_cute_mods_compile(arch):
    env = dict(os.environ, FLEX_FA4_PROBE_RUN="0")
    done = subprocess.run([sys.executable, PROBE, arch], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [ln for ln in done.stdout.splitlines() if ":" in ln]
    assert len(lines) == 8 and done.stdout.strip().endswith("done"), done.stdout
    assert all("cubin" in ln and "NO CUBIN" not in ln for ln in lines), done.stdout


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] not in (9, 10),
                    reason="needs a Hopper or Blackwell GPU")
def test_generated_cute_mods_run_on_gpu():
    arch = "sm_90a" if torch.cuda.get_device_capability()[0] == 9 else "sm_100a"
    done = subprocess.run([sys.executable, PROBE, arch], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [ln for ln in done.stdout.splitlines() if ":" in ln]
    assert len(lines) == 8 and all(ln.endswith("ran") for ln in lines), done.stdout
