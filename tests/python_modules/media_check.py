"""A Python check_media_file_for_spam that reads the stored bytes, as real media checkers do."""

from synapse.module_api import NOT_SPAM
from synapse.module_api.errors import Codes


class MediaCheck:
    def __init__(self, config, api):
        self.infos = []
        api.register_spam_checker_callbacks(check_media_file_for_spam=self.check)

    async def check(self, file_wrapper, file_info):
        chunks = []
        await file_wrapper.write_chunks_to(chunks.append)
        self.infos.append(repr(file_info))
        return Codes.FORBIDDEN if b"evil" in b"".join(chunks) else NOT_SPAM
