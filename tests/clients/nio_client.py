"""A real matrix-nio client session against Myelin.

Usage: nio_client.py BASE_URL
Two clients register, log in, create a room, invite, join, send, receive through /sync,
paginate /messages, set a profile and leave. Prints "NIO OK" and exits 0 when every step
behaved; any failure raises (exit 1) with what went wrong.
"""

import asyncio
import sys
import uuid

from nio import (
    AsyncClient,
    JoinResponse,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomLeaveResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)


def expect(response, kind):
    if not isinstance(response, kind):
        raise AssertionError(f"expected {kind.__name__}, got {response!r}")
    return response


async def main(base: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    alice = AsyncClient(base, f"alice{suffix}")
    bob = AsyncClient(base, f"bob{suffix}")
    try:
        expect(await alice.register(f"alice{suffix}", "alice-password"), RegisterResponse)
        expect(await bob.register(f"bob{suffix}", "bob-password"), RegisterResponse)
        # A fresh login for alice, as a returning user would.
        await alice.close()
        alice = AsyncClient(base, f"@alice{suffix}:test")
        expect(await alice.login("alice-password", device_name="nio test"), LoginResponse)

        created = expect(await alice.room_create(name="nio room", topic="made by matrix-nio"), RoomCreateResponse)
        room_id = created.room_id
        expect(await alice.room_invite(room_id, bob.user_id), RoomInviteResponse)

        sync = expect(await bob.sync(timeout=5000), SyncResponse)
        if room_id not in sync.rooms.invite:
            raise AssertionError(f"bob did not see the invite: {sync.rooms.invite}")
        expect(await bob.join(room_id), JoinResponse)

        first = expect(await alice.sync(timeout=1000), SyncResponse)
        for i in range(15):
            expect(
                await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"hello {i}"}),
                RoomSendResponse,
            )

        # Bob receives the messages through incremental syncs.
        seen = []
        token = bob.next_batch
        for _ in range(10):
            sync = expect(await bob.sync(timeout=5000, since=token), SyncResponse)
            token = sync.next_batch
            room = sync.rooms.join.get(room_id)
            if room:
                seen += [e.body for e in room.timeline.events if isinstance(e, RoomMessageText)]
            if "hello 14" in seen:
                break
        if "hello 14" not in seen:
            raise AssertionError(f"bob never received the last message; saw {seen}")

        # Paginate the whole history backwards from alice's latest sync position.
        expect(await alice.sync(timeout=1000, since=alice.next_batch), SyncResponse)
        bodies = []
        start = alice.next_batch
        while True:
            page = expect(await alice.room_messages(room_id, start=start, limit=4), RoomMessagesResponse)
            bodies += [e.body for e in page.chunk if isinstance(e, RoomMessageText)]
            if not page.end or not page.chunk:
                break
            start = page.end
        if bodies[:3] != ["hello 14", "hello 13", "hello 12"] or len(bodies) != 15:
            raise AssertionError(f"pagination gave {bodies}")

        await alice.set_displayname("Alice (nio)")
        profile = await bob.get_profile(alice.user_id)
        if getattr(profile, "displayname", None) != "Alice (nio)":
            raise AssertionError(f"profile not set: {profile!r}")
        # The rename reaches bob's view of the room.
        renamed = False
        for _ in range(10):
            sync = expect(await bob.sync(timeout=3000, since=bob.next_batch), SyncResponse)
            if bob.rooms[room_id].user_name(alice.user_id) == "Alice (nio)":
                renamed = True
                break
        if not renamed:
            raise AssertionError("bob's room member list never showed the new display name")

        expect(await bob.room_leave(room_id), RoomLeaveResponse)
        sync = expect(await bob.sync(timeout=5000, since=bob.next_batch), SyncResponse)
        if room_id not in sync.rooms.leave:
            raise AssertionError(f"bob's leave is not in /sync: {sync.rooms.leave}")
        del first
        print("NIO OK")
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
