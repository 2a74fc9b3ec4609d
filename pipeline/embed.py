"""Shared-layer activations of a trained run (paper 3.3) written as a new feature cache."""
from pathlib import Path
from typing import Optional

from omniart.pipeline import PipelineError

__all__ = ["embed", "embedding_attrs"]


def embedding_attrs(run_dir, source_attrs: dict) -> dict:
    """Cache attrs of an embedding: backbone 'omniart-shared:<run>', the model's hash, and the source cache's attrs."""
    from omniart.pipeline.predict import file_sha256

    run_dir = Path(run_dir)
    source = {name: value for name, value in source_attrs.items() if name not in ("format_version", "dtype")}
    return {"backbone": f"omniart-shared:{run_dir.resolve().name}",
            "weights": f"sha256:{file_sha256(run_dir / 'model.pt')}",
            "preprocessing": source_attrs.get("preprocessing", {}),
            "embed_run": str(run_dir.resolve()), "source_cache": source}


def embed(run_dir, cache_dir, out_dir, flip: bool = True, dtype: str = "float16", device: Optional[str] = None,
          rows: int = 65536) -> dict:
    """Write model.shared(features) for every row of cache_dir as the new cache out_dir (same keys, order and
    format), published whole.

    Flipped features are embedded too when the source has them and `flip`. Returns rows, feature_dim, out.
    """
    from omniart.cache import FeatureStore, ShardWriter, cached_keys, publish_cache
    from omniart.core.environment import resolve_device
    from omniart.pipeline.predict import check_cache_matches
    from omniart.pipeline.run_dir import load_run

    run = load_run(run_dir, device=resolve_device(device))
    if not run.model.shared_size:
        raise PipelineError(f"run {run_dir} has linear heads (--shared-size 0): there is no shared layer to embed; "
                            "refit with --shared-size > 0, or use the cache's own features.")
    store = FeatureStore(cache_dir)
    check_cache_matches(run.cache_attrs, store.attrs, store.path)
    if cached_keys(out_dir):
        raise PipelineError(f"{out_dir} already holds feature shards; pass a new --out folder for the embeddings.")
    if Path(out_dir).exists() and (not Path(out_dir).is_dir() or any(Path(out_dir).iterdir())):
        raise PipelineError(f"{out_dir} is not an empty folder; pass a new --out folder for the embeddings.")
    with_flip = flip and store.has_flip
    hidden = run.model.shared_size
    attrs = embedding_attrs(run_dir, store.attrs)
    shared = run.estimator.embed
    written = 0

    def build(folder: Path) -> None:  # the whole cache beside out_dir: a killed embed leaves no partial cache
        nonlocal written
        batches = store.iter_batches(rows=rows)
        flipped = store.iter_batches(rows=rows, flip=True) if with_flip else None
        with ShardWriter(folder, "embed", attrs, hidden, dtype=dtype, with_flip=with_flip) as writer:
            for keys, block in batches:
                flip_block = shared(next(flipped)[1]) if with_flip else None
                writer.add(keys, shared(block), flip_block)
                written += len(keys)

    publish_cache(out_dir, build)
    return {"rows": written, "feature_dim": hidden, "out": str(out_dir), "flip": with_flip}
