// A real matrix-js-sdk session against Myelin.
//
// Usage: node session.mjs BASE_URL
// Two clients register, log in, create a room, invite, join, send, receive through /sync,
// paginate /messages, set a profile and leave. Prints "JS OK" when every step behaved.

import * as sdk from "matrix-js-sdk";

const base = process.argv[2];
const suffix = Math.random().toString(36).slice(2, 10);

function check(cond, what) {
    if (!cond) throw new Error(`check failed: ${what}`);
}

async function register(name, password) {
    const client = sdk.createClient({ baseUrl: base });
    try {
        await client.registerRequest({ username: name, password });
    } catch (e) {
        // The first call answers 401 with the UIA flows; complete the dummy stage.
        const session = e.data?.session;
        check(session, `UIA session in ${JSON.stringify(e.data)}`);
        return client.registerRequest({ username: name, password, auth: { type: "m.login.dummy", session } });
    }
    throw new Error("registration without auth should have asked for UIA");
}

function waitFor(client, predicate, what, ms = 15000) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
        const check = () => {
            const result = predicate();
            if (result) {
                clearTimeout(timer);
                client.removeListener("event", check);
                client.removeListener("sync", check);
                client.removeListener("Room.timeline", check);
                resolve(result);
            }
        };
        client.on("event", check);
        client.on("sync", check);
        client.on("Room.timeline", check);
        check();
    });
}

async function main() {
    await register(`alice${suffix}`, "alice-pw");
    const bobReg = await register(`bob${suffix}`, "bob-pw");
    const loginClient = sdk.createClient({ baseUrl: base });
    const login = await loginClient.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: `alice${suffix}` },
        password: "alice-pw",
    });
    const alice = sdk.createClient({ baseUrl: base, accessToken: login.access_token, userId: login.user_id, deviceId: login.device_id });
    const bob = sdk.createClient({ baseUrl: base, accessToken: bobReg.access_token, userId: bobReg.user_id, deviceId: bobReg.device_id });
    await alice.startClient({ initialSyncLimit: 10 });
    await bob.startClient({ initialSyncLimit: 10 });
    await waitFor(alice, () => alice.getSyncState() === "SYNCING" || alice.getSyncState() === "PREPARED", "alice sync");
    await waitFor(bob, () => bob.getSyncState() === "SYNCING" || bob.getSyncState() === "PREPARED", "bob sync");

    const { room_id: roomId } = await alice.createRoom({ name: "js room", topic: "made by matrix-js-sdk" });
    await alice.invite(roomId, bob.getUserId());
    await waitFor(bob, () => bob.getRoom(roomId)?.getMyMembership() === "invite", "bob's invite");
    await bob.joinRoom(roomId);
    await waitFor(alice, () => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join", "bob's join at alice");

    for (let i = 0; i < 12; i++) {
        await alice.sendTextMessage(roomId, `js hello ${i}`);
    }
    await waitFor(
        bob,
        () => bob.getRoom(roomId)?.getLiveTimeline().getEvents().some((e) => e.getContent().body === "js hello 11"),
        "bob receiving the last message",
    );

    // Paginate bob's timeline back to the room's creation.
    const room = bob.getRoom(roomId);
    const timeline = room.getLiveTimeline();
    for (let i = 0; i < 10 && timeline.getPaginationToken(sdk.EventTimeline.BACKWARDS); i++) {
        await bob.paginateEventTimeline(timeline, { backwards: true, limit: 5 });
    }
    const bodies = timeline.getEvents().filter((e) => e.getType() === "m.room.message").map((e) => e.getContent().body);
    check(bodies.length === 12, `all 12 messages after pagination, got ${bodies.length}: ${bodies}`);
    check(bodies[0] === "js hello 0" && bodies[11] === "js hello 11", `order: ${bodies}`);
    check(timeline.getEvents()[0].getType() === "m.room.create", `pagination reached the create event: ${timeline.getEvents().map((e) => e.getType())}`);

    await alice.setDisplayName("Alice (js)");
    const profile = await bob.getProfileInfo(alice.getUserId());
    check(profile.displayname === "Alice (js)", `profile ${JSON.stringify(profile)}`);
    await waitFor(bob, () => bob.getRoom(roomId)?.getMember(alice.getUserId())?.name === "Alice (js)", "the rename in bob's room");
    // The rename is a member event that replaced alice's join: the SDK sees what it replaced
    // (unsigned.prev_content), which is how clients tell a rename from a join.
    const rename = bob.getRoom(roomId).getLiveTimeline().getEvents()
        .filter((e) => e.getType() === "m.room.member" && e.getStateKey() === alice.getUserId()).pop();
    check(rename.getContent().displayname === "Alice (js)", `rename content ${JSON.stringify(rename.getContent())}`);
    check(rename.getPrevContent().membership === "join", `rename's prev_content ${JSON.stringify(rename.getPrevContent())}`);
    check(rename.getPrevContent().displayname !== "Alice (js)", "prev_content is the content before");
    check(typeof rename.getAge() === "number", `age ${rename.getAge()}`);

    await bob.leave(roomId);
    await waitFor(alice, () => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "leave", "bob's leave at alice");

    alice.stopClient();
    bob.stopClient();
    console.log("JS OK");
    process.exit(0);
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
