"""Files written whole or not at all: a temporary file in the target's own folder (so on the same
filesystem), flushed to disk, then renamed over the target with ``os.replace``, which is atomic on
one filesystem. Readers see the old file or the complete new one, never a part, even when the disk
fills up or the process dies halfway.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path


class NoSpaceError(OSError):
    """The disk filled up while a file was written; nothing partial was kept (the message says
    which folder and what was kept)."""


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it over ``path``.

    Raises:
        NoSpaceError: no space left in ``path``'s folder: the temporary file is removed and an
            earlier ``path`` stays as it was.
        OSError: any other failure to write, with the temporary file removed as well.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with tmp.open("rb") as f:  # on disk before the rename makes it the file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        kept = f"the previous {path.name} is as it was" if path.exists() else "no earlier file"
        raise NoSpaceError(
            errno.ENOSPC,
            f"no space left in {path.parent} while writing {path.name}: nothing of it was kept "
            f"({kept}). Free space there (df -h {path.parent}) or write elsewhere "
            "(paths.output_dir=...), then run again",
        ) from error
    finally:
        tmp.unlink(missing_ok=True)
