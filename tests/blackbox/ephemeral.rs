//! Receipts, read markers, typing and presence, through their endpoints and `/sync`.

use serde_json::{Value, json};

use crate::harness::*;

const V3: &str = "/_matrix/client/v3";

async fn pair(s: &Server) -> (User, User, String) {
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    (alice, bob, room)
}

fn ephemeral<'a>(sync: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    sync["rooms"]["join"][room]["ephemeral"]["events"].as_array()?.iter().find(|e| e["type"] == kind)
}

#[tokio::test]
async fn receipts_reach_sync_and_private_ones_only_their_owner() {
    let s = Server::start().await;
    let (alice, bob, room) = pair(&s).await;
    let (_, sent) = s.send_text(&alice, &room, "hello").await;
    let event = sent["event_id"].as_str().unwrap().to_owned();
    let alice_since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    let path = |kind: &str| format!("{V3}/rooms/{room}/receipt/{kind}/{event}");
    let (st, b) = s.post(&path("m.read"), Some(&bob.token), json!({})).await;
    assert_eq!((st, &b), (200, &json!({})));
    assert_schema("/_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}", "post", st, &b);
    assert_eq!(s.post(&path("m.read.private"), Some(&bob.token), json!({})).await.0, 200);
    assert_eq!(s.post(&path("m.read"), Some(&bob.token), json!({"thread_id": "main"})).await.0, 200);

    let got = s.sync(&alice, Some(&alice_since), 0).await;
    let receipt = ephemeral(&got, &room, "m.receipt").expect("a receipt event");
    assert!(receipt["content"][&event]["m.read"][&bob.user_id]["ts"].is_i64());
    assert_eq!(receipt["content"][&event]["m.read.private"], Value::Null, "private to bob");
    let bob_sync = s.sync(&bob, None, 0).await;
    let own = ephemeral(&bob_sync, &room, "m.receipt").unwrap();
    assert!(own["content"][&event]["m.read.private"][&bob.user_id].is_object());
    assert_schema("/_matrix/client/v3/sync", "get", 200, &bob_sync);

    // Read markers: m.fully_read becomes room account data; m.read a receipt.
    let (st, _) = s
        .post(
            &format!("{V3}/rooms/{room}/read_markers"),
            Some(&bob.token),
            json!({"m.fully_read": event, "m.read": event}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, marker) =
        s.get(&format!("{V3}/user/{}/rooms/{room}/account_data/m.fully_read", bob.user_id), Some(&bob.token)).await;
    assert_eq!((st, marker["event_id"].as_str()), (200, Some(event.as_str())));

    // Errors: unknown type, bad thread, unknown event, a room one is not in.
    let (st, b) = s.post(&path("m.bogus"), Some(&bob.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) = s.post(&path("m.read"), Some(&bob.token), json!({"thread_id": 5})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) = s.post(&format!("{V3}/rooms/{room}/receipt/m.read/$nope"), Some(&bob.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let carol = s.register("carol").await;
    let (st, b) = s.post(&path("m.read"), Some(&carol.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (st, b) =
        s.post(&format!("{V3}/rooms/{room}/read_markers"), Some(&bob.token), json!({"m.fully_read": 3})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")));
}

#[tokio::test]
async fn typing_wakes_sync_and_times_out() {
    let s = Server::start().await;
    let (alice, bob, room) = pair(&s).await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let path = format!("{V3}/rooms/{room}/typing/{}", alice.user_id);
    let poll = {
        let (base, token, since) = (s.url(""), bob.token.clone(), since.clone());
        tokio::spawn(async move {
            let url = format!("{base}{V3}/sync?since={since}&timeout=10000");
            reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (st, b) = s.put(&path, Some(&alice.token), json!({"typing": true, "timeout": 1500})).await;
    assert_eq!((st, &b), (200, &json!({})));
    assert_schema("/_matrix/client/v3/rooms/{roomId}/typing/{userId}", "put", st, &b);
    let woke = tokio::time::timeout(std::time::Duration::from_secs(5), poll).await.expect("woke").unwrap();
    assert_eq!(ephemeral(&woke, &room, "m.typing").unwrap()["content"]["user_ids"], json!([alice.user_id]));
    // After the timeout, a sync shows nobody typing.
    let next = woke["next_batch"].as_str().unwrap().to_owned();
    let later = s.sync(&bob, Some(&next), 4000).await;
    assert_eq!(ephemeral(&later, &room, "m.typing").unwrap()["content"]["user_ids"], json!([]));
    // Stopping explicitly, and the errors.
    s.put(&path, Some(&alice.token), json!({"typing": true, "timeout": 30000})).await;
    assert_eq!(s.put(&path, Some(&alice.token), json!({"typing": false})).await.0, 200);
    let (st, b) = s.put(&path, Some(&bob.token), json!({"typing": true})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (st, b) = s.put(&path, Some(&alice.token), json!({"typing": "yes"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let carol = s.register("carol").await;
    let (st, _) = s
        .put(&format!("{V3}/rooms/{room}/typing/{}", carol.user_id), Some(&carol.token), json!({"typing": true}))
        .await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn presence_is_set_read_and_synced() {
    let s = Server::start().await;
    let (alice, bob, _) = pair(&s).await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let path = format!("{V3}/presence/{}/status", alice.user_id);
    let (st, b) = s.put(&path, Some(&alice.token), json!({"presence": "unavailable", "status_msg": "lunch"})).await;
    assert_eq!((st, &b), (200, &json!({})));
    assert_schema("/_matrix/client/v3/presence/{userId}/status", "put", st, &b);
    let (st, p) = s.get(&path, Some(&bob.token)).await;
    assert_eq!(st, 200, "{p}");
    assert_schema("/_matrix/client/v3/presence/{userId}/status", "get", st, &p);
    assert_eq!((p["presence"].as_str(), p["status_msg"].as_str()), (Some("unavailable"), Some("lunch")));
    let got = s.sync(&bob, Some(&since), 0).await;
    let events = got["presence"]["events"].as_array().unwrap();
    let from_alice = events.iter().find(|e| e["sender"] == alice.user_id.as_str()).expect("alice's presence");
    assert_eq!(from_alice["content"]["presence"], "unavailable");
    // Errors: someone else's status, a bad state, a user one shares no room with, unknown users.
    let (st, b) = s.put(&path, Some(&bob.token), json!({"presence": "online"})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (st, b) = s.put(&path, Some(&alice.token), json!({"presence": "asleep"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let carol = s.register("carol").await;
    let (st, b) = s.get(&path, Some(&carol.token)).await;
    assert_eq!(st, 403);
    assert_schema("/_matrix/client/v3/presence/{userId}/status", "get", st, &b);
    // A user who does not exist is answered as one sharing no room (no account enumeration).
    let (st, b) = s.get(&format!("{V3}/presence/@nobody:test/status"), Some(&bob.token)).await;
    assert_eq!(st, 403);
    assert_schema("/_matrix/client/v3/presence/{userId}/status", "get", st, &b);
}

#[tokio::test]
async fn presence_can_be_switched_off() {
    let s = Server::start_with("presence:\n  enabled: false\n").await;
    let (alice, bob, _) = pair(&s).await;
    let path = format!("{V3}/presence/{}/status", alice.user_id);
    assert_eq!(s.put(&path, Some(&alice.token), json!({"presence": "online", "status_msg": "hi"})).await.0, 200);
    assert_eq!(s.get(&path, Some(&bob.token)).await.1, json!({"presence": "offline"}));
    assert_eq!(s.sync(&bob, None, 0).await["presence"]["events"], json!([]));
}
