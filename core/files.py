"""Atomic publishing: a file or a whole folder is built beside its final name, then renamed into place."""
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Optional

from omniart.core.errors import OmniError

__all__ = ["publish_file", "publish_folder", "make_parent"]

_HOST = socket.gethostname().replace("-", "_").replace(".", "_") or "host"


def publish_file(path, write) -> Path:
    """write(temporary path) beside `path`, then rename it into place: readers never see half a file."""
    path = make_parent(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would make the published file owner-only
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def publish_folder(out, build) -> Path:
    """build(folder) into a new folder beside `out`, then swap it into place: a killed build leaves the old
    folder whole (or none), never a mix of the two. What a killed build left beside `out` is cleared first."""
    out = make_parent(out)
    _clear_dead(out)
    tag = f"{_HOST}-{os.getpid()}-"  # the host too: on a shared filesystem a pid names a process of one node
    building = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-{tag}"))
    try:
        build(building)
        os.chmod(building, 0o777 & ~_umask())  # mkdtemp's 0700 would make the published folder owner-only
        if out.exists():
            retired = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{tag}"))
            os.replace(out, retired / out.name)
            try:
                os.replace(building, out)  # between the two renames (microseconds) `out` is missing; see _clear_dead
            except BaseException:
                os.replace(retired / out.name, out)
                raise
            finally:
                if out.exists():  # the new folder, or the old one put back: what is left aside can go
                    shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(building, out)
    finally:
        if building.exists():
            shutil.rmtree(building)
    return out


def file_in_the_way(path) -> Optional[Path]:
    """The file that stands where a folder above `path` must be (e.g. `meta.csv` for `meta.csv/x`), else None."""
    return next((folder for folder in Path(path).parents if folder.exists() and not folder.is_dir()), None)


def make_parent(path) -> Path:
    """Create the folders `path` goes in (a writable folder), or an OmniError naming the path and why it cannot be
    written there: a file where a folder must be, or no permission. Returns Path(path)."""
    path = Path(path)
    blocker = file_in_the_way(path)
    why = f"{str(blocker)!r} is a file, not a folder" if blocker is not None else None
    if why is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            why = f"its folder cannot be created ({error.strerror or error})"
        else:
            if not os.access(path.parent, os.W_OK | os.X_OK):
                why = f"its folder {str(path.parent)!r} is not writable"
    if why is not None:
        raise OmniError(f"cannot write {str(path)!r}: {why}; pass an output path inside a folder that exists (or can "
                        "be created) and that you can write to") from None
    return path


def _clear_dead(out: Path) -> None:
    """Remove the folders a killed publish left beside `out`; if it died between its two renames, put the old
    `out` back first. Folders of a live process (its pid in the name) are left alone."""
    for kind in ("old", "building"):  # "old" first: it may hold the only copy of `out`
        for folder in out.parent.glob(f".{out.name}.{kind}-*"):
            host, _, rest = folder.name[len(f".{out.name}.{kind}-"):].partition("-")
            pid = rest.split("-")[0]
            if host != _HOST or not pid.isdigit() or _alive(int(pid)):
                continue  # another node's, or a live process's
            if kind == "old" and (folder / out.name).is_dir() and not out.exists():
                os.replace(folder / out.name, out)
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _umask() -> int:
    """The process's umask, read without setting it where Linux reports it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
