"""Per-worker failures-<tag>.csv logs (key,error) of inputs that could not be turned into features."""
import csv
from pathlib import Path

__all__ = ["FailureLog", "read_failures"]

HEADER = ["key", "error"]


class FailureLog:
    """Appends (key, error) records to failures-<worker_tag>.csv in a cache dir, flushed record by record."""

    def __init__(self, cache_dir, worker_tag):
        self.path = Path(cache_dir) / f"failures-{worker_tag}.csv"

    def record(self, key: str, error_text: str):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Opened per record: a killed worker loses at most the record being written.
        with open(self.path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if handle.tell() == 0:
                writer.writerow(HEADER)
            writer.writerow([key, str(error_text)])


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
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            try:
                for row in csv.reader(handle):
                    # A torn last line from a killed worker has the wrong number of fields: skip it.
                    if len(row) == 2 and row != HEADER:
                        failures[row[0]] = row[1]
            except csv.Error:
                pass
    return failures
