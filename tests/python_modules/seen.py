"""A web resource answering what a test module recorded, as JSON, for the black-box tests."""

from synapse.http.server import DirectServeJsonResource


class Seen(DirectServeJsonResource):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    async def _async_render_GET(self, request):
        return 200, self.seen
