"""Weights for the built-in backbones: a state-dict or safetensors file (with its sha256 as the record), or
torchvision's published weights from torch's hub cache (downloaded once, failing fast and helpfully offline)."""
import hashlib
import os
from pathlib import Path
from typing import Dict, Tuple

from omniart.extract.config import ExtractError

__all__ = ["looks_like_file", "load_state_file", "load_into", "torchvision_weights", "with_weights", "load_safetensors"]


def looks_like_file(weights: str) -> bool:
    return os.sep in weights or "/" in weights or weights.endswith((".pth", ".pt", ".bin", ".ckpt")) \
        or os.path.exists(weights)


def load_state_file(path: str, others: str = "a torchvision weights name, or 'random'") -> Tuple[dict, str]:
    """State dict in a file (plain or under 'state_dict'/'model'; DDP 'module.' prefixes dropped) and its sha256.
    `others`: what else the backbone's --weights accepts, for the messages."""
    import torch

    if os.path.exists(path) and not os.path.isfile(path):
        raise ExtractError(f"--weights {path!r} is not a regular file (a folder, pipe or device): pass a state-dict "
                           f"file, {others}.")
    if not os.path.isfile(path):
        raise ExtractError(f"--weights file {path!r} does not exist: pass an existing state-dict file, {others}.")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise ExtractError(f"--weights file {path!r} is not a readable torch state dict ({error}).") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ExtractError(f"--weights file {path!r} holds a {type(state).__name__}, not a state dict.")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}, f"sha256:{digest}"


def load_into(model, state: dict, path: str, ignore_prefix) -> None:
    """Strict load apart from the classifier (`ignore_prefix`), with an error that names the mismatching keys."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefix)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ExtractError(f"--weights file {path!r} does not fit this backbone: {error}") from error
    missing = [k for k in result.missing_keys if not k.startswith(ignore_prefix)]
    if missing or result.unexpected_keys:
        raise ExtractError(f"--weights file {path!r} does not fit this backbone: missing keys "
                           f"{missing[:5]}, unexpected keys {result.unexpected_keys[:5]}.")


def download(url: str, path: Path) -> None:
    """Fetch torchvision weights into its cache, failing within seconds when offline."""
    import socket

    import torch

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=False)
    finally:
        socket.setdefaulttimeout(previous)


def torchvision_weights(urls: Dict[str, str], name: str) -> dict:
    """The state dict of torchvision weights `name` from torch's hub cache, downloading only when absent."""
    import torch

    short = name.split(".")[-1]  # "ResNet50_Weights.IMAGENET1K_V2" works too
    if short not in urls:
        raise ExtractError(f"unknown --weights {name!r}: use a torchvision weights name ({', '.join(urls)}), a "
                           f"state-dict file, or 'random'.")
    url = urls[short]
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.is_file():
        try:
            download(url, path)
        except Exception as error:  # offline GPU nodes: URLError, timeouts, DNS failures
            raise ExtractError(
                f"weights {short} are not in torchvision's cache ({path}) and could not be downloaded "
                f"({type(error).__name__}: {error}). Offline now: `omni-extract IMAGES --out CACHE --backbone "
                f"efficientnet_lite0` needs no download (its weights ship in omniart[offline]). For these weights: "
                f"on a machine with internet download {url}, then copy it to {path.parent}/ (TORCH_HOME moves that "
                f"folder) or pass --weights FILE with its path; or rerun once where this machine has internet."
            ) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # e.g. a download cut short by an earlier run
        raise ExtractError(f"cached weights {path} are unreadable ({error}): delete the file and rerun, or pass "
                           "--weights FILE.") from error


def with_weights(model, weights: str, urls: Dict[str, str], ignore_prefix) -> tuple:
    """(model, weights record) with `weights` loaded: 'random' (as built), a state-dict file, or a torchvision
    weights name from `urls`; the classifier's entries (`ignore_prefix`) are not needed."""
    if weights == "random":
        return model, "random"
    if looks_like_file(weights):
        state, record = load_state_file(weights)
    else:
        state, record = torchvision_weights(urls, weights), weights.split(".")[-1]
    load_into(model, state, weights, ignore_prefix=ignore_prefix)
    return model, record


def load_safetensors(path: str) -> Tuple[dict, str]:
    if not os.path.isfile(path):
        raise ExtractError(f"--weights file {path!r} does not exist (or is not a regular file): pass a .safetensors "
                           "file, a torch state dict, pretrained or random.")
    from safetensors.torch import load_file

    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    try:
        return load_file(path), f"sha256:{digest}"
    except Exception as error:  # a file that is not safetensors: several error types
        raise ExtractError(f"--weights file {path!r} is not a readable safetensors file ({error}).") from error
