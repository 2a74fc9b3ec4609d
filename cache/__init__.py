"""HDF5 feature cache (keyed shards written atomically, read by key) and the errors and devices both phases share."""
from omniart.cache.errors import OmniError, cli_errors
from omniart.cache.failures import FailureLog, read_failures
from omniart.cache.format import FORMAT_VERSION, CacheError, cached_keys
from omniart.cache.store import FeatureStore
from omniart.cache.writer import ShardWriter, check_extends, publish_cache, write_features

__all__ = ["OmniError", "cli_errors", "CacheError", "FORMAT_VERSION", "FeatureStore", "ShardWriter",
           "FailureLog", "write_features", "check_extends", "publish_cache", "cached_keys", "read_failures"]
