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
    folder whole (or none), never a mix of the two."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        build(building)
        if out.exists():
            retired = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, retired / out.name)
            os.replace(building, out)
            shutil.rmtree(retired)
        else:
            os.replace(building, out)
    finally:
        if building.exists():
            shutil.rmtree(building)
    return out
