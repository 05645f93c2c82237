"""Building the zoo's C++ loops (BN-LSTM, DeepSpeech2 recurrences) on first use, in one place.

``torch.utils.cpp_extension.load`` compiles a source with ninja and the system's g++ into
``$TORCH_EXTENSIONS_DIR`` and caches the build. The flags are the same for every loop:

* ``-O3 -march=native``: so the cache name carries :func:`cpu_tag`, one build per kind of CPU;
* ``-ffast-math -fno-finite-math-only``: gcc may call glibc's vector exp / tanh (``-lmvec`` on x86-64), while
  NaN and Inf still propagate;
* ``-fopenmp``: the loops run on torch's intra-op threads through the OpenMP runtime torch loads (libgomp).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import warnings
from pathlib import Path
from types import ModuleType

CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp"]
LDFLAGS = ["-fopenmp"] + (["-lmvec"] if platform.machine() == "x86_64" else [])
log = logging.getLogger(__name__)


def cpu_tag() -> str:
    """A short hash of this CPU's model and instruction-set flags: the build is ``-march=native``, so a
    cache directory shared by different machines (a network home) keeps one build per kind of CPU."""
    described = platform.machine() + platform.processor()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        described += "".join(line for line in lines if line.startswith(("flags", "model name")))[:4096]
    return hashlib.sha1(described.encode()).hexdigest()[:10]


def build(name: str, source: Path, what: str, fallback: str) -> ModuleType | None:
    """Compile (first use on a machine, 20-30 s) and load ``source`` as ``zoo_<name>_<cpu tag>``; where that
    fails (no compiler, no ninja, no Python headers) warn once naming ``what`` and the ``fallback`` and return
    None."""
    try:
        quiet = logging.getLogger("torch.utils.cpp_extension")  # its import warns about CUDA_HOME: irrelevant here
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            from torch.utils.cpp_extension import load
        finally:
            quiet.setLevel(level)
        log.info("loading the %s (compiled on first use on this machine)", what)
        return load(
            name=f"zoo_{name}_{cpu_tag()}",
            sources=[str(source)],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            verbose=False,
        )
    except Exception as error:  # any build failure means: use the fallback
        warnings.warn(f"{what} could not be built ({error}); {fallback}", stacklevel=3)
        return None
