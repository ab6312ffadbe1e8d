// What the matrix-js-sdk end-to-end encryption scripts (e2ee.mjs, migrate.mjs) share: a
// registered client with the Rust crypto (its store in memory), a check, and a wait.

import * as sdk from "matrix-js-sdk";

export function check(cond, what) {
    if (!cond) throw new Error(`check failed: ${what}`);
}

/// Registers `name` (password `<name>-pw`) on `base` and returns its client, crypto started.
export async function client(base, name) {
    const anon = sdk.createClient({ baseUrl: base });
    let reg;
    try {
        reg = await anon.registerRequest({ username: name, password: `${name}-pw` });
    } catch (e) {
        reg = await anon.registerRequest({
            username: name,
            password: `${name}-pw`,
            auth: { type: "m.login.dummy", session: e.data?.session },
        });
    }
    const c = sdk.createClient({ baseUrl: base, accessToken: reg.access_token, userId: reg.user_id, deviceId: reg.device_id });
    await c.initRustCrypto({ useIndexedDB: false });
    return c;
}

/// Resolves with `predicate()`'s first truthy value, looked at on the client's events and every
/// 250 ms (a predicate that throws counts as not yet); rejects after `ms`.
export function waitFor(c, predicate, what, ms = 30000) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
        const names = ["event", "sync", "Room.timeline", "Event.decrypted", "RoomMember.membership"];
        const poll = setInterval(() => look(), 250);
        const look = () => {
            let result;
            try {
                result = predicate();
            } catch (e) {
                result = undefined;
            }
            if (result) {
                clearTimeout(timer);
                clearInterval(poll);
                for (const n of names) c.removeListener(n, look);
                resolve(result);
            }
        };
        for (const n of names) c.on(n, look);
        look();
    });
}
