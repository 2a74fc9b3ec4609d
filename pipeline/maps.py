"""A 2-D map of a collection from its features (UMAP, PCA then t-SNE, or PCA) and each image's nearest neighbours,
both deterministic for a seed."""
from typing import Tuple

import numpy as np

from omniart.heads.neighbors import unit_rows
from omniart.pipeline import PipelineError

__all__ = ["METHODS", "layout", "PCA_DIMENSIONS"]

METHODS = ("umap", "pca-tsne", "pca")
PCA_DIMENSIONS = 50  # what UMAP and t-SNE read: cosine geometry kept, their cost independent of the backbone's width


def layout(features, method: str = "umap", seed: int = 0, neighbors: int = 8) -> Tuple[np.ndarray, np.ndarray]:
    """((N, 2) float32 positions in [0, 1], the longer side spanning it; (N, neighbors) int32 row indices of each
    row's nearest neighbours by cosine, nearest first, itself left out). Rows are L2-normalised and reduced to
    PCA_DIMENSIONS first; UMAP's own neighbour graph gives the neighbours, else an exact search on the PCA vectors."""
    if method not in METHODS:
        raise PipelineError(f"unknown map method {method!r}; use one of {', '.join(METHODS)}.")
    x = unit_rows(features)  # float32, scaled block by block: no second copy of the features
    rows = len(x)
    k = min(neighbors, rows - 1)
    if rows < 4:  # too few for any projection: a line
        position = np.stack([np.linspace(0, 1, rows), np.full(rows, 0.5)], 1) if rows > 1 else np.full((rows, 2), 0.5)
        return position.astype(np.float32), _exact_neighbors(x, k)
    reduced = _pca(x, min(PCA_DIMENSIONS, x.shape[1], rows - 1), seed)
    if method == "pca":
        return _unit_box(reduced[:, :2]), _exact_neighbors(reduced, k)
    if method == "pca-tsne":
        from sklearn.manifold import TSNE

        position = TSNE(2, perplexity=min(30.0, (rows - 1) / 3), init="pca", random_state=seed).fit_transform(reduced)
        return _unit_box(position), _exact_neighbors(reduced, k)
    import warnings

    with warnings.catch_warnings():  # umap's notes: no TensorFlow (ParametricUMAP), one thread with a seed
        warnings.simplefilter("ignore")
        import umap

        reducer = umap.UMAP(n_neighbors=min(15, rows - 1), n_components=2, random_state=seed, min_dist=0.1)
        position = reducer.fit_transform(reduced)
    graph = getattr(reducer, "_knn_indices", None)
    if graph is None or graph.shape[1] < k + 1:
        return _unit_box(position), _exact_neighbors(reduced, k)
    return _unit_box(position), _without_self(graph, k)


def _pca(x: np.ndarray, dims: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(dims, svd_solver="randomized" if dims < min(x.shape) // 2 else "full", random_state=seed) \
        .fit_transform(x).astype(np.float32)


def _unit_box(position: np.ndarray) -> np.ndarray:
    """Positions scaled into [0, 1], the longer side spanning it, the shorter centred. The box is that of the central
    99.8 % on each axis, the few points beyond drawn on its edge: one far outlier would otherwise squeeze the
    whole collection into a corner of the map."""
    position = np.asarray(position, np.float64)
    low, high = (np.percentile(position, 0.1, axis=0), np.percentile(position, 99.9, axis=0)) if len(position) >= 1000 \
        else (position.min(0), position.max(0))
    span = high - low
    scale = span.max() if span.max() > 0 else 1.0
    centred = (np.clip(position, low, high) - low) / scale + (1 - span / scale) / 2
    return centred.astype(np.float32)


def _exact_neighbors(x: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Each row's k nearest rows by cosine (rows are unit or PCA vectors of unit rows), blocked: bounded memory."""
    if k <= 0:
        return np.zeros((len(x), 0), np.int32)
    unit = unit_rows(x)
    found = np.empty((len(x), k), np.int32)
    for start in range(0, len(x), block):
        similarity = unit[start:start + block] @ unit.T
        similarity[np.arange(len(similarity)), np.arange(start, start + len(similarity))] = -np.inf
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(similarity, top, 1), axis=1, kind="stable")
        found[start:start + block] = np.take_along_axis(top, order, 1)
    return found


def _without_self(graph: np.ndarray, k: int) -> np.ndarray:
    """Each row's first k neighbours in `graph` (at least k + 1 wide) other than itself, in the graph's order."""
    other = graph != np.arange(len(graph))[:, None]
    first = np.argsort(~other, axis=1, kind="stable")[:, :k]  # the non-self columns, in order
    return np.take_along_axis(graph, first, 1).astype(np.int32)
