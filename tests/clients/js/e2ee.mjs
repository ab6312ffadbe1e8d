// Two matrix-js-sdk clients with its Rust crypto (matrix-sdk-crypto-wasm) set up end-to-end
// encryption through Myelin and exchange an encrypted message; the receiver decrypts it.
//
// Usage: node e2ee.mjs BASE_URL. Prints "E2EE OK" when the receiver has the plaintext and the
// server only ever carried m.room.encrypted.

import * as sdk from "matrix-js-sdk";

import { check, client, waitFor } from "./crypto-clients.mjs";

const base = process.argv[2];
const suffix = Math.random().toString(36).slice(2, 10);

async function main() {
    const alice = await client(base, `ealice${suffix}`);
    const bob = await client(base, `ebob${suffix}`);
    await alice.startClient({ initialSyncLimit: 10 });
    await bob.startClient({ initialSyncLimit: 10 });
    await waitFor(alice, () => alice.isInitialSyncComplete(), "alice's first sync");
    await waitFor(bob, () => bob.isInitialSyncComplete(), "bob's first sync");

    // The Rust crypto uploaded device and one-time keys at start-up.
    const own = await alice.getCrypto().getUserDeviceInfo([alice.getUserId()], true);
    check(own.get(alice.getUserId())?.has(alice.getDeviceId()), "alice's device keys on the server");

    const { room_id: roomId } = await alice.createRoom({
        name: "secret room",
        invite: [bob.getUserId()],
        initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    await waitFor(bob, () => bob.getRoom(roomId)?.getMyMembership() === "invite", "bob's invite");
    await bob.joinRoom(roomId);
    await waitFor(alice, () => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join", "bob's join at alice");
    check(await alice.getCrypto().isEncryptionEnabledInRoom(roomId), "the room is encrypted");

    // Alice finds bob's device through /keys/query, claims a one-time key, sends the room key
    // to it over /sendToDevice, and the message itself as m.room.encrypted.
    const devices = await alice.getCrypto().getUserDeviceInfo([bob.getUserId()], true);
    check(devices.get(bob.getUserId())?.has(bob.getDeviceId()), "bob's device seen by alice");
    await alice.sendTextMessage(roomId, "the secret is 42");

    const decrypted = await waitFor(
        bob,
        () =>
            bob
                .getRoom(roomId)
                ?.getLiveTimeline()
                .getEvents()
                .find((e) => e.getWireType() === "m.room.encrypted" && e.getContent().body === "the secret is 42"),
        "bob decrypting alice's message",
    );
    check(decrypted.getType() === "m.room.message", `decrypted type ${decrypted.getType()}`);
    check(decrypted.getWireContent().ciphertext, "the server carried ciphertext only");
    check(!decrypted.isDecryptionFailure(), "no decryption failure");

    // And back: bob answers, alice decrypts.
    await bob.sendTextMessage(roomId, "got it");
    await waitFor(
        alice,
        () => alice.getRoom(roomId)?.getLiveTimeline().getEvents().some((e) => e.getWireType() === "m.room.encrypted" && e.getContent().body === "got it"),
        "alice decrypting bob's answer",
    );

    alice.stopClient();
    bob.stopClient();
    console.log("E2EE OK");
    process.exit(0);
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
