from synapse.media._base import FileInfo, Responder  # noqa: F401
