//! Two real Myelin servers federating on loopback: each with its own server name
//! (`localhost:<port>`), a TLS federation listener with a certificate from a CA the test makes,
//! and trust in that CA only (`federation_custom_ca_list`), loopback allowed past the default
//! IP-range blocklist.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Server, User};

/// A CA and one certificate (for `localhost`, 127.0.0.1 and `srv.test`) every test server serves.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "Myelin test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let names = ["localhost", "127.0.0.1", "srv.test"].map(str::to_owned).to_vec();
        let mut leaf_params = CertificateParams::new(names).unwrap();
        leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem() + &ca.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).unwrap();
        TestCa { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A free loopback port for a server to bind right after. Taken from 20000-29999, below the
/// kernel's ephemeral range (so no outgoing connection holds it), in an order no other test of
/// this process repeats, and checked by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20000 + (std::process::id() % 400) * 25;
    loop {
        let port = (base + NEXT.fetch_add(1, Ordering::Relaxed) % 10000) as u16;
        let port = if port >= 30000 { port - 10000 } else { port };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A Myelin on `localhost:<federation_port>`: a plain client listener (first, so the harness
/// reads its address) and a TLS federation listener.
pub struct Peer {
    pub server: Server,
    pub name: String,
    pub port: u16,
}

pub fn peer_config(ca: &TestCa, port: u16, extra: &str) -> String {
    format!(
        "server_name: \"localhost:{port}\"\n\
         public_baseurl: http://127.0.0.1/\n\
         listeners:\n\
         \x20 - port: 0\n    bind_addresses: ['127.0.0.1']\n    resources:\n      - names: [client]\n\
         \x20 - port: {port}\n    tls: true\n    bind_addresses: ['127.0.0.1']\n    resources:\n      - names: [federation]\n\
         tls_certificate_path: {cert}\n\
         tls_private_key_path: {key}\n\
         federation_custom_ca_list: [{ca}]\n\
         ip_range_whitelist: ['127.0.0.0/8']\n\
         {database}\
         signing_key_path: data/signing.key\n\
         media_store_path: data/media\n\
         enable_registration: true\n\
         enable_registration_without_verification: true\n\
         log_level: info\n{limits}{extra}",
        limits = if extra.contains("rc_") { "" } else { crate::harness::LIFTED_RATE_LIMITS },
        database = if extra.contains("database:") { String::new() } else { crate::harness::database_section() },
        cert = ca.path("cert.pem").display(),
        key = ca.path("key.pem").display(),
        ca = ca.path("ca.pem").display(),
    )
}

impl Peer {
    pub async fn start(ca: &TestCa) -> Peer {
        Self::start_with(ca, "").await
    }

    pub async fn start_with(ca: &TestCa, extra: &str) -> Peer {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("homeserver.yaml"), peer_config(ca, port, extra)).unwrap();
        let server = Server::start_in(dir).await;
        Peer { server, name: format!("localhost:{port}"), port }
    }
}

/// Syncs as `user` until a timeline event of `room` matches, returning it; panics after 30 s.
pub async fn wait_for_event(server: &Server, user: &User, room: &str, matches: impl Fn(&Value) -> bool) -> Value {
    match try_wait_for_event(server, user, room, matches, Duration::from_secs(30)).await {
        Some(event) => event,
        None => panic!("no matching event in {room} for {} within 30 s", user.user_id),
    }
}

/// As [`wait_for_event`], giving up (None) after `timeout`, for a test that explains a miss.
pub async fn try_wait_for_event(
    server: &Server,
    user: &User,
    room: &str,
    matches: impl Fn(&Value) -> bool,
    timeout: Duration,
) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    let mut since: Option<String> = None;
    loop {
        let body = server.sync(user, since.as_deref(), 2000).await;
        for section in ["join", "invite", "leave"] {
            if let Some(events) = body["rooms"][section][room]["timeline"]["events"].as_array()
                && let Some(found) = events.iter().find(|e| matches(e))
            {
                return Some(found.clone());
            }
        }
        since = body["next_batch"].as_str().map(str::to_owned);
        if Instant::now() >= deadline {
            return None;
        }
    }
}

fn text_is(body: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e: &Value| e["type"] == "m.room.message" && e["content"]["body"] == body
}

fn encode(s: &str) -> String {
    s.replace('!', "%21").replace(':', "%3A").replace('#', "%23").replace('@', "%40")
}

async fn joined_members(server: &Server, user: &User, room: &str) -> Vec<String> {
    let (s, b) = server.get(&format!("/_matrix/client/v3/rooms/{room}/joined_members"), Some(&user.token)).await;
    assert_eq!(s, 200, "joined_members: {b}");
    let mut members: Vec<String> = b["joined"].as_object().unwrap().keys().cloned().collect();
    members.sort();
    members
}

async fn public_room(server: &Server, user: &User) -> String {
    server.create_room(user, json!({"preset": "public_chat"})).await
}

#[tokio::test]
async fn two_servers_join_each_others_rooms_and_talk_both_ways() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let b = Peer::start(&ca).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;

    // Bob (on B) joins Alice's room (on A), through A (a room version 12 ID names no server).
    let room = public_room(&a.server, &alice).await;
    let (s, body) = b.server.join_via(&bob, &room, &a.name).await;
    assert_eq!(s, 200, "remote join: {body}\nA log:\n{}\nB log:\n{}", a.server.log_text(), b.server.log_text());
    assert_eq!(body["room_id"], room.as_str());
    let both = {
        let mut v = vec![alice.user_id.clone(), bob.user_id.clone()];
        v.sort();
        v
    };
    assert_eq!(joined_members(&b.server, &bob, &room).await, both, "B knows the room's members");
    // A hears of the join (it is the resident server that accepted it).
    assert_eq!(joined_members(&a.server, &alice, &room).await, both);

    // Messages both ways.
    let (s, sent) = a.server.send_text(&alice, &room, "hello from A").await;
    assert_eq!(s, 200, "{sent}");
    let got = wait_for_event(&b.server, &bob, &room, text_is("hello from A")).await;
    assert_eq!(got["sender"], alice.user_id.as_str());
    assert_eq!(got["event_id"], sent["event_id"], "the same event on both servers");
    let (s, _) = b.server.send_text(&bob, &room, "hello from B").await;
    assert_eq!(s, 200);
    let got = wait_for_event(&a.server, &alice, &room, text_is("hello from B")).await;
    assert_eq!(got["sender"], bob.user_id.as_str());

    // And the other way round: Alice joins Bob's room.
    let room2 = public_room(&b.server, &bob).await;
    let (s, body) = a
        .server
        .post(&format!("/_matrix/client/v3/join/{}?via={}", encode(&room2), b.name), Some(&alice.token), json!({}))
        .await;
    assert_eq!(s, 200, "{body}");
    a.server.send_text(&alice, &room2, "A in B's room").await;
    wait_for_event(&b.server, &bob, &room2, text_is("A in B's room")).await;

    // State changes travel too: Bob's room name reaches A.
    let (s, _) = b
        .server
        .put(
            &format!("/_matrix/client/v3/rooms/{room2}/state/m.room.name/"),
            Some(&bob.token),
            json!({"name": "Bob's place"}),
        )
        .await;
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, name) =
            a.server.get(&format!("/_matrix/client/v3/rooms/{room2}/state/m.room.name/"), Some(&alice.token)).await;
        if s == 200 && name["name"] == "Bob's place" {
            break;
        }
        assert!(Instant::now() < deadline, "the name never reached A: {s} {name}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_restarted_server_gets_everything_sent_while_it_was_down() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let b = Peer::start(&ca).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room = public_room(&a.server, &alice).await;
    let (s, body) = b.server.join_via(&bob, &room, &a.name).await;
    assert_eq!(s, 200, "{body}");

    let b = {
        let Peer { server, name, port } = b;
        let dir = server.stop();
        for i in 0..5 {
            let (s, _) = a.server.send_text(&alice, &room, &format!("while down {i}")).await;
            assert_eq!(s, 200);
        }
        Peer { server: Server::start_in(dir).await, name, port }
    };
    // Everything arrives, in order, without anyone on B doing anything.
    let bob = b.server.login("bob").await;
    wait_for_event(&b.server, &bob, &room, text_is("while down 4")).await;
    let (s, page) =
        b.server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"), Some(&bob.token)).await;
    assert_eq!(s, 200);
    let texts: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(texts, vec!["while down 4", "while down 3", "while down 2", "while down 1", "while down 0"]);
}

#[tokio::test]
async fn joining_through_an_unreachable_or_blocked_server_fails_cleanly() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let alice = a.server.register("alice").await;
    // Nobody listens there.
    let nowhere = free_port();
    let (s, body) = a.server.join(&alice, &encode(&format!("!nothing:localhost:{nowhere}"))).await;
    assert_eq!(s, 502, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");

    // Without the loopback exception, the default blocklist keeps requests off 127.0.0.1.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = peer_config(&ca, port, "").replace("ip_range_whitelist: ['127.0.0.0/8']\n", "");
    std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
    let strict = Server::start_in(dir).await;
    let carol = strict.register("carol").await;
    let room = public_room(&a.server, &alice).await;
    let (s, body) = strict.join_via(&carol, &room, &a.name).await;
    assert_eq!(s, 502, "{body}");
    // The client learns only that the server could not be reached; the log says why.
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("could not reach") && !error.contains("blocked"), "{body}");
    // The log is read from the server's stderr on another thread: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !strict.log_text().contains("blocked by ip_range_blacklist") {
        assert!(Instant::now() < deadline, "{}", strict.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The server keeps serving.
    let (s, _) = strict.get("/_matrix/client/versions", None).await;
    assert_eq!(s, 200);
}

async fn membership_on(server: &Server, user: &User, room: &str, member: &str) -> Option<String> {
    let (s, b) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{member}"), Some(&user.token)).await;
    (s == 200).then(|| b["membership"].as_str().unwrap_or_default().to_owned())
}

/// Polls until `check` holds; panics after 30 s with `what`.
pub async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn invites_joins_leaves_and_rejections_cross_servers() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let b = Peer::start(&ca).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room = a.server.create_room(&alice, json!({"preset": "private_chat", "name": "Secret plans"})).await;

    // Alice invites Bob; B shows the invite with the room's name before Bob is in it.
    let (s, body) = a.server.invite(&alice, &room, &bob.user_id).await;
    assert_eq!(s, 200, "remote invite: {body}\nA:\n{}\nB:\n{}", a.server.log_text(), b.server.log_text());
    let sync = b.server.sync(&bob, None, 0).await;
    let invite = &sync["rooms"]["invite"][&room]["invite_state"]["events"];
    let events = invite.as_array().unwrap_or_else(|| panic!("no invite in {sync}"));
    assert!(events.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Secret plans"), "{invite}");
    assert!(events.iter().any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "invite"));

    // He joins through the inviting server (no via given), and they talk.
    let (s, body) = b.server.join(&bob, &encode(&room)).await;
    assert_eq!(s, 200, "join after invite: {body}");
    a.server.send_text(&alice, &room, "welcome").await;
    wait_for_event(&b.server, &bob, &room, text_is("welcome")).await;

    // He leaves; A sees it.
    let (s, _) = b.server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(s, 200);
    eventually("Bob's leave reaches A", || async {
        membership_on(&a.server, &alice, &room, &bob.user_id).await.as_deref() == Some("leave")
    })
    .await;

    // Invited again, he rejects without joining: the leave goes through A.
    let (s, body) = a.server.invite(&alice, &room, &bob.user_id).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = b.server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(s, 200, "reject: {body}");
    assert_eq!(membership_on(&a.server, &alice, &room, &bob.user_id).await.as_deref(), Some("leave"));

    // A room B was never in: invite, then reject.
    let other = a.server.create_room(&alice, json!({"preset": "private_chat"})).await;
    let carol = b.server.register("carol").await;
    let (s, _) = a.server.invite(&alice, &other, &carol.user_id).await;
    assert_eq!(s, 200);
    let (s, body) =
        b.server.post(&format!("/_matrix/client/v3/rooms/{other}/leave"), Some(&carol.token), json!({})).await;
    assert_eq!(s, 200, "reject an invite to a room this server is not in: {body}");
    assert_eq!(membership_on(&a.server, &alice, &other, &carol.user_id).await.as_deref(), Some("leave"));
    let sync = b.server.sync(&carol, None, 0).await;
    assert!(sync["rooms"]["invite"].get(&other).is_none(), "the invite is gone: {sync}");
}

#[tokio::test]
async fn an_invite_is_rejected_locally_when_the_inviting_server_is_gone() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let b = Peer::start(&ca).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let dave = b.server.register("dave").await;
    let room = a.server.create_room(&alice, json!({"preset": "private_chat"})).await;
    let (s, body) = a.server.invite(&alice, &room, &bob.user_id).await;
    assert_eq!(s, 200, "{body}");
    let before = b.server.sync(&bob, None, 0).await;
    assert!(before["rooms"]["invite"].get(&room).is_some(), "{before}");
    // A is gone: Bob's rejection cannot reach it, so B rejects the invite alone (as Synapse):
    // the room leaves his invites for his left rooms.
    drop(a);
    let (s, body) = b.server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(s, 200, "{body}");
    let since = before["next_batch"].as_str().unwrap();
    let after = b.server.sync(&bob, Some(since), 0).await;
    let leave = &after["rooms"]["leave"][&room]["timeline"]["events"];
    assert!(
        leave.as_array().is_some_and(|e| e.iter().any(|e| e["content"]["membership"] == "leave")),
        "a leave in the left room: {after}"
    );
    let sync = b.server.sync(&bob, None, 0).await;
    assert!(sync["rooms"]["invite"].get(&room).is_none(), "the invite is gone: {sync}");
    // Only an invitee can reject: someone with no invite gets no leave made for them.
    let (s, _) = b.server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&dave.token), json!({})).await;
    assert!((400..500).contains(&s), "{s}");
}

#[tokio::test]
async fn federated_spam_callbacks_act_on_events_and_invites() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let b = Peer::start_with(
        &ca,
        "modules:\n  - module: myelin.test.Scripted\n    config:\n      label: fed\n      callbacks:\n\
         \x20       check_event_for_spam: {deny_if: \"buy pills\"}\n\
         \x20       should_drop_federated_event: {deny_if: \"drop me\"}\n\
         \x20       federated_user_may_invite: {deny_if: \"@mallory\", then: {deny: M_LIMIT_EXCEEDED}}\n\
         \x20       user_may_invite: {deny_if: \"@eve\"}\n",
    )
    .await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room = public_room(&a.server, &alice).await;
    let (s, body) = b.server.join_via(&bob, &room, &a.name).await;
    assert_eq!(s, 200, "{body}");

    // Spam from another server: the sender hears nothing, B stores it redacted and soft-failed.
    let (s, spam) = a.server.send_text(&alice, &room, "buy pills now").await;
    assert_eq!(s, 200, "the sender gets no error");
    a.server.send_text(&alice, &room, "an honest message").await;
    wait_for_event(&b.server, &bob, &room, text_is("an honest message")).await;
    let (s, _) = a.server.send_text(&alice, &room, "drop me please").await;
    assert_eq!(s, 200);
    eventually("should_drop_federated_event is asked", || async {
        b.server
            .calls("fed")
            .await
            .iter()
            .any(|c| c["callback"] == "should_drop_federated_event" && c["args"].to_string().contains("drop me please"))
    })
    .await;
    let bodies = |page: Value| -> Vec<String> {
        page["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].to_string()).collect()
    };
    let messages = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50");
    let (s, page) = b.server.get(&messages, Some(&bob.token)).await;
    assert_eq!(s, 200);
    let seen = bodies(page);
    assert!(!seen.iter().any(|b| b.contains("pills") || b.contains("drop me")), "{seen:?}");
    let calls = b.server.calls("fed").await;
    let called = |name: &str, needle: &str| {
        calls.iter().any(|c| c["callback"] == name && c["args"].to_string().contains(needle))
    };
    assert!(called("check_event_for_spam", "buy pills now"), "check_event_for_spam ran on the federated event");
    // As on Synapse, only a pushed event can be dropped: when a later event builds on it, B
    // fetches it as a missing parent and stores it (the spam check still applies).
    a.server.send_text(&alice, &room, "built on the dropped one").await;
    wait_for_event(&b.server, &bob, &room, text_is("built on the dropped one")).await;
    let (_, page) = b.server.get(&messages, Some(&bob.token)).await;
    assert!(bodies(page).iter().any(|b| b.contains("drop me please")), "fetched as a missing parent");
    // The spammy event is kept (redacted and soft-failed), and, soft-failed, it is shown to no
    // client, as on Synapse.
    let (s, stored) = b
        .server
        .get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", spam["event_id"].as_str().unwrap()), Some(&bob.token))
        .await;
    assert_eq!((s, stored["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{stored}");

    // Invites: federated_user_may_invite's code reaches the inviter; then user_may_invite.
    let mallory = a.server.register("mallory").await;
    let eve = a.server.register("eve").await;
    let r2 = a.server.create_room(&mallory, json!({"preset": "private_chat"})).await;
    let (s, body) = a.server.invite(&mallory, &r2, &bob.user_id).await;
    assert_eq!((s, body["errcode"].as_str()), (403, Some("M_LIMIT_EXCEEDED")), "{body}");
    let r3 = a.server.create_room(&eve, json!({"preset": "private_chat"})).await;
    let (s, body) = a.server.invite(&eve, &r3, &bob.user_id).await;
    assert_eq!(s, 403, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("not permitted to send invites"), "{body}");
    let calls = b.server.calls("fed").await;
    let user_may_invite: Vec<&Value> = calls.iter().filter(|c| c["callback"] == "user_may_invite").collect();
    assert_eq!(user_may_invite.len(), 1, "not asked after federated_user_may_invite refused: {user_may_invite:?}");
    assert_eq!(user_may_invite[0]["args"], json!([eve.user_id, bob.user_id, r3]));
    // Neither refused invite left anything behind.
    let sync = b.server.sync(&bob, None, 0).await;
    assert!(sync["rooms"]["invite"].get(&r2).is_none() && sync["rooms"]["invite"].get(&r3).is_none());
    // An allowed one still works.
    let r4 = a.server.create_room(&alice, json!({"preset": "private_chat"})).await;
    let (s, body) = a.server.invite(&alice, &r4, &bob.user_id).await;
    assert_eq!(s, 200, "{body}");
}

fn device_keys(user: &User, curve: &str) -> Value {
    json!({
        "user_id": user.user_id,
        "device_id": user.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {format!("curve25519:{}", user.device_id): curve, format!("ed25519:{}", user.device_id): format!("ed-{curve}")},
        "signatures": {user.user_id.clone(): {format!("ed25519:{}", user.device_id): "sig"}},
    })
}

#[tokio::test]
async fn profiles_aliases_device_keys_and_to_device_messages_cross_servers() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let b = Peer::start(&ca).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let (s, _) = a
        .server
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id),
            Some(&alice.token),
            json!({"displayname": "Alice A."}),
        )
        .await;
    assert_eq!(s, 200);

    // Profiles of remote users come from their server; unknown ones are 404.
    let (s, profile) = b.server.get(&format!("/_matrix/client/v3/profile/{}", alice.user_id), Some(&bob.token)).await;
    assert_eq!((s, profile["displayname"].as_str()), (200, Some("Alice A.")), "{profile}");
    let (s, _) = b.server.get(&format!("/_matrix/client/v3/profile/@nobody:{}", a.name), Some(&bob.token)).await;
    assert_eq!(s, 404);

    // A remote alias resolves, and joining by it works.
    let room = public_room(&a.server, &alice).await;
    let alias = format!("#lobby:{}", a.name);
    let (s, _) = a
        .server
        .put(
            &format!("/_matrix/client/v3/directory/room/{}", alias.replace('#', "%23")),
            Some(&alice.token),
            json!({"room_id": room}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, found) = b
        .server
        .get(&format!("/_matrix/client/v3/directory/room/{}", alias.replace('#', "%23")), Some(&bob.token))
        .await;
    assert_eq!((s, found["room_id"].as_str()), (200, Some(room.as_str())), "{found}");
    assert!(found["servers"].as_array().unwrap().iter().any(|s| *s == a.name.as_str()), "{found}");
    let (s, body) = b.server.join(&bob, &alias.replace('#', "%23").replace(':', "%3A")).await;
    assert_eq!(s, 200, "join by remote alias: {body}");

    // Device keys: uploaded on A, queried and claimed from B.
    let otks = json!({"signed_curve25519:AAAA1": {"key": "one", "signatures": {}}});
    let (s, _) = a
        .server
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&alice.token),
            json!({"device_keys": device_keys(&alice, "c1"), "one_time_keys": otks}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, keys) = b
        .server
        .post("/_matrix/client/v3/keys/query", Some(&bob.token), json!({"device_keys": {alice.user_id.clone(): []}}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        keys["device_keys"][&alice.user_id][&alice.device_id]["keys"][format!("curve25519:{}", alice.device_id)],
        "c1",
        "{keys}"
    );
    assert_eq!(keys["failures"], json!({}), "{keys}");
    let (s, claimed) = b
        .server
        .post(
            "/_matrix/client/v3/keys/claim",
            Some(&bob.token),
            json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        claimed["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:AAAA1"]["key"], "one",
        "{claimed}"
    );
    // A server that cannot be reached is a failure, not an error.
    let (s, keys) = b
        .server
        .post("/_matrix/client/v3/keys/query", Some(&bob.token), json!({"device_keys": {"@x:localhost:1": []}}))
        .await;
    assert_eq!(s, 200);
    assert!(keys["failures"]["localhost:1"].is_object(), "{keys}");

    // A new device key of Alice's is announced to B: Bob's sync lists her as changed.
    let since = b.server.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (s, _) = a
        .server
        .post("/_matrix/client/v3/keys/upload", Some(&alice.token), json!({"device_keys": device_keys(&alice, "c2")}))
        .await;
    assert_eq!(s, 200);
    let mut since = since;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = b.server.sync(&bob, Some(&since), 1000).await;
        since = body["next_batch"].as_str().unwrap_or(&since).to_owned();
        if body["device_lists"]["changed"].as_array().is_some_and(|c| c.iter().any(|u| *u == alice.user_id.as_str())) {
            break;
        }
        assert!(Instant::now() < deadline, "Alice's device change never reached Bob's sync");
    }

    // Presence crosses to servers sharing a room.
    let (s, _) = a
        .server
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", alice.user_id),
            Some(&alice.token),
            json!({"presence": "unavailable", "status_msg": "busy"}),
        )
        .await;
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = b.server.sync(&bob, Some(&since), 1000).await;
        since = body["next_batch"].as_str().unwrap_or(&since).to_owned();
        let events = body["presence"]["events"].as_array().cloned().unwrap_or_default();
        if events.iter().any(|e| e["sender"] == alice.user_id.as_str() && e["content"]["status_msg"] == "busy") {
            break;
        }
        assert!(Instant::now() < deadline, "Alice's presence never reached Bob's sync");
    }

    // To-device messages cross too.
    let (s, _) = b
        .server
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/txn1",
            Some(&bob.token),
            json!({"messages": {alice.user_id.clone(): {alice.device_id.clone(): {"hello": "from B"}}}}),
        )
        .await;
    assert_eq!(s, 200);
    eventually("the to-device message reaches Alice", || async {
        let body = a.server.sync(&alice, None, 0).await;
        body["to_device"]["events"].as_array().is_some_and(|e| {
            e.iter().any(|m| {
                m["type"] == "m.test" && m["sender"] == bob.user_id.as_str() && m["content"]["hello"] == "from B"
            })
        })
    })
    .await;
}

/// Bob's `/keys/query` for one user, from B.
async fn query_keys_of(b: &Peer, bob: &User, user: &str) -> Value {
    let (s, keys) =
        b.server.post("/_matrix/client/v3/keys/query", Some(&bob.token), json!({"device_keys": {user: []}})).await;
    assert_eq!(s, 200, "{keys}");
    keys
}

/// The curve25519 key of each of `user`'s devices in a `/keys/query` answer, by device ID.
fn curve_keys(keys: &Value, user: &str) -> Vec<(String, String)> {
    keys["device_keys"][user]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(d, k)| (d.clone(), k["keys"][format!("curve25519:{d}")].as_str().unwrap_or_default().to_owned()))
        .collect()
}

#[tokio::test]
async fn remote_device_lists_are_cached_kept_current_and_dropped_with_the_last_shared_room() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let b = Peer::start(&ca).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room = public_room(&a.server, &alice).await;
    let (s, body) = b.server.join_via(&bob, &room, &a.name).await;
    assert_eq!(s, 200, "{body}");
    let upload = |user: &User, curve: &str| {
        let body = json!({"device_keys": device_keys(user, curve)});
        let (server, token) = (&a.server, user.token.clone());
        async move { server.post("/_matrix/client/v3/keys/upload", Some(&token), body).await.0 }
    };
    assert_eq!(upload(&alice, "c1").await, 200);

    // The first query fetches Alice's whole list from A (and B keeps it).
    let keys = query_keys_of(&b, &bob, &alice.user_id).await;
    assert_eq!(curve_keys(&keys, &alice.user_id), vec![(alice.device_id.clone(), "c1".into())], "{keys}");
    assert_eq!(keys["failures"], json!({}));

    // Changes on A reach B's copy: new keys, and a second device.
    assert_eq!(upload(&alice, "c2").await, 200);
    let phone = a.server.login("alice").await;
    assert_eq!(upload(&phone, "p1").await, 200);
    let mut want = vec![(alice.device_id.clone(), "c2".to_owned()), (phone.device_id.clone(), "p1".to_owned())];
    want.sort();
    eventually("Alice's new keys and device reach B", || async {
        curve_keys(&query_keys_of(&b, &bob, &alice.user_id).await, &alice.user_id) == want
    })
    .await;

    // With A down, B still answers from its copy, and says nothing failed.
    let a = {
        let Peer { server, name, port } = a;
        let dir = server.stop();
        let keys = query_keys_of(&b, &bob, &alice.user_id).await;
        assert_eq!(curve_keys(&keys, &alice.user_id), want, "{keys}");
        assert_eq!(keys["failures"], json!({}), "{keys}");
        // Someone of A's whom nobody on B shares a room with is not cached: A is asked, and fails.
        let keys = query_keys_of(&b, &bob, &format!("@carol:{name}")).await;
        assert!(keys["failures"][&name].is_object(), "{keys}");
        Peer { server: Server::start_in(dir).await, name, port }
    };

    // Once Bob leaves, B shares no room with Alice and stops keeping her list: with A down
    // again, her keys are a failure, not a stale copy.
    let (s, body) = b.server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(s, 200, "{body}");
    let Peer { server, name, .. } = a;
    let _dir = server.stop();
    let keys = query_keys_of(&b, &bob, &alice.user_id).await;
    assert!(keys["failures"][&name].is_object(), "{keys}");
    assert_eq!(curve_keys(&keys, &alice.user_id), vec![], "{keys}");
}

async fn download(server: &Server, user: &User, path: &str) -> (u16, Vec<u8>, String, Value) {
    let resp = reqwest::Client::new().get(server.url(path)).bearer_auth(&user.token).send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let bytes = resp.bytes().await.unwrap().to_vec();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, bytes, ct, json)
}

#[tokio::test]
async fn remote_media_is_fetched_cached_thumbnailed_and_spam_checked() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let b = Peer::start_with(
        &ca,
        "modules:\n  - module: myelin.test.Scripted\n    config:\n      label: media\n      callbacks:\n\
         \x20       check_media_file_for_spam: {deny_if: \"evil bytes\", then: {deny: M_NOT_WELCOME}}\n",
    )
    .await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let image = crate::media::png(64, 48);
    let (s, up) = crate::media::upload(&a.server, &alice, image.clone(), "image/png", Some("pic.png")).await;
    assert_eq!(s, 200, "{up}");
    let mxc = up["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();

    // Bob downloads Alice's file through B, which fetches it from A over federation.
    let (s, bytes, ct, err) = download(&b.server, &bob, &format!("/_matrix/client/v1/media/download/{mxc}")).await;
    assert_eq!(s, 200, "{err}\n{}", b.server.log_text());
    assert_eq!((bytes, ct.as_str()), (image.clone(), "image/png"));
    let (s, thumb, ct, _) =
        download(&b.server, &bob, &format!("/_matrix/client/v1/media/thumbnail/{mxc}?width=32&height=32&method=crop"))
            .await;
    assert_eq!(s, 200, "{}", b.server.log_text());
    assert!(ct.starts_with("image/") && !thumb.is_empty() && thumb != image, "{ct}");
    let calls = b.server.calls("media").await;
    assert!(
        calls.iter().any(|c| c["callback"] == "check_media_file_for_spam" && c["args"][2] == a.name.as_str()),
        "{calls:?}"
    );

    // Spam from another server: 404 with the module's code, and nothing kept.
    let (s, up) = crate::media::upload(&a.server, &alice, b"evil bytes".to_vec(), "text/plain", None).await;
    assert_eq!(s, 200);
    let evil = up["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
    for _ in 0..2 {
        let (s, _, _, err) = download(&b.server, &bob, &format!("/_matrix/client/v1/media/download/{evil}")).await;
        assert_eq!(
            (s, err["errcode"].as_str(), err["error"].as_str()),
            (404, Some("M_NOT_WELCOME"), Some("Not found"))
        );
    }
    // Unknown remote media and bad IDs are 404.
    let (s, _, _, _) =
        download(&b.server, &bob, &format!("/_matrix/client/v1/media/download/{}/nosuchmedia1", a.name)).await;
    assert_eq!(s, 404);
    let (s, _, _, _) = download(&b.server, &bob, "/_matrix/client/v1/media/download/localhost:1/whatever12").await;
    assert!(s == 404 || s == 502, "{s}");

    // Once cached, the file is served without A.
    drop(a);
    let (s, bytes, _, _) = download(&b.server, &bob, &format!("/_matrix/client/v1/media/download/{mxc}")).await;
    assert_eq!((s, bytes), (200, image));

    // An admin purges the cache: a date before it was fetched keeps it, a later one drops it;
    // then it cannot be served, A being gone.
    b.server.make_admin_cli("root");
    let admin = b.server.login("root").await;
    let purge = |before: i64| format!("/_synapse/admin/v1/purge_media_cache?before_ts={before}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let (s, body) = b.server.post(&purge(now - 3_600_000), Some(&admin.token), json!({})).await;
    assert_eq!((s, body), (200, json!({"deleted": 0})));
    let (s, body) = b.server.post(&purge(now + 60_000), Some(&admin.token), json!({})).await;
    assert_eq!((s, body), (200, json!({"deleted": 1})));
    let (s, _, _, _) = download(&b.server, &bob, &format!("/_matrix/client/v1/media/download/{mxc}")).await;
    assert_ne!(s, 200, "purged, and its server is gone");
}

/// A DNS server on loopback answering SRV queries from a table (name -> (target, port)), and
/// NXDOMAIN to everything else.
async fn srv_dns(records: Vec<(String, String, u16)>) -> std::net::SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let query = &buf[..n];
            // The question: labels from byte 12, then type and class.
            let (mut i, mut labels) = (12, Vec::new());
            while i < n && query[i] != 0 {
                let len = query[i] as usize;
                labels.push(String::from_utf8_lossy(&query[i + 1..i + 1 + len]).to_lowercase());
                i += 1 + len;
            }
            let question_end = i + 5;
            if question_end > n {
                continue;
            }
            let qtype = u16::from_be_bytes([query[i + 1], query[i + 2]]);
            let name = labels.join(".");
            let found = records.iter().find(|(n, _, _)| *n == name).filter(|_| qtype == 33);
            let mut answer = Vec::new();
            answer.extend_from_slice(&query[..2]);
            answer.extend_from_slice(&[0x85, if found.is_some() { 0x80 } else { 0x83 }]);
            answer.extend_from_slice(&[0, 1, 0, found.is_some() as u8, 0, 0, 0, 0]);
            answer.extend_from_slice(&query[12..question_end]);
            if let Some((_, target, port)) = found {
                let mut rdata = vec![0, 10, 0, 5];
                rdata.extend_from_slice(&port.to_be_bytes());
                for label in target.split('.').filter(|l| !l.is_empty()) {
                    rdata.push(label.len() as u8);
                    rdata.extend_from_slice(label.as_bytes());
                }
                rdata.push(0);
                answer.extend_from_slice(&[0xc0, 0x0c, 0, 33, 0, 1, 0, 0, 0, 60]);
                answer.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                answer.extend_from_slice(&rdata);
            }
            let _ = socket.send_to(&answer, peer).await;
        }
    });
    addr
}

#[tokio::test]
async fn a_server_name_without_a_port_is_found_through_its_srv_record() {
    let ca = TestCa::new();
    // B is "srv.test", reachable only through `_matrix-fed._tcp.srv.test` -> localhost:<port>.
    let b_port = free_port();
    let dns = srv_dns(vec![("_matrix-fed._tcp.srv.test".to_owned(), "localhost".into(), b_port)]).await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = peer_config(&ca, b_port, "")
        .replace(&format!("server_name: \"localhost:{b_port}\""), "server_name: \"srv.test\"");
    std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
    let b = Server::start_in_with_env(dir, true, &[("MYELIN_DNS_SERVER", &dns)]).await;
    let a_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), peer_config(&ca, a_port, "")).unwrap();
    let a = Server::start_in_with_env(dir, true, &[("MYELIN_DNS_SERVER", &dns)]).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    assert_eq!(bob.user_id, "@bob:srv.test");

    // Alice (on A) joins Bob's room on srv.test: A finds B by SRV, and B's requests to A are
    // checked with B's keys, fetched the same way.
    let room = public_room(&b, &bob).await;
    let (s, body) = a.join_via(&alice, &room, "srv.test").await;
    assert_eq!(s, 200, "join through SRV: {body}\nA:\n{}", a.log_text());
    b.send_text(&bob, &room, "found by SRV").await;
    wait_for_event(&a, &alice, &room, text_is("found by SRV")).await;
    a.send_text(&alice, &room, "and back").await;
    wait_for_event(&b, &bob, &room, text_is("and back")).await;
}

#[tokio::test]
async fn typing_and_read_receipts_cross_servers() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let b = Peer::start(&ca).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room = public_room(&a.server, &alice).await;
    let (s, _) = b.server.join_via(&bob, &room, &a.name).await;
    assert_eq!(s, 200);
    let (_, sent) = a.server.send_text(&alice, &room, "read me").await;
    wait_for_event(&b.server, &bob, &room, text_is("read me")).await;
    let mut since = b.server.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    let (s, _) = a
        .server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
            Some(&alice.token),
            json!({"typing": true, "timeout": 20000}),
        )
        .await;
    assert_eq!(s, 200);
    let event_id = sent["event_id"].as_str().unwrap();
    let (s, _) = a
        .server
        .post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event_id}"), Some(&alice.token), json!({}))
        .await;
    assert_eq!(s, 200);
    let (mut typing_seen, mut receipt_seen) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(typing_seen && receipt_seen) {
        let body = b.server.sync(&bob, Some(&since), 1000).await;
        since = body["next_batch"].as_str().unwrap_or(&since).to_owned();
        for e in body["rooms"]["join"][&room]["ephemeral"]["events"].as_array().into_iter().flatten() {
            typing_seen |= e["type"] == "m.typing"
                && e["content"]["user_ids"].as_array().is_some_and(|u| u.iter().any(|u| *u == alice.user_id.as_str()));
            receipt_seen |= e["type"] == "m.receipt" && e["content"][event_id]["m.read"].get(&alice.user_id).is_some();
        }
        assert!(Instant::now() < deadline, "typing {typing_seen}, receipt {receipt_seen} after 30 s");
    }
}

#[tokio::test]
async fn history_from_before_a_federated_join_is_backfilled_as_its_visibility_allows() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let b = Peer::start(&ca).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    // A shared-history room: Bob, joining from B, reads what was said before he came, newest
    // first, fetched from A when he pages back past his join.
    let shared = public_room(&a.server, &alice).await;
    for i in 0..5 {
        a.server.send_text(&alice, &shared, &format!("before {i}")).await;
    }
    let (s, body) = b.server.join_via(&bob, &shared, &a.name).await;
    assert_eq!(s, 200, "{body}");
    let seen = bodies_back(&b.server, &bob, &shared).await;
    assert_eq!(&seen[..5], &["before 4", "before 3", "before 2", "before 1", "before 0"], "{seen:?}");
    // Paging on past the room's creation ends: no `end`, no event twice.
    let (_, page) =
        b.server.get(&format!("/_matrix/client/v3/rooms/{shared}/messages?dir=b&limit=100"), Some(&bob.token)).await;
    let ids: Vec<&str> = page["chunk"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(ids.len(), unique.len(), "{page}");
    assert!(page["chunk"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"), "{page}");

    // A room whose history is for joined members only: Bob, joining later, reads none of it.
    let joined_only = a
        .server
        .create_room(&alice, json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]}))
        .await;
    a.server.send_text(&alice, &joined_only, "for members only").await;
    let (s, body) = b.server.join_via(&bob, &joined_only, &a.name).await;
    assert_eq!(s, 200, "{body}");
    let seen = bodies_back(&b.server, &bob, &joined_only).await;
    assert!(!seen.iter().any(|b| b == "for members only"), "{seen:?}");
}

/// The bodies of the latest 30 events of a room as `user` pages back from the end.
async fn bodies_back(server: &Server, user: &User, room: &str) -> Vec<String> {
    let (s, page) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=30"), Some(&user.token)).await;
    assert_eq!(s, 200, "{page}");
    page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect()
}

#[tokio::test]
async fn a_space_on_another_server_is_summarised_through_it() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let b = Peer::start(&ca).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let space = a
        .server
        .create_room(&alice, json!({"preset": "public_chat", "name": "Space", "creation_content": {"type": "m.space"}}))
        .await;
    let open = a.server.create_room(&alice, json!({"preset": "public_chat", "name": "Open"})).await;
    let closed = a.server.create_room(&alice, json!({"preset": "private_chat", "name": "Closed"})).await;
    for child in [&open, &closed] {
        let path = format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{child}");
        let (s, body) = a.server.put(&path, Some(&alice.token), json!({"via": [a.name]})).await;
        assert_eq!(s, 200, "{body}");
    }
    // Bob joins the space only: B summarises its children by asking A, which keeps the
    // closed room to itself.
    let (s, body) = b.server.join_via(&bob, &space, &a.name).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = b.server.get(&format!("/_matrix/client/v1/rooms/{space}/hierarchy"), Some(&bob.token)).await;
    assert_eq!(s, 200, "{body}");
    let rooms: Vec<(&str, &str)> = body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["room_id"].as_str().unwrap(), r["name"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(rooms, vec![(space.as_str(), "Space"), (open.as_str(), "Open")], "{body}");
}

#[tokio::test]
async fn admins_see_federation_destinations_and_reset_their_backoff() {
    let ca = TestCa::new();
    let a = Peer::start(&ca).await;
    let b = Peer::start(&ca).await;
    a.server.make_admin_cli("root");
    let root = a.server.login("root").await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room = public_room(&a.server, &alice).await;
    let (s, body) = b.server.join_via(&bob, &room, &a.name).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(a.server.send_text(&alice, &room, "hello").await.0, 200);
    wait_for_event(&b.server, &bob, &room, text_is("hello")).await;
    let base = "/_synapse/admin/v1/federation/destinations";
    let one = format!("{base}/{}", b.name);

    // Listed, answering, with the room shared and how far it got.
    let (st, list) = a.server.get(base, Some(&root.token)).await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["destinations"][0]["destination"], b.name.as_str());
    eventually("the delivery is recorded", || async {
        let (_, d) = a.server.get(&one, Some(&root.token)).await;
        d["last_successful_stream_ordering"].as_i64().is_some()
    })
    .await;
    let (_, d) = a.server.get(&one, Some(&root.token)).await;
    assert_eq!(
        (d["failure_ts"].clone(), d["retry_last_ts"].clone(), d["retry_interval"].clone()),
        (json!(null), json!(0), json!(0)),
        "{d}"
    );
    let (st, rooms) = a.server.get(&format!("{one}/rooms"), Some(&root.token)).await;
    assert_eq!(
        (st, rooms["total"].clone(), rooms["rooms"][0]["room_id"].clone()),
        (200, json!(1), json!(room)),
        "{rooms}"
    );
    assert!(rooms["rooms"][0]["stream_ordering"].as_i64().unwrap() > 0);
    let (st, b2) = a.server.post(&format!("{one}/reset_connection"), Some(&root.token), json!({})).await;
    assert_eq!(
        (st, b2["error"].as_str()),
        (400, Some("The retry timing does not need to be reset for this destination.")),
        "{b2}"
    );
    let (_, filtered) = a.server.get(&format!("{base}?destination=nowhere"), Some(&root.token)).await;
    assert_eq!(filtered["total"], 0, "{filtered}");

    // Refused: unknown destinations, non-admins, bad parameters.
    let (st, e) = a.server.get(&format!("{base}/nowhere.example"), Some(&root.token)).await;
    assert_eq!((st, e["error"].as_str()), (404, Some("Unknown destination")), "{e}");
    let (st, e) = a.server.get(base, Some(&alice.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{e}");
    let (st, _) = a.server.get(&format!("{base}?order_by=nonsense"), Some(&root.token)).await;
    assert_eq!(st, 400);

    // The destination goes down: its backoff shows, and an admin may end it.
    let b_dir = b.server.stop();
    assert_eq!(a.server.send_text(&alice, &room, "while down").await.0, 200);
    eventually("the failure is recorded", || async {
        let (_, d) = a.server.get(&one, Some(&root.token)).await;
        d["retry_last_ts"].as_i64().unwrap_or(0) > 0
    })
    .await;
    let (_, d) = a.server.get(&one, Some(&root.token)).await;
    assert!(d["failure_ts"].as_i64().is_some() && d["retry_interval"].as_i64().unwrap() > 0, "{d}");
    let (st, b2) = a.server.post(&format!("{one}/reset_connection"), Some(&root.token), json!({})).await;
    assert_eq!((st, b2), (200, json!({})));
    assert!(a.server.log_shows("reset federation connection").await);
    drop(b_dir);
}

/// `on_event_delivered_over_federation` (Synapse 1.158): a module on A hears of the join's
/// state going to B (`/send_join`), of the history B pulled (`/backfill`) and of each message
/// B acknowledged (`/send`), with the events; a callback that raises is logged and delivery
/// goes on.
#[tokio::test]
async fn modules_hear_of_events_delivered_over_federation() {
    let ca = TestCa::new();
    let a = Peer::start_with(&ca, "modules:\n  - module: deliveries.Deliveries\n").await;
    let b = Peer::start(&ca).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room = public_room(&a.server, &alice).await;
    assert_eq!(a.server.send_text(&alice, &room, "before bob").await.0, 200);
    let (s, body) = b.server.join_via(&bob, &room, &a.name).await;
    assert_eq!(s, 200, "{body}");
    // Bob reads back past his join: B backfills from A.
    let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=30", encode(&room));
    let (s, page) = b.server.get(&path, Some(&bob.token)).await;
    assert!(s == 200 && page.to_string().contains("before bob"), "{page}");
    for text in ["explode", "after the failure"] {
        let (s, _) = a.server.send_text(&alice, &room, text).await;
        assert_eq!(s, 200);
        wait_for_event(&b.server, &bob, &room, text_is(text)).await;
    }
    let seen = || async { a.server.get("/_synapse/client/deliveries", None).await.1 };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut deliveries = seen().await;
    while !deliveries.to_string().contains("after the failure") {
        assert!(Instant::now() < deadline, "{deliveries}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        deliveries = seen().await;
    }
    let deliveries = deliveries.as_array().unwrap().clone();
    assert!(deliveries.iter().all(|d| d["server_name"] == b.name.as_str()), "{deliveries:?}");
    let join = deliveries.iter().find(|d| d["method"] == "/send_join").expect("the join's answer");
    let types: Vec<&str> = join["events"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(types.contains(&"m.room.create") && types.contains(&"m.room.member"), "{join}");
    assert!(join["events"][0]["event_id"].as_str().is_some_and(|id| id.starts_with('$')), "{join}");
    let sent: Vec<&Value> = deliveries.iter().filter(|d| d["method"] == "/send").collect();
    let bodies: Vec<&str> =
        sent.iter().flat_map(|d| d["events"].as_array().unwrap()).filter_map(|e| e["body"].as_str()).collect();
    assert!(bodies.contains(&"explode") && bodies.contains(&"after the failure"), "{sent:?}");
    let backfilled = deliveries.iter().find(|d| d["method"] == "/backfill").expect("the backfill's answer");
    assert!(backfilled.to_string().contains("before bob"), "{backfilled}");
    assert!(a.server.log_shows("the module failed on purpose").await);
}

/// A presence router on two servers (Synapse's docs' example): Alice's presence on A is routed
/// to Bob on B though they share no room (A sends it to B because its router names Bob), and
/// B's router makes Bob interested in her; Carol on B, whom no router names, sees nothing.
#[tokio::test]
async fn a_presence_router_routes_presence_to_another_servers_user() {
    let ca = TestCa::new();
    let routes = tempfile::NamedTempFile::new().unwrap();
    let module = format!(
        "presence:\n  enabled: true\nmodules:\n  - module: presence_router.Router\n    config:\n      routes_file: {}\n",
        routes.path().display()
    );
    let a = Peer::start_with(&ca, &module).await;
    let b = Peer::start_with(&ca, &module).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let carol = b.server.register("carol").await;
    std::fs::write(routes.path(), json!({"observers": [bob.user_id], "watched": [alice.user_id]}).to_string()).unwrap();
    let path = format!("/_matrix/client/v3/presence/{}/status", encode(&alice.user_id));
    let (s, _) = a.server.put(&path, Some(&alice.token), json!({"presence": "online", "status_msg": "on A"})).await;
    assert_eq!(s, 200);
    let seen_by = |who: &User| {
        let (server, who) = (&b.server, who.clone());
        let alice = alice.user_id.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let sync = server.sync(&who, None, 0).await;
                let found = sync["presence"]["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["sender"] == alice.as_str() && e["content"]["status_msg"] == "on A");
                if found || Instant::now() > deadline {
                    return found;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(seen_by(&bob).await, "Bob on B gets Alice's presence from A\nA log:\n{}", a.server.log_text());
    let (s, body) = b.server.get(&path, Some(&bob.token)).await;
    assert_eq!((s, body["status_msg"].as_str()), (200, Some("on A")), "{body}");
    // Alice's presence is on B by now: one look is enough for Carol.
    let sync = b.server.sync(&carol, None, 0).await;
    let events = sync["presence"]["events"].as_array().cloned().unwrap_or_default();
    assert!(!events.iter().any(|e| e["sender"] == alice.user_id.as_str()), "no router names Carol: {events:?}");
    assert_eq!(b.server.get(&path, Some(&carol.token)).await.0, 403);
}
