// A local OpenID Connect provider (panva's oidc-provider) for Myelin's SSO tests.
//
// Usage: node provider.mjs CALLBACK_URL [OPTIONS_JSON]
// Listens on a free loopback port and prints "ISSUER <url>" once ready. Its development login
// page accepts any login name with any password; the account's claims derive from the name:
//   sub "id-<login>", preferred_username <login>, name "<Login> Example",
//   email "<login>@example.test", groups ["staff"] for logins starting "staff", else [],
//   picture "<issuer>/picture.png" (a red pixel, served here).
// OPTIONS_JSON: {"alg": "RS256" | "ES256"}, {"claims_in_id_token": false} (claims only from
// userinfo, as most providers do), {"client_secret": "..."}, {"picture": "<url>"}.

import http from "node:http";
import Provider from "oidc-provider";
import { generateKeyPair, exportJWK } from "jose";

const [callback, optionsJson] = process.argv.slice(2);
const options = JSON.parse(optionsJson || "{}");
const alg = options.alg || "RS256";

function claimsOf(login) {
    return {
        sub: `id-${login}`,
        preferred_username: login,
        name: `${login[0].toUpperCase()}${login.slice(1)} Example`,
        email: `${login}@example.test`,
        email_verified: true,
        groups: login.startsWith("staff") ? ["staff"] : [],
        picture: options.picture || `${issuer}/picture.png`,
    };
}

const port = await new Promise((resolve) => {
    const probe = http.createServer().listen(0, "127.0.0.1", () => {
        const p = probe.address().port;
        probe.close(() => resolve(p));
    });
});
const issuer = `http://127.0.0.1:${port}`;

const { privateKey } = await generateKeyPair(alg, { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), alg, use: "sig", kid: `test-${alg}` };

const provider = new Provider(issuer, {
    clients: [
        {
            client_id: "myelin",
            client_secret: options.client_secret || "myelin-secret",
            redirect_uris: [callback],
            response_types: ["code"],
            grant_types: ["authorization_code"],
            id_token_signed_response_alg: alg,
        },
    ],
    jwks: { keys: [jwk] },
    claims: {
        openid: ["sub"],
        profile: ["name", "preferred_username", "picture"],
        email: ["email", "email_verified"],
        groups: ["groups"],
    },
    scopes: ["openid", "profile", "email", "groups"],
    conformIdTokenClaims: options.claims_in_id_token === false,
    findAccount: async (_ctx, id) => ({
        accountId: id,
        claims: async () => claimsOf(id),
    }),
    features: { devInteractions: { enabled: true } },
    // The development login page asks again each time, so every test logs in explicitly.
    ttl: { Session: 1 },
});
provider.proxy = false;
const PICTURE = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC", "base64");
provider.use(async (ctx, next) => {
    if (ctx.path === "/picture.png") {
        ctx.type = "image/png";
        ctx.body = PICTURE;
    } else {
        await next();
    }
});

provider.listen(port, "127.0.0.1", () => {
    console.log(`ISSUER ${issuer}`);
});
