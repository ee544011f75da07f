"""The ``kernel`` fixture: the compiled CPU kernels, or a skip where no compiler can build them."""

from __future__ import annotations

import shutil
from types import ModuleType

import pytest

from recattend.ops import kernels


@pytest.fixture
def kernel() -> ModuleType:
    """The compiled kernels (built or loaded on first use). Without a C++ compiler or ninja the
    test is skipped, saying which is missing; with both, a failed build fails the test (a bug)."""
    from torch.utils import cpp_extension

    available, reason = kernels.kernels_available()
    if not available:
        compiler = cpp_extension.get_cxx_compiler()
        missing = [
            name
            for name, found in (
                (f"C++ compiler (CXX={compiler!r})", shutil.which(compiler.split()[0] or "?")),
                ("ninja", cpp_extension.is_ninja_available()),
            )
            if not found
        ]
        if missing:
            pytest.skip(f"no CPU kernels: no {' and no '.join(missing)} ({reason})")
        pytest.fail(f"the CPU kernels did not build with {compiler}: {reason}")
    return kernels._kernel()
