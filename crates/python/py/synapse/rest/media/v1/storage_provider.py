from synapse.media.storage_provider import StorageProvider  # noqa: F401
