//! Responses checked against the Matrix spec's own schemas (shared/spec/openapi).

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn client_server_responses_match_the_spec() {
    let s = Server::start().await;
    let (st, b) = s.get("/_matrix/client/versions", None).await;
    assert_schema("/_matrix/client/versions", "get", st, &b);
    let (st, b) = s.get("/.well-known/matrix/client", None).await;
    assert_schema("/.well-known/matrix/client", "get", st, &b);
    let (st, b) = s.get("/_matrix/client/v3/login", None).await;
    assert_schema("/_matrix/client/v3/login", "get", st, &b);
    let (st, b) = s.post("/_matrix/client/v3/register", None, json!({"username": "alice", "password": "p"})).await;
    assert_schema("/_matrix/client/v3/register", "post", st, &b);
    let (st, b) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "alice", "password": "password", "auth": {"type": "m.login.dummy", "session": b["session"]}}),
        )
        .await;
    assert_schema("/_matrix/client/v3/register", "post", st, &b);
    let (st, b) = s.try_register("alice").await;
    assert_schema("/_matrix/client/v3/register", "post", st, &b);
    let (st, b) = s.get("/_matrix/client/v3/register/available?username=zed", None).await;
    assert_schema("/_matrix/client/v3/register/available", "get", st, &b);
    let (st, b) = s
        .post("/_matrix/client/v3/login", None, json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password"}))
        .await;
    assert_schema("/_matrix/client/v3/login", "post", st, &b);
    let alice = User {
        user_id: b["user_id"].as_str().unwrap().into(),
        token: b["access_token"].as_str().unwrap().into(),
        device_id: b["device_id"].as_str().unwrap().into(),
    };
    let t = Some(alice.token.as_str());
    let bob = s.register("bob").await;
    let (st, b) = s.get("/_matrix/client/v3/account/whoami", t).await;
    assert_schema("/_matrix/client/v3/account/whoami", "get", st, &b);
    let (st, b) = s.get("/_matrix/client/v3/capabilities", t).await;
    assert_schema("/_matrix/client/v3/capabilities", "get", st, &b);
    // Synapse sends a device's unknown fields as `null` (matrix-nio requires the keys); the
    // spec's schema has them as optional strings, so the shape is checked without them.
    let (st, mut b) = s.get("/_matrix/client/v3/devices", t).await;
    for device in b["devices"].as_array_mut().unwrap() {
        for key in ["display_name", "last_seen_ip", "last_seen_ts"] {
            assert!(device.get(key).is_some(), "{key} missing from {device}");
        }
        device.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    }
    assert_schema("/_matrix/client/v3/devices", "get", st, &b);
    let (st, mut b) = s.get(&format!("/_matrix/client/v3/devices/{}", alice.device_id), t).await;
    assert!(b.get("display_name").is_some(), "{b}");
    b.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    assert_schema("/_matrix/client/v3/devices/{deviceId}", "get", st, &b);
    let (st, b) = s.get("/_matrix/client/v3/profile/@alice:test", None).await;
    assert_schema("/_matrix/client/v3/profile/{userId}", "get", st, &b);
    let (st, b) = s
        .post(
            "/_matrix/client/v3/createRoom",
            t,
            json!({"name": "Spec", "room_alias_name": "spec", "invite": ["@bob:test"]}),
        )
        .await;
    assert_schema("/_matrix/client/v3/createRoom", "post", st, &b);
    let room = b["room_id"].as_str().unwrap().to_owned();
    let (st, b) = s.join(&bob, &room).await;
    assert_schema("/_matrix/client/v3/join/{roomIdOrAlias}", "post", st, &b);
    let (st, b) = s.send_text(&alice, &room, "hello").await;
    assert_schema("/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}", "put", st, &b);
    let event_id = b["event_id"].as_str().unwrap().to_owned();
    let (st, b) = s.put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"), t, json!({"topic": "x"})).await;
    assert_schema("/_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}", "put", st, &b);
    let (st, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state"), t).await;
    assert_schema("/_matrix/client/v3/rooms/{roomId}/state", "get", st, &b);
    let (st, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"), t).await;
    assert_schema("/_matrix/client/v3/rooms/{roomId}/event/{eventId}", "get", st, &b);
    let (st, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3"), t).await;
    assert_schema("/_matrix/client/v3/rooms/{roomId}/messages", "get", st, &b);
    let (st, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/context/{event_id}"), t).await;
    assert_schema("/_matrix/client/v3/rooms/{roomId}/context/{eventId}", "get", st, &b);
    let (st, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/members"), t).await;
    assert_schema("/_matrix/client/v3/rooms/{roomId}/members", "get", st, &b);
    let (st, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/joined_members"), t).await;
    assert_schema("/_matrix/client/v3/rooms/{roomId}/joined_members", "get", st, &b);
    let (st, b) = s.get("/_matrix/client/v3/joined_rooms", t).await;
    assert_schema("/_matrix/client/v3/joined_rooms", "get", st, &b);
    let (st, b) = s.get("/_matrix/client/v3/directory/room/%23spec:test", None).await;
    assert_schema("/_matrix/client/v3/directory/room/{roomAlias}", "get", st, &b);
    let (st, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/aliases"), t).await;
    assert_schema("/_matrix/client/v3/rooms/{roomId}/aliases", "get", st, &b);
    let (st, b) = s.get(&format!("/_matrix/client/v3/directory/list/room/{room}"), None).await;
    assert_schema("/_matrix/client/v3/directory/list/room/{roomId}", "get", st, &b);
    let (st, b) = s.put(&format!("/_matrix/client/v3/rooms/{room}/redact/{event_id}/r"), t, json!({})).await;
    assert_schema("/_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}", "put", st, &b);
    let (st, b) =
        s.post("/_matrix/client/v3/user/@alice:test/filter", t, json!({"room": {"timeline": {"limit": 5}}})).await;
    assert_schema("/_matrix/client/v3/user/{userId}/filter", "post", st, &b);
    let body = s.sync(&alice, None, 0).await;
    assert_schema("/_matrix/client/v3/sync", "get", 200, &body);
    let since = body["next_batch"].as_str().unwrap().to_owned();
    s.invite(&alice, &room, "@carol:test").await;
    s.send_text(&bob, &room, "more").await;
    assert_schema("/_matrix/client/v3/sync", "get", 200, &s.sync(&alice, Some(&since), 0).await);
    let (st, b) = s.get("/_matrix/client/v1/media/config", t).await;
    assert_schema("/_matrix/client/v1/media/config", "get", st, &b);
    let (st, b) = s.post("/_matrix/media/v1/create", t, json!({})).await;
    assert_schema("/_matrix/media/v1/create", "post", st, &b);
    // Error bodies.
    let (st, b) = s.get("/_matrix/client/v3/account/whoami", None).await;
    assert_schema("/_matrix/client/v3/account/whoami", "get", st, &b);
    let (st, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/$missing"), t).await;
    assert_schema("/_matrix/client/v3/rooms/{roomId}/event/{eventId}", "get", st, &b);
}
