"""A fix for Triton 3.6's CPU interpreter under numpy >= 2.3, applied only when
TRITON_INTERPRET=1.

The interpreter stores scalars as 1-element arrays and converts them for
`range(lo, hi)` with `int(array)`, which numpy 2.3+ refuses for arrays of ndim > 0
("only 0-dimensional arrays can be converted to Python scalars"); every loop whose
bounds come from a runtime value (our block counts) fails. We wrap the hook that
patches `tl.tensor` for interpretation so that `__index__` reads the single element.
Compiled (GPU) kernels never go through this code.
"""
from __future__ import annotations

_applied = False


def apply() -> None:
    global _applied
    if _applied:
        return
    _applied = True
    try:
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover - a Triton without the interpreter
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None:  # pragma: no cover - another Triton layout; nothing to fix
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch_lang_tensor
