"""Synapse's media types as modules and storage providers see them (`synapse.media._base`)."""

from abc import ABC, abstractmethod


class ThumbnailInfo:
    """Details about a generated thumbnail."""

    __slots__ = ("width", "height", "method", "type", "length")

    def __init__(self, width, height, method, type, length):
        self.width = width
        self.height = height
        self.method = method
        self.type = type
        self.length = length

    def __repr__(self):
        return "ThumbnailInfo(width=%r, height=%r, method=%r, type=%r, length=%r)" % (
            self.width, self.height, self.method, self.type, self.length)


class FileInfo:
    """Details about a stored file (Synapse's FileInfo), with its thumbnail_* compatibility
    properties."""

    def __init__(self, server_name, file_id, url_cache=False, thumbnail=None):
        self.server_name = server_name
        self.file_id = file_id
        self.url_cache = url_cache
        self.thumbnail = thumbnail

    def _thumb(self, name):
        return getattr(self.thumbnail, name) if self.thumbnail else None

    thumbnail_width = property(lambda self: self._thumb("width"))
    thumbnail_height = property(lambda self: self._thumb("height"))
    thumbnail_method = property(lambda self: self._thumb("method"))
    thumbnail_type = property(lambda self: self._thumb("type"))
    thumbnail_length = property(lambda self: self._thumb("length"))

    def __repr__(self):
        return "FileInfo(server_name=%r, file_id=%r, url_cache=%r, thumbnail=%r)" % (
            self.server_name, self.file_id, self.url_cache, self.thumbnail)


class Responder(ABC):
    """A response streamed to a consumer; a context manager that must be used."""

    @abstractmethod
    def write_to_consumer(self, consumer):
        raise NotImplementedError()

    def __enter__(self):
        pass

    def __exit__(self, exc_type, exc_val, exc_tb):
        pass
