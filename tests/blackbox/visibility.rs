//! Who may see what (issue 16): the history-visibility matrix of `tests/visibility/matrix.py`
//! (4 visibilities x 7 kinds of user x every read path) run against a real Synapse and
//! against Myelin; the answers must be the same, but for the deliberate differences listed in
//! `DELIBERATE` (places where Synapse shows a former member events from after their leave).
//! Plus black-box checks of the paths the matrix does not reach.

use std::process::Command;

use serde_json::{Value, json};

use crate::federating::free_port;
use crate::harness::{Server, User};
use crate::synapse_federation::start_synapse;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/visibility/matrix.py");

/// `(visibility, user, path, Myelin's answer)` where Myelin differs from Synapse on purpose.
/// Synapse bounds a former member's backward pagination at their leave but not the forward
/// one (nor relations), so in a `shared` room `dir=f` shows lena the messages sent after she
/// left; the spec (and Myelin) show history "up to the point they left".
const DELIBERATE: &[(&str, &str, &str, &[&str])] = &[
    ("shared", "lena", "messages_f", &["m1", "m2"]),
    // The same for the relations of m1 (m2..m4 are thread replies to it): Synapse lists the
    // replies sent after she left.
    ("shared", "lena", "relations", &["m2"]),
];

fn run_matrix(base: &str) -> Value {
    let out = Command::new("python3").arg(SCRIPT).arg(base).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test]
async fn the_visibility_matrix_matches_synapse() {
    let unlimited = json!({"per_second": 100000, "burst_count": 100000});
    let port = free_port();
    let synapse = start_synapse(
        "test",
        port,
        json!({
            "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": false,
                           "resources": [{"names": ["client"], "compress": false}]}],
            "enable_registration": true,
            "enable_registration_without_verification": true,
            "allow_guest_access": true,
            "trusted_key_servers": [],
            "suppress_key_server_warning": true,
            "report_stats": false,
            "presence": {"enabled": false},
            "rc_message": unlimited, "rc_registration": unlimited, "rc_joins_per_room": unlimited,
            "rc_room_creation": unlimited,
            "rc_joins": {"local": unlimited, "remote": unlimited},
            "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
            "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
        }),
    )
    .await;
    let myelin = Server::start_with("allow_guest_access: true\n").await;
    let (synapse_base, myelin_base) = (synapse.base.clone(), myelin.base.clone());
    let (expected, actual) =
        tokio::task::spawn_blocking(move || (run_matrix(&synapse_base), run_matrix(&myelin_base))).await.unwrap();
    let mut expected = expected;
    for (visibility, user, path, answer) in DELIBERATE {
        expected[visibility][user][path] = json!(answer);
    }
    let mut differences = Vec::new();
    for (visibility, users) in expected.as_object().unwrap() {
        for (user, paths) in users.as_object().unwrap() {
            for (path, want) in paths.as_object().unwrap() {
                let got = &actual[visibility][user][path];
                if got != want {
                    differences.push(format!("{visibility} {user} {path}: Myelin {got}, Synapse {want}"));
                }
            }
        }
    }
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
    // The matrix is not vacuous: later joiners of a `joined` room see only what came after.
    assert_eq!(actual["joined"]["erin"]["messages_b"], json!(["m4"]));
    assert_eq!(actual["joined"]["nina"]["messages_b"], json!("403 M_FORBIDDEN"));
}

#[tokio::test]
async fn a_later_joiner_of_a_joined_room_reads_nothing_from_before_on_any_path() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let erin = server.register("erin").await;
    let room = server.create_room(&alice, crate::harness::room_with_visibility("public_chat", "joined")).await;
    let mut before = Vec::new();
    for i in 1..=3 {
        let (_, b) = server.send_text(&alice, &room, &format!("secret m{i}")).await;
        before.push(b["event_id"].as_str().unwrap().to_owned());
    }
    // An initial sync of erin's before the join, for the incremental one across it.
    let since = server.sync(&erin, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    // The room's sync section is cached now for alice: erin must not be served it.
    let _ = server.sync(&alice, None, 0).await;
    assert_eq!(server.join(&erin, &room).await.0, 200);
    server.send_text(&alice, &room, "public m4").await;

    let leaked = |v: &Value| v.to_string().contains("secret m");
    let initial = server.sync(&erin, None, 0).await;
    assert!(!leaked(&initial), "initial sync: {initial}");
    assert!(initial.to_string().contains("public m4"));
    let incremental = server.sync(&erin, Some(&since), 0).await;
    assert!(!leaked(&incremental), "incremental sync: {incremental}");
    for path in [
        format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
        format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=50"),
        format!("/_matrix/client/v3/rooms/{room}/initialSync"),
    ] {
        let (s, b) = server.get(&path, Some(&erin.token)).await;
        assert_eq!(s, 200, "{path}: {b}");
        assert!(!leaked(&b), "{path}: {b}");
    }
    for id in &before {
        let (s, b) = server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{id}"), Some(&erin.token)).await;
        assert_eq!((s, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");
        let (s, b) = server.get(&format!("/_matrix/client/v3/rooms/{room}/context/{id}"), Some(&erin.token)).await;
        assert_eq!((s, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    }
    let search = |token: String| {
        let server = &server;
        async move {
            let body = json!({"search_categories": {"room_events": {"search_term": "secret"}}});
            let (s, b) = server.post("/_matrix/client/v3/search", Some(&token), body).await;
            assert_eq!(s, 200, "{b}");
            b["search_categories"]["room_events"]["results"].as_array().cloned().unwrap_or_default()
        }
    };
    // The index is fed in the background: wait until alice finds the messages, then erin must not.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while search(alice.token.clone()).await.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "the messages were never indexed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(search(erin.token.clone()).await, Vec::<Value>::new());
    // Alice, there from the start, still sees everything, on the cached path too.
    let alice_sync = server.sync(&alice, None, 0).await;
    assert!(alice_sync.to_string().contains("secret m1"), "{alice_sync}");
}

#[tokio::test]
async fn closing_the_history_is_seen_by_later_joiners_but_what_follows_is_not() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let erin = server.register("erin").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    server.send_text(&alice, &room, "shared history").await;
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility");
    assert_eq!(server.put(&path, Some(&alice.token), json!({"history_visibility": "joined"})).await.0, 200);
    server.send_text(&alice, &room, "secret before erin").await;
    assert_eq!(server.join(&erin, &room).await.0, 200);
    server.send_text(&alice, &room, "after erin").await;

    // The change from `shared` to `joined` is judged by `shared` (the more open side, as
    // Synapse): Erin sees it and what came before it; not what it hides.
    let body = server.sync(&erin, None, 0).await;
    let events = body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().clone();
    let kinds: Vec<String> = events
        .iter()
        .rev()
        .take(4)
        .rev()
        .map(|e| match e["content"]["body"].as_str() {
            Some(body) => body.to_owned(),
            None => e["type"].as_str().unwrap().to_owned(),
        })
        .collect();
    assert_eq!(kinds, vec!["shared history", "m.room.history_visibility", "m.room.member", "after erin"], "{body}");
    assert!(!body.to_string().contains("secret before erin"), "{body}");
    let (_, page) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&erin.token)).await;
    assert!(page.to_string().contains("\"joined\""), "the change itself is on /messages too: {page}");
    assert!(!page.to_string().contains("secret before erin"), "{page}");
}

#[tokio::test]
async fn a_former_member_reads_up_to_their_leave_and_members_as_then() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let lena = server.register("lena").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(server.join(&lena, &room).await.0, 200);
    let (_, m1) = server.send_text(&alice, &room, "before").await;
    let (s, _) = server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&lena.token), json!({})).await;
    assert_eq!(s, 200);
    let (_, m2) = server.send_text(&alice, &room, "after").await;
    let carol = server.register("carol").await;
    assert_eq!(server.join(&carol, &room).await.0, 200);

    let m1 = m1["event_id"].as_str().unwrap();
    let m2 = m2["event_id"].as_str().unwrap();
    let (s, _) = server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{m1}"), Some(&lena.token)).await;
    assert_eq!(s, 200, "events before the leave stay readable");
    let (s, _) = server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{m2}"), Some(&lena.token)).await;
    assert_eq!(s, 404, "events after the leave are not");
    let (s, context) = server.get(&format!("/_matrix/client/v3/rooms/{room}/context/{m1}"), Some(&lena.token)).await;
    assert_eq!(s, 200, "{context}");
    assert!(!context.to_string().contains("\"after\""), "{context}");
    let (s, members) = server.get(&format!("/_matrix/client/v3/rooms/{room}/members"), Some(&lena.token)).await;
    assert_eq!(s, 200, "{members}");
    assert!(!members.to_string().contains(&carol.user_id), "members as at the leave: {members}");
    // Asking for a later point does not see past the leave either.
    let now = server.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (s, members) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/members?at={now}"), Some(&lena.token)).await;
    assert_eq!(s, 200, "{members}");
    assert!(!members.to_string().contains(&carol.user_id), "members at a later token: {members}");
    let (s, state) = server.get(&format!("/_matrix/client/v3/rooms/{room}/state"), Some(&lena.token)).await;
    assert_eq!(s, 200, "{state}");
    assert!(!state.to_string().contains(&carol.user_id), "state as at the leave: {state}");
    // Someone who was never in a private room reads nothing at all.
    let nina = server.register("nina").await;
    let private = server.create_room(&alice, json!({"preset": "private_chat"})).await;
    for path in ["messages", "state", "members", "members?at=s1", "initialSync"] {
        let (s, b) = server.get(&format!("/_matrix/client/v3/rooms/{private}/{path}"), Some(&nina.token)).await;
        assert_eq!((s, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{path}: {b}");
    }
}

#[tokio::test]
async fn an_erased_users_messages_stay_whole_only_for_those_who_were_there() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat", "room_version": "10"})).await;
    assert_eq!(server.join(&bob, &room).await.0, 200);
    let (_, sent) = server.send_text(&alice, &room, "body1").await;
    let id = sent["event_id"].as_str().unwrap().to_owned();
    assert_eq!(server.join(&carol, &room).await.0, 200);
    let message = |user: &User| {
        let (server, token, path) =
            (&server, user.token.clone(), format!("/_matrix/client/v3/rooms/{room}/event/{id}"));
        async move { server.get(&path, Some(&token)).await.1["content"].clone() }
    };
    assert_eq!(message(&carol).await["body"], "body1", "shared history: Carol reads it before the erasure");
    assert!(server.sync(&carol, None, 0).await.to_string().contains("body1"));
    let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password"});
    let (s, b) = server
        .post("/_matrix/client/v3/account/deactivate", Some(&alice.token), json!({"auth": auth, "erase": true}))
        .await;
    assert_eq!(s, 200, "{b}");
    // Bob was in the room when it was sent; Carol joined later and now sees it redacted.
    assert_eq!(message(&bob).await["body"], "body1");
    assert_eq!(message(&carol).await, json!({}));
    let in_sync = |user: &User| {
        let (server, user, room, id) = (&server, user.clone(), room.clone(), id.clone());
        async move {
            let body = server.sync(&user, None, 0).await;
            body["rooms"]["join"][&room]["timeline"]["events"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["event_id"] == id.as_str())
                .map(|e| e["content"].clone())
        }
    };
    assert_eq!(in_sync(&bob).await.unwrap()["body"], "body1");
    assert_eq!(in_sync(&carol).await, Some(json!({})));
    let (_, page) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"), Some(&carol.token)).await;
    assert!(!page.to_string().contains("body1"), "{page}");
}

#[tokio::test]
async fn a_rejoiner_sees_the_current_state_set_while_away_but_not_the_messages() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = server.create_room(&alice, crate::harness::room_with_visibility("public_chat", "joined")).await;
    assert_eq!(server.join(&bob, &room).await.0, 200);
    let since = server.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (s, _) = server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(server.join(&carol, &room).await.0, 200);
    server.send_text(&alice, &room, "while bob was away").await;
    assert_eq!(server.join(&bob, &room).await.0, 200);
    let body = server.sync(&bob, Some(&since), 0).await;
    let timeline = body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert!(
        timeline.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == carol.user_id.as_str()),
        "Carol's join is current state, so it shows: {timeline:?}"
    );
    assert!(!body.to_string().contains("while bob was away"), "the message does not: {body}");
}

#[tokio::test]
async fn anyone_may_peek_into_a_world_readable_room_but_not_write() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let nina = server.register("nina").await;
    let room = server.create_room(&alice, crate::harness::room_with_visibility("private_chat", "world_readable")).await;
    let (_, sent) = server.send_text(&alice, &room, "for everyone").await;
    let id = sent["event_id"].as_str().unwrap();
    for path in [
        format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"),
        format!("/_matrix/client/v3/rooms/{room}/event/{id}"),
        format!("/_matrix/client/v3/rooms/{room}/context/{id}"),
        format!("/_matrix/client/v3/rooms/{room}/initialSync"),
    ] {
        let (s, b) = server.get(&path, Some(&nina.token)).await;
        assert_eq!(s, 200, "{path}: {b}");
        assert!(b.to_string().contains("for everyone"), "{path}: {b}");
    }
    let (s, state) = server.get(&format!("/_matrix/client/v3/rooms/{room}/state"), Some(&nina.token)).await;
    assert_eq!(s, 200, "{state}");
    let (s, b) = server.send_text(&nina, &room, "may I?").await;
    assert_eq!((s, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");

    // Peeking with the event stream: GET /events?room_id= waits for the room's next event.
    let (s, now) = server.get(&format!("/_matrix/client/v3/events?room_id={room}&timeout=0"), Some(&nina.token)).await;
    assert_eq!(s, 200, "{now}");
    let from = now["end"].as_str().unwrap().to_owned();
    let (base, token, r) = (server.base.clone(), nina.token.clone(), room.clone());
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .get(format!("{base}/_matrix/client/v3/events?room_id={r}&from={from}&timeout=10000"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    server.send_text(&alice, &room, "news").await;
    let got = waiting.await.unwrap();
    assert!(got["chunk"].to_string().contains("news"), "{got}");
    assert!(!got["chunk"].to_string().contains("for everyone"), "only what came after `from`: {got}");
    // The room's typing, receipts and its members' presence come too, each naming the room;
    // the presence of someone not in it does not.
    let carol = server.register("carol").await;
    let from = got["end"].as_str().unwrap().to_owned();
    let news = got["chunk"].as_array().unwrap().iter().find(|e| e["content"]["body"] == "news").unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (who, status) in [(&carol, "not in the room"), (&alice, "in the room")] {
        let path = format!("/_matrix/client/v3/presence/{}/status", who.user_id);
        assert_eq!(
            server.put(&path, Some(&who.token), json!({"presence": "online", "status_msg": status})).await.0,
            200
        );
    }
    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id);
    assert_eq!(server.put(&typing, Some(&alice.token), json!({"typing": true, "timeout": 10000})).await.0, 200);
    let receipt = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{news}");
    assert_eq!(server.post(&receipt, Some(&alice.token), json!({})).await.0, 200);
    let (s, got) =
        server.get(&format!("/_matrix/client/v3/events?room_id={room}&from={from}&timeout=0"), Some(&nina.token)).await;
    assert_eq!(s, 200, "{got}");
    let chunk = got["chunk"].as_array().unwrap();
    let of_type = |t: &str| chunk.iter().filter(|e| e["type"] == t).cloned().collect::<Vec<Value>>();
    assert_eq!(
        of_type("m.typing").first().map(|e| (&e["room_id"], &e["content"]["user_ids"])),
        Some((&json!(room), &json!([alice.user_id]))),
        "{got}"
    );
    assert!(
        of_type("m.receipt")
            .iter()
            .any(|e| e["room_id"] == room.as_str() && e["content"][&news]["m.read"][&alice.user_id].is_object()),
        "{got}"
    );
    let presence = of_type("m.presence");
    assert!(presence.iter().any(|e| e["content"]["user_id"] == alice.user_id.as_str()), "{got}");
    assert!(!presence.iter().any(|e| e["sender"] == carol.user_id.as_str()), "{got}");
    // Not a room one may not read.
    let private = server.create_room(&alice, json!({"preset": "private_chat"})).await;
    let (s, b) = server.get(&format!("/_matrix/client/v3/events?room_id={private}&timeout=0"), Some(&nina.token)).await;
    assert_eq!((s, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    // Bad numbers are refused at once, not waited on.
    for query in ["limit=hello", "limit=-2", "timeout=hello"] {
        let (s, b) = server.get(&format!("/_matrix/client/v3/events?{query}"), Some(&nina.token)).await;
        assert_eq!((s, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{query}: {b}");
    }
}

#[tokio::test]
async fn synapse_defaults_for_presets_tokens_sessions_and_guests() {
    let server = Server::start_with("allow_guest_access: true\n").await;
    let alice = server.register("alice").await;
    // Power levels as Synapse writes them per preset.
    for (preset, invite) in [("public_chat", 50), ("private_chat", 0), ("trusted_private_chat", 0)] {
        let room = server.create_room(&alice, json!({"preset": preset})).await;
        let (_, pl) = server
            .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"), Some(&alice.token))
            .await;
        assert_eq!(pl["invite"], invite, "{preset}: {pl}");
        assert_eq!(pl["events"]["m.room.power_levels"], 100);
        if preset == "public_chat" {
            assert_eq!(pl["events"]["m.call.invite"], 50, "{pl}");
        }
    }
    // A token in the header and in the query at once is refused.
    let response = reqwest::Client::new()
        .get(server.url(&format!("/_matrix/client/v3/account/whoami?access_token={}", alice.token)))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_MISSING_TOKEN", "{body}");
    // A UIA session that was never issued.
    let (s, b) = server
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "sess", "password": "password", "auth": {"type": "m.login.dummy", "session": "never-issued"}}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(b["error"].as_str().unwrap().contains("Unknown session"), "{b}");
    // Numeric localparts are the guests'.
    let (s, b) = server.try_register("12345").await;
    assert_eq!((s, b["errcode"].as_str()), (400, Some("M_INVALID_USERNAME")), "{b}");
    let (s, guest) = server.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    assert_eq!(s, 200, "{guest}");
    let (s, who) = server.get("/_matrix/client/v3/account/whoami", guest["access_token"].as_str()).await;
    assert_eq!((s, who["is_guest"].as_bool()), (200, Some(true)), "{who}");
    // A guest's event stream must name its room.
    let (s, b) = server.get("/_matrix/client/v3/events?timeout=0", guest["access_token"].as_str()).await;
    assert_eq!((s, b["errcode"].as_str()), (400, Some("M_UNKNOWN")), "{b}");
}

#[tokio::test]
async fn guests_may_call_only_synapses_guest_endpoints() {
    let server = Server::start_with("allow_guest_access: true\n").await;
    let alice = server.register("alice").await;
    let room = server
        .create_room(
            &alice,
            json!({"preset": "public_chat", "initial_state": [
                {"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}},
                {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}
            ]}),
        )
        .await;
    let (_, guest) = server.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    let token = guest["access_token"].as_str().unwrap().to_owned();
    let forbidden = |(s, b): (u16, Value), what: &str| {
        assert_eq!((s, b["errcode"].as_str()), (403, Some("M_GUEST_ACCESS_FORBIDDEN")), "{what}: {b}");
    };
    // Allowed: join, read, send, sync, profiles, keys.
    let (s, b) = server.post(&format!("/_matrix/client/v3/join/{room}"), Some(&token), json!({})).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/g1"),
            Some(&token),
            json!({"msgtype": "m.text", "body": "hi"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    for path in [
        format!("/_matrix/client/v3/rooms/{room}/messages"),
        "/_matrix/client/v3/sync?timeout=0".to_owned(),
        format!("/_matrix/client/v3/profile/{}", alice.user_id),
        "/_matrix/client/v3/keys/changes?from=s0&to=s1".to_owned(),
        "/_matrix/client/v3/joined_rooms".to_owned(),
    ] {
        let (s, b) = server.get(&path, Some(&token)).await;
        assert_eq!(s, 200, "{path}: {b}");
    }
    // A guest may set their display name (Synapse), not their avatar.
    let guest_id = guest["user_id"].as_str().unwrap();
    let (s, b) = server
        .put(&format!("/_matrix/client/v3/profile/{guest_id}/displayname"), Some(&token), json!({"displayname": "g"}))
        .await;
    assert_eq!(s, 200, "{b}");
    forbidden(
        server
            .put(
                &format!("/_matrix/client/v3/profile/{guest_id}/avatar_url"),
                Some(&token),
                json!({"avatar_url": "mxc://test/x"}),
            )
            .await,
        "avatar",
    );
    // Refused: everything else.
    forbidden(server.post("/_matrix/client/v3/createRoom", Some(&token), json!({})).await, "createRoom");
    forbidden(server.get("/_matrix/client/v3/pushrules/", Some(&token)).await, "pushrules");
    forbidden(
        server
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/typing/{}", guest["user_id"].as_str().unwrap()),
                Some(&token),
                json!({"typing": true}),
            )
            .await,
        "typing",
    );
    forbidden(
        server.post("/_matrix/client/v3/user_directory/search", Some(&token), json!({"search_term": "a"})).await,
        "directory",
    );
    forbidden(
        server
            .invite(
                &User {
                    user_id: guest["user_id"].as_str().unwrap().into(),
                    token: token.clone(),
                    device_id: String::new(),
                },
                &room,
                &alice.user_id,
            )
            .await,
        "invite",
    );
    forbidden(server.get(&format!("/_matrix/client/v1/rooms/{room}/threads"), Some(&token)).await, "threads");
}

#[tokio::test]
async fn profile_and_presence_limits() {
    let server = Server::start_with(
        "require_auth_for_profile_requests: true\nlimit_profile_requests_to_users_who_share_rooms: true\n",
    )
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (s, b) = server.get(&format!("/_matrix/client/v3/profile/{}", alice.user_id), None).await;
    assert_eq!((s, b["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")), "{b}");
    let (s, b) = server.get(&format!("/_matrix/client/v3/profile/{}", alice.user_id), Some(&bob.token)).await;
    assert_eq!((s, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "no shared room: {b}");
    let (s, _) = server.get(&format!("/_matrix/client/v3/profile/{}", bob.user_id), Some(&bob.token)).await;
    assert_eq!(s, 200, "one's own profile");
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(server.join(&bob, &room).await.0, 200);
    let (s, b) =
        server.get(&format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id), Some(&bob.token)).await;
    assert_eq!((s, b["displayname"].as_str()), (200, Some("alice")), "{b}");
    // Presence: a user sharing no room and a user who does not exist get the same answer.
    let carol = server.register("carol").await;
    let (s1, b1) = server.get(&format!("/_matrix/client/v3/presence/{}/status", carol.user_id), Some(&bob.token)).await;
    let (s2, b2) = server.get("/_matrix/client/v3/presence/@nobody:test/status", Some(&bob.token)).await;
    assert_eq!((s1, &b1), (s2, &b2));
    assert_eq!(s1, 403);
}
