"""Writing moec's outputs without harming anything moec did not create (docs/output-safety.md).

The rules, for every command that writes:
- A target is written only when it is absent or, with ``force``, when it is moec's to replace: a regular
  file for the single-file outputs (``import-hf``/``export-hf -o``), a folder moec built for ``build -o``
  (recognised by its manifest, with every file unchanged since). Symbolic links, devices, FIFOs and
  sockets are refused whatever the flags, and the refusal names what the path is.
- Everything is written under a temporary name in the target's folder and moved into place in one
  rename, so a reader never sees half an output. The temporary names carry :data:`PARTIAL_TAG`, so an
  interrupted run's leftovers are recognised by name on the next run, removed, and reported.
- SIGTERM and SIGHUP during a write become a clean exit, so the temporary files are removed; only
  SIGKILL (or a power cut) can leave them, and the next run sweeps them.
- New files and folders are created with mode 0o666 / 0o777 less the umask, like any other tool's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from moec.errors import CommandError

PARTIAL_TAG = "moec-partial"  # in the name of every temporary output: ".NAME.moec-partial-HEX"
REPLACED_TAG = "moec-replaced"  # a build folder moved aside while its replacement is swapped in
NEW_FILE_MODE = 0o666  # less the umask, applied by the kernel at creation
_CHUNK = 1 << 20


# the kinds of path that are neither a regular file, a folder nor a link, in words (spec/load.py names them too)
SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a path is, in words, from its ``lstat`` mode."""
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file"))
    return next((words for test, words in (*kinds, *SPECIAL_KINDS) if test(mode)), "a special file")


def lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def refuse_special(path: Path, st: os.stat_result) -> None:
    """Links, devices, FIFOs and sockets are never written through or replaced, with or without --force."""
    if stat.S_ISLNK(st.st_mode):
        raise CommandError(
            f"{path}: is a symbolic link (to {os.readlink(path)}); moec neither follows nor replaces links, "
            "so name the real path"
        )
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise CommandError(f"{path}: is {kind_of(st.st_mode)}; moec writes only regular files and folders")


def check_folder_writable(folder: Path, what: str) -> None:
    """The folder an output goes into exists, is a folder, and is not read-only.

    Read-only is judged from the mode bits too: root may write anywhere, but a folder nobody may write is
    a user's statement that it is not to be changed."""
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        raise CommandError(f"{what}: its folder {folder} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CommandError(f"{what}: {folder} is {kind_of(st.st_mode)}, not a folder")
    if stat.S_IMODE(st.st_mode) & 0o222 == 0 or not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"{what}: the folder {folder} is read-only; nothing was written")


def parent_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def temporary_sibling(target: Path, tag: str = PARTIAL_TAG) -> Path:
    return parent_of(target) / f".{target.name}.{tag}-{secrets.token_hex(6)}"


def leftovers_of(target: Path, tag: str = PARTIAL_TAG) -> list[Path]:
    """Temporary outputs for ``target`` that an interrupted earlier run left in its folder."""
    prefix = f".{target.name}.{tag}-"
    try:
        return sorted(p for p in parent_of(target).iterdir() if p.name.startswith(prefix))
    except OSError:
        return []


def remove_tree(path: Path) -> None:
    """Remove a temporary output moec made: a file, or a folder of plain files (never follows a link)."""
    st = lstat_or_none(path)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    for child in path.iterdir():
        remove_tree(child)
    os.rmdir(path)


def sweep_partials(target: Path) -> list[str]:
    """Remove what an interrupted run left while writing ``target``; return a note for each."""
    notes = []
    for p in leftovers_of(target):
        try:
            remove_tree(p)
            notes.append(f"removed {p}, an unfinished output left by an interrupted earlier run")
        except OSError as e:
            notes.append(
                f"{p} is an unfinished output of an interrupted earlier run; could not remove it: {e.strerror}"
            )
    return notes


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SystemExit inside the block, so ``finally`` clauses remove temporary files."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = (signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.getsignal(s) for s in caught}

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for s in caught:
        signal.signal(s, stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist) with ``data``, flushed to disk, mode 0o666 less the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), NEW_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def check_file_target(path: Path, *, force: bool, inputs: tuple[str, ...] = ()) -> None:
    """Refuse early what :func:`write_file` would refuse: a special file or link, a folder, an existing
    file without ``force`` or that is one of the command's ``inputs``, a missing or read-only folder."""
    st = lstat_or_none(path)
    if st is not None:
        refuse_special(path, st)
        if stat.S_ISDIR(st.st_mode):
            raise CommandError(f"{path}: is a folder; name the file to write")
        if not force:
            raise CommandError(f"{path}: exists; pass --force to overwrite it")
        _refuse_overwriting_an_input(path, st, inputs)
    check_folder_writable(parent_of(path), str(path))


def _refuse_overwriting_an_input(path: Path, st: os.stat_result, inputs: tuple[str, ...]) -> None:
    """--force never replaces the very file the command reads (``import-hf config.json -o config.json``)."""
    for source in inputs:
        try:
            same = os.path.samestat(st, os.stat(source))
        except OSError:
            continue
        if same:
            raise CommandError(f"{path}: is the input {source} itself; write the output somewhere else")


def write_file(path: str | os.PathLike[str], content: str | bytes, *, force: bool) -> list[str]:
    """Write one output (text as UTF-8, or bytes as they are) atomically under the rules above; return notes
    about swept leftovers."""
    target = Path(path)
    notes = sweep_partials(target)
    check_file_target(target, force=force)
    tmp = temporary_sibling(target)
    with interrupts_raise():
        try:
            write_new_file(tmp, content.encode("utf-8") if isinstance(content, str) else content)
            _publish_file(tmp, target, force=force)
        except OSError as e:
            raise CommandError(f"{target}: cannot write: {e.strerror or e}; nothing was written") from None
        finally:
            if lstat_or_none(tmp) is not None:
                os.unlink(tmp)
    return notes


def _publish_file(tmp: Path, target: Path, *, force: bool) -> None:
    if force:
        st = lstat_or_none(target)  # again, just before the swap: it may have changed since the check
        if st is not None:
            refuse_special(target, st)
            if stat.S_ISDIR(st.st_mode):
                raise CommandError(f"{target}: is a folder; name the file to write")
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # atomic, and never replaces an existing name
    except FileExistsError:
        raise CommandError(f"{target}: exists; pass --force to overwrite it") from None
    except OSError:  # a filesystem without hard links: claim the name exclusively, then fill it
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), NEW_FILE_MODE))
        os.replace(tmp, target)
