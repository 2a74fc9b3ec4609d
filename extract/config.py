"""`ExtractConfig`: every setting of phase one and its default, saved into the cache as `extract_config`."""
from dataclasses import InitVar, asdict, dataclass
from pathlib import Path
from typing import Optional, Union

from omniart.core.configs import renamed_fields
from omniart.core.errors import OmniError
from omniart.cache.writer import STORAGE_DTYPES

__all__ = ["ExtractConfig", "ExtractError", "DTYPES", "MAX_IMAGE_PIXELS"]

DTYPES = STORAGE_DTYPES  # what the cache writer stores; checked here so a bad option fails before any work
MAX_IMAGE_PIXELS = 178_956_970  # Pillow's own error limit (twice its warning limit)


class ExtractError(OmniError):
    """Bad input to phase one (images, options, weights); the message says what to change."""


@dataclass
class ExtractConfig:
    """Options of `omni-extract`; the CLI takes its defaults from here."""

    # a folder (searched recursively, links to folders followed; the .tar files in it are read too), a CSV/parquet
    # table with a path column, WebDataset tar files (a .tar, a folder of them, or a brace pattern
    # tars/{00000..00127}.tar), or with image_column parquet/Arrow tables of encoded images (a file, a folder of
    # them, or a brace pattern)
    images: Union[str, Path]
    out: Union[str, Path]  # cache directory (created; an existing one is resumed)
    backbone: str = "resnet50"
    weights: Optional[str] = None  # None = the backbone's default; a torchvision weights name, a file, or "random"
    flip: bool = True  # also store features of the horizontally flipped image (the paper's only augmentation)
    batch_size: int = 32
    workers: int = 2  # DataLoader decode processes; 0 decodes in this process
    device: Optional[str] = None  # None/"auto": cuda (LOCAL_RANK's GPU) when available, else cpu
    dtype: str = "float16"  # storage dtype of the features
    shard_size: int = 4096  # rows per published shard file: a killed run loses at most this many rows
    num_parts: Optional[int] = None  # with part_index: this worker's part; None = from torchrun/Slurm or all
    part_index: Optional[int] = None
    retry_failed: bool = False  # re-attempt keys listed in failures-*.csv
    strict: bool = False  # the CLI exits non-zero while any key of the cache's failure records is not extracted
    path_column: Optional[str] = None  # table input: column of image paths (default "path" or the only column)
    # table input: column of keys (default: the path as written; image tables: the image's path, else FILE_STEM/ROW,
    # the table file's name without its suffix and the row's number within that file)
    key_column: Optional[str] = None
    # parquet/Arrow input: column of encoded image bytes or Hugging Face image structs {"bytes", "path"}
    image_column: Optional[str] = None
    # tar input: field of each sample's KEY.json to use as its key (default: __key__); no sample having it is an
    # error, a sample without it a failure record
    key_field: Optional[str] = None
    progress: bool = True
    max_image_pixels: int = MAX_IMAGE_PIXELS  # larger images are recorded as failures (decompression bombs)
    timeout: float = 600.0  # seconds a DataLoader worker may take for one batch before the run stops
    # folders never listed under a folder input: --out always, and a run's whole output folder (its gallery)
    exclude: tuple = ()
    num_shards: InitVar[Optional[int]] = None  # the old spellings of num_parts and part_index (a shard is a file)
    shard_index: InitVar[Optional[int]] = None

    def __post_init__(self, num_shards=None, shard_index=None):
        renamed_fields(self, num_shards=("num_parts", num_shards), shard_index=("part_index", shard_index))
        if self.dtype not in DTYPES:
            raise ExtractError(f"unknown dtype {self.dtype!r}: use one of {', '.join(DTYPES)}.")
        for name in ("batch_size", "shard_size", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ExtractError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.workers < 0:
            raise ExtractError(f"workers must be 0 (decode in this process) or more, got {self.workers}.")
        if self.timeout <= 0:
            raise ExtractError(f"timeout must be positive seconds, got {self.timeout}.")

    def to_dict(self) -> dict:
        """JSON-able copy (paths as strings) for the cache attrs."""
        values = asdict(self)
        values["images"], values["out"] = str(self.images), str(self.out)
        values["exclude"] = [str(path) for path in self.exclude]
        return values
