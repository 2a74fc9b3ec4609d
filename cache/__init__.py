"""HDF5 feature cache: keyed shards of pooled image features, written atomically, read by key."""
from cache.errors import OmniError, cli_errors

__all__ = ["OmniError", "cli_errors"]
