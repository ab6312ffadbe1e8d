from synapse.config._base import ConfigError

__all__ = ["ConfigError"]
