"""The repository's scripts (benchmarks/, tools/: not packages) loaded as modules, for the
tests that check them on the CPU."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath: str):
    """`relpath` (from the repository root, e.g. "benchmarks/kernel_ab.py") as a module."""
    name = os.path.splitext(os.path.basename(relpath))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
