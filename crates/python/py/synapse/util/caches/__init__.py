"""synapse.util.caches: the caching decorators modules use."""
