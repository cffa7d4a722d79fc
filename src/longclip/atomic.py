"""Writing outputs so that a failed write (a full disk, a kill) never destroys the previous good output.

Everything is written to a temporary beside its target and renamed over it only once complete: a rename within one
file system is atomic, so a reader sees the old output or the new one, never a mix or a truncated file. Shared by
``checkpoints`` and ``models`` (which do not import each other).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    Raises:
        OSError: The write failed (the disk is full, ...; torch and safetensors report it as RuntimeError or
            SafetensorError, turned into OSError here); the message names the target and says that the previous
            file, if any, is unchanged. The temporary is removed.
    """
    path = Path(path)
    # A private directory keeps the file's own name (torch.save names its archive's records after it).
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    temporary = folder / path.name
    try:
        yield temporary
        os.chmod(temporary, _default_mode())
        os.replace(temporary, path)
    except BaseException as e:
        if isinstance(e, (OSError, RuntimeError)) or type(e).__name__ == "SafetensorError":
            raise _write_error(path, e) from e
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``directory``; when the block succeeds its files move into ``directory``.

    Files of ``directory`` that the block did not write are left alone; those it wrote are replaced one by one, each
    only after every file was written, so a failure leaves the previous output whole.

    Raises:
        OSError: As ``atomic_file``.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        yield temporary
        directory.mkdir(exist_ok=True)
        mode = _default_mode()
        for file in sorted(temporary.iterdir()):
            os.chmod(file, mode)
            os.replace(file, directory / file.name)
    except BaseException as e:
        if isinstance(e, (OSError, RuntimeError)) or type(e).__name__ == "SafetensorError":
            raise _write_error(directory, e) from e
        raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _default_mode() -> int:
    """The permissions a plain ``open(..., "w")`` would give (mkstemp's are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_error(target: Path, error: BaseException) -> OSError:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
    failure = OSError(f"could not write {target}: {reason}; the previous output there, if any, is unchanged")
    failure.errno = error.errno if isinstance(error, OSError) else None
    return failure
