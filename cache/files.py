"""Atomic publishing: a file or a whole folder is built beside its final name, then renamed into place."""
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["publish_file", "publish_folder"]


def publish_file(path, write) -> Path:
    """write(temporary path) beside `path`, then rename it into place: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def publish_folder(out, build) -> Path:
    """build(folder) into a new folder beside `out`, then swap it into place: a killed build leaves the old
    folder whole (or none), never a mix of the two. What a killed build left beside `out` is cleared first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clear_dead(out)
    tag = f"{os.getpid()}-"
    building = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-{tag}"))
    try:
        build(building)
        if out.exists():
            retired = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{tag}"))
            os.replace(out, retired / out.name)
            os.replace(building, out)  # between these two renames (microseconds) `out` is missing; see _clear_dead
            shutil.rmtree(retired)
        else:
            os.replace(building, out)
    finally:
        if building.exists():
            shutil.rmtree(building)
    return out


def _clear_dead(out: Path) -> None:
    """Remove the folders a killed publish left beside `out`; if it died between its two renames, put the old
    `out` back first. Folders of a live process (its pid in the name) are left alone."""
    for kind in ("old", "building"):  # "old" first: it may hold the only copy of `out`
        for folder in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = folder.name[len(f".{out.name}.{kind}-"):].split("-")[0]
            if pid.isdigit() and _alive(int(pid)):
                continue
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
