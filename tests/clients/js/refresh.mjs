// matrix-js-sdk with a refresh-token session (MSC2918) against Myelin.
//
// Usage: node refresh.mjs BASE_URL   (the server's refreshable_access_token_lifetime: 2s)
// Logs in asking for a refresh token, syncs, lets the access token expire (the SDK sees a soft
// logout), renews it with the SDK's refreshToken(), and syncs and sends again on the same
// device. Prints "REFRESH OK" when every step behaved.

import * as sdk from "matrix-js-sdk";

const base = process.argv[2];
const suffix = Math.random().toString(36).slice(2, 10);

function check(cond, what) {
    if (!cond) throw new Error(`check failed: ${what}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function synced(client) {
    for (let i = 0; i < 150 && !["PREPARED", "SYNCING"].includes(client.getSyncState()); i++) await sleep(100);
    check(["PREPARED", "SYNCING"].includes(client.getSyncState()), `sync state ${client.getSyncState()}`);
}

async function main() {
    const anonymous = sdk.createClient({ baseUrl: base });
    const name = `rita${suffix}`;
    try {
        await anonymous.registerRequest({ username: name, password: "pw" });
    } catch (e) {
        await anonymous.registerRequest({ username: name, password: "pw", auth: { type: "m.login.dummy", session: e.data.session } });
    }
    const login = await anonymous.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: name },
        password: "pw",
        refresh_token: true,
    });
    check(typeof login.refresh_token === "string", `a refresh token in ${JSON.stringify(login)}`);
    check(login.expires_in_ms > 0 && login.expires_in_ms <= 2000, `expires_in_ms ${login.expires_in_ms}`);

    const client = sdk.createClient({ baseUrl: base, accessToken: login.access_token, userId: login.user_id, deviceId: login.device_id });
    await client.startClient({ initialSyncLimit: 5 });
    await synced(client);
    const { room_id: roomId } = await client.createRoom({ name: "refreshed" });
    client.stopClient();

    await sleep(2500);
    let expired;
    try {
        await client.getProfileInfo(login.user_id);
    } catch (e) {
        expired = e;
    }
    check(expired?.errcode === "M_UNKNOWN_TOKEN" && expired?.data?.soft_logout === true, `a soft logout, got ${expired}`);

    const renewed = await client.refreshToken(login.refresh_token);
    check(renewed.access_token && renewed.refresh_token && renewed.refresh_token !== login.refresh_token, `renewed ${JSON.stringify(renewed)}`);
    client.setAccessToken(renewed.access_token);
    const who = await client.whoami();
    check(who.device_id === login.device_id, `same device after the refresh: ${JSON.stringify(who)}`);

    await client.startClient({ initialSyncLimit: 5 });
    await synced(client);
    await client.sendTextMessage(roomId, "after the refresh");
    for (let i = 0; i < 100; i++) {
        const events = client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? [];
        if (events.some((e) => e.getContent().body === "after the refresh" && !e.isSending())) break;
        await sleep(100);
    }
    const events = client.getRoom(roomId).getLiveTimeline().getEvents();
    check(events.some((e) => e.getContent().body === "after the refresh"), "the message sent after the refresh");
    client.stopClient();
    console.log("REFRESH OK");
    process.exit(0);
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
