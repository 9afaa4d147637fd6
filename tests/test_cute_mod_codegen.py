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
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    """The probe runs in a scratch directory; it imports this checkout even when not installed."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


@pytest.mark.parametrize("arch", ["sm_90a", "sm_100a"])
def test_generated_cute_mods_compile(arch, tmp_path):
    env = _env(FLEX_FA4_PROBE_RUN="0")
    # --keep-cubin writes the cubins into the working directory: keep them out of the repo
    done = subprocess.run([sys.executable, PROBE, arch], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [ln for ln in done.stdout.splitlines() if ":" in ln]
    assert len(lines) == 8 and done.stdout.strip().endswith("done"), done.stdout
    assert all("cubin" in ln and "NO CUBIN" not in ln for ln in lines), done.stdout


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] not in (9, 10),
                    reason="needs a Hopper or Blackwell GPU")
def test_generated_cute_mods_run_on_gpu(tmp_path):
    arch = "sm_90a" if torch.cuda.get_device_capability()[0] == 9 else "sm_100a"
    done = subprocess.run([sys.executable, PROBE, arch], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [ln for ln in done.stdout.splitlines() if ":" in ln]
    assert len(lines) == 8 and all(ln.endswith("ran") for ln in lines), done.stdout
