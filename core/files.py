"""Every file the pack writes goes through here.

- Confinement: a path input (``filename_prefix``, ``run_name``) names a file below a folder the pack
  writes into (the output folder, ComfyUI's temp or loras folder). It must be a relative name, and
  every folder between that root and the file must be a real folder: a symbolic link is refused,
  even one pointing back inside, so no link placed in the output folder can lead a write elsewhere.
- Numbering: ``<stem>_<NNNNN>_.<ext>`` as ComfyUI numbers its images. A number is claimed by creating
  the file with ``O_CREAT | O_EXCL``, which only one writer can do, so two saves into one folder at
  the same moment never overwrite each other; the folder listing only tells where to start.
- Atomic writes: a temporary file in the target folder, then a rename, so a reader or a crash never
  sees half a file. The result gets the permissions a plain ``open()`` would give (``mkstemp`` alone
  would leave it readable by its owner only).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .runtime import is_main_process

_UMASK = os.umask(0)
os.umask(_UMASK)


class UnsafePathError(ValueError):
    pass


def relative_parts(name: str) -> list[str]:
    """The folders and file stem of a relative name such as ``"experiment/img"`` (``\\`` counts as
    ``/``). Absolute paths, drive letters, ``..``, ``.`` and empty parts are refused: this needs no
    file system, so nodes run it at validation time too."""
    text = str(name).replace("\\", "/").strip()
    parts = text.split("/")
    if (not text or text.startswith("/") or re.match(r"^[A-Za-z]:", text)
            or any(p in ("", ".", "..") for p in parts) or "\x00" in text):
        raise UnsafePathError(
            f"{name!r} must be a relative name such as 'loralab' or 'experiment/img' (no absolute path, "
            "no '..', no empty parts)")
    return parts


def validate_name(value: str | None) -> bool | str:
    """A ``VALIDATE_INPUTS`` answer for a path input: True, or why it is refused. ComfyUI passes None
    for a linked input (its value is not known before the graph runs); the node checks it then."""
    if value is None:
        return True
    try:
        relative_parts(value)
    except UnsafePathError as e:
        return str(e)
    return True


def confined_folder(root: Path, parts: Sequence[str] = ()) -> Path:
    """``root/parts...``, created as needed, refused if any of ``parts`` is a symbolic link or the
    result is not inside ``root``. ``root`` itself is trusted as configured (it may be a link, e.g.
    ComfyUI's output folder on another disk) and used resolved."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    folder = root
    for part in parts:
        folder = folder / part
        if folder.is_symlink():
            raise UnsafePathError(f"{folder} is a symbolic link: LoRA Lab writes only into real folders "
                                  f"inside {root}")
        folder.mkdir(exist_ok=True)
    if folder.resolve() != folder:  # e.g. a link in place of a folder created between the checks above
        raise UnsafePathError(f"{folder} leaves the folder {root} through a symbolic link")
    return folder


def safe_prefix_path(root: Path, prefix: str, under: Sequence[str] = ()) -> tuple[Path, str]:
    """Split ``prefix`` ("name" or "sub/dir/name") into a confined folder ``root/under/sub/dir`` and a
    file stem; ``under`` are the fixed folders of the kind of file (``temp``, ``loras``, …)."""
    parts = relative_parts(prefix)
    return confined_folder(root, [*under, *parts[:-1]]), parts[-1]


def _highest_number(folder: Path, stem: str, extensions: Sequence[str]) -> int:
    pattern = re.compile(re.escape(stem) + r"_(\d{5,})_\.(?:" + "|".join(map(re.escape, extensions)) + ")$")
    with os.scandir(folder) as entries:
        return max((int(m.group(1)) for e in entries if (m := pattern.match(e.name))), default=0)


def _claim(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        return False
    return True


def write_numbered(folder: Path, stem: str, writers: Mapping[str, Callable[[Path], object]],
                   start: int = 0, count_also: Sequence[str] = ()) -> tuple[int, list[Path]]:
    """Claim the next free number (from ``start``, else after the highest in ``folder`` among the
    extensions of ``writers`` and ``count_also``) for every extension in ``writers`` at once, then call
    ``writers[ext](path)``, which must replace the claimed empty file atomically (:func:`atomic_write`).
    Returns the number and the paths. If a write fails, the claimed names are released."""
    number = start or _highest_number(folder, stem, [*writers, *count_also]) + 1
    if not is_main_process():
        return number, [folder / f"{stem}_{number:05}_.{ext}" for ext in writers]
    while True:
        paths, claimed = [folder / f"{stem}_{number:05}_.{ext}" for ext in writers], []
        for path in paths:
            if not _claim(path):
                break
            claimed.append(path)
        if len(claimed) == len(paths):
            break
        for path in claimed:
            path.unlink()
        number += 1
    try:
        for path, write in zip(paths, writers.values(), strict=True):
            write(path)
    except BaseException:
        for path in paths:
            path.unlink(missing_ok=True)
        raise
    return number, paths


def clean_stale_temp(folder: Path, prefixes: Sequence[str]) -> None:
    """Remove the temporary files and folders (names starting with one of ``prefixes``) that a killed
    writer left in ``folder``. Only for folders one writer owns (a training run's checkpoints)."""
    if not folder.is_dir() or not is_main_process():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(tuple(prefixes)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)``, then move the result to ``path`` (in process 0 only of a
    multi-process run: :func:`runtime.is_main_process`)."""
    path = Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)
