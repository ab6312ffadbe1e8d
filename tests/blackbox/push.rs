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

    // Errors.
    let cases = [
        ("PUT", format!("{V3}/pushrules/global/override/.m.rule.mine"), json!({"actions": []}), 400, "M_INVALID_PARAM"),
        ("PUT", format!("{V3}/pushrules/global/weird/x"), json!({"actions": []}), 400, "M_INVALID_PARAM"),
        ("PUT", format!("{V3}/pushrules/global/content/x"), json!({"actions": []}), 400, "M_MISSING_PARAM"),
        ("PUT", format!("{V3}/pushrules/global/override/x"), json!({"actions": "notify"}), 400, "M_BAD_JSON"),
        ("PUT", format!("{V3}/pushrules/global/room/notaroom"), json!({"actions": []}), 400, "M_INVALID_PARAM"),
        ("DELETE", format!("{V3}/pushrules/global/override/.m.rule.master"), Value::Null, 400, "M_INVALID_PARAM"),
        ("DELETE", format!("{V3}/pushrules/global/override/nope"), Value::Null, 404, "M_NOT_FOUND"),
        ("PUT", format!("{V3}/pushrules/global/override/x?before=nope"), json!({"actions": []}), 404, "M_NOT_FOUND"),
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
