class FileInfo:
    """What check_media_file_for_spam is told about a stored file (Synapse's FileInfo)."""

    def __init__(self, server_name, file_id, url_cache=False, thumbnail=None):
        self.server_name = server_name
        self.file_id = file_id
        self.url_cache = url_cache
        self.thumbnail = thumbnail

    def __repr__(self):
        return "FileInfo(server_name=%r, file_id=%r, url_cache=%r, thumbnail=%r)" % (
            self.server_name, self.file_id, self.url_cache, self.thumbnail)
