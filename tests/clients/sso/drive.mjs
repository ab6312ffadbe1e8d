// A person at a browser (Debian's chromium, driven by playwright-core) going through an SSO
// flow that starts at START_URL: Myelin's provider picker, the provider's login and consent
// pages (oidc-provider's development pages), Myelin's username picker and confirmation page,
// until the browser lands back at the client, or on one of Myelin's result pages.
//
// Usage: node drive.mjs START_URL LOGIN [IDP_ID] [USERNAME]
//   START_URL  where the browser starts; "CLIENT" in it is replaced by this script's own client
//              page (http://127.0.0.1:<port>/client), which the login ends at.
//   LOGIN      the login name typed at the provider (any password works there).
//   IDP_ID     the provider chosen on Myelin's picker, if one is shown.
//   USERNAME   the username typed on Myelin's username picker, if it is shown.
// Prints one JSON line: {"loginToken": ...} at the client, {"uia": "success" | "bad_user"}, or
// {"error": ..., "description": ...} from Myelin's error page; "pages" lists the steps taken.

import http from "node:http";
import { chromium } from "playwright-core";

const [startUrl, login, idpId, username] = process.argv.slice(2);

const client = http.createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/html" });
    res.end("<!DOCTYPE html><title>client</title><p id=client>Back at the client</p>");
});
await new Promise((resolve) => client.listen(0, "127.0.0.1", resolve));
const clientUrl = `http://127.0.0.1:${client.address().port}/client`;

const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const pages = [];
let result;
try {
    const page = await (await browser.newContext()).newPage();
    page.setDefaultTimeout(15000);
    // Each page visited, for a failure's report.
    page.on("framenavigated", (frame) => frame === page.mainFrame() && console.error(`at ${frame.url()}`));
    page.on("requestfailed", (r) => console.error(`failed ${r.url()}: ${r.failure()?.errorText}`));
    // The provider's pages import a web font; nothing outside loopback is reachable.
    await page.route((url) => !["127.0.0.1", "localhost"].includes(url.hostname), (route) => route.abort());
    await page.goto(startUrl.replace("CLIENT", encodeURIComponent(clientUrl)));
    for (let step = 0; step < 20 && !result; step++) {
        await page.waitForLoadState("load");
        const url = new URL(page.url());
        const has = async (selector) => (await page.locator(selector).count()) > 0;
        if (page.url().startsWith(clientUrl)) {
            pages.push("client");
            result = { loginToken: url.searchParams.get("loginToken"), url: page.url() };
        } else if (await has("#error")) {
            pages.push("myelin error");
            result = { error: await page.locator("#error").innerText(), description: await page.locator("#error-description").innerText(), status: null };
        } else if (await has("#success")) {
            pages.push("myelin uia success");
            result = { uia: "success" };
        } else if (await has("#deactivated")) {
            pages.push("myelin deactivated");
            result = { deactivated: true };
        } else if (await has("#bad-user")) {
            pages.push("myelin uia bad user");
            result = { uia: "bad_user" };
        } else if (await has("input[name=login]")) {
            pages.push("provider login");
            await page.fill("input[name=login]", login);
            await page.fill("input[name=password]", "any password");
            await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
        } else if (await has("input[name=prompt][value=consent]")) {
            pages.push("provider consent");
            await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
        } else if (url.pathname === "/_synapse/client/pick_idp") {
            pages.push("myelin idp picker");
            await Promise.all([page.waitForNavigation(), page.click(`#idp-${idpId}`)]);
        } else if (await has("#username")) {
            pages.push("myelin username picker");
            await page.fill("#username", username);
            await Promise.all([page.waitForNavigation(), page.click("#create")]);
        } else if (await has("#continue")) {
            pages.push(`myelin ${await page.title()}`);
            await Promise.all([page.waitForNavigation(), page.click("#continue")]);
        } else {
            throw new Error(`unexpected page ${page.url()}: ${(await page.content()).slice(0, 2000)}`);
        }
    }
} finally {
    await browser.close();
    client.close();
}
console.log(JSON.stringify({ ...result, pages }));
