"""Synapse's storage provider interface (`media_storage_providers` entries implement it)."""

import abc


class StorageProvider(metaclass=abc.ABCMeta):
    """Stores uploaded media and fetches it back."""

    @abc.abstractmethod
    async def store_file(self, path, file_info):
        """Stores the file at `path` (relative to the media store)."""

    @abc.abstractmethod
    async def fetch(self, path, file_info):
        """A Responder if this provider has the file, else None."""
