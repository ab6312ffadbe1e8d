//! Application services: registration files, `as_token` masquerading, exclusive namespaces,
//! transactions (in order, exactly once, across failures and restarts), queries, the ping and
//! third-party lookups, against a fake appservice on loopback that records every request.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

const V3: &str = "/_matrix/client/v3";
const AS_TOKEN: &str = "as-secret-token";
const HS_TOKEN: &str = "hs-secret-token";

/// A registration for the `irc` bridge: users `@irc_*`, aliases `#irc_*` (both exclusive),
/// the protocol `irc`, with `url` pointing at `url` (`null` for none) and `extra` lines.
fn registration(url: Option<&str>, extra: &str) -> String {
    format!(
        "id: irc\nurl: {}\nas_token: {AS_TOKEN}\nhs_token: {HS_TOKEN}\nsender_localpart: ircbot\n\
         namespaces:\n  users:\n    - exclusive: true\n      regex: '@irc_.*:test'\n  aliases:\n    - exclusive: true\n      regex: '#irc_.*:test'\n\
         protocols: [irc]\n{extra}",
        url.map_or("null".to_owned(), |u| format!("'{u}'"))
    )
}

/// Starts a server with `registration` written beside its config, plus `extra` config.
async fn start_with_registration(registration: &str, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("irc.yaml"), registration).unwrap();
    let config = base_config(&format!("app_service_config_files: [irc.yaml]\n{extra}"));
    std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
    Server::start_in(dir).await
}

/// One request the fake appservice received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query.
    uri: String,
    authorization: String,
    body: Value,
}

#[derive(Default)]
struct FakeState {
    seen: Vec<Seen>,
    /// Statuses for the next transactions (200 once empty).
    transaction_answers: VecDeque<u16>,
    /// Statuses for the next pings (200 once empty).
    ping_answers: VecDeque<u16>,
    /// Aliases the fake creates when asked about them (a room made through the homeserver).
    creatable_aliases: HashSet<String>,
    /// The homeserver's URL, for the fake's own calls.
    homeserver: Option<String>,
}

/// A fake appservice: answers the Application Service API, records every request.
struct FakeAppservice {
    state: Arc<Mutex<FakeState>>,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<()>,
    url: String,
}

impl FakeAppservice {
    async fn start() -> FakeAppservice {
        type Shared = (Arc<Mutex<FakeState>>, tokio::sync::mpsc::UnboundedSender<()>);
        async fn any(
            axum::extract::State((state, tx)): axum::extract::State<Shared>,
            request: axum::extract::Request,
        ) -> (axum::http::StatusCode, axum::Json<Value>) {
            let (parts, body) = request.into_parts();
            let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
            let seen = Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                authorization: parts
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let path = parts.uri.path().to_owned();
            let (status, answer) = {
                let mut s = state.lock().unwrap();
                s.seen.push(seen);
                if path.starts_with("/_matrix/app/v1/transactions/") {
                    (s.transaction_answers.pop_front().unwrap_or(200), json!({}))
                } else if path == "/_matrix/app/v1/ping" {
                    let status = s.ping_answers.pop_front().unwrap_or(200);
                    (status, if status == 200 { json!({}) } else { json!({"errcode": "M_UNKNOWN", "error": "down"}) })
                } else if let Some(alias) = path.strip_prefix("/_matrix/app/v1/rooms/") {
                    let alias = alias.replace("%23", "#").replace("%3A", ":");
                    if s.creatable_aliases.contains(&alias) { (0, json!(alias)) } else { (404, json!({})) }
                } else if path == "/_matrix/app/v1/thirdparty/protocol/irc" {
                    (
                        200,
                        json!({"user_fields": ["nick"], "location_fields": ["channel"], "icon": "mxc://test/irc",
                        "field_types": {}, "instances": [{"network_id": "libera", "desc": "Libera", "fields": {}}]}),
                    )
                } else if path == "/_matrix/app/v1/thirdparty/location/irc" {
                    let channel = parts.uri.query().unwrap_or_default().replace("channel=", "");
                    (
                        200,
                        json!([
                            {"alias": format!("#irc_{channel}:test"), "protocol": "irc", "fields": {"channel": channel}},
                            {"protocol": "irc", "fields": {}},
                        ]),
                    )
                } else {
                    (404, json!({"errcode": "M_NOT_FOUND"}))
                }
            };
            // An alias query the fake answers by creating the room with that alias first.
            let answer = if status == 0 {
                let alias = answer.as_str().unwrap().to_owned();
                let homeserver = state.lock().unwrap().homeserver.clone().unwrap();
                let localpart = alias.trim_start_matches('#').split(':').next().unwrap().to_owned();
                let created = reqwest::Client::new()
                    .post(format!("{homeserver}/_matrix/client/v3/createRoom"))
                    .bearer_auth(AS_TOKEN)
                    .json(&json!({"room_alias_name": localpart}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(created.status(), 200, "the fake's createRoom");
                let _ = tx.send(());
                return (axum::http::StatusCode::OK, axum::Json(json!({})));
            } else {
                answer
            };
            let _ = tx.send(());
            (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(answer))
        }
        let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let app = axum::Router::new().fallback(any).with_state((state.clone(), tx));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeAppservice { state, arrivals, url }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The transactions received so far.
    fn transactions(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.uri.starts_with("/_matrix/app/v1/transactions/")).collect()
    }

    /// Waits (up to `limit`) until `done` holds for the requests seen.
    async fn wait_for(&mut self, limit: Duration, what: &str, done: impl Fn(&[Seen]) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.seen()) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                panic!("{what}: not seen within {limit:?}; seen: {:#?}", self.seen());
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), self.arrivals.recv()).await;
        }
    }
}

/// Event IDs of every transaction's events, in the order received, each transaction ID once
/// (an appservice drops a transaction ID it has already processed, as the spec asks).
fn delivered_events(transactions: &[Seen]) -> Vec<String> {
    let mut ids = HashSet::new();
    let mut out = Vec::new();
    for t in transactions {
        if !ids.insert(t.uri.clone()) {
            continue;
        }
        for e in t.body["events"].as_array().unwrap() {
            out.push(e["event_id"].as_str().unwrap().to_owned());
        }
    }
    out
}

fn event_ids_of(transactions: &[Seen], kind: &str) -> Vec<Value> {
    transactions
        .iter()
        .flat_map(|t| t.body["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["type"] == kind)
        .collect()
}

async fn as_call(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    s.call(method, path, Some(AS_TOKEN), body).await
}

/// Registers `localpart` through the appservice (`m.login.application_service`).
async fn as_register(s: &Server, localpart: &str) -> (u16, Value) {
    as_call(
        s,
        "POST",
        &format!("{V3}/register"),
        Some(json!({"type": "m.login.application_service", "username": localpart})),
    )
    .await
}

#[tokio::test]
async fn an_appservice_acts_only_as_its_own_users() {
    let s = start_with_registration(&registration(None, ""), "").await;
    // The sender exists from start-up; the token acts as it.
    let (st, b) = as_call(&s, "GET", &format!("{V3}/account/whoami"), None).await;
    assert_eq!((st, b["user_id"].as_str()), (200, Some("@ircbot:test")), "{b}");
    // Registering inside the namespace works, once; outside it is refused.
    let (st, b) = as_register(&s, "irc_alice").await;
    assert_eq!((st, b["user_id"].as_str()), (200, Some("@irc_alice:test")), "{b}");
    assert!(b["access_token"].is_string(), "logged in unless inhibit_login: {b}");
    assert_eq!(as_register(&s, "irc_alice").await.1["errcode"], "M_USER_IN_USE");
    let (st, b) = as_register(&s, "alice").await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{b}");
    // Only users of this server, whatever the namespace's regex lets through.
    for name in ["@irc_x:elsewhere.example", "irc_x:elsewhere.example"] {
        let (st, b) = as_register(&s, name).await;
        assert_eq!((st, b["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{name}: {b}");
    }
    let (st, b) = s
        .post(&format!("{V3}/register"), None, json!({"type": "m.login.application_service", "username": "irc_x"}))
        .await;
    assert_eq!(st, 400, "no token: {b}");
    let (st, b) = s
        .call(
            "POST",
            &format!("{V3}/register"),
            Some("wrong"),
            Some(json!({"type": "m.login.application_service", "username": "irc_x"})),
        )
        .await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "{b}");

    // Masquerading: registered users of its namespace only.
    let whoami = |user: &str| format!("{V3}/account/whoami?user_id={}", user.replace('@', "%40").replace(':', "%3A"));
    let (st, b) = as_call(&s, "GET", &whoami("@irc_alice:test"), None).await;
    assert_eq!((st, b["user_id"].as_str()), (200, Some("@irc_alice:test")), "{b}");
    let bob = s.register("bob").await;
    let (st, b) = as_call(&s, "GET", &whoami("@bob:test"), None).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "outside the namespace: {b}");
    let (st, b) = as_call(&s, "GET", &whoami("@irc_alice:test.elsewhere.example"), None).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "another server's user: {b}");
    let (st, b) = as_call(&s, "GET", &whoami("@irc_ghost:test"), None).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "not registered: {b}");
    let (st, b) = as_call(&s, "GET", &format!("{}&device_id=NOPE", whoami("@irc_alice:test")), None).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_UNKNOWN_DEVICE")), "{b}");
    // A normal user's token ignores user_id.
    let (st, b) = s.get(&whoami("@irc_alice:test"), Some(&bob.token)).await;
    assert_eq!((st, b["user_id"].as_str()), (200, Some("@bob:test")), "{b}");

    // Exclusive namespaces keep normal users out.
    let (st, b) = s.try_register("irc_bob").await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{b}");
    let (st, b) = s.get(&format!("{V3}/register/available?username=irc_bob"), None).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{b}");
    let (st, b) = s.try_register("ircbot").await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "the sender's ID: {b}");
    let room = s.create_room(&bob, json!({})).await;
    let (st, b) =
        s.put(&format!("{V3}/directory/room/%23irc_x:test"), Some(&bob.token), json!({"room_id": room})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{b}");
    let (st, b) = s.post(&format!("{V3}/createRoom"), Some(&bob.token), json!({"room_alias_name": "irc_y"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{b}");
    // The appservice may use its aliases, in any room, and only those.
    let (st, b) =
        as_call(&s, "PUT", &format!("{V3}/directory/room/%23irc_x:test"), Some(json!({"room_id": room}))).await;
    assert_eq!(st, 200, "{b}");
    let (st, b) =
        as_call(&s, "PUT", &format!("{V3}/directory/room/%23other:test"), Some(json!({"room_id": room}))).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{b}");
    let (st, b) = s.call("DELETE", &format!("{V3}/directory/room/%23irc_x:test"), Some(&bob.token), None).await;
    assert_eq!(st, 400, "a normal user cannot take the alias away, even as the room's admin: {b}");
    let (st, b) = as_call(&s, "DELETE", &format!("{V3}/directory/room/%23irc_x:test"), None).await;
    assert_eq!(st, 200, "the appservice removes its own alias: {b}");
    assert_eq!(s.get(&format!("{V3}/directory/room/%23irc_x:test"), None).await.0, 404);

    // Keys belong to a device: without ?device_id= there is none.
    let (st, b) = as_call(&s, "POST", &format!("{V3}/keys/upload"), Some(json!({"one_time_keys": {}}))).await;
    assert_eq!(st, 400, "{b}");

    // Its users have no password: deleting a device or deactivating needs no UIA from it.
    let (_, alice_login) = as_register(&s, "irc_zed").await;
    let zed_device = alice_login["device_id"].as_str().unwrap().to_owned();
    let zed = "user_id=%40irc_zed%3Atest";
    let (st, b) = as_call(&s, "DELETE", &format!("{V3}/devices/{zed_device}?{zed}"), Some(json!({}))).await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = as_call(&s, "POST", &format!("{V3}/account/deactivate?{zed}"), Some(json!({}))).await;
    assert_eq!(st, 200, "{b}");
    let (st, _) = s.post(&format!("{V3}/account/deactivate"), Some(&bob.token), json!({})).await;
    assert_eq!(st, 401, "a normal user still authenticates");

    // Login as one of its users with the token.
    let login =
        json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "irc_alice"}});
    let (st, b) = as_call(&s, "POST", &format!("{V3}/login"), Some(login.clone())).await;
    assert_eq!((st, b["user_id"].as_str()), (200, Some("@irc_alice:test")), "{b}");
    let (st, _) = s.get(&format!("{V3}/account/whoami"), b["access_token"].as_str()).await;
    assert_eq!(st, 200);
    let (st, b) = s.post(&format!("{V3}/login"), None, login).await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "{b}");
    let bob_login = json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "bob"}});
    let (st, b) = as_call(&s, "POST", &format!("{V3}/login"), Some(bob_login)).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    let (_, flows) = s.get(&format!("{V3}/login"), None).await;
    assert!(flows["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.application_service"), "{flows}");

    // Ping: only the appservice itself, and it has no URL.
    let (st, b) = as_call(&s, "POST", "/_matrix/client/v1/appservice/irc/ping", Some(json!({}))).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_URL_NOT_SET")), "{b}");
    let (st, b) = as_call(&s, "POST", "/_matrix/client/v1/appservice/other/ping", Some(json!({}))).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    let (st, b) = s.post("/_matrix/client/v1/appservice/irc/ping", Some(&bob.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
}

#[tokio::test]
async fn bridged_timestamps_and_rate_limits_follow_the_registration() {
    // rc_message allows two messages at once; the appservice's users are not limited. It also
    // has a non-exclusive namespace of everyone: that exempts nobody.
    let everyone = "    - exclusive: false\n      regex: '@.*:test'\n  aliases:";
    let s = start_with_registration(
        &registration(None, "rate_limited: false\n").replace("  aliases:", everyone),
        "rc_message: {per_second: 0.1, burst_count: 2}\nrc_registration: {per_second: 100, burst_count: 100}\n\
         rc_login: {address: {per_second: 100, burst_count: 100}, account: {per_second: 100, burst_count: 100}}\n",
    )
    .await;
    let bob = s.register("bob").await;
    assert_eq!(as_register(&s, "irc_carol").await.0, 200);
    let room = s.create_room(&bob, json!({"preset": "public_chat"})).await;
    let as_user = "user_id=%40irc_carol%3Atest";
    let (st, b) = as_call(&s, "POST", &format!("{V3}/join/{room}?{as_user}"), Some(json!({}))).await;
    assert_eq!(st, 200, "{b}");
    for i in 0..6 {
        let path = format!("{V3}/rooms/{room}/send/m.room.message/t{i}?{as_user}&ts=1600000000000");
        let (st, b) =
            as_call(&s, "PUT", &path, Some(json!({"msgtype": "m.text", "body": format!("bridged {i}")}))).await;
        assert_eq!(st, 200, "message {i} of an unlimited appservice user: {b}");
    }
    let mut limited = false;
    for i in 0..6 {
        let path = format!("{V3}/rooms/{room}/send/m.room.message/b{i}?ts=1600000000000");
        let (st, _) = s.put(&path, Some(&bob.token), json!({"msgtype": "m.text", "body": "hi"})).await;
        limited |= st == 429;
    }
    assert!(limited, "a normal user still meets rc_message");
    let (_, page) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=50"), Some(&bob.token)).await;
    let events = page["chunk"].as_array().unwrap();
    let bridged: Vec<&Value> =
        events.iter().filter(|e| e["sender"] == "@irc_carol:test" && e["type"] == "m.room.message").collect();
    assert_eq!(bridged.len(), 6);
    assert!(bridged.iter().all(|e| e["origin_server_ts"] == 1600000000000i64), "the bridged time is kept");
    let bobs = events.iter().find(|e| e["sender"] == "@bob:test" && e["type"] == "m.room.message").unwrap();
    assert_ne!(bobs["origin_server_ts"], 1600000000000i64, "a normal user's ts is ignored");
}

#[tokio::test]
async fn transactions_carry_what_the_appservice_is_interested_in() {
    let mut fake = FakeAppservice::start().await;
    let s = start_with_registration(&registration(Some(&fake.url), "receive_ephemeral: true\n"), "").await;
    fake.state.lock().unwrap().homeserver = Some(s.url(""));
    let bob = s.register("bob").await;
    let room = s.create_room(&bob, json!({"preset": "public_chat"})).await;
    let elsewhere = s.create_room(&bob, json!({})).await;
    s.send_text(&bob, &elsewhere, "not for the bridge").await;
    // Inviting a user of the namespace that does not exist yet: the bridge is asked first.
    let (st, b) = s.invite(&bob, &room, "@irc_dave:test").await;
    assert_eq!(st, 200, "{b}");
    fake.wait_for(Duration::from_secs(10), "the user query", |seen| {
        seen.iter().any(|r| r.uri == "/_matrix/app/v1/users/%40irc_dave%3Atest")
    })
    .await;
    fake.wait_for(Duration::from_secs(10), "the invite", |seen| {
        seen.iter().any(|r| {
            r.body["events"].as_array().is_some_and(|e| {
                e.iter().any(|e| e["state_key"] == "@irc_dave:test" && e["content"]["membership"] == "invite")
            })
        })
    })
    .await;
    assert_eq!(as_register(&s, "irc_dave").await.0, 200);
    let dave = "user_id=%40irc_dave%3Atest";
    assert_eq!(as_call(&s, "POST", &format!("{V3}/rooms/{room}/join?{dave}"), Some(json!({}))).await.0, 200);
    let (_, sent) = s.send_text(&bob, &room, "hello bridge").await;
    let message_id = sent["event_id"].as_str().unwrap().to_owned();
    let message_seen = |seen: &[Seen]| {
        seen.iter().any(|r| r.body["events"].as_array().is_some_and(|e| e.iter().any(|e| e["event_id"] == message_id)))
    };
    fake.wait_for(Duration::from_secs(10), "the message", message_seen).await;
    // Typing and a receipt in the room reach it as ephemeral events.
    let (st, _) = s
        .put(
            &format!("{V3}/rooms/{room}/typing/@bob:test"),
            Some(&bob.token),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{message_id}"), Some(&bob.token), json!({})).await;
    assert_eq!(st, 200);
    let ephemeral_seen = |seen: &[Seen]| {
        let all: Vec<Value> =
            seen.iter().flat_map(|r| r.body["ephemeral"].as_array().cloned().unwrap_or_default()).collect();
        all.iter().any(|e| {
            e["type"] == "m.typing" && e["room_id"] == room.as_str() && e["content"]["user_ids"] == json!(["@bob:test"])
        }) && all
            .iter()
            .any(|e| e["type"] == "m.receipt" && e["content"][&message_id]["m.read"]["@bob:test"]["ts"].is_i64())
    };
    fake.wait_for(Duration::from_secs(10), "typing and the receipt", ephemeral_seen).await;

    let transactions = fake.transactions();
    for t in &transactions {
        assert_eq!(t.method, "PUT");
        assert_eq!(t.authorization, format!("Bearer {HS_TOKEN}"), "the hs_token, as a bearer header");
        assert!(t.body["ephemeral"].is_array(), "receive_ephemeral: {}", t.body);
        assert!(t.body.get("de.sorunome.msc2409.ephemeral").is_none(), "only the flag it set");
        assert_eq!(t.body["de.sorunome.msc2409.to_device"], json!([]), "to-device only behind Synapse's switch");
        assert!(t.body.get("org.matrix.msc3202.device_lists").is_none(), "not registered for MSC3202");
    }
    let ids: Vec<u64> = transactions.iter().map(|t| t.uri.rsplit('/').next().unwrap().parse().unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "transaction IDs count up from 1");
    let events = delivered_events(&transactions);
    assert_eq!(events.len(), events.iter().collect::<HashSet<_>>().len(), "each event once: {events:?}");
    let members = event_ids_of(&transactions, "m.room.member");
    assert!(members.iter().any(|e| e["state_key"] == "@irc_dave:test" && e["content"]["membership"] == "invite"));
    assert!(members.iter().any(|e| e["state_key"] == "@irc_dave:test" && e["content"]["membership"] == "join"));
    let messages = event_ids_of(&transactions, "m.room.message");
    assert_eq!(messages.len(), 1, "only the room with its user: {messages:?}");
    assert_eq!(
        (messages[0]["room_id"].as_str(), messages[0]["user_id"].as_str()),
        (Some(room.as_str()), Some("@bob:test"))
    );
    // The bridge's own messages come back to it too (it sent them as its users).
    let (_, mine) = as_call(
        &s,
        "PUT",
        &format!("{V3}/rooms/{room}/send/m.room.message/x1?{dave}"),
        Some(json!({"msgtype": "m.text", "body": "from irc"})),
    )
    .await;
    let mine = mine["event_id"].as_str().unwrap().to_owned();
    fake.wait_for(Duration::from_secs(10), "its own message", |seen| {
        seen.iter()
            .any(|r| r.body["events"].as_array().is_some_and(|e| e.iter().any(|e| e["event_id"] == mine.as_str())))
    })
    .await;
    // The order of delivery is the order of the room.
    let delivered = delivered_events(&fake.transactions());
    let position = |id: &str| delivered.iter().position(|e| e == id).unwrap();
    assert!(position(&message_id) < position(&mine));
}

#[tokio::test]
async fn a_failing_appservice_gets_the_same_transaction_until_it_takes_it() {
    let mut fake = FakeAppservice::start().await;
    // The first three attempts fail (a server error, then the service refusing the hs_token as
    // a misconfigured one would); then a ping makes the fourth happen at once.
    fake.state.lock().unwrap().transaction_answers.extend([500, 403, 401]);
    let s = start_with_registration(&registration(Some(&fake.url), ""), "").await;
    let (st, b) = as_register(&s, "irc_erin").await;
    assert_eq!(st, 200, "{b}");
    let erin = "user_id=%40irc_erin%3Atest";
    let (st, b) = as_call(&s, "POST", &format!("{V3}/createRoom?{erin}"), Some(json!({"name": "portal"}))).await;
    assert_eq!(st, 200, "{b}");
    let room = b["room_id"].as_str().unwrap().to_owned();
    fake.wait_for(Duration::from_secs(20), "three failed attempts", |seen| {
        seen.iter().filter(|r| r.uri.starts_with("/_matrix/app/v1/transactions/")).count() >= 3
    })
    .await;
    // Meanwhile more happens in the room; it must come after, in later transactions.
    for i in 0..3 {
        let path = format!("{V3}/rooms/{room}/send/m.room.message/m{i}?{erin}");
        assert_eq!(as_call(&s, "PUT", &path, Some(json!({"msgtype": "m.text", "body": format!("m{i}")}))).await.0, 200);
    }
    let (st, b) =
        as_call(&s, "POST", "/_matrix/client/v1/appservice/irc/ping", Some(json!({"transaction_id": "p1"}))).await;
    assert_eq!(st, 200, "{b}");
    assert!(b["duration_ms"].is_u64(), "{b}");
    let ping = fake.seen().into_iter().find(|r| r.uri == "/_matrix/app/v1/ping").unwrap();
    assert_eq!(
        (ping.method.as_str(), &ping.body, ping.authorization.as_str()),
        ("POST", &json!({"transaction_id": "p1"}), "Bearer hs-secret-token")
    );
    let all_messages = |seen: &[Seen]| {
        let ts: Vec<Seen> =
            seen.iter().filter(|r| r.uri.starts_with("/_matrix/app/v1/transactions/")).cloned().collect();
        event_ids_of(&ts, "m.room.message").len() >= 3
    };
    fake.wait_for(Duration::from_secs(10), "every message after the ping", all_messages).await;
    let transactions = fake.transactions();
    let first: Vec<&Seen> = transactions.iter().filter(|t| t.uri == "/_matrix/app/v1/transactions/1").collect();
    assert_eq!(first.len(), 4, "three failures, then accepted");
    assert!(first.iter().all(|t| t.body == first[0].body), "the same body each time");
    let delivered = delivered_events(&transactions);
    assert_eq!(delivered.len(), delivered.iter().collect::<HashSet<_>>().len(), "nothing twice once accepted");
    let bodies: Vec<String> = event_ids_of(&transactions, "m.room.message")
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, ["m0", "m1", "m2"], "in order");

    // A ping the appservice refuses is reported as Synapse reports it.
    fake.state.lock().unwrap().ping_answers.push_back(500);
    let (st, b) = as_call(&s, "POST", "/_matrix/client/v1/appservice/irc/ping", Some(json!({}))).await;
    assert_eq!((st, b["errcode"].as_str(), b["status"].as_u64()), (502, Some("M_BAD_STATUS"), Some(500)), "{b}");
    assert!(b["body"].as_str().unwrap().contains("down"), "{b}");
}

#[tokio::test]
async fn undelivered_transactions_survive_a_restart() {
    let mut fake = FakeAppservice::start().await;
    // Down for the first run: every attempt fails.
    fake.state.lock().unwrap().transaction_answers.extend([500; 1000]);
    let s = start_with_registration(&registration(Some(&fake.url), ""), "").await;
    assert_eq!(as_register(&s, "irc_fay").await.0, 200);
    let fay = "user_id=%40irc_fay%3Atest";
    let (_, b) = as_call(&s, "POST", &format!("{V3}/createRoom?{fay}"), Some(json!({}))).await;
    let room = b["room_id"].as_str().unwrap().to_owned();
    let mut sent = Vec::new();
    for i in 0..5 {
        let path = format!("{V3}/rooms/{room}/send/m.room.message/r{i}?{fay}");
        let (st, b) = as_call(&s, "PUT", &path, Some(json!({"msgtype": "m.text", "body": format!("r{i}")}))).await;
        assert_eq!(st, 200, "{b}");
        sent.push(b["event_id"].as_str().unwrap().to_owned());
    }
    fake.wait_for(Duration::from_secs(10), "a failed attempt", |seen| !seen.is_empty()).await;
    let before = fake.transactions()[0].clone();
    let attempts_before = fake.transactions().iter().filter(|t| t.uri == before.uri).count();
    let dir = s.stop();
    // Up again, and the homeserver restarted.
    fake.state.lock().unwrap().transaction_answers.clear();
    let s = Server::start_in(dir).await;
    let last = sent.last().unwrap().clone();
    fake.wait_for(Duration::from_secs(30), "every message after the restart", |seen| {
        let ts: Vec<Seen> =
            seen.iter().filter(|r| r.uri.starts_with("/_matrix/app/v1/transactions/")).cloned().collect();
        delivered_events(&ts).contains(&last)
    })
    .await;
    // The transaction written before the first attempt went out again, unchanged, after the
    // restart (a rebuilt one would have a new ID or body).
    let same_id: Vec<Seen> = fake.transactions().into_iter().filter(|t| t.uri == before.uri).collect();
    assert!(same_id.len() > attempts_before, "sent again after the restart");
    assert!(same_id.iter().all(|t| t.body == before.body), "the same body each time");
    let delivered = delivered_events(&fake.transactions());
    let messages: Vec<&String> = delivered.iter().filter(|e| sent.contains(e)).collect();
    assert_eq!(messages, sent.iter().collect::<Vec<_>>(), "each message exactly once, in order");
    // A message after the restart follows in a new transaction.
    let (_, b) = as_call(
        &s,
        "PUT",
        &format!("{V3}/rooms/{room}/send/m.room.message/after?{fay}"),
        Some(json!({"msgtype": "m.text", "body": "after"})),
    )
    .await;
    let after = b["event_id"].as_str().unwrap().to_owned();
    fake.wait_for(Duration::from_secs(10), "the message after the restart", |seen| {
        let ts: Vec<Seen> =
            seen.iter().filter(|r| r.uri.starts_with("/_matrix/app/v1/transactions/")).cloned().collect();
        delivered_events(&ts).contains(&after)
    })
    .await;
    let delivered = delivered_events(&fake.transactions());
    assert_eq!(delivered.iter().filter(|e| **e == after).count(), 1);
}

#[tokio::test]
async fn aliases_and_protocols_are_asked_of_the_appservice() {
    let fake = FakeAppservice::start().await;
    let s = start_with_registration(&registration(Some(&fake.url), ""), "").await;
    fake.state.lock().unwrap().homeserver = Some(s.url(""));
    fake.state.lock().unwrap().creatable_aliases.insert("#irc_lazy:test".into());
    let bob = s.register("bob").await;
    // An alias of its namespace that does not exist: the appservice creates it on demand.
    let (st, b) = s.get(&format!("{V3}/directory/room/%23irc_lazy:test"), Some(&bob.token)).await;
    assert_eq!(st, 200, "{b}");
    assert!(b["room_id"].as_str().unwrap().starts_with('!'));
    let (st, b) = s.get(&format!("{V3}/directory/room/%23irc_nothing:test"), Some(&bob.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");
    let (st, _) = s.get(&format!("{V3}/directory/room/%23plain:test"), Some(&bob.token)).await;
    assert_eq!(st, 404);
    let queries: Vec<String> =
        fake.seen().into_iter().filter(|r| r.uri.starts_with("/_matrix/app/v1/rooms/")).map(|r| r.uri).collect();
    assert_eq!(
        queries,
        ["/_matrix/app/v1/rooms/%23irc_lazy%3Atest", "/_matrix/app/v1/rooms/%23irc_nothing%3Atest"],
        "only its namespace"
    );

    // Third-party protocols come from the appservices that declare them.
    let (st, b) = s.get(&format!("{V3}/thirdparty/protocols"), Some(&bob.token)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["irc"]["instances"][0]["instance_id"], "irc|libera", "{b}");
    let (st, b) = s.get(&format!("{V3}/thirdparty/protocol/irc"), Some(&bob.token)).await;
    assert_eq!((st, b["location_fields"].clone()), (200, json!(["channel"])), "{b}");
    let (st, _) = s.get(&format!("{V3}/thirdparty/protocol/xmpp"), Some(&bob.token)).await;
    assert_eq!(st, 404);
    let (st, b) = s.get(&format!("{V3}/thirdparty/location/irc?channel=lobby"), Some(&bob.token)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b,
        json!([{"alias": "#irc_lobby:test", "protocol": "irc", "fields": {"channel": "lobby"}}]),
        "invalid entries dropped"
    );
    let lookup = fake.seen().into_iter().find(|r| r.uri.starts_with("/_matrix/app/v1/thirdparty/location/")).unwrap();
    assert_eq!(lookup.uri, "/_matrix/app/v1/thirdparty/location/irc?channel=lobby");
    let (st, b) = s.get(&format!("{V3}/thirdparty/location?alias=%23x:test"), Some(&bob.token)).await;
    assert_eq!((st, b), (200, json!([])));

    // The appservice's room list of one network, apart from the server's own.
    let bridged = s.create_room(&bob, json!({"name": "bridged channel"})).await;
    let list_path = format!("{V3}/directory/list/appservice/libera/{bridged}");
    let (st, b) = s.put(&list_path, Some(&bob.token), json!({"visibility": "public"})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "only appservices: {b}");
    assert_eq!(as_call(&s, "PUT", &list_path, Some(json!({"visibility": "public"}))).await.0, 200);
    let listed = |b: &Value| b["chunk"].as_array().unwrap().iter().any(|r| r["room_id"] == bridged.as_str());
    let (_, main) = s.get(&format!("{V3}/publicRooms"), None).await;
    assert!(!listed(&main), "not in the server's own list: {main}");
    let (_, network) = s.get(&format!("{V3}/publicRooms?third_party_instance_id=irc%7Clibera"), None).await;
    assert!(listed(&network), "{network}");
    let (_, all) = s.post(&format!("{V3}/publicRooms"), Some(&bob.token), json!({"include_all_networks": true})).await;
    assert!(listed(&all), "{all}");
    let (_, other) =
        s.post(&format!("{V3}/publicRooms"), Some(&bob.token), json!({"third_party_instance_id": "irc|oftc"})).await;
    assert!(!listed(&other), "another network: {other}");
    let (st, _) = s.get(&format!("{V3}/publicRooms?third_party_instance_id=nonsense"), None).await;
    assert_eq!(st, 400);
    assert_eq!(as_call(&s, "DELETE", &list_path, None).await.0, 200);
    let (_, network) = s.get(&format!("{V3}/publicRooms?third_party_instance_id=irc%7Clibera"), None).await;
    assert!(!listed(&network), "unlisted: {network}");
    assert_eq!(s.get(&format!("{V3}/thirdparty/protocols"), None).await.0, 401);
}

#[tokio::test]
async fn invalid_registration_files_stop_start_up() {
    let good = registration(Some("http://127.0.0.1:9"), "");
    let cases = [
        (good.replace(&format!("as_token: {AS_TOKEN}\n"), ""), "Required string field: 'as_token'"),
        (good.replace("regex: '@irc_.*:test'", "regex: '@irc_(.*:test'"), "invalid regex"),
        (good.replace("url: 'http://127.0.0.1:9'\n", ""), "'url'"),
        ("just text".to_owned(), "expected a mapping"),
    ];
    for (text, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("irc.yaml"), &text).unwrap();
        std::fs::write(dir.path().join("homeserver.yaml"), base_config("app_service_config_files: [irc.yaml]\n"))
            .unwrap();
        for command in [&["-c", "homeserver.yaml", "check-config"][..], &["-c", "homeserver.yaml"][..]] {
            let (code, _, err) = run_cli(dir.path(), command);
            assert_eq!(code, 1, "{command:?} with {expected}: {err}");
            assert!(
                err.contains("app_service_config_files") && err.contains("irc.yaml") && err.contains(expected),
                "{err}"
            );
        }
    }
    // Two files with the same token.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), &good).unwrap();
    std::fs::write(dir.path().join("b.yaml"), good.replace("id: irc", "id: other")).unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), base_config("app_service_config_files: [a.yaml, b.yaml]\n"))
        .unwrap();
    let (code, _, err) = run_cli(dir.path(), &["-c", "homeserver.yaml", "check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("Cannot reuse as_token") && !err.contains(AS_TOKEN), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), base_config("app_service_config_files: irc.yaml\n")).unwrap();
    let (code, _, err) = run_cli(dir.path(), &["-c", "homeserver.yaml", "check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("Expected a list of AS config files"), "{err}");
}

#[tokio::test]
async fn encryption_capable_bridges_get_to_device_messages_device_lists_and_key_counts() {
    // Synapse's experimental switches on, and the registration asking for MSC3202.
    let mut fake = FakeAppservice::start().await;
    let s = start_with_registration(
        &registration(Some(&fake.url), "receive_ephemeral: true\norg.matrix.msc3202: true\n"),
        "experimental_features: {msc2409_to_device_messages_enabled: true, msc3202_transaction_extensions: true}\n",
    )
    .await;
    let bob = s.register("bob").await;
    let room = s.create_room(&bob, json!({"preset": "public_chat"})).await;
    let (st, gus) = as_register(&s, "irc_gus").await;
    assert_eq!(st, 200, "{gus}");
    let (gus_token, gus_device) =
        (gus["access_token"].as_str().unwrap(), gus["device_id"].as_str().unwrap().to_owned());
    assert_eq!(s.post(&format!("{V3}/join/{room}"), Some(gus_token), json!({})).await.0, 200);
    // The bridge's device uploads one-time keys; bob's device keys change; bob messages the
    // bridge's device and goes online.
    let otks = json!({"one_time_keys": {"signed_curve25519:AAAA1": {"key": "k1", "signatures": {}}, "signed_curve25519:AAAA2": {"key": "k2", "signatures": {}}}});
    assert_eq!(s.post(&format!("{V3}/keys/upload"), Some(gus_token), otks).await.0, 200);
    let keys = json!({"device_keys": {"user_id": bob.user_id, "device_id": bob.device_id, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {format!("curve25519:{}", bob.device_id): "c", format!("ed25519:{}", bob.device_id): "e"}, "signatures": {}}});
    assert_eq!(s.post(&format!("{V3}/keys/upload"), Some(&bob.token), keys).await.0, 200);
    let to_device = json!({"messages": {"@irc_gus:test": {gus_device.clone(): {"ciphertext": "secret"}}}});
    assert_eq!(s.put(&format!("{V3}/sendToDevice/m.room.encrypted/td1"), Some(&bob.token), to_device).await.0, 200);
    let presence = json!({"presence": "online", "status_msg": "here"});
    assert_eq!(s.put(&format!("{V3}/presence/@bob:test/status"), Some(&bob.token), presence).await.0, 200);
    s.send_text(&bob, &room, "encrypted soon").await;

    fake.wait_for(Duration::from_secs(15), "to-device, device list, key counts and presence", |seen| {
        let txns: Vec<&Seen> = seen.iter().filter(|r| r.uri.starts_with("/_matrix/app/v1/transactions/")).collect();
        let to_device = txns.iter().flat_map(|t| t.body["de.sorunome.msc2409.to_device"].as_array().cloned().unwrap_or_default());
        let has_message = to_device.into_iter().any(|m| {
            m["type"] == "m.room.encrypted" && m["sender"] == "@bob:test" && m["to_user_id"] == "@irc_gus:test"
                && m["to_device_id"] == gus_device.as_str() && m["content"]["ciphertext"] == "secret"
        });
        let has_change = txns.iter().any(|t| {
            t.body["org.matrix.msc3202.device_lists"]["changed"].as_array().is_some_and(|c| c.contains(&json!("@bob:test")))
        });
        let has_counts = txns.iter().any(|t| {
            t.body["org.matrix.msc3202.device_one_time_key_counts"]["@irc_gus:test"][gus_device.as_str()]["signed_curve25519"] == 2
                && t.body["org.matrix.msc3202.device_unused_fallback_key_types"]["@irc_gus:test"][gus_device.as_str()].is_array()
        });
        let has_presence = txns.iter().any(|t| {
            t.body["ephemeral"].as_array().is_some_and(|e| {
                e.iter().any(|e| e["type"] == "m.presence" && e["sender"] == "@bob:test" && e["content"]["presence"] == "online")
            })
        });
        has_message && has_change && has_counts && has_presence
    })
    .await;
    // Another user's to-device messages are not the bridge's business.
    let carol = s.register("carol").await;
    let private = json!({"messages": {"@carol:test": {carol.device_id.clone(): {"ciphertext": "not for bridges"}}}});
    assert_eq!(s.put(&format!("{V3}/sendToDevice/m.room.encrypted/td2"), Some(&bob.token), private).await.0, 200);
    s.send_text(&bob, &room, "after").await;
    fake.wait_for(Duration::from_secs(10), "the later message", |seen| {
        seen.iter()
            .any(|r| r.body["events"].as_array().is_some_and(|e| e.iter().any(|e| e["content"]["body"] == "after")))
    })
    .await;
    assert!(
        !fake.transactions().iter().any(|t| t.body.to_string().contains("not for bridges")),
        "only its users' messages"
    );
}

#[tokio::test]
async fn address_limits_and_legacy_authorization_follow_synapse() {
    // A registration that accepts its token only from 10.0.0.0/8: from loopback the token is
    // just unknown.
    let s = start_with_registration(&registration(None, "ip_range_whitelist: ['10.0.0.0/8']\n"), "").await;
    let (st, b) = as_call(&s, "GET", &format!("{V3}/account/whoami"), None).await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "{b}");
    let (st, b) = as_register(&s, "irc_ivy").await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "registering from outside: {b}");
    let login = json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "ircbot"}});
    let (st, b) = as_call(&s, "POST", &format!("{V3}/login"), Some(login)).await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "logging in from outside: {b}");
    let dir = s.stop();
    std::fs::write(dir.path().join("irc.yaml"), registration(None, "ip_range_whitelist: ['127.0.0.0/8']\n")).unwrap();
    let s = Server::start_in(dir).await;
    assert_eq!(as_call(&s, "GET", &format!("{V3}/account/whoami"), None).await.0, 200, "allowed from loopback");
    drop(s);

    // use_appservice_legacy_authorization: the hs_token in the query string as well.
    let mut fake = FakeAppservice::start().await;
    let s = start_with_registration(&registration(Some(&fake.url), ""), "use_appservice_legacy_authorization: true\n")
        .await;
    assert!(s.log_text().contains("legacy authorization via query params is deprecated"), "warned");
    assert_eq!(as_register(&s, "irc_hal").await.0, 200);
    let (st, _) = as_call(&s, "POST", &format!("{V3}/createRoom?user_id=%40irc_hal%3Atest"), Some(json!({}))).await;
    assert_eq!(st, 200);
    fake.wait_for(Duration::from_secs(10), "a transaction", |seen| !seen.is_empty()).await;
    let first = &fake.transactions()[0];
    assert!(first.uri.ends_with(&format!("?access_token={HS_TOKEN}")), "{}", first.uri);
    assert_eq!(first.authorization, format!("Bearer {HS_TOKEN}"), "and the header");
}

/// The venv with Heisenbridge and mautrix-python (`scripts/test.sh` builds it from
/// `tests/appservice/requirements.txt`).
const APPSERVICE_PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/appservice/.venv/bin/python");

/// Runs a driver script of `tests/appservice/` with `args` (at most `limit_s` seconds); panics
/// with its output unless it exits 0.
async fn run_driver(script: &str, args: &[String], limit_s: u32) -> String {
    let script = format!("{}/appservice/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut command = std::process::Command::new("timeout");
    command.arg(limit_s.to_string()).arg(APPSERVICE_PYTHON).arg(&script).args(args);
    // On the blocking pool: the homeserver under test answers on this runtime meanwhile.
    let out = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("run the appservice driver");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} {args:?} failed ({}):\n{text}", out.status);
    text
}

/// A server named `localhost` (the drivers' bridges use that name) with `registration_file`.
async fn start_localhost_with(dir: tempfile::TempDir, registration_file: &str) -> Server {
    let config = base_config(&format!("app_service_config_files: [{registration_file}]\n"))
        .replace("server_name: test", "server_name: localhost");
    std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
    Server::start_in(dir).await
}

#[tokio::test]
async fn heisenbridge_bridges_an_irc_channel_both_ways() {
    // Heisenbridge (PyPI) with Debian's ngircd: a Matrix user sets the bridge up through its bot,
    // joins an IRC channel through it, and messages flow both ways with a raw IRC client.
    let dir = tempfile::tempdir().unwrap();
    let port = crate::federating::free_port();
    let registration = dir.path().join("heisenbridge.yaml").display().to_string();
    let url = format!("http://127.0.0.1:{port}");
    run_driver(
        "heisenbridge_flow.py",
        &["generate".into(), "--url".into(), url, "--out".into(), registration.clone()],
        60,
    )
    .await;
    let s = start_localhost_with(dir, "heisenbridge.yaml").await;
    let args = ["run", "--homeserver", &s.url(""), "--registration", &registration, "--server-name", "localhost"];
    let log = run_driver("heisenbridge_flow.py", &args.map(str::to_owned), 150).await;
    assert!(
        log.contains("PASS Matrix -> IRC") && log.contains("PASS IRC -> Matrix") && log.contains("ALL PASSED"),
        "{log}"
    );
}

#[tokio::test]
async fn a_mautrix_appservice_bot_runs_its_scenario() {
    // A mautrix-python appservice: ping, masquerading, a portal room with an alias, a real user
    // in it, transactions with the message, typing and receipt, ?ts=, refusals, queries and
    // third-party lookups (tests/appservice/mautrix_bot.py lists each check).
    let dir = tempfile::tempdir().unwrap();
    let port = crate::federating::free_port();
    let registration = dir.path().join("mautrix.yaml").display().to_string();
    let url = format!("http://127.0.0.1:{port}");
    run_driver("mautrix_bot.py", &["generate".into(), "--url".into(), url, "--out".into(), registration.clone()], 60)
        .await;
    let s = start_localhost_with(dir, "mautrix.yaml").await;
    let args = [
        "run",
        "--homeserver",
        &s.url(""),
        "--registration",
        &registration,
        "--port",
        &port.to_string(),
        "--server-name",
        "localhost",
    ];
    let log = run_driver("mautrix_bot.py", &args.map(str::to_owned), 120).await;
    assert!(log.contains("ALL CHECKS PASSED"), "{log}");
}
