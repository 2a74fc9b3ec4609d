"""Per-worker failures-<tag>.csv logs (key,error) of inputs that could not be turned into features."""
import csv
import io
import os
from pathlib import Path

__all__ = ["FailureLog", "read_failures"]

HEADER = ["key", "error"]


class FailureLog:
    """Appends (key, error) records to failures-<worker_tag>.csv in a cache dir, flushed record by record."""

    def __init__(self, cache_dir, worker_tag):
        self.path = Path(cache_dir) / f"failures-{worker_tag}.csv"

    def record(self, key: str, error_text: str):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = io.StringIO()
        csv.writer(line).writerow([key, str(error_text)])
        # Opened per record and written in one call: a killed worker loses at most the record being written.
        with open(self.path, "ab+") as handle:
            _drop_torn_tail(handle)
            if handle.tell() == 0:
                handle.write(",".join(HEADER).encode("utf-8") + b"\r\n")
            handle.write(line.getvalue().encode("utf-8", "surrogateescape"))


def _drop_torn_tail(handle, window: int = 1 << 16) -> None:
    """Cut a record a killed writer left half-written (no final newline) before appending: left in place, its
    open quote would swallow the next records into one phantom key."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return
    start = max(0, size - window)
    handle.seek(start)
    tail = handle.read()
    cut = tail.rfind(b"\n")
    handle.truncate(start + cut + 1 if cut >= 0 else 0)
    handle.seek(0, os.SEEK_END)


def read_failures(cache_dir) -> dict:
    """key -> error over every failures-*.csv of cache_dir, oldest file first so the latest record wins.

    Keys that were extracted later are NOT removed here (FeatureStore.failures() does that): this is what
    a resumed extraction skips, unless it retries failures.
    """
    cache_dir = Path(cache_dir)
    paths = sorted(cache_dir.glob("failures-*.csv"), key=lambda path: (path.stat().st_mtime, path.name)) \
        if cache_dir.is_dir() else []
    failures = {}
    for path in paths:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            try:
                for row in csv.reader(handle):
                    # A torn last line from a killed worker has the wrong number of fields: skip it.
                    if len(row) == 2 and row != HEADER:
                        failures[row[0]] = row[1]
            except csv.Error:
                pass
    return failures
