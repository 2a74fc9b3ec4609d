"""Labels, vocabularies, masks and splits of the four OmniArt tasks, built from collection metadata."""
import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from omniart.core.configs import from_options, from_saved
from omniart.heads.config import TASKS
from omniart.pipeline.parsing import LANGUAGES, LabelError
from omniart.pipeline.records import SPLITS, key_stem, record_key_of
from omniart.pipeline.sources import FORMATS, read_records
from omniart.pipeline.splits import stratified_split

__all__ = ["TASKS", "PROTOCOLS", "LabelConfig", "CsvOptions", "LabelSet", "JoinReport", "LabelError", "build_labels",
           "challenge_labels"]

LABELS_FILE, VOCAB_FILE = "labels.npz", "vocab.json"
PROTOCOLS = ("omniart", "rijks14-challenge")
# the challenge's rules (tmensink/rijkschallenge rijks_load.m): a class needs an object in every split and this
# many test objects; these creator names are no creator
CHALLENGE_MIN_TEST, CHALLENGE_NOT_CREATORS, CHALLENGE_MAX_INTERVAL = 10, ("anoniem", "unknown"), 100
_EXAMPLES = 5


@dataclass
class CsvOptions:
    """How a csv's columns become labels (`format="csv"` only): the *_column options name columns (artist, type,
    material, year and split default to columns of those names when present); separator splits multi-valued
    cells."""

    key_column: str = "key"
    artist_column: Optional[str] = None
    type_column: Optional[str] = None
    material_column: Optional[str] = None
    year_column: Optional[str] = None
    begin_column: Optional[str] = None
    end_column: Optional[str] = None
    split_column: Optional[str] = None
    separator: str = "|"


@dataclass
class LabelConfig:
    """How metadata becomes labels. Saved with every LabelSet.

    min_artist_samples: artists with fewer samples get no class (paper: 100/300/700/1100); their samples stay,
    the artist masked, so the other tasks keep every row; keep_all_samples=False restricts the data set to the
    kept artists' samples (the paper's Table 4). min_class_samples: type/material classes need this many
    positives (10 drops one-off free-text words and typos while keeping every class a head can learn).
    language picks the stemmer of free-text media and types (met, csv) and the language of the Rijks'14 type
    and material names shown (english: the package's glossary; dutch: the catalogue's own words). csv: the
    columns of a csv (CsvOptions). `LabelConfig.from_options(format="csv", key_column="file", ...)` takes
    the csv options flat, as the command line does.
    """

    format: str = "rijks14"
    min_artist_samples: int = 100
    min_class_samples: int = 10
    keep_all_samples: bool = True
    seed: int = 0
    language: str = "english"
    # omniart: the rules above; rijks14-challenge: the Rijksmuseum Challenge 2014's own classes (challenge_labels)
    protocol: str = "omniart"
    csv: CsvOptions = field(default_factory=CsvOptions)

    @classmethod
    def from_options(cls, **options) -> "LabelConfig":
        """A LabelConfig from flat options: its own fields' names and CsvOptions' (LabelError naming an unknown)."""
        return from_options(cls, options, error=LabelError, what="label option")

    def __post_init__(self):
        if self.format not in FORMATS:
            raise LabelError(f"unknown metadata format {self.format!r}; valid formats: {', '.join(FORMATS)}")
        if self.protocol not in PROTOCOLS:
            raise LabelError(f"unknown --protocol {self.protocol!r}; valid: {', '.join(PROTOCOLS)}")
        if self.protocol == "rijks14-challenge" and self.format != "rijks14":
            raise LabelError(f"--protocol rijks14-challenge needs --format rijks14 (its rijksgt.mat), not {self.format}")
        if self.language not in LANGUAGES:
            raise LabelError(f"unknown stemming language {self.language!r}; valid: {', '.join(LANGUAGES)}")
        for name in ("min_artist_samples", "min_class_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LabelError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass
class JoinReport:
    """Outcome of joining metadata records to cache keys: counts and a few example keys of each side."""

    only_in_cache: int
    only_in_metadata: int
    n_joined: int
    only_in_cache_examples: list = field(default_factory=list)
    only_in_metadata_examples: list = field(default_factory=list)

    def __str__(self):
        return (f"joined {self.n_joined} keys; {self.only_in_cache} only in the cache "
                f"{self.only_in_cache_examples}, {self.only_in_metadata} only in the metadata "
                f"{self.only_in_metadata_examples}")


@dataclass(eq=False)  # arrays: compare fields explicitly
class LabelSet:
    """Per-sample labels of the four tasks: -1 / NaN / all-zero rows mean no label.

    artist_names, type_names and material_names are class ids (normalised names, stems for free-text sources,
    Dutch for Rijks'14); artist_display, type_display and material_display are the names shown (the most frequent
    original spelling per class, Rijks'14 artists in catalogue capitalisation, its types and materials in English).
    type_known/material_known: the samples whose record names any type (material), kept class or not: a painting
    among prints is a negative of every kept class, not an unlabelled sample (None, as saved by older versions:
    the samples with a kept class).
    """

    keys: np.ndarray
    artist: np.ndarray
    artist_names: list
    types: np.ndarray
    type_names: list
    materials: np.ndarray
    material_names: list
    year: np.ndarray
    split: np.ndarray
    config: LabelConfig
    type_display: Optional[list] = None
    material_display: Optional[list] = None
    artist_display: Optional[list] = None
    year_unparsed: int = 0
    source_rows: int = 0
    type_known: Optional[np.ndarray] = None
    material_known: Optional[np.ndarray] = None

    def __post_init__(self):
        self.artist_display = list(self.artist_display or self.artist_names)
        self.type_display = list(self.type_display or self.type_names)
        self.material_display = list(self.material_display or self.material_names)

    def __len__(self):
        return len(self.keys)

    @functools.cached_property
    def masks(self):
        """Task -> bool (N,): the samples that have a label for the task (computed once)."""
        return {
            "artist": self.artist >= 0,
            "type": self.types.any(axis=1) if self.type_known is None else np.asarray(self.type_known, bool),
            "material": self.materials.any(axis=1) if self.material_known is None else np.asarray(self.material_known, bool),
            "year": ~np.isnan(self.year),
        }

    def statistics(self):
        """JSON-able summary: samples, classes per task, year range, samples per split, coverage per task."""
        n = len(self)
        years = self.year[~np.isnan(self.year)]
        return {
            "format": self.config.format,
            "protocol": self.config.protocol,
            "source_rows": self.source_rows,
            "samples": n,
            "artists": len(self.artist_names),
            "types": len(self.type_names),
            "materials": len(self.material_names),
            "years": {
                "labelled": int(len(years)),
                "min": float(years.min()) if len(years) else None,
                "max": float(years.max()) if len(years) else None,
                "mean": round(float(years.mean()), 1) if len(years) else None,
                "unparsed": self.year_unparsed,
            },
            "splits": {name: int((self.split == name).sum()) for name in SPLITS},
            "coverage": {task: round(float(mask.mean()), 4) if n else 0.0 for task, mask in self.masks.items()},
            "min_artist_samples": self.config.min_artist_samples,
            "min_class_samples": self.config.min_class_samples,
        }

    def save(self, run_dir):
        """Write labels.npz (per-key labels and split) and vocab.json (vocabularies, config) into run_dir."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            run_dir / LABELS_FILE, keys=self.keys.astype(str), artist=self.artist, types=self.types,
            materials=self.materials, year=self.year, split=self.split.astype(str),
            **{name: getattr(self, name) for name in ("type_known", "material_known") if getattr(self, name) is not None},
        )
        vocab = {
            "artist_names": self.artist_names, "artist_display": self.artist_display,
            "type_names": self.type_names, "type_display": self.type_display,
            "material_names": self.material_names, "material_display": self.material_display,
            "year_unparsed": self.year_unparsed, "source_rows": self.source_rows, "config": asdict(self.config),
        }
        (run_dir / VOCAB_FILE).write_text(json.dumps(vocab, indent=1, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, run_dir):
        """The LabelSet saved in run_dir; LabelError naming the missing file."""
        run_dir = Path(run_dir)
        for name in (LABELS_FILE, VOCAB_FILE):
            if not (run_dir / name).is_file():
                raise LabelError(f"{run_dir} has no {name}; expected a directory written by LabelSet.save")
        vocab = json.loads((run_dir / VOCAB_FILE).read_text(encoding="utf-8"))
        config = from_saved(LabelConfig, vocab.pop("config"))  # an older, flat config too
        with np.load(run_dir / LABELS_FILE, allow_pickle=False) as arrays:
            data = {name: arrays[name] for name in arrays.files}
        return cls(config=config, **data, **vocab)


def build_labels(metadata_path, config=None, cache_keys=None):
    """Labels of the four tasks from a metadata file, optionally joined to cache keys first.

    Steps: read the format's records; refuse duplicated record keys; with cache_keys, join each cache key
    to its record (rijks14: 7-digit file-name number minus one = row; met: file stem = object ID; csv: the
    key column equals the cache key or its file stem), so keys become cache keys in cache order; keep
    artists with >= min_artist_samples samples (classes ordered by decreasing count, then name) and, unless
    keep_all_samples, only their samples; type/material vocabularies keep classes with >= min_class_samples
    positives among the kept samples; split with the official split when the source has one, else
    `stratified_split`. Returns (LabelSet, JoinReport or None).
    """
    config = config or LabelConfig()
    if config.protocol == "rijks14-challenge":
        return challenge_labels(metadata_path, config, cache_keys)
    records = read_records(metadata_path, config)
    source_rows = len(records)
    _refuse_duplicates(records.keys, "metadata key")
    report = None
    keys = records.keys
    if cache_keys is not None:
        rows, keys, report = _join(config.format, records.keys, cache_keys)
        if not report.n_joined:
            raise LabelError(f"no cache key joins a {config.format} metadata record ({report}); "
                             "check that the cache was extracted from this collection's images")
        records = records.take(rows)

    counts = np.bincount(records.artist[records.artist >= 0], minlength=len(records.artist_names))
    kept = _frequent(counts, records.artist_names, config.min_artist_samples)
    remap = np.full(len(records.artist_names) + 1, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    artist = remap[records.artist]  # -1 indexes the trailing -1
    if not config.keep_all_samples:
        if not len(kept):
            largest = int(counts.max()) if len(counts) else 0
            raise LabelError(
                f"no artist has >= {config.min_artist_samples} samples (the most productive has {largest}); "
                "lower --min-artist-samples or drop --artist-samples-only"
            )
        rows = artist >= 0
        records, keys, artist = records.take(rows), keys[rows], artist[rows]

    type_known, material_known = (np.asarray(matrix.sum(axis=1)).ravel() > 0 for matrix in (records.types, records.materials))
    types, type_names, type_display = _vocabulary(
        records.types, records.type_ids, records.type_display, config.min_class_samples)
    materials, material_names, material_display = _vocabulary(
        records.materials, records.material_ids, records.material_display, config.min_class_samples)
    split = records.split if records.split is not None else stratified_split(keys, artist, config.seed)
    labels = LabelSet(
        keys=np.asarray(keys).astype(str), artist=artist.astype(np.int64),
        artist_names=[records.artist_names[i] for i in kept],
        artist_display=[records.artist_display[i] for i in kept] if records.artist_display is not None else None,
        types=types, type_names=type_names, type_display=type_display,
        materials=materials, material_names=material_names, material_display=material_display,
        year=records.year.astype(np.float32), split=np.asarray(split).astype(str), config=config,
        year_unparsed=int(records.year_unparsed.sum()), source_rows=source_rows,
        type_known=type_known, material_known=material_known,
    )
    return labels, report


def challenge_labels(metadata_path, config, cache_keys=None):
    """The Rijksmuseum Challenge 2014's labels, as its evaluation code builds them from rijksgt.mat.

    Creators with an object in each split and >= 10 test objects (not `anoniem`/`unknown`) are classes, ordered
    by test objects (most first, so the top-N subsets are the first N columns); every other object is class
    "rest" (the last). Types/materials (a count > 0 is a positive) with a positive in each split and >= 10 test
    positives, ordered the same way. The year is the mean of the interval when it is shorter than 100 years.
    Classes come from the whole ground truth; with cache_keys the rows are then restricted to the joined ones.
    Returns (LabelSet, JoinReport or None).
    """
    from omniart.pipeline.parsing import artist_display
    from omniart.pipeline.rijks14 import load_rijks14_gt, mat_strings, rijks14_display, rijks14_keys

    gt, n = load_rijks14_gt(metadata_path)
    split_code = np.asarray(gt["set"]).ravel()
    in_split = [split_code == code for code in (1, 2, 3)]

    def eligible(counts_per_split):  # (3, classes) -> the kept classes, most test positives first
        train, val, test = counts_per_split
        keep = np.flatnonzero((train > 0) & (val > 0) & (test >= CHALLENGE_MIN_TEST))
        return keep[np.argsort(-test[keep], kind="stable")]

    creator = np.asarray(gt["C"]).ravel().astype(np.int64) - 1
    creator_names = mat_strings(gt["Cnames"])
    counts = np.stack([np.bincount(creator[rows & (creator >= 0)], minlength=len(creator_names)) for rows in in_split])
    counts[:, [i for i, name in enumerate(creator_names) if name.strip().lower() in CHALLENGE_NOT_CREATORS]] = 0
    classes = eligible(counts)
    code = np.full(len(creator_names) + 1, len(classes), np.int64)  # everything else: "rest"
    code[classes] = np.arange(len(classes))
    artist = code[np.where(creator >= 0, creator, len(creator_names))]

    def multi_label(field, names_field):
        positive = np.asarray(gt[field]) > 0
        kept = eligible(np.stack([positive[rows].sum(axis=0) for rows in in_split]))
        names = mat_strings(gt[names_field])
        return positive[:, kept].astype(np.uint8), [names[i] for i in kept], positive.any(axis=1)

    types, type_names, type_known = multi_label("T", "Tnames")
    materials, material_names, material_known = multi_label("M", "Mnames")
    interval = np.asarray(gt["Y"], dtype=np.float64)
    year = np.where(np.abs(interval[:, 0] - interval[:, 1]) < CHALLENGE_MAX_INTERVAL, interval.mean(axis=1), np.nan)
    keys, rows, report = rijks14_keys(n), np.arange(n), None
    if cache_keys is not None:
        rows, keys, report = _join("rijks14", keys, cache_keys)
        if not report.n_joined:
            raise LabelError(f"no cache key joins a rijks14 record ({report}); check that the cache was extracted "
                             "from the Rijks'14 images")
    labels = LabelSet(
        keys=np.asarray(keys).astype(str), artist=artist[rows], artist_names=[creator_names[i] for i in classes] + ["rest"],
        artist_display=[artist_display(creator_names[i], lower_cased_source=True) for i in classes] + ["rest"],
        types=types[rows], type_names=type_names, materials=materials[rows], material_names=material_names,
        type_display=rijks14_display("type", type_names, config.language),
        material_display=rijks14_display("material", material_names, config.language),
        year=year[rows].astype(np.float32), split=np.array(SPLITS)[split_code[rows] - 1], config=config,
        source_rows=n, type_known=type_known[rows], material_known=material_known[rows])
    return labels, report


def _frequent(counts, names, min_count):
    """Indices of the classes with >= min_count samples, ordered by decreasing count, then name."""
    kept = np.flatnonzero(counts >= min_count)
    return kept[np.lexsort((np.array(names, dtype=object)[kept].astype(str), -counts[kept]))]


def _vocabulary(matrix, ids, display, min_count):
    """Dense uint8 multi-hot of the classes with >= min_count positives, ordered by count then id."""
    kept = _frequent(np.asarray(matrix.sum(axis=0)).ravel(), ids, min_count)
    dense = matrix[:, kept].toarray().astype(np.uint8)
    return dense, [ids[i] for i in kept], [display[i] for i in kept]


def _refuse_duplicates(keys, what):
    import pandas as pd

    duplicated = pd.Index(keys).duplicated()
    if duplicated.any():
        names = list(dict.fromkeys(np.asarray(keys)[duplicated].tolist()))
        raise LabelError(f"duplicated {what}(s) {names[:_EXAMPLES]} ({len(names)} in all); every key must be unique")


def _join(fmt, record_keys, cache_keys):
    """Rows of record_keys matched by cache_keys (format rule), the matched cache keys, and a JoinReport."""
    import pandas as pd

    cache_keys = np.asarray([str(k) for k in cache_keys], dtype=object)
    _refuse_duplicates(cache_keys, "cache key")
    index = pd.Index(record_keys)
    if fmt == "csv":
        rows = index.get_indexer(cache_keys)
        stems = np.array([key_stem(k) for k in cache_keys], dtype=object)
        rows = np.where(rows >= 0, rows, index.get_indexer(stems))
    else:
        wanted = np.array([record_key_of(fmt, k) or "" for k in cache_keys], dtype=object)
        rows = index.get_indexer(wanted)
    matched = rows >= 0
    joined = rows[matched]
    taken = pd.Index(joined).duplicated(keep=False)
    if taken.any():
        row = joined[taken][0]
        both = cache_keys[matched][joined == row].tolist()
        raise LabelError(
            f"cache keys {both[:_EXAMPLES]} all join metadata record {record_keys[row]!r}; "
            "a record may join one cache key only (remove the duplicate images)"
        )
    unused = np.ones(len(record_keys), bool)
    unused[joined] = False
    report = JoinReport(
        n_joined=int(matched.sum()), only_in_cache=int((~matched).sum()), only_in_metadata=int(unused.sum()),
        only_in_cache_examples=cache_keys[~matched][:_EXAMPLES].tolist(),
        only_in_metadata_examples=np.asarray(record_keys)[unused][:_EXAMPLES].tolist(),
    )
    return joined, cache_keys[matched].astype(str), report
