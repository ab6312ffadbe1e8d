// Hydrogen in Debian's chromium, driven by playwright-core, against a running Myelin.
//
// Usage: node drive.mjs MYELIN_BASE_URL SCREENSHOT.png
// Bob (over plain HTTP) makes a room and writes in it; alice logs in through Hydrogen's own
// login screen, sees the room in the room list, opens it, reads bob's message, sends one that
// bob receives, and sees bob's next message arrive live. Prints "HYDROGEN OK".

import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
const dist = path.join(path.dirname(new URL(import.meta.url).pathname), "dist");
const suffix = Math.random().toString(36).slice(2, 8);

function check(cond, what) {
    if (!cond) throw new Error(`check failed: ${what}`);
}

async function api(method, p, token, body) {
    const r = await fetch(base + p, {
        method,
        headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
        body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await r.json();
    return { status: r.status, json };
}

async function register(name) {
    const first = await api("POST", "/_matrix/client/v3/register", null, { username: name, password: `${name}-pw` });
    const r = await api("POST", "/_matrix/client/v3/register", null, {
        username: name,
        password: `${name}-pw`,
        auth: { type: "m.login.dummy", session: first.json.session },
    });
    check(r.status === 200, `register ${name}: ${JSON.stringify(r.json)}`);
    return r.json;
}

/// The built app, served from loopback.
function serve() {
    const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".woff2": "font/woff2", ".woff": "font/woff", ".svg": "image/svg+xml", ".png": "image/png" };
    const server = http.createServer((req, res) => {
        const url = new URL(req.url, "http://x");
        const file = path.join(dist, path.normalize(decodeURIComponent(url.pathname)).replace(/^(\.\.[/\\])+/, ""));
        fs.readFile(file.endsWith("/") ? path.join(file, "index.html") : file, (err, data) => {
            if (err) {
                res.writeHead(404);
                res.end();
                return;
            }
            res.writeHead(200, { "Content-Type": types[path.extname(file)] || "application/octet-stream" });
            res.end(data);
        });
    });
    return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

async function main() {
    const bob = await register(`hbob${suffix}`);
    const alice = await register(`halice${suffix}`);
    const room = await api("POST", "/_matrix/client/v3/createRoom", bob.access_token, { preset: "public_chat", name: "Hydrogen test room" });
    const roomId = room.json.room_id;
    check((await api("POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, alice.access_token, {})).status === 200, "alice joins");
    const send = (text) => api("PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/h${Date.now()}${Math.random()}`, bob.access_token, { msgtype: "m.text", body: text });
    await send("hello from bob");

    const server = await serve();
    const port = server.address().port;
    const browser = await chromium.launch({
        executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
        args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    const logs = [];
    page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
    try {
        await page.goto(`http://127.0.0.1:${port}/index.html?hs=${encodeURIComponent(base)}#/login`);
        await page.waitForSelector("#username", { timeout: 30000 });
        await page.fill("#username", `halice${suffix}`);
        await page.fill("#password", `halice${suffix}-pw`);
        await page.click("button[type=submit]");

        // The room list, then the room.
        const entry = page.locator(".RoomList li", { hasText: "Hydrogen test room" });
        await entry.first().waitFor({ timeout: 60000 });
        await entry.first().click();
        await page.locator(".Timeline", { hasText: "hello from bob" }).first().waitFor({ timeout: 30000 });

        // Send from Hydrogen; bob receives it.
        const input = page.locator(".MessageComposer_input textarea, .MessageComposer_input input").first();
        await input.fill("hello from hydrogen");
        await input.press("Enter");
        let received = false;
        for (let i = 0; i < 60 && !received; i++) {
            const msgs = await api("GET", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=10`, bob.access_token);
            received = msgs.json.chunk.some((e) => e.content?.body === "hello from hydrogen" && e.sender === alice.user_id);
            if (!received) await new Promise((r) => setTimeout(r, 250));
        }
        check(received, "bob received hydrogen's message");

        // A new message shows up live.
        await send("a live message from bob");
        await page.locator(".Timeline", { hasText: "a live message from bob" }).first().waitFor({ timeout: 30000 });
        await page.screenshot({ path: screenshot, fullPage: true });
        console.log("HYDROGEN OK");
    } catch (e) {
        await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
        console.error(logs.slice(-40).join("\n"));
        throw e;
    } finally {
        await browser.close();
        server.close();
    }
}

main().then(
    () => process.exit(0),
    (e) => {
        console.error(e);
        process.exit(1);
    },
);
