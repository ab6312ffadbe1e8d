// Two matrix-js-sdk clients (Rust crypto, stores kept in memory) exchange end-to-end encrypted
// messages on a Synapse; the server is then swapped under them for a Myelin that imported the
// Synapse's data (same address), and the same clients, with the same crypto stores, decrypt the
// history and keep messaging.
//
// Usage: node migrate.mjs BASE_URL. Prints "READY" when the first part is done, then waits for a
// line on stdin (the server has been swapped under the running clients); prints "MIGRATE OK"
// at the end.

import * as sdk from "matrix-js-sdk";

import { check, client, waitFor } from "./crypto-clients.mjs";
import * as readline from "node:readline";

const base = process.argv[2];

function decrypted(c, roomId, body) {
    return c
        .getRoom(roomId)
        ?.getLiveTimeline()
        .getEvents()
        .find((e) => e.getWireType() === "m.room.encrypted" && e.getContent().body === body);
}

async function start(c, what) {
    await c.startClient({ initialSyncLimit: 20 });
    await waitFor(c, () => c.isInitialSyncComplete(), what);
}

async function main() {
    const alice = await client(base, "malice");
    const bob = await client(base, "mbob");
    await start(alice, "alice's first sync");
    await start(bob, "bob's first sync");
    const { room_id: roomId } = await alice.createRoom({
        name: "moving room",
        invite: [bob.getUserId()],
        initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    await waitFor(bob, () => bob.getRoom(roomId)?.getMyMembership() === "invite", "bob's invite");
    await bob.joinRoom(roomId);
    await waitFor(alice, () => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join", "bob's join");
    await alice.sendTextMessage(roomId, "before the move");
    await waitFor(bob, () => decrypted(bob, roomId, "before the move"), "bob decrypting on Synapse");
    await bob.sendTextMessage(roomId, "seen on Synapse");
    await waitFor(alice, () => decrypted(alice, roomId, "seen on Synapse"), "alice decrypting on Synapse");

    // The clients keep running while the server is swapped: their syncs fail until the new
    // server answers at the same address, then carry on (a Synapse sync token: an initial sync).
    console.log("READY");
    const input = readline.createInterface({ input: process.stdin });
    await new Promise((resolve) => input.once("line", resolve));
    input.close();
    const syncedAgain = (c) => {
        let done = false;
        c.on("sync", (state) => {
            if (state === "SYNCING" || state === "PREPARED") done = true;
        });
        return () => done;
    };
    const [aliceBack, bobBack] = [syncedAgain(alice), syncedAgain(bob)];
    await waitFor(alice, aliceBack, "alice syncing with Myelin", 120000);
    await waitFor(bob, bobBack, "bob syncing with Myelin", 120000);
    check((await alice.whoami()).user_id === alice.getUserId(), "alice's access token still works");

    // History from before the move, fetched again from the new server, decrypts with the keys
    // the client already holds.
    const page = await bob.createMessagesRequest(roomId, null, 30, sdk.Direction.Backward);
    const bodies = [];
    for (const raw of page.chunk) {
        const event = new sdk.MatrixEvent(raw);
        if (event.getWireType() !== "m.room.encrypted") continue;
        await bob.decryptEventIfNeeded(event);
        bodies.push(event.getContent().body);
    }
    check(bodies.includes("before the move") && bodies.includes("seen on Synapse"), `history decrypted: ${bodies}`);

    await alice.sendTextMessage(roomId, "after the move");
    const got = await waitFor(bob, () => decrypted(bob, roomId, "after the move"), "bob decrypting on Myelin");
    check(!got.isDecryptionFailure(), "no decryption failure");
    await bob.sendTextMessage(roomId, "still secret");
    await waitFor(alice, () => decrypted(alice, roomId, "still secret"), "alice decrypting on Myelin");
    alice.stopClient();
    bob.stopClient();
    console.log("MIGRATE OK");
    process.exit(0);
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
