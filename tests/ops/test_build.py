"""How the CPU kernels are built and loaded (recattend.ops.kernels): a complete build loads without
any lock, stale locks never block, a live build is waited for a bounded time, checkouts with the
same sources share one build and different sources never do.

Most tests build a tiny extension (a Python module in a few lines of C++, no torch headers: a
couple of seconds) in a temporary TORCH_EXTENSIONS_DIR through the same code as the kernels."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from recattend.ops import build, kernels
from recattend.ops.build import BuildLockTimeoutError, extension_name, load_extension

TINY = """
#include <Python.h>
#define RA_CAT2(a, b) a##b
#define RA_CAT(a, b) RA_CAT2(a, b)
#define RA_STR2(a) #a
#define RA_STR(a) RA_STR2(a)
static struct PyModuleDef tiny = {
    PyModuleDef_HEAD_INIT, RA_STR(TORCH_EXTENSION_NAME), nullptr, -1, nullptr};
PyMODINIT_FUNC RA_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  PyObject* module = PyModule_Create(&tiny);
  if (module != nullptr) PyModule_AddIntConstant(module, "value", VALUE);
  return module;
}
"""


def _compiler() -> None:
    from torch.utils import cpp_extension

    compiler = cpp_extension.get_cxx_compiler()
    if not shutil.which(compiler.split()[0] or "?") or not cpp_extension.is_ninja_available():
        pytest.skip(f"no C++ compiler ({compiler}) or no ninja")


@pytest.fixture
def extensions(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_EXTENSIONS_DIR; the kernels' own load is forgotten before and after."""
    root = tmp_path / "torch_extensions"
    root.mkdir()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    kernels._load.cache_clear()
    yield root
    kernels._load.cache_clear()


def _tiny(folder: Path, value: int) -> tuple[str, list[Path]]:
    """A tiny extension's name and sources; ``value`` makes it (and its name) unique: an
    extension is imported once per path and process."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "tiny.cpp"
    source.write_text(TINY.replace("VALUE", str(value)))
    return extension_name([source], [], [], prefix="recattend_test_tiny"), [source]


def _folder(root: Path, name: str) -> Path:
    return root / name  # torch's build folder under TORCH_EXTENSIONS_DIR


def _forbid_building(monkeypatch) -> None:
    """Any lock or build from now on fails the test."""
    from torch.utils import cpp_extension

    def refuse(*args, **kwargs):
        raise AssertionError("a complete build was locked or built again")

    monkeypatch.setattr(cpp_extension, "load", refuse)
    monkeypatch.setattr(build, "_build_lock", refuse)


# ----------------------------------------------------------------------------------------- names
def test_names_hash_the_contents_not_the_paths(tmp_path) -> None:
    # Two checkouts of the same sources: one name, one build folder.
    for checkout in ("a", "b"):
        shutil.copytree(kernels._CSRC, tmp_path / checkout / "csrc")
    files = {c: sorted((tmp_path / c / "csrc").iterdir()) for c in ("a", "b")}
    flags, link = kernels._flags()
    name = extension_name(files["a"], flags, link, prefix=kernels._EXTENSION)
    assert name == extension_name(files["b"], flags, link, prefix=kernels._EXTENSION)
    assert name == kernels.extension()  # this checkout too
    prefix = "recattend_cpu_kernels_"
    assert name.startswith(prefix) and len(name) == len(prefix) + 16
    # Other sources, headers included, or other flags: other names.
    header = tmp_path / "b" / "csrc" / "kernels.h"
    header.write_text(header.read_text() + "\n// changed\n")
    assert extension_name(files["b"], flags, link, prefix=kernels._EXTENSION) != name
    assert extension_name(files["a"], [*flags, "-DOTHER"], link, prefix=kernels._EXTENSION) != name
    assert extension_name(files["a"], flags, [*link, "-lm"], prefix=kernels._EXTENSION) != name
    # And the sources the build reads are all hashed: the header with the .cpp files.
    assert {p.name for p in kernels._hashed_files()} >= {p.name for p in kernels._SOURCES} | {
        "kernels.h"
    }


def test_two_source_sets_get_two_names_and_two_builds(extensions, tmp_path) -> None:
    _compiler()
    one, one_sources = _tiny(tmp_path / "one", 11)
    two, two_sources = _tiny(tmp_path / "two", 12)
    assert one != two
    assert load_extension(one, one_sources).value == 11
    assert load_extension(two, two_sources).value == 12
    assert (_folder(extensions, one) / "built.json").is_file()
    assert (_folder(extensions, two) / "built.json").is_file()


# ---------------------------------------------------------------------- loading a complete build
def test_a_complete_build_loads_without_any_lock(extensions, tmp_path, monkeypatch) -> None:
    _compiler()
    name, sources = _tiny(tmp_path / "src", 21)
    load_extension(name, sources)
    folder = _folder(extensions, name)
    library = folder / f"{name}.so"
    built_at = library.stat().st_mtime_ns
    for lock in (folder / "build.lock", folder / "lock"):
        lock.unlink(missing_ok=True)
    # A second checkout with the same sources, elsewhere: the same build, imported directly.
    name_b, sources_b = _tiny(tmp_path / "other_checkout", 21)
    assert name_b == name
    _forbid_building(monkeypatch)
    assert load_extension(name_b, sources_b).value == 21
    assert not (folder / "build.lock").exists() and not (folder / "lock").exists()
    assert library.stat().st_mtime_ns == built_at


def test_the_real_kernels_load_from_a_complete_build_without_any_lock(
    kernel, extensions, monkeypatch
) -> None:
    # The kernels built for this session, copied to an empty TORCH_EXTENSIONS_DIR as another
    # process (or checkout) finds them: imported, no lock taken or created, nothing rebuilt.
    built = Path(kernel.__file__).parent
    name = built.name
    assert name == kernels.extension()
    copy = _folder(extensions, name)
    shutil.copytree(built, copy, ignore=shutil.ignore_patterns("lock", "build.lock"))
    _forbid_building(monkeypatch)
    module, reason = kernels._load()
    assert reason == "" and module is not None
    assert Path(module.__spec__.origin).parent == copy  # (its __file__ says the first copy)
    assert hasattr(module, "forward_train") and hasattr(module, "conv3x3_forward")
    assert not (copy / "build.lock").exists() and not (copy / "lock").exists()


def test_a_broken_build_is_built_again(extensions, tmp_path, caplog) -> None:
    _compiler()
    name, sources = _tiny(tmp_path / "src", 31)
    folder = _folder(extensions, name)
    folder.mkdir()
    (folder / f"{name}.so").write_bytes(b"not a library")  # e.g. a disk that filled up
    (folder / "built.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="recattend.ops.kernels"):
        assert load_extension(name, sources).value == 31
    assert any("does not load" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------- locks
@pytest.mark.timeout(120)
def test_locks_left_by_a_killed_build_do_not_block(extensions, tmp_path, caplog) -> None:
    # A build killed mid-way (SIGKILL) leaves torch's `lock` (on which torch waits forever) and
    # our build.lock (whose flock the kernel released): the next process builds at once.
    _compiler()
    name, sources = _tiny(tmp_path / "src", 41)
    folder = _folder(extensions, name)
    folder.mkdir()
    (folder / "lock").touch()
    (folder / "build.lock").write_text('{"pid": 1}')
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="recattend.ops.kernels"):
        assert load_extension(name, sources).value == 41
    assert time.monotonic() - start < 100
    (warning,) = [r.getMessage() for r in caplog.records if "Removing" in r.getMessage()]
    assert str(folder / "lock") in warning
    assert not (folder / "lock").exists()


def test_the_kernels_do_not_wait_for_a_left_over_torch_lock(
    extensions, monkeypatch, caplog
) -> None:
    # The same through recattend.ops' own entry (the build itself faked).
    from torch.utils import cpp_extension

    name = kernels.extension()
    folder = _folder(extensions, name)
    folder.mkdir()
    (folder / "lock").touch()

    def build(*args, **kwargs):
        assert not (folder / "lock").exists()  # torch would wait for it forever
        return "built"

    monkeypatch.setattr(cpp_extension, "load", build)
    with caplog.at_level(logging.WARNING, logger="recattend.ops.kernels"):
        assert kernels._kernel() == "built"
        assert kernels.kernels_available() == (True, "")
    (warning,) = [r.getMessage() for r in caplog.records if "Removing" in r.getMessage()]
    assert str(folder / "lock") in warning


def _hold(path: Path) -> int:
    """Take the flock of ``path`` as another process would (a separate open file)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_a_build_that_takes_too_long_is_given_up(extensions, monkeypatch, caplog) -> None:
    # Another process holds the lock and never finishes: after LOCK_WAIT_S, one warning and
    # PyTorch's kernels; nothing hangs.
    from torch.utils import cpp_extension

    monkeypatch.setattr(build, "LOCK_WAIT_S", 0.5)
    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: pytest.fail("built"))
    name = kernels.extension()
    folder = _folder(extensions, name)
    folder.mkdir()
    fd = _hold(folder / "build.lock")
    try:
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="recattend.ops.kernels"):
            available, reason = kernels.kernels_available()
        assert time.monotonic() - start < 5
    finally:
        os.close(fd)
    assert not available and "gave up" in reason and str(folder / "build.lock") in reason
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Waiting for " + str(folder / "build.lock")) for m in messages)
    assert any("gave up" in m and "PyTorch's kernels" in m for m in messages)
    # PyTorch's kernels work.
    norm = torch.nn.BatchNorm2d(8)
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    assert torch.equal(kernels.batchnorm_relu(norm, x), torch.relu(torch.nn.BatchNorm2d(8)(x)))


def test_a_build_finished_while_waiting_is_imported(extensions, tmp_path, monkeypatch) -> None:
    _compiler()
    name, sources = _tiny(tmp_path / "src", 51)
    load_extension(name, sources)
    folder = _folder(extensions, name)
    marker = folder / "built.json"
    finished = marker.read_text()
    marker.unlink()  # another process is building it (it holds the lock) ...
    fd = _hold(folder / "build.lock")

    def finish() -> None:
        time.sleep(0.5)
        marker.write_text(finished)  # ... and finishes
        os.close(fd)

    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", lambda *a, **k: pytest.fail("built twice"))
    thread = threading.Thread(target=finish)
    thread.start()
    try:
        assert load_extension(name, sources, wait_s=30).value == 51
    finally:
        thread.join()


def test_without_flock_a_stale_lock_file_is_removed(tmp_path, monkeypatch, caplog) -> None:
    # Where flock is missing: an exclusive file naming its holder; stale once its process is gone
    # or it is older than STALE_LOCK_S, then removed with a warning that names it.
    monkeypatch.setattr(build, "_fcntl", None)
    lock = tmp_path / "build.lock.pid"
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}"}}')
    with (
        caplog.at_level(logging.WARNING, logger="recattend.ops.kernels"),
        build._build_lock(tmp_path, wait_s=5),
    ):
        assert f'"pid": {os.getpid()}' in lock.read_text()
    assert not lock.exists()
    messages = [r.getMessage() for r in caplog.records if "Removing the stale" in r.getMessage()]
    assert len(messages) == 1 and str(lock) in messages[0] and "is gone" in messages[0]
    # Too old, whoever holds it.
    caplog.clear()
    lock.write_text(f'{{"pid": {os.getpid()}, "host": "{socket.gethostname()}"}}')
    old = time.time() - 2 * build.STALE_LOCK_S
    os.utime(lock, (old, old))
    with (
        caplog.at_level(logging.WARNING, logger="recattend.ops.kernels"),
        build._build_lock(tmp_path, wait_s=5),
    ):
        pass
    assert any("s old" in r.getMessage() and str(lock) in r.getMessage() for r in caplog.records)


def test_without_flock_a_live_holder_is_waited_for_a_bounded_time(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(build, "_fcntl", None)
    lock = tmp_path / "build.lock.pid"
    lock.write_text(f'{{"pid": {os.getpid()}, "host": "{socket.gethostname()}"}}')
    start = time.monotonic()
    with (
        pytest.raises(BuildLockTimeoutError, match="gave up"),
        build._build_lock(tmp_path, wait_s=0.5),
    ):
        pass
    assert time.monotonic() - start < 5
    assert lock.exists()  # not ours to remove


def test_the_lock_of_a_killed_builder_is_free_at_once(tmp_path) -> None:
    # A process holding build.lock is SIGKILLed: the kernel drops its flock, so the next process
    # takes the lock at once (no age to wait for).
    lock = tmp_path / "build.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        # Alive: it holds the lock.
        with pytest.raises(BuildLockTimeoutError), build._build_lock(tmp_path, wait_s=0.3):
            pass
    finally:
        holder.kill()
        holder.wait()
    start = time.monotonic()
    with build._build_lock(tmp_path, wait_s=5):
        assert time.monotonic() - start < 1
