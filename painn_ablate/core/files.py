"""Files written whole or not at all: the one home of atomic writes.

A writer fills a hidden temporary name beside the target (`.<name>.tmp-<pid>`), which is then
renamed over it (atomic on POSIX): a process killed mid-write leaves the old file or none,
never half a result, and two processes writing the same file do not share a temporary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union

PathLike = Union[str, Path]


def atomic(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary beside `path`, then rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: PathLike, text: str) -> Path:
    return atomic(path, lambda tmp: tmp.write_text(text))
