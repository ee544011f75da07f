"""Building and loading a C++ extension without ever blocking a run.

The build cache (under ``$TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions/<py>_<cpu or cuda>/``): an extension is named ``<prefix>_<hash>``, the
hash of its sources' contents (for the CPU kernels ``csrc/*.cpp``, ``csrc/*.h``), the compiler
flags, the compiler, the torch version and the Python ABI (:func:`extension_name`). So checkouts
at different paths with the same sources share one build, and different sources never share a
folder. Loading:

* **built**: a finished build (its ``.so`` and the ``built.json`` marker written after it) is
  imported directly with :mod:`importlib`, without any lock: a process killed at any moment
  cannot block later ones;
* **not built**: one process builds, holding ``build.lock`` in the extension's folder through
  ``flock`` (the kernel releases it when its holder dies, even by SIGKILL; where ``flock`` is
  missing, an exclusive file holding the pid, removed with a warning once older than
  :data:`STALE_LOCK_S` or once its process is gone); the others wait for it. A wait longer than
  :data:`LOCK_WAIT_S` gives up with a warning and falls back to PyTorch's kernels -- never a hang.
  torch's own ``lock`` file, which a killed build leaves behind and on which torch would wait
  forever, is removed with a warning naming it (under ``build.lock`` no live process can hold it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import json
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import torch

try:
    import fcntl as _fcntl
except ImportError:  # Windows: the exclusive-file lock
    _fcntl = None

log = logging.getLogger(__name__)

LOCK_WAIT_S = 300.0
"""How long a process waits for another one's build before it gives up (PyTorch's kernels)."""
STALE_LOCK_S = 900.0
"""Age after which an exclusive lock file (no ``flock``) is stale, whatever its holder; a build
takes ~1 min."""
_LOCK = "build.lock"  # in the extension's build folder
_BUILT = "built.json"  # written once the build is complete: its presence means "import directly"


class BuildLockTimeoutError(TimeoutError):
    """Another process held the build lock for longer than the wait allowed."""


def extension_name(
    files: Iterable[Path | str],
    cflags: Sequence[str],
    ldflags: Sequence[str],
    prefix: str,
) -> str:
    """``<prefix>_<16 hex digits>``: a hash of the files' names and contents (not their folders),
    the flags, the C++ compiler, the torch version and the Python ABI.

    Equal inputs give equal names wherever the files lie (checkouts at different paths share
    one build); any change of a file's content, a flag or the torch version gives another name.
    """
    from torch.utils import cpp_extension

    digest = hashlib.sha256()
    for file in sorted(Path(f) for f in files):
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    digest.update(
        json.dumps(
            {
                "cflags": list(cflags),
                "ldflags": list(ldflags),
                "cxx": cpp_extension.get_cxx_compiler(),
                "torch": torch.__version__,
                "python": sys.implementation.cache_tag,
                "machine": platform.machine(),
            },
            sort_keys=True,
        ).encode()
    )
    return f"{prefix}_{digest.hexdigest()[:16]}"


def _import(name: str, path: Path) -> ModuleType:
    """The extension module ``name`` from its file (what torch's loader does, without its lock)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not an extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists (another user's) or unknown: assume alive
        return True
    return True


def _stale(path: Path, stale_s: float) -> str:
    """Why the exclusive lock file ``path`` is stale, or "" while its holder may still build."""
    try:
        age = time.time() - path.stat().st_mtime
        holder = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return ""
    except (OSError, ValueError):  # being written, or garbage: judged by its age alone
        holder = {}
    if age > stale_s:
        return f"{age:.0f} s old, more than {stale_s:.0f} s"
    pid, host = holder.get("pid"), holder.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid):
        return f"its process {pid} is gone"
    return ""


def _holder() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})


@contextlib.contextmanager
def _build_lock(
    directory: Path, wait_s: float | None = None, stale_s: float | None = None
) -> Iterator[None]:
    """Hold the build folder's lock (module docstring) for the ``with`` block.

    Raises:
        BuildLockTimeoutError: another process held it for more than ``wait_s`` seconds
            (:data:`LOCK_WAIT_S` by default).
    """
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    stale_s = STALE_LOCK_S if stale_s is None else stale_s
    if _fcntl is not None:
        path = directory / _LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _wait(path, wait_s, lambda: _try_flock(fd))
        except _NoFlockError:
            os.close(fd)
        except BaseException:
            os.close(fd)
            raise
        else:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, _holder().encode())  # for whoever looks; flock is the lock
                yield
            finally:
                os.close(fd)  # releases the flock
            return
    # No flock here (or on this file system): an exclusive file that names its holder.
    path = directory / (_LOCK + ".pid")

    def try_exclusive() -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            reason = _stale(path, stale_s)
            if reason:
                log.warning("Removing the stale build lock %s (%s)", path, reason)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            return False
        with os.fdopen(fd, "w") as file:
            file.write(_holder())
        return True

    _wait(path, wait_s, try_exclusive)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class _NoFlockError(OSError):
    """flock does not work on this file system (e.g. ENOLCK on some network file systems)."""


def _try_flock(fd: int) -> bool:
    """True: locked; False: another process holds it. Raises _NoFlockError where flock fails."""
    try:
        _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise _NoFlockError(error.errno, str(error)) from error
    return True


def _wait(path: Path, wait_s: float, attempt: Callable[[], bool]) -> None:
    """Call ``attempt`` until it returns True, for at most ``wait_s`` seconds, then raise
    :class:`BuildLockTimeoutError`; one warning when the first attempt fails."""
    start, warned = time.monotonic(), False
    while not attempt():
        waited = time.monotonic() - start
        if waited >= wait_s:
            raise BuildLockTimeoutError(
                f"gave up after waiting {waited:.0f} s for {path}, held by another process "
                "building the CPU kernels"
            )
        if not warned:
            log.warning(
                "Waiting for %s: another process is building the CPU kernels (giving up after "
                "%.0f s)",
                path,
                wait_s,
            )
            warned = True
        time.sleep(min(0.2, max(wait_s - waited, 0.01)))


def load_extension(
    name: str,
    sources: Sequence[Path | str],
    cflags: Sequence[str] = (),
    ldflags: Sequence[str] = (),
    *,
    wait_s: float | None = None,
) -> ModuleType:
    """The extension ``name`` built from ``sources`` in its torch build folder: imported directly
    when a complete build is there, else built under the folder's lock (module docstring).

    ``name`` must identify the sources and flags (:func:`extension_name`): a complete build of
    that name is taken as theirs.

    Raises:
        BuildLockTimeoutError: another process's build took longer than ``wait_s``
            (:data:`LOCK_WAIT_S`).
        Exception: whatever the build raised (no compiler, no ninja, a compile error).
    """
    from torch.utils import cpp_extension

    folder = Path(cpp_extension._get_build_directory(name, verbose=False))
    library, built = folder / f"{name}{cpp_extension.LIB_EXT}", folder / _BUILT
    broken = False
    if built.is_file() and library.is_file():
        try:
            return _import(name, library)  # no lock: nothing a killed process left can block
        except (ImportError, OSError) as error:
            log.warning("%s does not load (%s); building it again", library, error)
            broken = True
    with _build_lock(folder, wait_s):
        if not broken and built.is_file() and library.is_file():
            return _import(name, library)  # built by the process we waited for
        built.unlink(missing_ok=True)
        if broken:
            library.unlink(missing_ok=True)  # a new file: processes that mapped the old keep it
        torch_lock = folder / "lock"
        if torch_lock.exists():  # its holder held build.lock too, and is gone
            log.warning(
                "Removing %s, left by a build that did not finish (torch would wait for it "
                "forever)",
                torch_lock,
            )
            torch_lock.unlink(missing_ok=True)
        log.info("Building the CPU kernels in %s (~1 min, once)", folder)
        # The same name always means the same sources: no versioned rename (name_v1) by torch.
        versions = getattr(cpp_extension, "JIT_EXTENSION_VERSIONER", None)
        if versions is not None:
            versions.entries.pop(name, None)
        module = cpp_extension.load(
            name,
            [str(s) for s in sources],
            extra_cflags=list(cflags),
            extra_ldflags=list(ldflags),
            build_directory=str(folder),
        )
        built.write_text(json.dumps({"name": name, "torch": torch.__version__}) + "\n")
        return module
