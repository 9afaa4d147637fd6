import os
import random

import pytest
import torch

# With no GPU, Triton kernels run in the interpreter (must be set before triton is imported).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# generated Triton code goes to a per-run temporary cache
os.environ.setdefault("FLEX_FA4_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "flex_fa4_test_cache"))


@pytest.fixture
def seed(request):
    """A fresh seed per test, printed on failure so the case can be replayed
    with FLEX_FA4_SEED=<seed>."""
    s = int(os.environ.get("FLEX_FA4_SEED", random.randrange(2**31)))
    torch.manual_seed(s)
    random.seed(s)
    yield s


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and "seed" in getattr(item, "funcargs", {}):
        rep.sections.append(("replay", f"seed={item.funcargs['seed']} (rerun with FLEX_FA4_SEED={item.funcargs['seed']})"))
