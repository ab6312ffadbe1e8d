"""check_can_shutdown_room and ModuleApi members (delete_room, create_login_token,
record_user_external_id) behind a web resource, for the black-box tests. A room where an
`org.example.protect` event was sent may not be shut down."""

import json

from synapse.http.server import DirectServeJsonResource


class Resource(DirectServeJsonResource):
    def __init__(self, module):
        super().__init__()
        self.module = module

    async def _async_render_GET(self, request):
        return 200, {"protected": sorted(self.module.protected), "asked": self.module.asked}

    async def _async_render_POST(self, request):
        body = json.loads(request.content.read())
        if "room_id" in body:
            await self.module.api.delete_room(body["room_id"])
            return 200, {}
        if "presence_to" in body:
            await self.module.api.send_local_online_presence_to(body["presence_to"])
            return 200, {}
        if "external_id" in body:
            await self.module.api.record_user_external_id(body["auth_provider"], body["external_id"], body["user_id"])
            return 200, {}
        token = await self.module.api.create_login_token(body["user_id"], body.get("duration_in_ms", 120000))
        return 200, {"login_token": token}


class ModuleApiCalls:
    def __init__(self, config, api):
        self.api = api
        self.protected = set()
        self.asked = []
        api.register_third_party_rules_callbacks(
            on_new_event=self.on_new_event,
            check_can_shutdown_room=self.check_can_shutdown_room,
        )
        api.register_web_resource("/_synapse/client/module_api_calls", Resource(self))

    async def on_new_event(self, event, state):
        if event.type == "org.example.protect":
            self.protected.add(event.room_id)

    async def check_can_shutdown_room(self, user_id, room_id):
        self.asked.append([user_id, room_id])
        return room_id not in self.protected
