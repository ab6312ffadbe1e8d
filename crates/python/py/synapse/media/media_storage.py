from twisted.internet import threads

from synapse.media._base import Responder


class ReadableFileWrapper:
    """A stored file a spam checker can read (Synapse's ReadableFileWrapper)."""

    CHUNK_SIZE = 2**14

    def __init__(self, clock, path):
        self.clock = clock
        self.path = path

    async def write_chunks_to(self, callback):
        """Calls `callback` with each chunk of the file; reading happens off the reactor."""

        def read():
            with open(self.path, "rb") as f:
                return f.read()

        data = await threads.deferToThread(read)
        for i in range(0, len(data), self.CHUNK_SIZE):
            callback(data[i:i + self.CHUNK_SIZE])


class FileResponder(Responder):
    """Wraps an open file to be streamed to a consumer; closed when done."""

    def __init__(self, hs, open_file):
        self.hs = hs
        self.open_file = open_file

    def write_to_consumer(self, consumer):
        from twisted.protocols.basic import FileSender

        return FileSender().beginFileTransfer(self.open_file, consumer)

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.open_file.close()
