//! Push rules, unread counts, pushers, notifications, and the small endpoints clients call at
//! start-up.

use serde_json::{Value, json};

use crate::harness::*;

const V3: &str = "/_matrix/client/v3";

async fn mention(s: &Server, from: &User, room: &str, to: &User, body: &str) {
    let path = format!("{V3}/rooms/{room}/send/m.room.message/m{}", rand_suffix());
    let content = json!({"msgtype": "m.text", "body": body, "m.mentions": {"user_ids": [to.user_id]}});
    assert_eq!(s.put(&path, Some(&from.token), content).await.0, 200);
}

#[tokio::test]
async fn push_rules_can_be_edited_and_drive_unread_counts() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let t = Some(bob.token.as_str());

    let (st, rules) = s.get(&format!("{V3}/pushrules/"), t).await;
    assert_eq!(st, 200);
    assert_schema("/_matrix/client/v3/pushrules/", "get", st, &rules);
    assert!(rules["global"]["override"].as_array().unwrap().iter().any(|r| r["rule_id"] == ".m.rule.master"));

    // Two messages from alice, one mentioning bob (intentional mentions, as the current spec's
    // rules have it): 2 notifications, 1 highlight.
    s.send_text(&alice, &room, "hello").await;
    mention(&s, &alice, &room, &bob, "hey bob, look").await;
    let sync = s.sync(&bob, None, 0).await;
    let counts = &sync["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!(
        (counts["notification_count"].as_i64(), counts["highlight_count"].as_i64()),
        (Some(2), Some(1)),
        "{counts}"
    );

    // A receipt on the latest event clears them.
    let last = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().last().unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{last}"), t, json!({})).await;
    let sync = s.sync(&bob, None, 0).await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0);

    // A room rule that silences the room: new messages no longer count.
    let rule = format!("{V3}/pushrules/global/room/{room}");
    let (st, b) = s.put(&rule, t, json!({"actions": []})).await;
    assert_eq!((st, &b), (200, &json!({})), "{b}");
    assert_schema("/_matrix/client/v3/pushrules/global/{kind}/{ruleId}", "put", st, &b);
    let (st, got) = s.get(&rule, t).await;
    assert_eq!((st, got["rule_id"].as_str()), (200, Some(room.as_str())));
    assert_schema("/_matrix/client/v3/pushrules/global/{kind}/{ruleId}", "get", st, &got);
    // The rules of one kind, listed; an unknown kind is not a route.
    let (st, listed) = s.get(&format!("{V3}/pushrules/global/room/"), t).await;
    assert_eq!(st, 200, "{listed}");
    assert!(listed.as_array().unwrap().iter().any(|r| r["rule_id"] == room.as_str()), "{listed}");
    let (st, b) = s.get(&format!("{V3}/pushrules/global/nonsense/"), t).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_UNRECOGNIZED")), "{b}");
    s.send_text(&alice, &room, "quiet now").await;
    let sync = s.sync(&bob, None, 0).await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0);
    // The rules reach the client as m.push_rules account data.
    let data = sync["account_data"]["events"].as_array().unwrap();
    assert!(data.iter().any(|e| e["type"] == "m.push_rules"));

    // enabled and actions attributes; disabling the room rule makes messages count again. Counts
    // are computed with the rules in force at sync time (Synapse's are fixed when the event
    // arrives), so the message sent while muted counts too.
    let (st, en) = s.get(&format!("{rule}/enabled"), t).await;
    assert_eq!((st, &en), (200, &json!({"enabled": true})));
    assert_schema("/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled", "get", st, &en);
    assert_eq!(s.put(&format!("{rule}/enabled"), t, json!({"enabled": false})).await.0, 200);
    s.send_text(&alice, &room, "loud again").await;
    let sync = s.sync(&bob, None, 0).await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 2);
    let (st, acts) = s.get(&format!("{V3}/pushrules/global/override/.m.rule.master/actions"), t).await;
    assert_eq!((st, &acts), (200, &json!({"actions": []})));
    assert_schema("/_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions", "get", st, &acts);
    assert_eq!(s.put(&format!("{rule}/actions"), t, json!({"actions": ["notify"]})).await.0, 200);
    let (st, b) = s.call("DELETE", &rule, t, None).await;
    assert_eq!(st, 200);
    assert_schema("/_matrix/client/v3/pushrules/global/{kind}/{ruleId}", "delete", st, &b);
    let (st, b) = s.get(&rule, t).await;
    assert_eq!(st, 404);
    assert_schema("/_matrix/client/v3/pushrules/global/{kind}/{ruleId}", "get", st, &b);

    // Room rules take any ID, as on Synapse (one naming an alias never matches a room), and
    // keep it as given: listed, ordered with before/after, in the account data, deleted.
    let alias_rule = |id: &str| format!("{V3}/pushrules/global/room/{}", id.replace('#', "%23"));
    let actions = json!({"actions": ["dont_notify", {"set_tweak": "sound", "value": "default"}, "coalesce"]});
    assert_eq!(s.put(&alias_rule("#a:example.com"), t, actions.clone()).await.0, 200);
    let (st, b) = s.put(&alias_rule("#b:example.com"), t, json!({"actions": ["notify"]})).await;
    assert_eq!(st, 200, "{b}");
    let (st, b) =
        s.put(&format!("{}?after=%23b:example.com", alias_rule("#c:example.com")), t, json!({"actions": []})).await;
    assert_eq!(st, 200, "{b}");
    let (st, got) = s.get(&alias_rule("#a:example.com"), t).await;
    assert_eq!(
        (st, got["rule_id"].as_str(), &got["actions"]),
        (200, Some("#a:example.com"), &actions["actions"]),
        "{got}"
    );
    let (_, listed) = s.get(&format!("{V3}/pushrules/global/room/"), t).await;
    let ids: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|r| r["rule_id"].as_str()).collect();
    assert_eq!(ids, vec!["#b:example.com", "#c:example.com", "#a:example.com"], "newest first, c after b");
    let sync = s.sync(&bob, None, 0).await;
    let stored =
        sync["account_data"]["events"].as_array().unwrap().iter().find(|e| e["type"] == "m.push_rules").unwrap();
    assert!(stored["content"]["global"]["room"].as_array().unwrap().iter().any(|r| r["rule_id"] == "#c:example.com"));
    assert_eq!(s.call("DELETE", &alias_rule("#b:example.com"), t, None).await.0, 200);
    assert_eq!(s.get(&alias_rule("#b:example.com"), t).await.0, 404);
    // They never match: the room still counts messages.
    s.send_text(&alice, &room, "still counted").await;
    let sync = s.sync(&bob, None, 0).await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 3);

    // Errors.
    let cases = [
        (
            "PUT",
            format!("{V3}/pushrules/global/override/.m.rule.mine"),
            json!({"actions": [], "conditions": []}),
            400,
            "M_INVALID_PARAM",
        ),
        ("PUT", format!("{V3}/pushrules/global/weird/x"), json!({"actions": []}), 400, "M_INVALID_PARAM"),
        ("PUT", format!("{V3}/pushrules/global/content/x"), json!({"actions": []}), 400, "M_MISSING_PARAM"),
        ("PUT", format!("{V3}/pushrules/global/override/x"), json!({"actions": "notify"}), 400, "M_BAD_JSON"),
        // Synapse's actions only (the spec's, the legacy ones, tweaks).
        (
            "PUT",
            format!("{V3}/pushrules/global/room/notaroom"),
            json!({"actions": ["not_an_action"]}),
            400,
            "M_BAD_JSON",
        ),
        ("PUT", format!("{V3}/pushrules/global/sender/@x:test"), json!({"actions": [{"tweak": 1}]}), 400, "M_BAD_JSON"),
        ("DELETE", format!("{V3}/pushrules/global/override/.m.rule.master"), Value::Null, 400, "M_INVALID_PARAM"),
        ("DELETE", format!("{V3}/pushrules/global/override/nope"), Value::Null, 404, "M_NOT_FOUND"),
        (
            "PUT",
            format!("{V3}/pushrules/global/override/x?before=nope"),
            json!({"actions": [], "conditions": []}),
            404,
            "M_NOT_FOUND",
        ),
        ("PUT", format!("{V3}/pushrules/global/underride/x"), json!({"actions": ["notify"]}), 400, "M_MISSING_PARAM"),
        ("PUT", format!("{V3}/pushrules/global/override/x"), json!({"actions": ["notify"]}), 400, "M_MISSING_PARAM"),
        // Paths that name no rule.
        ("PUT", format!("{V3}/pushrules/"), json!({"actions": []}), 400, "M_UNRECOGNIZED"),
        ("GET", format!("{V3}/pushrules/global"), Value::Null, 400, "M_UNRECOGNIZED"),
        ("GET", format!("{V3}/pushrules/nonsense/"), Value::Null, 400, "M_UNRECOGNIZED"),
        ("GET", format!("{V3}/pushrules/global/room"), Value::Null, 400, "M_UNRECOGNIZED"),
        ("PUT", format!("{V3}/pushrules/global/room"), json!({"actions": []}), 400, "M_UNRECOGNIZED"),
        ("PUT", format!("{V3}/pushrules/global/room/"), json!({"actions": []}), 400, "M_UNRECOGNIZED"),
        ("PUT", format!("{V3}/pushrules/global/override/nope/enabled"), json!({"enabled": true}), 404, "M_NOT_FOUND"),
        ("GET", format!("{V3}/pushrules/device/override/x"), Value::Null, 400, "M_UNRECOGNIZED"),
    ];
    for (method, path, body, status, code) in cases {
        let body = if body.is_null() { None } else { Some(body) };
        let (st, b) = s.call(method, &path, t, body).await;
        assert_eq!((st, b["errcode"].as_str()), (status, Some(code)), "{method} {path}: {b}");
    }
}

#[tokio::test]
async fn pushers_are_stored_and_notifications_listed() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let t = Some(bob.token.as_str());
    let pusher = json!({
        "pushkey": "key1", "kind": "http", "app_id": "org.example.app", "app_display_name": "App",
        "device_display_name": "Phone", "lang": "en", "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
    });
    let (st, b) = s.post(&format!("{V3}/pushers/set"), t, pusher.clone()).await;
    assert_eq!((st, &b), (200, &json!({})), "{b}");
    assert_schema("/_matrix/client/v3/pushers/set", "post", st, &b);
    let (st, list) = s.get(&format!("{V3}/pushers"), t).await;
    assert_eq!(st, 200);
    assert_schema("/_matrix/client/v3/pushers", "get", st, &list);
    assert_eq!(list["pushers"][0]["pushkey"], "key1");
    let mut bad = pusher.clone();
    bad["data"] = json!({});
    let (st, b) = s.post(&format!("{V3}/pushers/set"), t, bad).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")));
    assert_schema("/_matrix/client/v3/pushers/set", "post", st, &b);
    let (st, b) = s.post(&format!("{V3}/pushers/set"), t, json!({"kind": "http"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")));
    let mut delete = pusher.clone();
    delete["kind"] = Value::Null;
    assert_eq!(s.post(&format!("{V3}/pushers/set"), t, delete).await.0, 200);
    assert_eq!(s.get(&format!("{V3}/pushers"), t).await.1, json!({"pushers": []}));

    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    s.send_text(&alice, &room, "one").await;
    mention(&s, &alice, &room, &bob, "two for bob").await;
    let (st, n) = s.get(&format!("{V3}/notifications"), t).await;
    assert_eq!(st, 200, "{n}");
    assert_schema("/_matrix/client/v3/notifications", "get", st, &n);
    let bodies: Vec<&str> =
        n["notifications"].as_array().unwrap().iter().filter_map(|x| x["event"]["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["two for bob", "one"]);
    let (_, n) = s.get(&format!("{V3}/notifications?only=highlight"), t).await;
    assert_eq!(n["notifications"].as_array().unwrap().len(), 1);
    let (_, n) = s.get(&format!("{V3}/notifications?limit=1"), t).await;
    let next = n["next_token"].as_str().unwrap();
    let (_, rest) = s.get(&format!("{V3}/notifications?from={next}"), t).await;
    assert_eq!(rest["notifications"][0]["event"]["content"]["body"], "one");
    assert_eq!(s.get(&format!("{V3}/notifications?limit=x"), t).await.0, 400);
}

#[tokio::test]
async fn start_up_endpoints_answer() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let t = Some(alice.token.as_str());
    let (st, b) = s.get(&format!("{V3}/voip/turnServer"), t).await;
    assert_eq!((st, &b), (200, &json!({})));
    let (st, b) = s.get(&format!("{V3}/thirdparty/protocols"), t).await;
    assert_eq!((st, &b), (200, &json!({})));
    assert_schema("/_matrix/client/v3/thirdparty/protocols", "get", st, &b);
    let (st, b) = s.get(&format!("{V3}/account/3pid"), t).await;
    assert_eq!((st, &b), (200, &json!({"threepids": []})));
    assert_schema("/_matrix/client/v3/account/3pid", "get", st, &b);
    let (st, b) = s.post(&format!("{V3}/user/{}/openid/request_token", alice.user_id), t, json!({})).await;
    assert_eq!(st, 200, "{b}");
    assert_schema("/_matrix/client/v3/user/{userId}/openid/request_token", "post", st, &b);
    assert_eq!((b["token_type"].as_str(), b["matrix_server_name"].as_str()), (Some("Bearer"), Some("test")));
    let (st, b) = s.post(&format!("{V3}/user/@other:test/openid/request_token"), t, json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    for path in ["voip/turnServer", "thirdparty/protocols", "account/3pid", "notifications", "pushers"] {
        assert_eq!(s.get(&format!("{V3}/{path}"), None).await.0, 401, "{path}");
    }
}

/// A push gateway on loopback: records each `notify` body, answers from a queue the test fills
/// (`{}` when empty), and reports each arrival on a channel.
struct Gateway {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    answers: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<(u16, Value)>>>,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<()>,
    url: String,
}

impl Gateway {
    async fn start() -> Gateway {
        type Shared = (
            std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
            std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<(u16, Value)>>>,
            tokio::sync::mpsc::UnboundedSender<()>,
        );
        async fn notify(
            axum::extract::State((seen, answers, tx)): axum::extract::State<Shared>,
            axum::Json(body): axum::Json<Value>,
        ) -> (axum::http::StatusCode, axum::Json<Value>) {
            seen.lock().unwrap().push(body);
            let _ = tx.send(());
            let (status, answer) = answers.lock().unwrap().pop_front().unwrap_or((200, json!({})));
            (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(answer))
        }
        let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let answers = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let app = axum::Router::new().route("/_matrix/push/v1/notify", axum::routing::post(notify)).with_state((
            seen.clone(),
            answers.clone(),
            tx,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/_matrix/push/v1/notify", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Gateway { seen, answers, arrivals, url }
    }

    /// The next notification, within `limit`.
    async fn next(&mut self, limit: std::time::Duration) -> Value {
        tokio::time::timeout(limit, self.arrivals.recv()).await.expect("a notification reached the gateway");
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

async fn set_pusher(s: &Server, user: &User, pushkey: &str, data: Value) {
    let pusher = json!({
        "pushkey": pushkey, "kind": "http", "app_id": "org.example.app", "app_display_name": "App",
        "device_display_name": "Phone", "lang": "en", "data": data,
    });
    let (st, b) = s.post(&format!("{V3}/pushers/set"), Some(&user.token), pusher).await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test]
async fn notifying_events_reach_the_push_gateway_within_a_second() {
    let mut gateway = Gateway::start().await;
    // The gateway is on loopback, which outbound requests reach only when allowed.
    let s = Server::start_with("ip_range_whitelist: ['127.0.0.0/8']\n").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "name": "Lobby"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    set_pusher(&s, &bob, "bob-phone", json!({"url": gateway.url, "custom": "kept"})).await;

    // A message in a two-person room notifies Bob (the default underride for one-to-one rooms
    // sets a sound): the full format, high priority, within a second.
    let (_, sent) = s.send_text(&alice, &room, "hello bob").await;
    let body = gateway.next(std::time::Duration::from_secs(1)).await;
    let n = &body["notification"];
    assert_eq!(n["event_id"], sent["event_id"], "{body}");
    assert_eq!(n["id"], sent["event_id"], "Synapse's deprecated `id` too: {body}");
    assert_eq!((n["room_id"].as_str(), n["type"].as_str()), (Some(room.as_str()), Some("m.room.message")));
    assert_eq!((n["sender"].as_str(), n["room_name"].as_str()), (Some("@alice:test"), Some("Lobby")));
    assert_eq!((n["content"]["body"].as_str(), n["prio"].as_str()), (Some("hello bob"), Some("high")));
    assert_eq!(n["sender_display_name"], "alice");
    assert_eq!(n["counts"]["unread"], 1);
    let device = &n["devices"][0];
    assert_eq!((device["app_id"].as_str(), device["pushkey"].as_str()), (Some("org.example.app"), Some("bob-phone")));
    assert_eq!(device["data"], json!({"custom": "kept"}), "the data without its url");
    assert_eq!(device["tweaks"]["sound"], "default");
    assert!(device["pushkey_ts"].as_i64().unwrap() > 1_700_000_000, "seconds: {device}");

    // Alice's own messages do not notify her (she has no pusher anyway) nor Bob twice.
    assert_eq!(gateway.seen.lock().unwrap().len(), 1);

    // `event_id_only`: just the ID, the room and the counts.
    set_pusher(&s, &bob, "bob-phone", json!({"url": gateway.url, "format": "event_id_only"})).await;
    let (_, sent) = s.send_text(&alice, &room, "second").await;
    let n = gateway.next(std::time::Duration::from_secs(1)).await["notification"].clone();
    assert_eq!(n["event_id"], sent["event_id"]);
    assert!(n.get("content").is_none() && n.get("sender").is_none() && n.get("type").is_none(), "{n}");
    assert!(n["devices"][0].get("tweaks").is_none(), "{n}");
    assert_eq!(n["counts"]["unread"], 1, "one room with unread notifications");

    // A gateway that fails is retried; one that rejects the pushkey gets the pusher removed.
    gateway.answers.lock().unwrap().push_back((500, json!({})));
    gateway.answers.lock().unwrap().push_back((200, json!({"rejected": ["bob-phone"]})));
    s.send_text(&alice, &room, "third").await;
    gateway.next(std::time::Duration::from_secs(1)).await;
    let retried = gateway.next(std::time::Duration::from_secs(5)).await;
    assert_eq!(retried["notification"]["devices"][0]["pushkey"], "bob-phone");
    crate::federating::eventually("the rejected pusher is removed", || async {
        s.get(&format!("{V3}/pushers"), Some(&bob.token)).await.1 == json!({"pushers": []})
    })
    .await;
    s.send_text(&alice, &room, "nobody hears").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(gateway.seen.lock().unwrap().len(), 4, "nothing after the removal");

    // Refused: a URL that is not the gateway API's path (as Synapse).
    let bad = json!({
        "pushkey": "k", "kind": "http", "app_id": "a", "app_display_name": "A", "device_display_name": "D",
        "lang": "en", "data": {"url": "https://push.example.org/elsewhere"},
    });
    let (st, b) = s.post(&format!("{V3}/pushers/set"), Some(&bob.token), bad).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{b}");
}

#[tokio::test]
async fn invites_badges_room_names_and_sessions_follow_synapse() {
    let mut gateway = Gateway::start().await;
    let s = Server::start_with("ip_range_whitelist: ['127.0.0.0/8']\n").await;
    let (alice, bob, carol, dave) =
        (s.register("alice").await, s.register("bob").await, s.register("carol").await, s.register("dave").await);
    set_pusher(&s, &bob, "bob-phone", json!({"url": gateway.url})).await;
    set_pusher(&s, &dave, "dave-phone", json!({"url": gateway.url})).await;

    // An invite reaches the invitee, who is not a member yet; Dave, who is neither, hears nothing.
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    assert_eq!(s.invite(&alice, &room, &bob.user_id).await.0, 200);
    let n = gateway.next(std::time::Duration::from_secs(1)).await["notification"].clone();
    assert_eq!((n["type"].as_str(), n["membership"].as_str()), (Some("m.room.member"), Some("invite")), "{n}");
    assert_eq!((n["user_is_target"].as_bool(), n["devices"][0]["pushkey"].as_str()), (Some(true), Some("bob-phone")));
    assert!(n.get("room_name").is_none(), "an invitee's room is not named after one member: {n}");

    // A room without a name or alias is named after its other members, oldest first.
    assert_eq!(s.join(&bob, &room).await.0, 200);
    assert_eq!(s.invite(&alice, &room, &carol.user_id).await.0, 200);
    assert_eq!(s.join(&carol, &room).await.0, 200);
    let (_, sent) = s.send_text(&alice, &room, "hello @room, bob").await;
    let n = loop {
        let n = gateway.next(std::time::Duration::from_secs(1)).await["notification"].clone();
        if n["event_id"] == sent["event_id"] {
            break n;
        }
    };
    assert_eq!(n["room_name"], "alice and carol", "{n}");
    // The legacy mention rule (display name in the body) still highlights, as on Synapse.
    assert_eq!(n["devices"][0]["tweaks"]["highlight"], true, "{n}");
    assert!(gateway.seen.lock().unwrap().iter().all(|b| b["notification"]["devices"][0]["pushkey"] != "dave-phone"));

    // Bob reads it: his gateway is told the new badge (counts only); reading again changes
    // nothing and sends nothing.
    let seen_before = gateway.seen.lock().unwrap().len();
    let receipt = format!("{V3}/rooms/{room}/receipt/m.read/{}", sent["event_id"].as_str().unwrap());
    assert_eq!(s.post(&receipt, Some(&bob.token), json!({})).await.0, 200);
    let badge = gateway.next(std::time::Duration::from_secs(1)).await["notification"].clone();
    assert_eq!((badge["counts"]["unread"].as_u64(), badge.get("event_id")), (Some(0), None), "{badge}");
    assert_eq!(s.post(&receipt, Some(&bob.token), json!({})).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(gateway.seen.lock().unwrap().len(), seen_before + 1, "an unchanged badge is not sent again");

    // A pusher goes with the session that set it up: logging that device out removes it, and
    // only it.
    let laptop = s.login("bob").await;
    set_pusher(&s, &laptop, "bob-laptop", json!({"url": gateway.url})).await;
    let pushkeys = |b: Value| -> Vec<String> {
        let mut keys: Vec<String> =
            b["pushers"].as_array().unwrap().iter().map(|p| p["pushkey"].as_str().unwrap().to_owned()).collect();
        keys.sort();
        keys
    };
    let (st, listed) = s.get(&format!("{V3}/pushers"), Some(&bob.token)).await;
    assert_eq!((st, pushkeys(listed.clone())), (200, vec!["bob-laptop".to_owned(), "bob-phone".to_owned()]));
    assert!(listed["pushers"][0].as_object().unwrap().keys().all(|k| !k.starts_with("myelin")), "{listed}");
    assert_eq!(s.post(&format!("{V3}/logout"), Some(&laptop.token), json!({})).await.0, 200);
    let (_, listed) = s.get(&format!("{V3}/pushers"), Some(&bob.token)).await;
    assert_eq!(pushkeys(listed), vec!["bob-phone".to_owned()]);
}

#[tokio::test]
async fn a_gateway_on_a_blocked_address_is_never_called() {
    let mut gateway = Gateway::start().await;
    // No ip_range_whitelist: loopback is in the default blocklist.
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    set_pusher(&s, &bob, "k", json!({"url": gateway.url})).await;
    s.send_text(&alice, &room, "hello").await;
    let arrived = tokio::time::timeout(std::time::Duration::from_secs(2), gateway.arrivals.recv()).await;
    assert!(arrived.is_err(), "the gateway on 127.0.0.1 was called");
}
