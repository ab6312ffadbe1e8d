//! Bad input over federation. The test speaks for a real second server B (a Myelin whose
//! signing key the test wrote, so B publishes it and A can fetch it): it signs requests and
//! events with B's key, or with the wrong one, and sends A what a broken or hostile server
//! would.

use base64::Engine;
use ruma::CanonicalJsonObject;
use ruma::signatures::Ed25519KeyPair;
use serde_json::{Value, json};

use crate::federating::{Peer, TestCa, eventually, free_port, peer_config, wait_for_event};
use crate::harness::{Server, User};

const PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// A signing key the test holds: written as a server's key file, or used to forge.
pub(crate) struct Key {
    pub(crate) pair: Ed25519KeyPair,
    seed: [u8; 32],
}

impl Key {
    pub(crate) fn new() -> Key {
        let seed: [u8; 32] = rand_seed();
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        Key { pair: Ed25519KeyPair::from_der(&der, "test".into()).unwrap(), seed }
    }

    fn key_file(&self) -> String {
        format!("ed25519 test {}\n", base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.seed))
    }
}

fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = (crate::harness::rand_suffix() >> (i % 8)) as u8 ^ i as u8;
    }
    seed
}

pub(crate) fn canonical(v: Value) -> CanonicalJsonObject {
    match ruma::CanonicalJsonValue::try_from(v).unwrap() {
        ruma::CanonicalJsonValue::Object(o) => o,
        _ => panic!("not an object"),
    }
}

/// The `Authorization` header `origin` would send, signed with `key`.
fn x_matrix(key: &Key, origin: &str, destination: &str, method: &str, uri: &str, content: Option<&Value>) -> String {
    let mut object = json!({"method": method, "uri": uri, "origin": origin, "destination": destination});
    if let Some(c) = content {
        object["content"] = c.clone();
    }
    let mut object = canonical(object);
    ruma::signatures::sign_json(origin, &key.pair, &mut object).unwrap();
    let sig = object["signatures"].as_object().unwrap()[origin].as_object().unwrap()["ed25519:test"]
        .as_str()
        .unwrap()
        .to_owned();
    format!(r#"X-Matrix origin="{origin}",destination="{destination}",key="ed25519:test",sig="{sig}""#)
}

/// A signed PDU from `origin` and its event ID.
fn pdu(key: &Key, origin: &str, fields: Value) -> (Value, String) {
    let rules = ruma::RoomVersionId::V10.rules().unwrap();
    let mut object = canonical(fields);
    ruma::signatures::hash_and_sign_event(origin, &key.pair, &mut object, &rules.redaction).unwrap();
    let id = format!("${}", ruma::signatures::reference_hash(&object, &rules).unwrap());
    (serde_json::to_value(&object).unwrap(), id)
}

/// Speaks to A's federation listener as (or pretending to be) another server.
struct Remote {
    http: reqwest::Client,
    base: String,
    destination: String,
}

impl Remote {
    fn new(ca: &TestCa, a: &Peer) -> Remote {
        let pem = std::fs::read(ca.path("ca.pem")).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        Remote { http, base: format!("https://localhost:{}", a.port), destination: a.name.clone() }
    }

    async fn send(&self, method: &str, uri: &str, auth: Option<String>, body: Option<Vec<u8>>) -> (u16, Value) {
        let mut req = self.http.request(method.parse().unwrap(), format!("{}{uri}", self.base));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request to A");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A `PUT /send` transaction from `origin` signed with `key`.
    async fn transaction(&self, key: &Key, origin: &str, txn: &str, body: Value) -> (u16, Value) {
        let uri = format!("/_matrix/federation/v1/send/{txn}");
        let auth = x_matrix(key, origin, &self.destination, "PUT", &uri, Some(&body));
        self.send("PUT", &uri, Some(auth), Some(body.to_string().into_bytes())).await
    }

    async fn get(&self, key: &Key, origin: &str, uri: &str) -> (u16, Value) {
        let auth = x_matrix(key, origin, &self.destination, "GET", uri, None);
        self.send("GET", uri, Some(auth), None).await
    }
}

async fn state_id(a: &Server, alice: &User, room: &str, kind: &str, key: &str) -> String {
    let (s, state) = a.get(&format!("/_matrix/client/v3/rooms/{room}/state"), Some(&alice.token)).await;
    assert_eq!(s, 200);
    state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == kind && e["state_key"] == key)
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no {kind}/{key} in {state}"))
}

/// A (resident, Alice's public room) and B (Bob joined), with B's key in the test's hands.
struct Setup {
    ca: TestCa,
    a: Peer,
    a_key: Key,
    b: Peer,
    b_key: Key,
    alice: User,
    bob: User,
    room: String,
    remote: Remote,
    origin: String,
}

/// A real Myelin whose signing key the test wrote.
async fn peer_with_key(ca: &TestCa) -> (Peer, Key) {
    peer_with_key_and(ca, "").await
}

/// As [`peer_with_key`], with `extra` config.
async fn peer_with_key_and(ca: &TestCa, extra: &str) -> (Peer, Key) {
    let key = Key::new();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/signing.key"), key.key_file()).unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), peer_config(ca, port, extra)).unwrap();
    (Peer { server: Server::start_in(dir).await, name: format!("localhost:{port}"), port }, key)
}

async fn setup() -> Setup {
    let ca = TestCa::new();
    let (a, a_key) = peer_with_key(&ca).await;
    let (b, b_key) = peer_with_key(&ca).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room =
        // Version 10: the events forged below are hashed and signed by its rules.
        a.server.create_room(&alice, json!({"preset": "public_chat", "name": "Lobby", "visibility": "public", "room_version": "10"})).await;
    let (s, body) = b.server.join_via(&bob, &room, &a.name).await;
    assert_eq!(s, 200, "{body}");
    let remote = Remote::new(&ca, &a);
    let origin = b.name.clone();
    Setup { ca, a, a_key, b, b_key, alice, bob, room, remote, origin }
}

#[tokio::test]
async fn hostile_and_broken_federation_input_is_refused_and_the_room_carries_on() {
    let Setup { a, b, b_key, alice, bob, room, remote, origin, .. } = setup().await;

    // What a PDU from Bob in this room is built on.
    let create = state_id(&a.server, &alice, &room, "m.room.create", "").await;
    let power = state_id(&a.server, &alice, &room, "m.room.power_levels", "").await;
    let bob_member = state_id(&a.server, &alice, &room, "m.room.member", &bob.user_id).await;
    let (s, fetched) = remote.get(&b_key, &origin, &format!("/_matrix/federation/v1/event/{bob_member}")).await;
    assert_eq!(s, 200, "B may fetch its own join from A: {fetched}");
    let depth = fetched["pdus"][0]["depth"].as_u64().unwrap();
    let message = |sender: &str, body: &str, auth: Vec<&str>| {
        json!({
            "room_id": room, "sender": sender, "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": body},
            "prev_events": [bob_member], "auth_events": auth, "depth": depth + 1,
            "origin_server_ts": 1_700_000_000_000u64,
        })
    };

    // Sanity: a well-formed, well-signed PDU from B is accepted.
    let (good, good_id) =
        pdu(&b_key, &origin, message(&bob.user_id, "crafted but honest", vec![&create, &power, &bob_member]));
    let (s, answer) = remote
        .transaction(&b_key, &origin, "t1", json!({"origin": origin, "origin_server_ts": 1, "pdus": [good]}))
        .await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(answer["pdus"][&good_id], json!({}), "{answer}");
    wait_for_event(&a.server, &alice, &room, |e| e["content"]["body"] == "crafted but honest").await;

    // Request authentication: none, a forged signature, a key that is not B's, a wrong
    // destination, a server name that cannot be reached.
    let body = json!({"origin": origin, "origin_server_ts": 1, "pdus": []});
    let (s, e) = remote.send("PUT", "/_matrix/federation/v1/send/t2", None, Some(body.to_string().into_bytes())).await;
    assert_eq!((s, e["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "no signature: {e}");
    let forger = Key::new();
    let (s, e) = remote.transaction(&forger, &origin, "t3", body.clone()).await;
    assert_eq!((s, e["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "forged: {e}");
    let uri = "/_matrix/federation/v1/send/t4";
    let misdirected = x_matrix(&b_key, &origin, "elsewhere.test", "PUT", uri, Some(&body));
    let (s, e) = remote.send("PUT", uri, Some(misdirected), Some(body.to_string().into_bytes())).await;
    assert_eq!((s, e["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "wrong destination: {e}");
    let (s, e) = remote.transaction(&b_key, "localhost:1", "t5", json!({"origin": "localhost:1", "pdus": []})).await;
    assert_eq!((s, e["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "unknown origin: {e}");
    // A malformed header, and an origin that is no server name (a port that is not a
    // number): 400, as Synapse answers.
    let uri = "/_matrix/federation/v1/query/profile?user_id=%40alice%3Ax&field=displayname";
    let (s, e) = remote.send("GET", uri, Some("X-Matrix origin=\"b.test\"".into()), None).await;
    assert_eq!((s, e["errcode"].as_str()), (400, Some("M_UNAUTHORIZED")), "no key or sig: {e}");
    let bad_port = x_matrix(&b_key, "localhost:http", &remote.destination, "GET", uri, None);
    let (s, e) = remote.send("GET", uri, Some(bad_port), None).await;
    assert_eq!((s, e["errcode"].as_str()), (400, Some("M_UNAUTHORIZED")), "non-numeric port: {e}");

    // A transaction claiming another origin than its signer.
    let (s, e) = remote.transaction(&b_key, &origin, "t6", json!({"origin": "evil.test", "pdus": []})).await;
    assert_eq!(s, 403, "{e}");

    // Per-PDU failures: each fails alone and nothing of it is stored.
    let (forged_pdu, forged_id) =
        pdu(&forger, &origin, message(&bob.user_id, "forged event", vec![&create, &power, &bob_member]));
    let (outsider, outsider_id) =
        pdu(&b_key, &origin, message(&format!("@mallory:{origin}"), "not a member", vec![&create, &power]));
    let (other_server, other_id) =
        pdu(&b_key, &origin, message("@carol:localhost:1", "signed by the wrong server", vec![&create, &power]));
    // Signed, then changed: the ID stays (the reference hash covers the redacted form).
    let mut tampered = pdu(&b_key, &origin, message(&bob.user_id, "original", vec![&create, &power, &bob_member]));
    tampered.0["content"]["body"] = json!("tampered on the way");
    // Over the spec's 64 KiB (ruma will not sign one that large, so it is enlarged after).
    let (mut huge, _) = pdu(&b_key, &origin, message(&bob.user_id, "small", vec![&create, &power, &bob_member]));
    huge["content"]["body"] = json!("x".repeat(70_000));
    let txn = json!({"origin": origin, "origin_server_ts": 1, "pdus": [
        forged_pdu, outsider, other_server, tampered.0, huge, "not an object", {"room_id": room}, {"room_id": "!unknown:localhost:1"},
    ]});
    let (s, answer) = remote.transaction(&b_key, &origin, "t7", txn).await;
    assert_eq!(s, 200, "a transaction with bad PDUs still succeeds: {answer}");
    let results = answer["pdus"].as_object().unwrap();
    assert!(results[&forged_id]["error"].is_string(), "forged signature: {answer}");
    // An event that fails the auth rules is rejected quietly, as Synapse does: its sender's
    // server is not told, and the event is never served.
    assert_eq!(results[&outsider_id], json!({}), "fails auth: {answer}");
    assert!(results[&other_id]["error"].is_string(), "unverifiable: {answer}");
    assert_eq!(results.values().filter(|r| r.get("error").is_some()).count(), results.len() - 2, "{answer}");
    // The tampered event is kept only redacted (its hash did not match): no body survives.
    let (s, got) =
        a.server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", tampered.1), Some(&alice.token)).await;
    assert_eq!(s, 200, "{got}");
    assert!(got["content"].get("body").is_none(), "{got}");
    for id in [&forged_id, &outsider_id, &other_id] {
        let (s, _) = a.server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{id}"), Some(&alice.token)).await;
        assert_eq!(s, 404, "{id} must not be stored");
    }

    // Too many PDUs, and bodies that are not JSON.
    let many: Vec<Value> = (0..51).map(|i| json!({"n": i})).collect();
    let (s, e) = remote.transaction(&b_key, &origin, "t8", json!({"origin": origin, "pdus": many})).await;
    assert_eq!((s, e["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{e}");
    let uri = "/_matrix/federation/v1/send/t9";
    let (s, e) = remote
        .send(
            "PUT",
            uri,
            Some(x_matrix(&b_key, &origin, &remote.destination, "PUT", uri, None)),
            Some(b"{nope".to_vec()),
        )
        .await;
    assert_eq!((s, e["errcode"].as_str()), (400, Some("M_NOT_JSON")), "{e}");

    // A flood of transactions is answered, one at a time per origin, with no server error.
    let floods =
        (0..30).map(|i| {
            let (remote, key, origin) = (&remote, &b_key, &origin);
            async move {
                remote.transaction(key, origin, &format!("flood{i}"), json!({"origin": origin, "pdus": []})).await.0
            }
        });
    let statuses = futures::future::join_all(floods).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // A repeated transaction ID gets the first answer, without redoing it.
    let (s, again) = remote.transaction(&b_key, &origin, "t1", json!({"origin": origin, "pdus": []})).await;
    assert_eq!((s, &again["pdus"][&good_id]), (200, &json!({})), "{again}");

    // The room is unharmed: both servers still talk.
    a.server.send_text(&alice, &room, "still here").await;
    wait_for_event(&b.server, &bob, &room, |e| e["content"]["body"] == "still here").await;
    b.server.send_text(&bob, &room, "me too").await;
    eventually("B's message reaches A", || async {
        let (_, page) =
            a.server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5"), Some(&alice.token)).await;
        page["chunk"].as_array().is_some_and(|c| c.iter().any(|e| e["content"]["body"] == "me too"))
    })
    .await;
}

#[tokio::test]
async fn room_history_is_served_to_servers_in_the_room_only() {
    let Setup { a, b_key, alice, room, remote, origin, .. } = setup().await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let (_, body) = a.server.send_text(&alice, &room, &format!("history {i}")).await;
        sent.push(body["event_id"].as_str().unwrap().to_owned());
    }
    let enc = |s: &str| s.replace('!', "%21").replace(':', "%3A").replace('$', "%24");
    let last = sent.last().unwrap().clone();

    // The state before an event, as IDs and as events.
    let (s, ids) = remote
        .get(&b_key, &origin, &format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(&room), enc(&last)))
        .await;
    assert_eq!(s, 200, "{ids}");
    crate::harness::assert_federation_schema("/_matrix/federation/v1/state_ids/{roomId}", "get", 200, &ids);
    assert!(ids["pdu_ids"].as_array().unwrap().len() >= 6, "create, members, power levels, rules, name...: {ids}");
    let (s, state) = remote
        .get(&b_key, &origin, &format!("/_matrix/federation/v1/state/{}?event_id={}", enc(&room), enc(&last)))
        .await;
    assert_eq!(s, 200, "{state}");
    crate::harness::assert_federation_schema("/_matrix/federation/v1/state/{roomId}", "get", 200, &state);
    assert!(
        state["pdus"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Lobby")
    );
    assert_eq!(state["pdus"].as_array().unwrap().len(), ids["pdu_ids"].as_array().unwrap().len());

    // Backfill walks back from the event given; get_missing_events fills between two points.
    let (s, back) = remote
        .get(&b_key, &origin, &format!("/_matrix/federation/v1/backfill/{}?v={}&limit=3", enc(&room), enc(&last)))
        .await;
    assert_eq!(s, 200, "{back}");
    crate::harness::assert_federation_schema("/_matrix/federation/v1/backfill/{roomId}", "get", 200, &back);
    let bodies: Vec<&str> =
        back["pdus"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["history 4", "history 3", "history 2"]);
    let uri = format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room));
    let body = json!({"earliest_events": [sent[1]], "latest_events": [last], "limit": 10});
    let auth = x_matrix(&b_key, &origin, &remote.destination, "POST", &uri, Some(&body));
    let (s, missing) = remote.send("POST", &uri, Some(auth), Some(body.to_string().into_bytes())).await;
    assert_eq!(s, 200, "{missing}");
    let bodies: Vec<&str> =
        missing["events"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["history 2", "history 3"], "between the earliest and the latest, oldest first");

    // The room directory.
    let (s, dir) = remote.get(&b_key, &origin, "/_matrix/federation/v1/publicRooms").await;
    assert_eq!(s, 200, "{dir}");
    assert!(
        dir["chunk"].as_array().unwrap().iter().any(|r| r["room_id"] == room.as_str() && r["name"] == "Lobby"),
        "{dir}"
    );

    // A server with nobody in the room sees none of it; unknown events are 404.
    let stranger = Key::new();
    let (s, _) = remote
        .get(&stranger, &origin, &format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(&room), enc(&last)))
        .await;
    assert_eq!(s, 401, "a forged request");
    let (s, e) =
        remote.get(&b_key, &origin, &format!("/_matrix/federation/v1/state_ids/{}?event_id=%24nope", enc(&room))).await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = remote.get(&b_key, &origin, &format!("/_matrix/federation/v1/state_ids/{}", enc(&room))).await;
    assert_eq!((s, e["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{e}");
    let other = a.server.create_room(&alice, json!({"preset": "private_chat"})).await;
    let (_, o) = a.server.send_text(&alice, &other, "private").await;
    let (s, e) = remote
        .get(
            &b_key,
            &origin,
            &format!(
                "/_matrix/federation/v1/state_ids/{}?event_id={}",
                enc(&other),
                enc(o["event_id"].as_str().unwrap())
            ),
        )
        .await;
    assert_eq!((s, e["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{e}");
}

#[tokio::test]
async fn an_event_with_unknown_parents_makes_the_receiver_fetch_them_from_the_sender() {
    let Setup { ca, a, a_key, b, b_key, alice, bob, room, remote, origin } = setup().await;
    // Bob's two events, the second on the first, both given to B (as if from A)...
    let create = state_id(&a.server, &alice, &room, "m.room.create", "").await;
    let power = state_id(&a.server, &alice, &room, "m.room.power_levels", "").await;
    let bob_member = state_id(&a.server, &alice, &room, "m.room.member", &bob.user_id).await;
    let (s, fetched) = remote.get(&b_key, &origin, &format!("/_matrix/federation/v1/event/{bob_member}")).await;
    assert_eq!(s, 200);
    let depth = fetched["pdus"][0]["depth"].as_u64().unwrap();
    let event = |body: &str, prev: &str, depth: u64| {
        json!({
            "room_id": room, "sender": bob.user_id, "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": body}, "prev_events": [prev],
            "auth_events": [create, power, bob_member], "depth": depth, "origin_server_ts": 1_700_000_000_000u64,
        })
    };
    let (first, first_id) = pdu(&b_key, &origin, event("the one in between", &bob_member, depth + 1));
    let (second, second_id) = pdu(&b_key, &origin, event("the one after", &first_id, depth + 2));
    let to_b = Remote::new(&ca, &b);
    let (s, answer) =
        to_b.transaction(&a_key, &a.name, "gap1", json!({"origin": a.name, "pdus": [first, second.clone()]})).await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!((&answer["pdus"][&first_id], &answer["pdus"][&second_id]), (&json!({}), &json!({})), "{answer}");

    // ...and only the second to A, from B: A asks B for what lies between.
    let (s, answer) = remote.transaction(&b_key, &origin, "gap2", json!({"origin": origin, "pdus": [second]})).await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(answer["pdus"][&second_id], json!({}), "{answer}");
    let (s, got) = a.server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{first_id}"), Some(&alice.token)).await;
    assert_eq!((s, got["content"]["body"].as_str()), (200, Some("the one in between")), "fetched as missing: {got}");
    let (_, page) =
        a.server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3"), Some(&alice.token)).await;
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(&bodies[..2], &["the one after", "the one in between"], "{page}");
}

#[tokio::test]
async fn a_server_vouches_for_the_keys_of_another_as_a_notary() {
    let Setup { ca, a, b, remote, .. } = setup().await;
    // A's own answer, then B (which has talked to A) asked for A's keys.
    let (s, own) = remote.send("GET", "/_matrix/key/v2/server", None, None).await;
    assert_eq!(s, 200);
    let to_b = Remote::new(&ca, &b);
    let query = json!({"server_keys": {a.name.clone(): {}}});
    let (s, answer) = to_b.send("POST", "/_matrix/key/v2/query", None, Some(query.to_string().into_bytes())).await;
    assert_eq!(s, 200, "{answer}");
    crate::harness::assert_federation_schema("/_matrix/key/v2/query", "post", 200, &answer);
    let keys = &answer["server_keys"][0];
    assert_eq!(keys["server_name"], a.name.as_str(), "{answer}");
    assert_eq!(keys["verify_keys"], own["verify_keys"]);
    // Signed by A (its own answer, unchanged) and by B, the notary; both verify.
    let key_of = |body: &Value| {
        let (id, k) = body["verify_keys"].as_object().unwrap().iter().next().unwrap();
        (id.clone(), ruma::serde::Base64::parse(k["key"].as_str().unwrap()).unwrap())
    };
    let (_, b_own) = to_b.send("GET", "/_matrix/key/v2/server", None, None).await;
    let public: ruma::signatures::PublicKeyMap = [
        (a.name.clone(), [key_of(&own)].into_iter().collect()),
        (b.name.clone(), [key_of(&b_own)].into_iter().collect()),
    ]
    .into_iter()
    .collect();
    ruma::signatures::verify_json(&public, &canonical(keys.clone())).expect("both signatures verify");
    assert_eq!(keys["signatures"].as_object().unwrap().len(), 2, "{keys}");
    // The GET form, and a minimum validity no cached answer meets (A is asked again).
    let (s, answer) = to_b.send("GET", &format!("/_matrix/key/v2/query/{}", a.name), None, None).await;
    assert_eq!((s, answer["server_keys"].as_array().map(Vec::len)), (200, Some(1)), "{answer}");
    let far = json!({"server_keys": {a.name.clone(): {"ed25519:x": {"minimum_valid_until_ts": 9_999_999_999_999i64}}}});
    let (s, answer) = to_b.send("POST", "/_matrix/key/v2/query", None, Some(far.to_string().into_bytes())).await;
    assert_eq!(s, 200, "{answer}");
}

#[tokio::test]
async fn a_server_flooding_past_rc_federation_reject_limit_gets_429() {
    let ca = TestCa::new();
    let (a, _) =
        peer_with_key_and(&ca, "rc_federation: {window_size: 60000, sleep_limit: 100, reject_limit: 3}\n").await;
    let (b, b_key) = peer_with_key(&ca).await;
    let alice = a.server.register("alice").await;
    let remote = Remote::new(&ca, &a);
    let uri = format!("/_matrix/federation/v1/query/profile?user_id={}", alice.user_id.replace(':', "%3A"));
    for i in 0..3 {
        let (s, body) = remote.get(&b_key, &b.name, &uri).await;
        assert_eq!(s, 200, "request {i}: {body}");
    }
    let (s, body) = remote.get(&b_key, &b.name, &uri).await;
    assert_eq!((s, body["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "{body}");
    // Forged requests never count against the server they name: they are refused first.
    let forger = Key::new();
    let (s, _) = remote.get(&forger, &b.name, &uri).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn a_server_joining_a_joined_visibility_room_late_gets_earlier_events_redacted() {
    let ca = TestCa::new();
    let (a, _) = peer_with_key(&ca).await;
    let (b, b_key) = peer_with_key(&ca).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;
    let room = a.server.create_room(&alice, crate::harness::room_with_visibility("public_chat", "joined")).await;
    let mut secrets = Vec::new();
    for i in 0..3 {
        let (_, body) = a.server.send_text(&alice, &room, &format!("secret {i}")).await;
        secrets.push(body["event_id"].as_str().unwrap().to_owned());
    }
    let (s, body) = b.server.join_via(&bob, &room, &a.name).await;
    assert_eq!(s, 200, "{body}");
    let (_, after) = a.server.send_text(&alice, &room, "after the join").await;
    let last = after["event_id"].as_str().unwrap().to_owned();
    let remote = Remote::new(&ca, &a);
    let enc = |s: &str| s.replace('!', "%21").replace(':', "%3A").replace('$', "%24");

    // Backfill: the events come (the graph stays whole) but the earlier ones without content.
    let (s, back) = remote
        .get(&b_key, &b.name, &format!("/_matrix/federation/v1/backfill/{}?v={}&limit=20", enc(&room), enc(&last)))
        .await;
    assert_eq!(s, 200, "{back}");
    let pdus = back["pdus"].as_array().unwrap();
    let redacted = pdus.iter().filter(|p| p["type"] == "m.room.message" && p["content"].get("body").is_none()).count();
    assert_eq!(redacted, secrets.len(), "the messages from before the join come redacted: {back}");
    let text = back.to_string();
    assert!(!text.contains("secret 0") && !text.contains("secret 2"), "{text}");
    assert!(text.contains("after the join"), "events after the join are whole: {text}");

    // get_missing_events and /event likewise.
    let uri = format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room));
    let body = json!({"earliest_events": [], "latest_events": [last], "limit": 20});
    let auth = x_matrix(&b_key, &b.name, &remote.destination, "POST", &uri, Some(&body));
    let (s, missing) = remote.send("POST", &uri, Some(auth), Some(body.to_string().into_bytes())).await;
    assert_eq!(s, 200, "{missing}");
    assert!(!missing.to_string().contains("secret"), "{missing}");
    let (s, event) = remote.get(&b_key, &b.name, &format!("/_matrix/federation/v1/event/{}", enc(&secrets[1]))).await;
    assert_eq!(s, 200, "{event}");
    assert!(!event.to_string().contains("secret 1"), "{event}");
    assert_eq!(event["pdus"][0]["type"], "m.room.message");
}

#[tokio::test]
async fn a_server_the_room_acl_denies_is_refused_on_every_federation_endpoint() {
    let Setup { a, b, b_key, alice, bob, room, remote, origin, .. } = setup().await;
    let create = state_id(&a.server, &alice, &room, "m.room.create", "").await;
    let power = state_id(&a.server, &alice, &room, "m.room.power_levels", "").await;
    let bob_member = state_id(&a.server, &alice, &room, "m.room.member", &bob.user_id).await;
    let (_, fetched) = remote.get(&b_key, &origin, &format!("/_matrix/federation/v1/event/{bob_member}")).await;
    let depth = fetched["pdus"][0]["depth"].as_u64().unwrap();
    let enc = |s: &str| s.replace('!', "%21").replace(':', "%3A").replace('$', "%24");
    let state_ids = format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(&room), enc(&bob_member));
    // Before the ACL, B is served.
    assert_eq!(remote.get(&b_key, &origin, &state_ids).await.0, 200);

    // Alice denies B's host (the port does not matter) and allows everyone else.
    let host = origin.split(':').next().unwrap();
    let acl = json!({"allow": ["*"], "deny": [host], "allow_ip_literals": false});
    let (s, body) = a
        .server
        .put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.server_acl"), Some(&alice.token), acl)
        .await;
    assert_eq!(s, 200, "{body}");

    let forbidden = |(s, b): (u16, Value)| {
        assert_eq!((s, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    };
    forbidden(remote.get(&b_key, &origin, &state_ids).await);
    forbidden(
        remote
            .get(&b_key, &origin, &format!("/_matrix/federation/v1/state/{}?event_id={}", enc(&room), enc(&bob_member)))
            .await,
    );
    forbidden(
        remote
            .get(
                &b_key,
                &origin,
                &format!("/_matrix/federation/v1/backfill/{}?v={}&limit=5", enc(&room), enc(&bob_member)),
            )
            .await,
    );
    forbidden(
        remote
            .get(&b_key, &origin, &format!("/_matrix/federation/v1/make_join/{}/{}", enc(&room), enc("@newcomer:x")))
            .await,
    );
    forbidden(
        remote
            .get(&b_key, &origin, &format!("/_matrix/federation/v1/make_leave/{}/{}", enc(&room), enc(&bob.user_id)))
            .await,
    );
    // Its PDUs for the room are refused, named in the transaction's answer, and not stored.
    let (message, id) = pdu(
        &b_key,
        &origin,
        json!({
            "room_id": room, "sender": bob.user_id, "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": "from a banned server"},
            "prev_events": [bob_member], "auth_events": [create, power, bob_member], "depth": depth + 1,
            "origin_server_ts": 1_700_000_000_000u64,
        }),
    );
    let (s, answer) = remote
        .transaction(&b_key, &origin, "acl1", json!({"origin": origin, "origin_server_ts": 1, "pdus": [message]}))
        .await;
    assert_eq!(s, 200, "{answer}");
    let errors: Vec<&Value> = answer["pdus"].as_object().unwrap().values().collect();
    assert!(errors.iter().any(|e| e["error"].as_str().is_some_and(|m| m.contains("banned"))), "{answer}");
    let (s, _) = a.server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{}", enc(&id)), Some(&alice.token)).await;
    assert_eq!(s, 404);
    // Its typing notices are ignored.
    let typing = json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": bob.user_id, "typing": true}});
    let (s, _) = remote
        .transaction(&b_key, &origin, "acl2", json!({"origin": origin, "origin_server_ts": 1, "edus": [typing]}))
        .await;
    assert_eq!(s, 200);
    let sync = a.server.sync(&alice, None, 0).await;
    let typing_ids = sync["rooms"]["join"][&room]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.typing")
        .flat_map(|e| e["content"]["user_ids"].as_array().cloned().unwrap_or_default())
        .collect::<Vec<_>>();
    assert!(!typing_ids.contains(&json!(bob.user_id)), "{sync}");
    // Other servers (and A's own users) carry on.
    assert_eq!(a.server.send_text(&alice, &room, "still here").await.0, 200);
    drop(b);
}

#[tokio::test]
async fn v1_endpoints_event_auth_and_state_of_rejected_events_answer_as_synapse() {
    let Setup { a, b_key, alice, bob, room, remote, origin, .. } = setup().await;
    let enc = |s: &str| s.replace('!', "%21").replace(':', "%3A").replace('$', "%24").replace('@', "%40");
    let create = state_id(&a.server, &alice, &room, "m.room.create", "").await;
    let power = state_id(&a.server, &alice, &room, "m.room.power_levels", "").await;
    let bob_member = state_id(&a.server, &alice, &room, "m.room.member", &bob.user_id).await;

    // `/event_auth`: the auth chain of an event, the create event included.
    let (s, auth) = remote
        .get(&b_key, &origin, &format!("/_matrix/federation/v1/event_auth/{}/{}", enc(&room), enc(&bob_member)))
        .await;
    assert_eq!(s, 200, "{auth}");
    let chain: Vec<&str> = auth["auth_chain"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(chain.contains(&"m.room.create") && chain.contains(&"m.room.power_levels"), "{auth}");
    // Refused: an unknown event, and a room this server does not know.
    let (s, _) = remote
        .get(&b_key, &origin, &format!("/_matrix/federation/v1/event_auth/{}/{}", enc(&room), enc("$nope")))
        .await;
    assert_eq!(s, 404);
    let (s, _) = remote
        .get(&b_key, &origin, &format!("/_matrix/federation/v1/event_auth/{}/{}", enc("!nowhere:x"), enc(&bob_member)))
        .await;
    assert_eq!(s, 404);

    // A PDU that fails the auth rules is stored rejected: it has no state to give (404),
    // where an accepted event has.
    let (s, fetched) = remote.get(&b_key, &origin, &format!("/_matrix/federation/v1/event/{bob_member}")).await;
    assert_eq!(s, 200, "{fetched}");
    let depth = fetched["pdus"][0]["depth"].as_u64().unwrap();
    let (outsider, outsider_id) = pdu(
        &b_key,
        &origin,
        json!({
            "room_id": room, "sender": format!("@mallory:{origin}"), "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": "not a member"},
            "prev_events": [bob_member], "auth_events": [create, power], "depth": depth + 1,
            "origin_server_ts": 1_700_000_000_000u64,
        }),
    );
    let (s, answer) = remote
        .transaction(&b_key, &origin, "v1t1", json!({"origin": origin, "origin_server_ts": 1, "pdus": [outsider]}))
        .await;
    assert_eq!((s, &answer["pdus"][&outsider_id]), (200, &json!({})), "{answer}");
    for endpoint in ["state", "state_ids"] {
        let uri = format!("/_matrix/federation/v1/{endpoint}/{}?event_id={}", enc(&room), enc(&outsider_id));
        assert_eq!(remote.get(&b_key, &origin, &uri).await.0, 404, "{endpoint} of a rejected event");
        let uri = format!("/_matrix/federation/v1/{endpoint}/{}?event_id={}", enc(&room), enc(&bob_member));
        assert_eq!(remote.get(&b_key, &origin, &uri).await.0, 200, "{endpoint} of an accepted event");
    }

    // v1 `send_join`: the event alone in, `[200, answer]` out, as Synapse still serves it.
    let carol = format!("@carol:{origin}");
    let (s, template) = remote
        .get(&b_key, &origin, &format!("/_matrix/federation/v1/make_join/{}/{}?ver=10", enc(&room), enc(&carol)))
        .await;
    assert_eq!(s, 200, "{template}");
    let mut fields = template["event"].clone();
    fields["origin_server_ts"] = json!(1_700_000_000_001u64);
    let (join, join_id) = pdu(&b_key, &origin, fields);
    let uri = format!("/_matrix/federation/v1/send_join/{}/{}", enc(&room), enc(&join_id));
    let auth = x_matrix(&b_key, &origin, &remote.destination, "PUT", &uri, Some(&join));
    let (s, answer) = remote.send("PUT", &uri, Some(auth), Some(join.to_string().into_bytes())).await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(answer[0], 200, "{answer}");
    assert!(answer[1]["state"].as_array().is_some_and(|s| !s.is_empty()), "{answer}");
    // The auth chain of the state, the create event included though it is in the state too
    // (as Synapse sends it).
    let chain_types: Vec<&str> =
        answer[1]["auth_chain"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(chain_types.contains(&"m.room.create") && chain_types.contains(&"m.room.power_levels"), "{answer}");
    eventually("Carol is a member on A", || async {
        a.server
            .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{carol}"), Some(&alice.token))
            .await
            .1["membership"]
            == "join"
    })
    .await;
    // A join signed by someone else's key is refused on the v1 path too.
    let (forged, forged_id) = pdu(&Key::new(), &origin, template["event"].clone());
    let uri = format!("/_matrix/federation/v1/send_join/{}/{}", enc(&room), enc(&forged_id));
    let auth = x_matrix(&b_key, &origin, &remote.destination, "PUT", &uri, Some(&forged));
    let (s, answer) = remote.send("PUT", &uri, Some(auth), Some(forged.to_string().into_bytes())).await;
    assert!((400..500).contains(&s), "{s} {answer}");
}

/// The first events of a test's forged chain: `(create, power levels, Bob's member, depth of
/// Bob's member)` as A has them.
async fn chain_base(
    a: &Server,
    alice: &User,
    bob: &User,
    room: &str,
    remote: &Remote,
    key: &Key,
    origin: &str,
) -> (String, String, String, u64) {
    let create = state_id(a, alice, room, "m.room.create", "").await;
    let power = state_id(a, alice, room, "m.room.power_levels", "").await;
    let bob_member = state_id(a, alice, room, "m.room.member", &bob.user_id).await;
    let (s, fetched) = remote.get(key, origin, &format!("/_matrix/federation/v1/event/{bob_member}")).await;
    assert_eq!(s, 200, "{fetched}");
    (create, power, bob_member, fetched["pdus"][0]["depth"].as_u64().unwrap())
}

#[tokio::test]
async fn an_event_whose_unknown_parents_its_sender_cannot_give_is_refused() {
    let Setup { a, b_key, alice, bob, room, remote, origin, .. } = setup().await;
    let (create, power, bob_member, depth) = chain_base(&a.server, &alice, &bob, &room, &remote, &b_key, &origin).await;
    // Its parent exists nowhere: B has nothing to give for it, so A refuses the event (as
    // Synapse: its state could not be trusted) and stores nothing.
    let (orphan, orphan_id) = pdu(
        &b_key,
        &origin,
        json!({
            "room_id": room, "sender": bob.user_id, "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": "orphan"}, "prev_events": ["$nowhere-to-be-found"],
            "auth_events": [create, power, bob_member], "depth": depth + 5, "origin_server_ts": 1_700_000_000_000u64,
        }),
    );
    let (s, answer) = remote.transaction(&b_key, &origin, "orphan1", json!({"origin": origin, "pdus": [orphan]})).await;
    assert_eq!(s, 200, "{answer}");
    assert!(answer["pdus"][&orphan_id]["error"].is_string(), "refused with an error: {answer}");
    let (s, _) = a.server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{orphan_id}"), Some(&alice.token)).await;
    assert_eq!(s, 404, "the refused event was not stored");
    // The room carries on: an event on a known parent is accepted.
    let (fine, fine_id) = pdu(
        &b_key,
        &origin,
        json!({
            "room_id": room, "sender": bob.user_id, "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": "fine"}, "prev_events": [bob_member],
            "auth_events": [create, power, bob_member], "depth": depth + 1, "origin_server_ts": 1_700_000_000_001u64,
        }),
    );
    let (s, answer) = remote.transaction(&b_key, &origin, "orphan2", json!({"origin": origin, "pdus": [fine]})).await;
    assert_eq!((s, &answer["pdus"][&fine_id]), (200, &json!({})), "{answer}");
}

#[tokio::test]
async fn a_gap_too_long_to_fetch_is_bridged_with_the_state_the_sender_gives() {
    let Setup { ca, a, a_key, b, b_key, alice, bob, room, remote, origin } = setup().await;
    let (create, power, bob_member, depth) = chain_base(&a.server, &alice, &bob, &room, &remote, &b_key, &origin).await;
    // Later than Bob's join, so that state resolution orders the rename after it.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let join_rules = state_id(&a.server, &alice, &room, "m.room.join_rules", "").await;
    // On B (given as if from A): Bob renames himself, then 31 messages. Given the last, A
    // asks B for the 20 events before the last and still misses the rename and the first
    // messages: it asks B for the state after the oldest one it lacks, fetches what it does
    // not have, and takes the rename into its state.
    let rename_fields = json!({
        "room_id": room, "sender": bob.user_id, "type": "m.room.member", "state_key": bob.user_id,
        "content": {"membership": "join", "displayname": "Bob Across The Gap"}, "prev_events": [bob_member],
        "auth_events": [create, power, join_rules, bob_member], "depth": depth + 1, "origin_server_ts": now,
    });
    let (rename, rename_id) = pdu(&b_key, &origin, rename_fields);
    let mut pdus = vec![rename];
    let mut prev = rename_id.clone();
    for i in 0..31u64 {
        let (event, id) = pdu(
            &b_key,
            &origin,
            json!({
                "room_id": room, "sender": bob.user_id, "type": "m.room.message",
                "content": {"msgtype": "m.text", "body": format!("message {i}")}, "prev_events": [prev],
                "auth_events": [create, power, rename_id], "depth": depth + 2 + i,
                "origin_server_ts": now + 1 + i,
            }),
        );
        pdus.push(event);
        prev = id;
    }
    let last = pdus.last().cloned().unwrap();
    let to_b = Remote::new(&ca, &b);
    let (s, answer) = to_b.transaction(&a_key, &a.name, "long1", json!({"origin": a.name, "pdus": pdus})).await;
    assert_eq!(s, 200, "{answer}");
    assert!(answer["pdus"].as_object().unwrap().values().all(|r| *r == json!({})), "{answer}");
    let (s, answer) = remote.transaction(&b_key, &origin, "long2", json!({"origin": origin, "pdus": [last]})).await;
    assert_eq!((s, &answer["pdus"][&prev]), (200, &json!({})), "{answer}");
    let (s, member) = a
        .server
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", bob.user_id), Some(&alice.token))
        .await;
    assert_eq!((s, member["displayname"].as_str()), (200, Some("Bob Across The Gap")), "{member}");
    let (_, page) =
        a.server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"), Some(&alice.token)).await;
    assert_eq!(page["chunk"][0]["content"]["body"], "message 30", "{page}");
    // The rename came as an outlier, without state of its own: none to give other servers.
    let enc = |s: &str| s.replace('!', "%21").replace(':', "%3A").replace('$', "%24");
    let uri = format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(&room), enc(&rename_id));
    assert_eq!(remote.get(&b_key, &origin, &uri).await.0, 404);
}

#[tokio::test]
async fn redactions_from_other_servers_apply_only_where_synapse_would() {
    let Setup { a, b_key, alice, bob, room, remote, origin, .. } = setup().await;
    let (create, power, bob_member, depth) = chain_base(&a.server, &alice, &bob, &room, &remote, &b_key, &origin).await;
    let other_room = a.server.create_room(&alice, json!({"preset": "public_chat", "room_version": "10"})).await;
    let (_, sent) = a
        .server
        .put(
            &format!("/_matrix/client/v3/rooms/{other_room}/send/m.room.message/t1"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "elsewhere"}),
        )
        .await;
    let elsewhere = sent["event_id"].as_str().unwrap().to_owned();
    let (_, sent) = a
        .server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t2"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "alice's"}),
        )
        .await;
    let alices = sent["event_id"].as_str().unwrap().to_owned();
    let (_, sent) = a
        .server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t3"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "after"}),
        )
        .await;
    let mut prev = sent["event_id"].as_str().unwrap().to_owned();
    let mut depth = depth + 10;
    let mut send = async |fields: Value| -> String {
        let mut fields = fields;
        fields["room_id"] = json!(room);
        fields["sender"] = json!(bob.user_id);
        fields["prev_events"] = json!([prev]);
        fields["auth_events"] = json!([create, power, bob_member]);
        fields["depth"] = json!(depth);
        fields["origin_server_ts"] = json!(1_700_000_000_000u64 + depth);
        let (event, id) = pdu(&b_key, &origin, fields);
        let (s, answer) =
            remote.transaction(&b_key, &origin, &format!("r{depth}"), json!({"origin": origin, "pdus": [event]})).await;
        assert_eq!((s, &answer["pdus"][&id]), (200, &json!({})), "{answer}");
        prev = id.clone();
        depth += 1;
        id
    };
    let bobs = send(json!({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "bob's"}})).await;
    // Bob (power 0, another server) redacting Alice's message, and a message of another room:
    // withheld, the targets untouched.
    let on_alice = send(json!({"type": "m.room.redaction", "redacts": alices, "content": {}})).await;
    let cross_room = send(json!({"type": "m.room.redaction", "redacts": elsewhere, "content": {}})).await;
    // Bob redacting his own: applied.
    let own = send(json!({"type": "m.room.redaction", "redacts": bobs, "content": {}})).await;

    let event = |room: String, id: String| {
        let a = &a;
        let token = alice.token.clone();
        async move { a.server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{id}"), Some(&token)).await.1 }
    };
    assert_eq!(event(room.clone(), alices.clone()).await["content"]["body"], "alice's");
    assert_eq!(event(other_room.clone(), elsewhere.clone()).await["content"]["body"], "elsewhere");
    let redacted = event(room.clone(), bobs.clone()).await;
    assert_eq!(redacted["content"], json!({}), "{redacted}");
    assert_eq!(redacted["unsigned"]["redacted_by"], json!(own), "{redacted}");
    assert_eq!(redacted["unsigned"]["redacted_because"]["event_id"], json!(own), "{redacted}");
    // The withheld redactions are nowhere in the timeline; the applied one is.
    let (_, page) =
        a.server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=10"), Some(&alice.token)).await;
    let ids: Vec<&str> = page["chunk"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert!(ids.contains(&own.as_str()), "{page}");
    assert!(!ids.contains(&on_alice.as_str()) && !ids.contains(&cross_room.as_str()), "{page}");
}
