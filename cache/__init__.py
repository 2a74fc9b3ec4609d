"""The feature store: HDF5 shards of feature rows, keyed by image, written atomically and read by key."""
from omniart.cache.failures import FailureLog, read_failures
from omniart.cache.format import FORMAT_VERSION, CacheError, cached_keys
from omniart.cache.store import FeatureStore
from omniart.cache.writer import ShardWriter, check_extends, publish_cache, write_features

__all__ = ["CacheError", "FORMAT_VERSION", "FeatureStore", "ShardWriter",
           "FailureLog", "write_features", "check_extends", "publish_cache", "cached_keys", "read_failures"]
