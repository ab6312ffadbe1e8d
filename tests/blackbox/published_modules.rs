//! Published Synapse modules, installed from PyPI into the module venv by the test command,
//! doing what their READMEs say on Myelin, unchanged.

use serde_json::json;

use crate::harness::*;

/// matrix-http-rendezvous-synapse (MSC3886, a Rust extension on the asyncio reactor): a
/// session is made with `POST <prefix>`, then read, updated and deleted at the `Location` it
/// answers, a path below the registered resource.
#[tokio::test]
async fn matrix_http_rendezvous_serves_sessions_below_its_prefix() {
    let prefix = "/_synapse/client/org.matrix.msc3886/rendezvous";
    let s = Server::start_with(&format!(
        "modules:\n  - module: matrix_http_rendezvous_synapse.SynapseRendezvousModule\n    config:\n      prefix: {prefix}\n"
    ))
    .await;
    let client = reqwest::Client::new();
    let made = client.post(s.url(prefix)).header("content-type", "text/plain").body("hello").send().await.unwrap();
    assert_eq!(made.status(), 201);
    let location = made.headers()["location"].to_str().unwrap().to_owned();
    let session = if location.starts_with("http") {
        location.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned())).unwrap()
    } else if location.starts_with('/') {
        location.clone()
    } else {
        format!("{prefix}/{location}")
    };
    assert!(session.starts_with(&format!("{prefix}/")), "{location}");
    let read = client.get(s.url(&session)).send().await.unwrap();
    assert_eq!(read.status(), 200);
    let etag = read.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(read.text().await.unwrap(), "hello");
    let updated = client
        .put(s.url(&session))
        .header("content-type", "text/plain")
        .header("if-match", &etag)
        .body("world")
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 202);
    assert_eq!(client.get(s.url(&session)).send().await.unwrap().text().await.unwrap(), "world");
    // A stale ETag is refused; an unknown session is 404; a deleted one is gone.
    let stale = client.put(s.url(&session)).header("if-match", &etag).body("again").send().await.unwrap();
    assert_eq!(stale.status(), 412);
    // A malformed session ID is 400, an unknown well-formed one 404.
    assert_eq!(client.get(s.url(&format!("{prefix}/nope"))).send().await.unwrap().status(), 400);
    assert_eq!(client.delete(s.url(&session)).send().await.unwrap().status(), 204);
    assert_eq!(client.get(s.url(&session)).send().await.unwrap().status(), 404);
    assert_eq!(s.get("/_matrix/client/versions", None).await.0, 200, "the server still answers");
}

const ACCESS_RULES: &str = "im.vector.room.access_rules";

/// synapse-room-access-rules 1.0.0 (third-party rules: `on_create_room`,
/// `check_event_allowed`, `check_visibility_can_be_modified`), its README's presets: new rooms
/// get the `restricted` rule (`direct` for direct chats), a direct chat takes no third member,
/// only a `restricted` room may be published, and a published room's rule may not leave
/// `restricted`.
#[tokio::test]
async fn room_access_rules_apply_their_presets() {
    let s = Server::start_with(
        "modules:\n  - module: room_access_rules.RoomAccessRules\n    config:\n      id_server: id.example\n      domains_forbidden_when_restricted: [evil.example]\n",
    )
    .await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let rule_of = |room: String| {
        let s = &s;
        let token = alice.token.clone();
        async move {
            let (st, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/{ACCESS_RULES}"), Some(&token)).await;
            assert_eq!(st, 200, "{b}");
            b["rule"].as_str().unwrap().to_owned()
        }
    };

    // A group room is restricted; it may be published and unpublished.
    // Version 10 rooms: the module's default power levels list the creator, which version 12
    // forbids (createRoom fails the same way on Synapse 1.163 with its default version 12).
    let room = s.create_room(&alice, json!({"preset": "private_chat", "room_version": "10"})).await;
    assert_eq!(rule_of(room.clone()).await, "restricted");
    let list = format!("/_matrix/client/v3/directory/list/room/{room}");
    assert_eq!(s.put(&list, Some(&alice.token), json!({"visibility": "public"})).await.0, 200);
    // While it is published its rule stays restricted.
    let set_rule = format!("/_matrix/client/v3/rooms/{room}/state/{ACCESS_RULES}");
    let (st, b) = s.put(&set_rule, Some(&alice.token), json!({"rule": "unrestricted"})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    assert_eq!(s.put(&list, Some(&alice.token), json!({"visibility": "private"})).await.0, 200);
    // Unpublished, it may become unrestricted, and then it may not be published.
    assert_eq!(s.put(&set_rule, Some(&alice.token), json!({"rule": "unrestricted"})).await.0, 200);
    assert_eq!(rule_of(room.clone()).await, "unrestricted");
    let (st, b) = s.put(&list, Some(&alice.token), json!({"visibility": "public"})).await;
    assert_eq!((st, b["error"].as_str()), (403, Some("Not allowed to publish room")), "{b}");
    let (_, listed) = s.get(&list, None).await;
    assert_eq!(listed["visibility"], "private");
    // Never back to restricted.
    assert_eq!(s.put(&set_rule, Some(&alice.token), json!({"rule": "restricted"})).await.0, 403);

    // A direct chat is `direct`: its two members, and nobody else.
    let dm = s
        .create_room(
            &alice,
            json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [bob.user_id], "room_version": "10"}),
        )
        .await;
    assert_eq!(rule_of(dm.clone()).await, "direct");
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{dm}/join"), Some(&bob.token), json!({})).await.0, 200);
    let (st, b) = s
        .post(&format!("/_matrix/client/v3/rooms/{dm}/invite"), Some(&alice.token), json!({"user_id": carol.user_id}))
        .await;
    assert_eq!(st, 403, "{b}");
    // A direct chat may not be published either.
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/directory/list/room/{dm}"),
            Some(&alice.token),
            json!({"visibility": "public"}),
        )
        .await;
    assert_eq!(st, 403);
    // An invalid rule in createRoom's initial state is refused with the module's error.
    let (st, b) = s
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({"room_version": "10", "initial_state": [{"type": ACCESS_RULES, "state_key": "", "content": {"rule": "nonsense"}}]}),
        )
        .await;
    assert_eq!((st, b["error"].as_str()), (400, Some("Invalid access rule")), "{b}");
}

/// synapse-freeze-room 1.1.0 (third-party rules that send events from inside
/// `check_event_allowed`): when the last admin leaves, the room is frozen (only leaving and
/// unfreezing are allowed); whoever unfreezes it becomes its only admin. A version 10 room,
/// whose power levels list its creator (in version 12 creators are not listed, and the module
/// finds no admin leaving, on Synapse too).
#[tokio::test]
async fn freeze_room_freezes_when_the_last_admin_leaves_and_unfreezes() {
    let s = Server::start_with("modules:\n  - module: freeze_room.FreezeRoom\n    config: {}\n").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "room_version": "10"})).await;
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{room}"), Some(&bob.token), json!({})).await.0, 200);
    let state = |kind: &'static str| {
        let (s, token, room) = (&s, bob.token.clone(), room.clone());
        async move { s.get(&format!("/_matrix/client/v3/rooms/{room}/state/{kind}"), Some(&token)).await }
    };
    let send = |user: &User, body: &str| {
        let (s, token, room, body) = (&s, user.token.clone(), room.clone(), body.to_owned());
        async move {
            let txn = format!("t{}", rand_suffix());
            s.put(
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
                Some(&token),
                json!({"msgtype": "m.text", "body": body}),
            )
            .await
        }
    };
    assert_eq!(send(&bob, "before").await.0, 200);

    // The last admin leaves: the room freezes, and the join rule is no longer public.
    let (st, b) = s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&alice.token), json!({})).await;
    assert_eq!(st, 200, "{b}\n{}", s.log_text());
    let (st, frozen) = state("org.matrix.room.frozen").await;
    assert_eq!((st, &frozen), (200, &json!({"frozen": true})), "{}", s.log_text());
    assert_eq!(state("m.room.join_rules").await.1["join_rule"], "invite");
    assert_eq!(state("m.room.power_levels").await.1["users_default"], 100);
    let (st, b) = send(&bob, "while frozen").await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");

    // Bob unfreezes it and is then its only admin; messages flow again.
    let (st, b) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/org.matrix.room.frozen"),
            Some(&bob.token),
            json!({"frozen": false}),
        )
        .await;
    assert_eq!(st, 200, "{b}\n{}", s.log_text());
    let levels = state("m.room.power_levels").await.1;
    assert_eq!(levels["users_default"], 0, "{levels}");
    assert_eq!(levels["users"][&bob.user_id], 100, "{levels}");
    assert_eq!(send(&bob, "after").await.0, 200);
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// synapse-token-authenticator 0.14.1 (a password auth provider with a custom login type that
/// imports `LoginResponse` from `synapse.module_api`), its README's JWT login: a token signed
/// with the configured secret logs its subject in, registering the account on first use; a
/// token signed with another secret, or for another user, does not. (HS512 keys must be 64
/// bytes or more for the jwcrypto it uses, on Synapse too.)
#[tokio::test]
async fn token_authenticator_logs_in_with_a_signed_jwt() {
    const SECRET: &str = "foxies-ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
    const WRONG_SECRET: &str = "not-foxies-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    let s = Server::start_with(&format!(
        "modules:\n  - module: synapse_token_authenticator.TokenAuthenticator\n    config:\n      jwt:\n        secret: {SECRET}\n        algorithm: HS512\n        allow_registration: true\n",
    ))
    .await;
    let (st, flows) = s.get("/_matrix/client/v3/login", None).await;
    assert_eq!(st, 200);
    assert!(flows["flows"].as_array().unwrap().iter().any(|f| f["type"] == "com.famedly.login.token"), "{flows}");
    let jwt = |secret: &str, sub: &str| {
        let mint = r#"
import sys, time
from jwcrypto import jwk, jwt
from jwcrypto.common import base64url_encode
key = jwk.JWK(kty="oct", k=base64url_encode(sys.argv[1].encode()))
token = jwt.JWT(header={"alg": "HS512"}, claims={"sub": sys.argv[2], "exp": int(time.time()) + 300, "displayname": "Via JWT"})
token.make_signed_token(key)
print(token.serialize())
"#;
        let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/.venv/bin/python");
        let out = std::process::Command::new(python).args(["-c", mint, secret, sub]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let login = |user: &str, token: String| {
        let body = json!({"type": "com.famedly.login.token", "identifier": {"type": "m.id.user", "user": user}, "token": token});
        s.post("/_matrix/client/v3/login", None, body)
    };
    let (st, b) = login("alice", jwt(SECRET, "alice")).await;
    assert_eq!(st, 200, "{b}\n{}", s.log_text());
    assert_eq!(b["user_id"], "@alice:test");
    let token = b["access_token"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&token)).await.1["user_id"], "@alice:test");
    let (_, name) = s.get("/_matrix/client/v3/profile/@alice:test/displayname", Some(&token)).await;
    assert_eq!(name["displayname"], "Via JWT");
    // The wrong secret, or a token for someone else, is refused.
    assert_eq!(login("alice", jwt(WRONG_SECRET, "alice")).await.0, 403);
    assert_eq!(login("bob", jwt(SECRET, "alice")).await.0, 403);
    // And a second login of the now existing account works.
    assert_eq!(login("alice", jwt(SECRET, "alice")).await.0, 200);
}
