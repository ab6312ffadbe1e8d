//! Reports (the spec's reporting endpoints) and Synapse's admin API: what admins may do, and
//! that nobody else may.

use serde_json::{Value, json};

use crate::harness::*;

const V3: &str = "/_matrix/client/v3";
const ADMIN: &str = "/_synapse/admin";

fn forbidden(st: u16, b: &Value) -> bool {
    st == 403 && b["errcode"] == "M_FORBIDDEN"
}

#[tokio::test]
async fn users_report_events_rooms_and_users_and_admins_read_them() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "name": "Town square"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let (_, sent) = s.send_text(&bob, &room, "buy my stuff").await;
    let spam = sent["event_id"].as_str().unwrap().to_owned();
    let private = s.create_room(&bob, json!({"preset": "private_chat"})).await;
    let (_, hidden) = s.send_text(&bob, &private, "secret").await;
    let hidden = hidden["event_id"].as_str().unwrap().to_owned();

    // Event reports: only what the reporter can see; bad fields are 400.
    let report = |user: &User, room: &str, event: &str, body: Value| {
        let (s, token, path) = (&s, user.token.clone(), format!("{V3}/rooms/{room}/report/{event}"));
        async move { s.post(&path, Some(&token), body).await }
    };
    let (st, b) = report(&alice, &room, &spam, json!({"reason": "spam", "score": -100})).await;
    assert_eq!((st, &b), (200, &json!({})));
    let (st, _) = report(&carol, &room, &spam, json!({})).await;
    assert_eq!(st, 404, "not a member: the room's history is not hers to see");
    assert_eq!(s.join(&carol, &room).await.0, 200);
    assert_eq!(report(&carol, &room, &spam, json!({})).await.0, 200, "a member now (shared history), no reason");
    let (st, b) = report(&alice, &private, &hidden, json!({"reason": "?"})).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "an event alice cannot see: {b}");
    let (st, b) = report(&alice, &room, "$nope", json!({"reason": "?"})).await;
    assert_eq!(st, 404, "{b}");
    let (st, b) = report(&alice, &room, &spam, json!({"reason": 5})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{b}");
    let (st, b) = report(&alice, &room, &spam, json!({"score": "high"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{b}");
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/report/{spam}"), None, json!({})).await.0, 401);

    // Room and user reports.
    let (st, b) =
        s.post(&format!("{V3}/rooms/{room}/report"), Some(&carol.token), json!({"reason": "spam room"})).await;
    assert_eq!((st, &b), (200, &json!({})));
    let (st, b) = s.post(&format!("{V3}/rooms/!nope:test/report"), Some(&carol.token), json!({"reason": "x"})).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");
    let (st, b) = s.post(&format!("{V3}/rooms/{room}/report"), Some(&carol.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")), "a reason is required: {b}");
    let (st, b) =
        s.post(&format!("{V3}/users/@bob:test/report"), Some(&carol.token), json!({"reason": "spammer"})).await;
    assert_eq!((st, &b), (200, &json!({})));
    // Unknown and remote users are answered the same, and nothing is kept.
    for target in ["@ghost:test", "@someone:elsewhere.example"] {
        let (st, _) = s.post(&format!("{V3}/users/{target}/report"), Some(&carol.token), json!({"reason": "x"})).await;
        assert_eq!(st, 200, "{target}");
    }
    let long = "x".repeat(1001);
    let (st, _) = s.post(&format!("{V3}/users/@bob:test/report"), Some(&carol.token), json!({"reason": long})).await;
    assert_eq!(st, 400);

    // Admins list, read and delete event reports; nobody else may.
    let (st, b) = s.get(&format!("{ADMIN}/v1/event_reports"), Some(&alice.token)).await;
    assert!(forbidden(st, &b), "{st} {b}");
    let (st, list) = s.get(&format!("{ADMIN}/v1/event_reports"), Some(&root.token)).await;
    assert_eq!(st, 200, "{list}");
    assert_eq!(list["total"], 2);
    let reports = list["event_reports"].as_array().unwrap();
    assert_eq!(reports[0]["user_id"], "@carol:test", "newest first");
    let first = &reports[1];
    assert_eq!(
        (first["event_id"].as_str(), first["reason"].as_str(), first["score"].as_i64(), first["sender"].as_str()),
        (Some(spam.as_str()), Some("spam"), Some(-100), Some("@bob:test"))
    );
    assert_eq!((first["room_id"].as_str(), first["name"].as_str()), (Some(room.as_str()), Some("Town square")));
    let (_, page) = s.get(&format!("{ADMIN}/v1/event_reports?from=0&limit=1&dir=f"), Some(&root.token)).await;
    assert_eq!(
        (page["event_reports"][0]["user_id"].as_str(), page["next_token"].as_i64()),
        (Some("@alice:test"), Some(1))
    );
    let (st, huge) = s.get(&format!("{ADMIN}/v1/event_reports?from=1&limit={}", i64::MAX), Some(&root.token)).await;
    assert_eq!((st, huge["event_reports"].as_array().map(Vec::len)), (200, Some(1)), "no overflow: {huge}");
    let (_, mine) = s.get(&format!("{ADMIN}/v1/event_reports?user_id=alice"), Some(&root.token)).await;
    assert_eq!(mine["total"], 1);
    let id = first["id"].as_i64().unwrap();
    let (st, one) = s.get(&format!("{ADMIN}/v1/event_reports/{id}"), Some(&root.token)).await;
    assert_eq!((st, one["event_json"]["content"]["body"].as_str()), (200, Some("buy my stuff")), "{one}");
    for bad in ["abc", "-1"] {
        let (st, b) = s.get(&format!("{ADMIN}/v1/event_reports/{bad}"), Some(&root.token)).await;
        assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{bad}: {b}");
    }
    let (st, b) = s.call("DELETE", &format!("{ADMIN}/v1/event_reports/{id}"), Some(&alice.token), None).await;
    assert!(forbidden(st, &b));
    assert_eq!(s.call("DELETE", &format!("{ADMIN}/v1/event_reports/{id}"), Some(&root.token), None).await.0, 200);
    let (st, b) = s.get(&format!("{ADMIN}/v1/event_reports/{id}"), Some(&root.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    assert_eq!(s.call("DELETE", &format!("{ADMIN}/v1/event_reports/{id}"), Some(&root.token), None).await.0, 404);
    assert!(s.log_shows("delete event report").await, "audited");
    // What was kept of the room reports (no admin endpoint lists them, as on Synapse).
    let rows = sql_in(s.dir.path(), "SELECT reason FROM room_reports");
    assert_eq!(rows, vec![vec!["spam room".to_owned()]]);

    // User reports: listed, filtered, read and deleted by admins only.
    let (st, b) = s.get(&format!("{ADMIN}/v1/user_reports"), Some(&alice.token)).await;
    assert!(forbidden(st, &b), "{st} {b}");
    let (st, list) = s.get(&format!("{ADMIN}/v1/user_reports"), Some(&root.token)).await;
    assert_eq!((st, list["total"].as_i64()), (200, Some(1)), "unknown and remote targets were not kept: {list}");
    let report = &list["user_reports"][0];
    assert_eq!(
        (report["target_user_id"].as_str(), report["user_id"].as_str(), report["reason"].as_str()),
        (Some("@bob:test"), Some("@carol:test"), Some("spammer"))
    );
    let (_, none) = s.get(&format!("{ADMIN}/v1/user_reports?target_user_id=alice"), Some(&root.token)).await;
    assert_eq!(none["total"], 0);
    let (_, by_carol) = s.get(&format!("{ADMIN}/v1/user_reports?user_id=carol"), Some(&root.token)).await;
    assert_eq!(by_carol["total"], 1);
    let id = report["id"].as_i64().unwrap();
    let (st, one) = s.get(&format!("{ADMIN}/v1/user_reports/{id}"), Some(&root.token)).await;
    assert_eq!((st, &one), (200, report), "{one}");
    let (st, b) = s.get(&format!("{ADMIN}/v1/user_reports/abc"), Some(&root.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{b}");
    assert_eq!(s.call("DELETE", &format!("{ADMIN}/v1/user_reports/{id}"), Some(&root.token), None).await.0, 200);
    assert_eq!(s.get(&format!("{ADMIN}/v1/user_reports/{id}"), Some(&root.token)).await.0, 404);
    assert_eq!(s.call("DELETE", &format!("{ADMIN}/v1/user_reports/{id}"), Some(&root.token), None).await.0, 404);
}

#[tokio::test]
async fn admins_look_after_accounts_and_nobody_else_may() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&bob, json!({"preset": "public_chat"})).await;

    let (st, b) = s.get(&format!("{ADMIN}/v1/server_version"), None).await;
    assert!(st == 200 && b["server_version"].as_str().unwrap().starts_with("Myelin"), "{b}");

    // Every endpoint refuses a non-admin (and a missing token).
    let bob_id = "@bob:test";
    for (method, path, body) in [
        ("GET", format!("{ADMIN}/v1/users/{bob_id}/admin"), None),
        ("PUT", format!("{ADMIN}/v1/users/{bob_id}/admin"), Some(json!({"admin": true}))),
        ("GET", format!("{ADMIN}/v2/users/{bob_id}"), None),
        ("GET", format!("{ADMIN}/v1/whois/{bob_id}"), None),
        ("POST", format!("{ADMIN}/v1/deactivate/{bob_id}"), Some(json!({}))),
        ("POST", format!("{ADMIN}/v1/reset_password/{bob_id}"), Some(json!({"new_password": "x"}))),
        ("GET", format!("{ADMIN}/v1/users/{bob_id}/joined_rooms"), None),
    ] {
        let (st, b) = s.call(method, &path, Some(&alice.token), body.clone()).await;
        assert!(forbidden(st, &b), "{method} {path}: {st} {b}");
        assert_eq!(s.call(method, &path, None, body).await.0, 401, "{method} {path}");
    }
    // Draupnir's first question, and making an admin.
    let (st, b) = s.get(&format!("{ADMIN}/v1/users/@root:test/admin"), Some(&root.token)).await;
    assert_eq!((st, b), (200, json!({"admin": true})));
    let (_, b) = s.get(&format!("{ADMIN}/v1/users/{bob_id}/admin"), Some(&root.token)).await;
    assert_eq!(b, json!({"admin": false}));
    let (st, b) = s.get(&format!("{ADMIN}/v1/users/@x:elsewhere.example/admin"), Some(&root.token)).await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(
        s.put(&format!("{ADMIN}/v1/users/{bob_id}/admin"), Some(&root.token), json!({"admin": true})).await.0,
        200
    );
    assert_eq!(s.get(&format!("{ADMIN}/v1/users/{bob_id}/admin"), Some(&root.token)).await.1, json!({"admin": true}));
    assert_eq!(
        s.put(&format!("{ADMIN}/v1/users/{bob_id}/admin"), Some(&root.token), json!({"admin": false})).await.0,
        200
    );
    let (st, b) =
        s.put(&format!("{ADMIN}/v1/users/@root:test/admin"), Some(&root.token), json!({"admin": false})).await;
    assert_eq!(st, 400, "no demoting oneself: {b}");
    let (st, _) = s.put(&format!("{ADMIN}/v1/users/{bob_id}/admin"), Some(&root.token), json!({})).await;
    assert_eq!(st, 400);
    let (st, _) =
        s.put(&format!("{ADMIN}/v1/users/@ghost:test/admin"), Some(&root.token), json!({"admin": true})).await;
    assert_eq!(st, 404);

    // Details, whois (an admin, or oneself), joined rooms.
    s.put(&format!("{V3}/profile/{bob_id}/displayname"), Some(&bob.token), json!({"displayname": "Bobby"})).await;
    let (st, b) = s.get(&format!("{ADMIN}/v2/users/{bob_id}"), Some(&root.token)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        (b["name"].as_str(), b["displayname"].as_str(), b["admin"].as_bool(), b["deactivated"].as_bool()),
        (Some(bob_id), Some("Bobby"), Some(false), Some(false))
    );
    assert!(b["creation_ts"].as_i64().unwrap() < 100_000_000_000, "seconds, as Synapse");
    assert_eq!(s.get(&format!("{ADMIN}/v2/users/@ghost:test"), Some(&root.token)).await.0, 404);
    let (st, w) = s.get(&format!("{ADMIN}/v1/whois/{bob_id}"), Some(&root.token)).await;
    assert_eq!((st, w["user_id"].as_str()), (200, Some(bob_id)), "{w}");
    let connections = &w["devices"][&bob.device_id]["sessions"][0]["connections"][0];
    assert_eq!(connections["ip"], "127.0.0.1", "{w}");
    let (st, mine) = s.get(&format!("{V3}/admin/whois/{bob_id}"), Some(&bob.token)).await;
    assert_eq!((st, mine["user_id"].as_str()), (200, Some(bob_id)), "oneself, through the client API");
    let (st, b) = s.get(&format!("{V3}/admin/whois/{bob_id}"), Some(&alice.token)).await;
    assert!(forbidden(st, &b), "{b}");
    let (_, j) = s.get(&format!("{ADMIN}/v1/users/{bob_id}/joined_rooms"), Some(&root.token)).await;
    assert_eq!(j, json!({"total": 1, "joined_rooms": [room]}));

    // Password reset: the old password stops working, devices are logged out by default.
    let (st, b) = s.post(&format!("{ADMIN}/v1/reset_password/{bob_id}"), Some(&root.token), json!({})).await;
    assert_eq!(st, 400, "{b}");
    let (st, _) = s
        .post(&format!("{ADMIN}/v1/reset_password/{bob_id}"), Some(&root.token), json!({"new_password": "n3w-pass"}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(&bob.token)).await.0, 401, "logged out");
    let login = |password: &str| json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": password});
    assert_eq!(s.post(&format!("{V3}/login"), None, login("password")).await.0, 403);
    let (st, fresh) = s.post(&format!("{V3}/login"), None, login("n3w-pass")).await;
    assert_eq!(st, 200);

    // Deactivation: the account leaves its rooms and cannot log in; unknown and remote users
    // are refused.
    assert_eq!(s.post(&format!("{ADMIN}/v1/deactivate/@ghost:test"), Some(&root.token), json!({})).await.0, 404);
    assert_eq!(
        s.post(&format!("{ADMIN}/v1/deactivate/@x:elsewhere.example"), Some(&root.token), json!({})).await.0,
        400
    );
    let (st, b) = s.post(&format!("{ADMIN}/v1/deactivate/{bob_id}"), Some(&root.token), json!({"erase": "yes"})).await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = s.post(&format!("{ADMIN}/v1/deactivate/{bob_id}"), Some(&root.token), json!({"erase": false})).await;
    assert_eq!((st, b), (200, json!({"id_server_unbind_result": "success"})));
    assert_eq!(s.get(&format!("{V3}/account/whoami"), fresh["access_token"].as_str()).await.0, 401);
    assert_eq!(s.post(&format!("{V3}/login"), None, login("n3w-pass")).await.0, 403);
    let (_, b) = s.get(&format!("{ADMIN}/v2/users/{bob_id}"), Some(&root.token)).await;
    assert_eq!(b["deactivated"], true);
    let (_, j) = s.get(&format!("{ADMIN}/v1/users/{bob_id}/joined_rooms"), Some(&root.token)).await;
    assert_eq!(j["total"], 0, "left every room");
    let log = s.log_text();
    assert!(log.contains("reset password") && log.contains("deactivate") && log.contains("make admin"), "audited");
}

#[tokio::test]
async fn admins_list_users_and_rooms() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    s.put(&format!("{V3}/profile/@bob:test/displayname"), Some(&bob.token), json!({"displayname": "Robert"})).await;
    let carol = s.register("carol").await;
    assert_eq!(s.post(&format!("{ADMIN}/v1/deactivate/@carol:test"), Some(&root.token), json!({})).await.0, 200);
    let _ = carol;

    // Users: deactivated ones only when asked; filters, order, pages.
    let names = |b: &Value| -> Vec<String> {
        b["users"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_owned()).collect()
    };
    let (st, b) = s.get(&format!("{ADMIN}/v2/users"), Some(&alice.token)).await;
    assert!(forbidden(st, &b), "{b}");
    let (st, b) = s.get(&format!("{ADMIN}/v2/users"), Some(&root.token)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        (names(&b), b["total"].as_i64()),
        (vec!["@alice:test".to_owned(), "@bob:test".into(), "@root:test".into()], Some(3))
    );
    assert!(b.get("next_token").is_none());
    let root_entry = b["users"].as_array().unwrap().iter().find(|u| u["name"] == "@root:test").unwrap();
    assert_eq!((root_entry["admin"].as_bool(), root_entry["deactivated"].as_bool()), (Some(true), Some(false)));
    let (_, b) = s.get(&format!("{ADMIN}/v2/users?deactivated=true"), Some(&root.token)).await;
    assert_eq!(b["total"], 4);
    let (_, b) = s.get(&format!("{ADMIN}/v2/users?name=rober"), Some(&root.token)).await;
    assert_eq!(names(&b), vec!["@bob:test"], "by display name");
    let (_, b) = s.get(&format!("{ADMIN}/v2/users?admins=true"), Some(&root.token)).await;
    assert_eq!(names(&b), vec!["@root:test"]);
    let (_, b) = s.get(&format!("{ADMIN}/v2/users?from=1&limit=1&dir=b"), Some(&root.token)).await;
    assert_eq!(
        (names(&b), b["next_token"].as_str(), b["total"].as_i64()),
        (vec!["@bob:test".to_owned()], Some("2"), Some(3))
    );
    let (st, _) = s.get(&format!("{ADMIN}/v2/users?from={}&limit={}", i64::MAX, i64::MAX), Some(&root.token)).await;
    assert_eq!(st, 200, "no overflow");
    let (st, _) = s.get(&format!("{ADMIN}/v1/rooms?from={}&limit={}", i64::MAX, i64::MAX), Some(&root.token)).await;
    assert_eq!(st, 200, "no overflow");
    for bad in ["from=-1", "limit=x", "order_by=password", "dir=sideways", "guests=maybe"] {
        let (st, b) = s.get(&format!("{ADMIN}/v2/users?{bad}"), Some(&root.token)).await;
        assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{bad}: {b}");
    }

    // Rooms: every room, searched, ordered, with its details, members and state.
    let square = s.create_room(&alice, json!({"preset": "public_chat", "name": "Town square"})).await;
    assert_eq!(s.join(&bob, &square).await.0, 200);
    let quiet = s.create_room(&bob, json!({"name": "Quiet corner"})).await;
    let (st, b) = s.get(&format!("{ADMIN}/v1/rooms"), Some(&alice.token)).await;
    assert!(forbidden(st, &b));
    let (st, list) = s.get(&format!("{ADMIN}/v1/rooms"), Some(&root.token)).await;
    assert_eq!(st, 200, "{list}");
    let rooms = list["rooms"].as_array().unwrap();
    assert_eq!(list["total_rooms"], 2);
    assert_eq!(rooms.iter().map(|r| r["name"].as_str().unwrap()).collect::<Vec<_>>(), ["Quiet corner", "Town square"]);
    let town = rooms.iter().find(|r| r["room_id"] == square.as_str()).unwrap();
    assert_eq!(
        (
            town["joined_members"].as_i64(),
            town["joined_local_members"].as_i64(),
            town["creator"].as_str(),
            town["join_rules"].as_str()
        ),
        (Some(2), Some(2), Some("@alice:test"), Some("public"))
    );
    assert!(town["state_events"].as_i64().unwrap() >= 6 && town["version"].is_string(), "{town}");
    let (_, b) = s.get(&format!("{ADMIN}/v1/rooms?order_by=size"), Some(&root.token)).await;
    assert_eq!(b["rooms"][0]["room_id"], square.as_str(), "biggest first");
    let (_, b) = s.get(&format!("{ADMIN}/v1/rooms?search_term=QUIET"), Some(&root.token)).await;
    assert_eq!((b["total_rooms"].as_i64(), b["rooms"][0]["room_id"].as_str()), (Some(1), Some(quiet.as_str())));
    let (_, b) = s.get(&format!("{ADMIN}/v1/rooms?limit=1"), Some(&root.token)).await;
    assert_eq!((b["rooms"].as_array().unwrap().len(), b["next_batch"].as_i64()), (1, Some(1)));
    let (st, _) = s.get(&format!("{ADMIN}/v1/rooms?order_by=nonsense"), Some(&root.token)).await;
    assert_eq!(st, 400);
    let (st, d) = s.get(&format!("{ADMIN}/v1/rooms/{quiet}"), Some(&root.token)).await;
    assert_eq!((st, d["name"].as_str(), d["forgotten"].as_bool()), (200, Some("Quiet corner"), Some(false)), "{d}");
    assert_eq!(s.get(&format!("{ADMIN}/v1/rooms/!nope:test"), Some(&root.token)).await.0, 404);
    let (_, m) = s.get(&format!("{ADMIN}/v1/rooms/{square}/members"), Some(&root.token)).await;
    assert_eq!(m["total"], 2, "{m}");
    // The state of a room the admin is not in (private to its members otherwise).
    let (_, st_body) = s.get(&format!("{ADMIN}/v1/rooms/{quiet}/state"), Some(&root.token)).await;
    let state = st_body["state"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Quiet corner"), "{st_body}");
    assert_eq!(s.get(&format!("{V3}/rooms/{quiet}/state"), Some(&alice.token)).await.0, 403, "not to others");
    let (st, b) = s.get(&format!("{ADMIN}/v1/rooms/{quiet}/state"), Some(&alice.token)).await;
    assert!(forbidden(st, &b));
}

#[tokio::test]
async fn admins_manage_a_users_devices_and_see_their_pushers() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let bob = s.register("bob").await;
    let bob2 = s.login("bob").await;
    let base = format!("{ADMIN}/v2/users/@bob:test/devices");
    let (st, b) = s.get(&base, Some(&bob.token)).await;
    assert!(forbidden(st, &b), "not for the user themselves either");
    let (st, b) = s.get(&base, Some(&root.token)).await;
    assert_eq!((st, b["total"].as_i64()), (200, Some(2)), "{b}");
    assert!(b["devices"].as_array().unwrap().iter().all(|d| d["user_id"] == "@bob:test"));
    assert_eq!(s.get(&format!("{ADMIN}/v2/users/@ghost:test/devices"), Some(&root.token)).await.0, 404);
    let one = format!("{base}/{}", bob.device_id);
    let (st, d) = s.get(&one, Some(&root.token)).await;
    assert_eq!((st, d["device_id"].as_str()), (200, Some(bob.device_id.as_str())), "{d}");
    assert_eq!(s.get(&format!("{base}/NOPE"), Some(&root.token)).await.0, 404);
    assert_eq!(s.put(&one, Some(&root.token), json!({"display_name": "Bob's phone"})).await.0, 200);
    let (_, d) = s.get(&one, Some(&root.token)).await;
    assert_eq!(d["display_name"], "Bob's phone");
    let (st, _) = s.put(&one, Some(&root.token), json!({"display_name": 7})).await;
    assert_eq!(st, 400);
    // Deleting needs no password from the admin, and logs the device out.
    assert_eq!(s.call("DELETE", &one, Some(&root.token), None).await.0, 200);
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(&bob.token)).await.0, 401);
    let (st, _) = s
        .post(
            &format!("{ADMIN}/v2/users/@bob:test/delete_devices"),
            Some(&root.token),
            json!({"devices": [bob2.device_id, "UNKNOWN"]}),
        )
        .await;
    assert_eq!(st, 200, "unknown IDs are ignored");
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(&bob2.token)).await.0, 401);
    assert_eq!(s.get(&base, Some(&root.token)).await.1["total"], 0);
    assert!(s.log_text().contains("delete devices"), "audited");

    // Pushers.
    let carol = s.register("carol").await;
    let pusher = json!({"pushkey": "pk1", "kind": "http", "app_id": "org.example", "app_display_name": "App",
        "device_display_name": "Phone", "lang": "en", "data": {"url": "https://push.example/_matrix/push/v1/notify"}});
    assert_eq!(s.post(&format!("{V3}/pushers/set"), Some(&carol.token), pusher).await.0, 200);
    let (st, p) = s.get(&format!("{ADMIN}/v1/users/@carol:test/pushers"), Some(&root.token)).await;
    assert_eq!((st, p["total"].as_i64(), p["pushers"][0]["pushkey"].as_str()), (200, Some(1), Some("pk1")), "{p}");
    let (st, b) = s.get(&format!("{ADMIN}/v1/users/@carol:test/pushers"), Some(&carol.token)).await;
    assert!(forbidden(st, &b));
}

#[tokio::test]
async fn admins_manage_registration_tokens() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let tokens = format!("{ADMIN}/v1/registration_tokens");
    let (st, t) = s.post(&format!("{tokens}/new"), Some(&root.token), json!({"length": 5, "uses_allowed": 1})).await;
    assert_eq!((st, t["token"].as_str().map(str::len)), (200, Some(5)), "{t}");
    let short = t["token"].as_str().unwrap().to_owned();
    let (st, _) = s.post(&format!("{tokens}/new"), Some(&root.token), json!({"length": 65})).await;
    assert_eq!(st, 400);
    let (st, _) =
        s.post(&format!("{tokens}/new"), Some(&root.token), json!({"token": "spent", "uses_allowed": 0})).await;
    assert_eq!(st, 200);
    let (_, valid) = s.get(&format!("{tokens}?valid=true"), Some(&root.token)).await;
    let listed = |b: &Value| -> Vec<String> {
        b["registration_tokens"].as_array().unwrap().iter().map(|t| t["token"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(listed(&valid), vec![short.clone()]);
    let (_, invalid) = s.get(&format!("{tokens}?valid=false"), Some(&root.token)).await;
    assert_eq!(listed(&invalid), vec!["spent".to_owned()]);

    let one = format!("{tokens}/{short}");
    let (st, t) = s.get(&one, Some(&root.token)).await;
    assert_eq!((st, t["uses_allowed"].as_i64()), (200, Some(1)));
    let (st, b) = s.get(&one, Some(&alice.token)).await;
    assert!(forbidden(st, &b));
    let (st, t) = s.put(&one, Some(&root.token), json!({"uses_allowed": null})).await;
    assert_eq!((st, t["uses_allowed"].clone(), t["expiry_time"].clone()), (200, Value::Null, Value::Null), "{t}");
    let (st, b) = s.put(&one, Some(&root.token), json!({"expiry_time": 1})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "in the past: {b}");
    let (st, b) = s.put(&one, Some(&root.token), json!({"uses_allowed": -1})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{b}");
    assert_eq!(s.put(&format!("{tokens}/nope"), Some(&root.token), json!({})).await.0, 404);
    assert_eq!(s.call("DELETE", &one, Some(&root.token), None).await.0, 200);
    assert_eq!(s.get(&one, Some(&root.token)).await.0, 404);
    assert_eq!(s.call("DELETE", &one, Some(&root.token), None).await.0, 404);
}

#[tokio::test]
async fn admins_create_and_change_accounts_shadow_ban_and_log_in_as_users() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let users = format!("{ADMIN}/v2/users");
    // Create: 201, with a password that logs in and the given profile.
    let body = json!({"password": "s3cret-pass", "displayname": "Dana", "admin": false});
    let (st, b) = s.put(&format!("{users}/@dana:test"), Some(&alice.token), body.clone()).await;
    assert!(forbidden(st, &b));
    let (st, b) = s.put(&format!("{users}/@dana:test"), Some(&root.token), body).await;
    assert_eq!((st, b["name"].as_str(), b["displayname"].as_str()), (201, Some("@dana:test"), Some("Dana")), "{b}");
    let login = |user: &str, password: &str| json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password});
    let (st, dana) = s.post(&format!("{V3}/login"), None, login("dana", "s3cret-pass")).await;
    assert_eq!(st, 200);
    // Change: 200; a new password logs the old sessions out; admin flag; bad types refused.
    let (st, b) =
        s.put(&format!("{users}/@dana:test"), Some(&root.token), json!({"password": "n3w-pass", "admin": true})).await;
    assert_eq!((st, b["admin"].as_bool()), (200, Some(true)), "{b}");
    assert_eq!(s.get(&format!("{V3}/account/whoami"), dana["access_token"].as_str()).await.0, 401);
    assert_eq!(s.post(&format!("{V3}/login"), None, login("dana", "n3w-pass")).await.0, 200);
    let (st, b) = s.put(&format!("{users}/@dana:test"), Some(&root.token), json!({"admin": "yes"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{b}");
    let (st, _) = s.put(&format!("{users}/@dana:elsewhere.example"), Some(&root.token), json!({})).await;
    assert_eq!(st, 400);
    let (st, _) = s.put(&format!("{users}/@root:test"), Some(&root.token), json!({"admin": false})).await;
    assert_eq!(st, 400, "no demoting oneself");
    // Deactivate, then reactivate (a password is required for that).
    let (st, b) = s.put(&format!("{users}/@dana:test"), Some(&root.token), json!({"deactivated": true})).await;
    assert_eq!((st, b["deactivated"].as_bool()), (200, Some(true)));
    assert_eq!(s.post(&format!("{V3}/login"), None, login("dana", "n3w-pass")).await.0, 403);
    let (st, _) = s.put(&format!("{users}/@dana:test"), Some(&root.token), json!({"deactivated": false})).await;
    assert_eq!(st, 400);
    let (st, b) = s
        .put(&format!("{users}/@dana:test"), Some(&root.token), json!({"deactivated": false, "password": "back-again"}))
        .await;
    assert_eq!((st, b["deactivated"].as_bool()), (200, Some(false)));
    assert_eq!(s.post(&format!("{V3}/login"), None, login("dana", "back-again")).await.0, 200);

    // Shadow-ban on and off (what it does to sends is tested with the spam checkers).
    let room = s.create_room(&root, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&alice, &room).await.0, 200);
    let (st, b) = s.post(&format!("{ADMIN}/v1/users/@alice:test/shadow_ban"), Some(&alice.token), json!({})).await;
    assert!(forbidden(st, &b));
    assert_eq!(s.post(&format!("{ADMIN}/v1/users/@alice:test/shadow_ban"), Some(&root.token), json!({})).await.0, 200);
    let (_, b) = s.get(&format!("{users}/@alice:test"), Some(&root.token)).await;
    assert_eq!(b["shadow_banned"], true);
    assert_eq!(
        s.call("DELETE", &format!("{ADMIN}/v1/users/@alice:test/shadow_ban"), Some(&root.token), None).await.0,
        200
    );
    let (_, b) = s.get(&format!("{users}/@alice:test"), Some(&root.token)).await;
    assert_eq!(b["shadow_banned"], false);
    assert_eq!(s.post(&format!("{ADMIN}/v1/users/@ghost:test/shadow_ban"), Some(&root.token), json!({})).await.0, 404);

    // Logging in as a user: a working token on a new device; never as oneself.
    let (st, b) = s.post(&format!("{ADMIN}/v1/users/@alice:test/login"), Some(&root.token), json!({})).await;
    assert_eq!(st, 200, "{b}");
    let (st, me) = s.get(&format!("{V3}/account/whoami"), b["access_token"].as_str()).await;
    assert_eq!((st, me["user_id"].as_str()), (200, Some("@alice:test")));
    assert_eq!(s.post(&format!("{ADMIN}/v1/users/@root:test/login"), Some(&root.token), json!({})).await.0, 400);
    let (st, b) = s.post(&format!("{ADMIN}/v1/users/@root:test/login"), Some(&alice.token), json!({})).await;
    assert!(forbidden(st, &b));
    let log = s.log_text();
    assert!(log.contains("create user") && log.contains("shadow-ban") && log.contains("login as user"), "audited");
}

#[tokio::test]
async fn synapse_s_log_config_and_pid_file_are_honoured() {
    // A Synapse-style log config: JSON lines into a file through Synapse's buffering handler.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("log.yaml"),
        "version: 1\nformatters:\n  structured:\n    class: synapse.logging.TerseJsonFormatter\n\
         handlers:\n  file:\n    class: logging.handlers.WatchedFileHandler\n    formatter: structured\n    filename: homeserver.log\n\
         \x20 buffer:\n    class: synapse.logging.handlers.PeriodicallyFlushingMemoryHandler\n    target: file\n\
         root:\n  level: INFO\n  handlers: [buffer]\n",
    )
    .unwrap();
    let config = base_config("log_config: log.yaml\npid_file: homeserver.pid\n").replace("log_level: info\n", "");
    std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
    let mut s = Server::start_in(dir).await;
    let pid = std::fs::read_to_string(s.dir.path().join("homeserver.pid")).unwrap();
    assert_eq!(pid.trim(), s.pid().to_string());
    let alice = s.register("alice").await;
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(&alice.token)).await.0, 200);
    let log = std::fs::read_to_string(s.dir.path().join("homeserver.log")).unwrap();
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect();
    let whoami = lines
        .iter()
        .find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("/account/whoami 200")))
        .unwrap_or_else(|| panic!("the request's line: {log}"));
    assert!(whoami["span"]["id"].as_str().is_some_and(|id| id.starts_with("GET-")), "with its request ID: {whoami}");
    assert_eq!(whoami["span"]["user"], "@alice:test");
    // A clean stop removes the pid file.
    unsafe { libc::kill(s.pid() as i32, libc::SIGTERM) };
    assert!(s.wait_exit().success());
    assert!(!s.dir.path().join("homeserver.pid").exists());

    // A log config that cannot be used stops start-up with a message naming it.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("log.yaml"), "root: {level: LOUD}\n").unwrap();
    std::fs::write(bad.path().join("homeserver.yaml"), base_config("log_config: log.yaml\n")).unwrap();
    let (code, _, err) = run_cli(bad.path(), &["-c", "homeserver.yaml", "check-config"]);
    assert_eq!(code, 1);
    assert!(err.contains("log_config") && err.contains("unknown level 'LOUD'"), "{err}");
}

#[tokio::test]
async fn reports_are_rate_limited() {
    // rc_reports (Synapse's default is 1/s, burst 5): room and user reports per user.
    let s = Server::start_with("rc_reports: {per_second: 0.01, burst_count: 2}\n").await;
    let alice = s.register("alice").await;
    s.register("bob").await;
    let room = s.create_room(&alice, json!({})).await;
    let report = json!({"reason": "spam"});
    assert_eq!(s.post(&format!("{V3}/users/@bob:test/report"), Some(&alice.token), report.clone()).await.0, 200);
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/report"), Some(&alice.token), report.clone()).await.0, 200);
    let (st, b) = s.post(&format!("{V3}/users/@bob:test/report"), Some(&alice.token), report).await;
    assert_eq!((st, b["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "{b}");
}

#[tokio::test]
async fn admins_override_a_users_rate_limits_as_synapse() {
    let s = Server::start_with("rc_message:\n  per_second: 0.1\n  burst_count: 2\n").await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let sends = |n: usize| {
        let (s, alice, room) = (&s, &alice, room.clone());
        async move {
            let mut statuses = Vec::new();
            for i in 0..n {
                statuses.push(s.send_text(alice, &room, &format!("m{i}")).await.0);
            }
            statuses
        }
    };
    assert_eq!(sends(3).await.last(), Some(&429), "rc_message applies");
    let path = format!("{ADMIN}/v1/users/@alice:test/override_ratelimit");
    let (st, b) = s.get(&path, Some(&root.token)).await;
    assert_eq!((st, b), (200, json!({})), "no override yet");

    // Refused: not an admin, another server's user, an unknown one, values that are not
    // non-negative integers.
    let (st, b) = s.post(&path, Some(&alice.token), json!({})).await;
    assert!(forbidden(st, &b));
    let (st, b) =
        s.post(&format!("{ADMIN}/v1/users/@bob:elsewhere/override_ratelimit"), Some(&root.token), json!({})).await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = s.get(&format!("{ADMIN}/v1/users/@nobody:test/override_ratelimit"), Some(&root.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");
    for bad in [json!({"messages_per_second": -1}), json!({"burst_count": "a"}), json!({"messages_per_second": 1.5})] {
        let (st, b) = s.post(&path, Some(&root.token), bad.clone()).await;
        assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{bad}: {b}");
        assert!(b["error"].as_str().unwrap().ends_with("parameter must be a positive int"), "{b}");
    }
    assert_eq!(sends(1).await, [429], "a refused override changes nothing");

    // 0 messages per second: never limited. Removed: limited again.
    let (st, b) = s.post(&path, Some(&root.token), json!({"messages_per_second": 0})).await;
    assert_eq!((st, b), (200, json!({"messages_per_second": 0, "burst_count": 0})));
    assert_eq!(sends(5).await, [200; 5]);
    let (st, b) = s.get(&path, Some(&root.token)).await;
    assert_eq!((st, b), (200, json!({"messages_per_second": 0, "burst_count": 0})));
    let (st, b) = s.call("DELETE", &path, Some(&root.token), None).await;
    assert_eq!((st, b), (200, json!({})));
    assert_eq!(s.get(&path, Some(&root.token)).await.1, json!({}));
    assert_eq!(sends(1).await, [429]);
}

#[tokio::test]
async fn admins_read_a_users_account_data_and_check_usernames() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let user_data = format!("{V3}/user/@alice:test/account_data/org.example.settings");
    assert_eq!(s.put(&user_data, Some(&alice.token), json!({"theme": "dark"})).await.0, 200);
    let room_data = format!("{V3}/user/@alice:test/rooms/{room}/account_data/org.example.draft");
    assert_eq!(s.put(&room_data, Some(&alice.token), json!({"text": "hi"})).await.0, 200);

    let path = format!("{ADMIN}/v1/users/@alice:test/accountdata");
    let (st, b) = s.get(&path, Some(&root.token)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["account_data"]["global"]["org.example.settings"], json!({"theme": "dark"}), "{b}");
    assert_eq!(b["account_data"]["rooms"][&room]["org.example.draft"], json!({"text": "hi"}), "{b}");
    assert!(b["account_data"]["global"].get("m.push_rules").is_none(), "push rules are apart: {b}");
    let (st, b) = s.get(&path, Some(&alice.token)).await;
    assert!(forbidden(st, &b), "{b}");
    assert_eq!(s.get(&format!("{ADMIN}/v1/users/@bob:elsewhere/accountdata"), Some(&root.token)).await.0, 400);
    let (st, b) = s.get(&format!("{ADMIN}/v1/users/@nobody:test/accountdata"), Some(&root.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");

    let available = |name: &str| format!("{ADMIN}/v1/username_available?username={name}");
    assert_eq!(s.get(&available("carol"), Some(&root.token)).await, (200, json!({"available": true})));
    let (st, b) = s.get(&available("alice"), Some(&root.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_USER_IN_USE")), "{b}");
    let (st, b) = s.get(&available("Not%20Valid"), Some(&root.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_USERNAME")), "{b}");
    let (st, b) = s.get(&available("carol"), Some(&alice.token)).await;
    assert!(forbidden(st, &b), "{b}");
}

/// `DELETE /_synapse/admin/v1/rooms/{roomId}` as Synapse: every local member (joined, invited)
/// leaves and the joined ones land in a new room with the admin's message, the aliases follow
/// them, the room is blocked and purged (admins get 404 for it, nobody can join it again), and
/// the block can be read and lifted. Non-admins, bad flags and bad room IDs are refused.
#[tokio::test]
async fn admins_delete_block_and_purge_rooms() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "room_alias_name": "doomed"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    assert_eq!(s.invite(&alice, &room, &carol.user_id).await.0, 200);
    assert_eq!(s.send_text(&alice, &room, "soon gone").await.0, 200);
    let path = format!("{ADMIN}/v1/rooms/{room}");

    let (st, b) = s.call("DELETE", &path, Some(&alice.token), Some(json!({}))).await;
    assert!(forbidden(st, &b), "{b}");
    let (st, b) = s.call("DELETE", &path, Some(&root.token), Some(json!({"block": "yes"}))).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{b}");
    let (st, b) = s.call("DELETE", &format!("{ADMIN}/v1/rooms/not-a-room"), Some(&root.token), Some(json!({}))).await;
    assert_eq!(st, 400, "{b}");
    let (st, b) =
        s.call("DELETE", &path, Some(&root.token), Some(json!({"new_room_user_id": "@root:elsewhere"}))).await;
    assert_eq!(st, 400, "a new room's creator must be local: {b}");
    assert_eq!(s.get(&format!("{ADMIN}/v1/rooms/{room}"), Some(&root.token)).await.0, 200, "nothing happened yet");

    let (st, b) = s
        .call(
            "DELETE",
            &path,
            Some(&root.token),
            Some(json!({"new_room_user_id": root.user_id, "room_name": "Moved", "message": "This room broke the rules.", "block": true})),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let mut kicked: Vec<&str> = b["kicked_users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    kicked.sort();
    assert_eq!(kicked, vec![alice.user_id.as_str(), bob.user_id.as_str(), carol.user_id.as_str()], "{b}");
    assert_eq!(b["failed_to_kick_users"], json!([]), "{b}");
    assert_eq!(b["local_aliases"], json!(["#doomed:test"]), "{b}");
    let new_room = b["new_room_id"].as_str().unwrap().to_owned();

    // The joined members are in the new room, with the message; the alias points there.
    let (_, joined) = s.get(&format!("{V3}/joined_rooms"), Some(&alice.token)).await;
    assert_eq!(joined["joined_rooms"], json!([new_room]), "{joined}");
    let (_, joined) = s.get(&format!("{V3}/joined_rooms"), Some(&carol.token)).await;
    assert_eq!(joined["joined_rooms"], json!([]), "an invitee only leaves: {joined}");
    let (_, msgs) = s.get(&format!("{V3}/rooms/{new_room}/messages?dir=b&limit=1"), Some(&bob.token)).await;
    assert_eq!(msgs["chunk"][0]["content"]["body"], "This room broke the rules.", "{msgs}");
    let (_, alias) = s.get(&format!("{V3}/directory/room/%23doomed:test"), None).await;
    assert_eq!(alias["room_id"], json!(new_room), "{alias}");

    // The old room is gone, and blocked.
    let (st, _) = s.get(&format!("{ADMIN}/v1/rooms/{room}"), Some(&root.token)).await;
    assert_eq!(st, 404);
    let (st, b) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b"), Some(&alice.token)).await;
    assert!(st == 403 || st == 404, "{st} {b}");
    let (st, b) = s.join(&bob, &room).await;
    assert_eq!((st, b["error"].as_str()), (403, Some("This room has been blocked on this server")), "{b}");
    let block = format!("{ADMIN}/v1/rooms/{room}/block");
    let (st, b) = s.get(&block, Some(&root.token)).await;
    assert_eq!((st, b), (200, json!({"block": true, "user_id": root.user_id})));
    assert!(forbidden(s.get(&block, Some(&alice.token)).await.0, &s.get(&block, Some(&alice.token)).await.1));
    let (st, b) = s.put(&block, Some(&root.token), json!({"block": "no"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{b}");
    let (st, b) = s.put(&block, Some(&root.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{b}");
    assert_eq!(s.put(&block, Some(&root.token), json!({"block": false})).await, (200, json!({"block": false})));
    assert_eq!(s.get(&block, Some(&root.token)).await.1, json!({"block": false}));
    // Blocking a room this server never knew works too (Synapse), and bars invites.
    let elsewhere = format!("{ADMIN}/v1/rooms/!unknown:test/block");
    assert_eq!(s.put(&elsewhere, Some(&root.token), json!({"block": true})).await, (200, json!({"block": true})));

    // The server carries on: the new room works, new rooms can be made.
    assert_eq!(s.send_text(&alice, &new_room, "hello again").await.0, 403, "users_default is -10 there");
    let other = s.create_room(&alice, json!({})).await;
    assert_eq!(s.send_text(&alice, &other, "fine").await.0, 200);
}

/// v2 deletions run in the background with a status by delete ID and by room; a third-party
/// rules module may refuse a shutdown (`check_can_shutdown_room`), and modules delete rooms
/// (`ModuleApi.delete_room`, asked with no requester) and make login tokens
/// (`ModuleApi.create_login_token`).
#[tokio::test]
async fn room_deletion_v2_and_the_modules_say() {
    let s = Server::start_with("modules:\n  - module: module_api_calls.ModuleApiCalls\n").await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    assert_eq!(s.send_text(&alice, &room, "hi").await.0, 200);

    let (st, b) = s.call("DELETE", &format!("{ADMIN}/v2/rooms/{room}"), Some(&root.token), Some(json!({}))).await;
    assert_eq!(st, 200, "{b}");
    let delete_id = b["delete_id"].as_str().unwrap().to_owned();
    let mut status = Value::Null;
    for _ in 0..100 {
        status = s.get(&format!("{ADMIN}/v2/rooms/delete_status/{delete_id}"), Some(&root.token)).await.1;
        if status["status"] == "complete" || status["status"] == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status["status"], "complete", "{status}");
    assert_eq!(status["room_id"], json!(room));
    assert_eq!(status["shutdown_room"]["kicked_users"], json!([alice.user_id]), "{status}");
    let (st, b) = s.get(&format!("{ADMIN}/v2/rooms/{room}/delete_status"), Some(&root.token)).await;
    assert_eq!((st, b["results"][0]["delete_id"].as_str()), (200, Some(delete_id.as_str())), "{b}");
    assert_eq!(s.get(&format!("{ADMIN}/v2/rooms/delete_status/nope"), Some(&root.token)).await.0, 404);
    assert_eq!(s.get(&format!("{ADMIN}/v2/rooms/!other:test/delete_status"), Some(&root.token)).await.0, 404);
    let (st, b) = s.get(&format!("{ADMIN}/v2/rooms/delete_status/{delete_id}"), Some(&alice.token)).await;
    assert!(forbidden(st, &b), "{b}");
    assert_eq!(s.get(&format!("{ADMIN}/v1/rooms/{room}"), Some(&root.token)).await.0, 404);

    // A protected room: the module refuses its shutdown, both versions.
    let kept = s.create_room(&alice, json!({})).await;
    let (st, _) = s.put(&format!("{V3}/rooms/{kept}/send/org.example.protect/t1"), Some(&alice.token), json!({})).await;
    assert_eq!(st, 200);
    for _ in 0..100 {
        let seen = s.get("/_synapse/client/module_api_calls", None).await.1;
        if seen["protected"].as_array().unwrap().iter().any(|r| r == &json!(kept)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for version in ["v1", "v2"] {
        let (st, b) =
            s.call("DELETE", &format!("{ADMIN}/{version}/rooms/{kept}"), Some(&root.token), Some(json!({}))).await;
        assert_eq!((st, b["error"].as_str()), (403, Some("Shutdown of this room is forbidden")), "{version}: {b}");
    }
    assert_eq!(s.send_text(&alice, &kept, "still here").await.0, 200);

    // ModuleApi.delete_room: in the background, asked with no requester.
    let doomed = s.create_room(&alice, json!({})).await;
    assert_eq!(s.post("/_synapse/client/module_api_calls", None, json!({"room_id": doomed})).await.0, 200);
    let mut gone = false;
    for _ in 0..100 {
        if s.get(&format!("{ADMIN}/v1/rooms/{doomed}"), Some(&root.token)).await.0 == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(gone, "the module's deletion purged the room");
    let seen = s.get("/_synapse/client/module_api_calls", None).await.1;
    assert!(seen["asked"].as_array().unwrap().contains(&json!([null, doomed])), "{seen}");
    assert!(seen["asked"].as_array().unwrap().contains(&json!([root.user_id, room])), "{seen}");

    // ModuleApi.create_login_token: a token that logs alice in once.
    let (st, b) = s.post("/_synapse/client/module_api_calls", None, json!({"user_id": alice.user_id})).await;
    assert_eq!(st, 200, "{b}");
    let login = json!({"type": "m.login.token", "token": b["login_token"]});
    let (st, b) = s.post(&format!("{V3}/login"), None, login.clone()).await;
    assert_eq!((st, b["user_id"].as_str()), (200, Some(alice.user_id.as_str())), "{b}");
    assert_eq!(s.post(&format!("{V3}/login"), None, login).await.0, 403, "a login token is spent once");
}

/// External IDs (SSO identities) as Synapse's admin API shows and sets them, the lookup by
/// provider, and `ModuleApi.record_user_external_id`; one account per identity (409), bad
/// bodies refused.
#[tokio::test]
async fn admins_and_modules_record_external_ids() {
    let s = Server::start_with("modules:\n  - module: module_api_calls.ModuleApiCalls\n").await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let user = format!("{ADMIN}/v2/users/{}", alice.user_id);
    let ids =
        json!([{"auth_provider": "oidc", "external_id": "a-1"}, {"auth_provider": "github", "external_id": "77"}]);
    let (st, b) = s.put(&user, Some(&root.token), json!({"external_ids": ids})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b["external_ids"],
        json!([{"auth_provider": "github", "external_id": "77"}, {"auth_provider": "oidc", "external_id": "a-1"}]),
        "{b}"
    );
    let lookup = format!("{ADMIN}/v1/auth_providers/oidc/users/a-1");
    assert_eq!(s.get(&lookup, Some(&root.token)).await, (200, json!({"user_id": alice.user_id})));
    assert!(forbidden(s.get(&lookup, Some(&alice.token)).await.0, &s.get(&lookup, Some(&alice.token)).await.1));
    assert_eq!(s.get(&format!("{ADMIN}/v1/auth_providers/oidc/users/none"), Some(&root.token)).await.0, 404);
    // Taken by alice: bob cannot have it; nothing of bob's changes.
    let bob_user = format!("{ADMIN}/v2/users/{}", bob.user_id);
    let both = json!({"external_ids": [{"auth_provider": "saml", "external_id": "b"}, {"auth_provider": "oidc", "external_id": "a-1"}]});
    let (st, b) = s.put(&bob_user, Some(&root.token), both).await;
    assert_eq!((st, b["error"].as_str()), (409, Some("External id is already in use.")), "{b}");
    assert_eq!(s.get(&bob_user, Some(&root.token)).await.1["external_ids"], json!([]));
    let (st, b) = s.put(&bob_user, Some(&root.token), json!({"external_ids": [{"auth_provider": "oidc"}]})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{b}");
    let (st, _) = s.put(&bob_user, Some(&root.token), json!({"external_ids": "oidc"})).await;
    assert_eq!(st, 400);
    // Replacing: alice keeps only github.
    let (st, b) = s
        .put(&user, Some(&root.token), json!({"external_ids": [{"auth_provider": "github", "external_id": "77"}]}))
        .await;
    assert_eq!((st, b["external_ids"].as_array().map(Vec::len)), (200, Some(1)), "{b}");
    assert_eq!(s.get(&lookup, Some(&root.token)).await.0, 404);
    // A module records one for bob; recording alice's for bob is refused.
    let calls = "/_synapse/client/module_api_calls";
    let (st, b) =
        s.post(calls, None, json!({"auth_provider": "oidc", "external_id": "b-2", "user_id": bob.user_id})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        s.get(&bob_user, Some(&root.token)).await.1["external_ids"],
        json!([{"auth_provider": "oidc", "external_id": "b-2"}])
    );
    let (st, _) =
        s.post(calls, None, json!({"auth_provider": "github", "external_id": "77", "user_id": bob.user_id})).await;
    assert_eq!(st, 409, "the module's SynapseError reaches the resource's caller");
}

/// Synapse's media admin API: details, quarantine by ID, by uploader and by room (and its
/// release), protection, a user's uploads listed and deleted, deletion by ID and by age.
/// Quarantined media is served to nobody, admins included; non-admins may do none of it.
#[tokio::test]
async fn admins_moderate_media() {
    use crate::media::upload;
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let mut ids = Vec::new();
    for body in ["first", "second file", "third file!"] {
        let (st, b) = upload(&s, &alice, body.as_bytes().to_vec(), "text/plain", None).await;
        assert_eq!(st, 200, "{b}");
        ids.push(b["content_uri"].as_str().unwrap().rsplit('/').next().unwrap().to_owned());
    }
    let (a, b, c) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let download = |id: &str, token: &str| {
        let url = s.url(&format!("/_matrix/client/v1/media/download/test/{id}"));
        let token = token.to_owned();
        async move { reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };

    let info = format!("{ADMIN}/v1/media/test/{a}");
    let (st, i) = s.get(&info, Some(&root.token)).await;
    assert_eq!(st, 200, "{i}");
    assert_eq!(
        (i["media_info"]["user_id"].as_str(), i["media_info"]["media_length"].as_i64()),
        (Some(alice.user_id.as_str()), Some(5))
    );
    let (st, e) = s.get(&info, Some(&alice.token)).await;
    assert!(forbidden(st, &e), "{e}");
    assert_eq!(s.get(&format!("{ADMIN}/v1/media/test/AAAAAAAAAAAAAAAAAAAAAAAA"), Some(&root.token)).await.0, 404);

    // Quarantine by ID: nobody gets it, then everybody again.
    let (st, e) = s.post(&format!("{ADMIN}/v1/media/quarantine/test/{a}"), Some(&alice.token), json!({})).await;
    assert!(forbidden(st, &e), "{e}");
    assert_eq!(s.post(&format!("{ADMIN}/v1/media/quarantine/test/{a}"), Some(&root.token), json!({})).await.0, 200);
    assert_eq!((download(&a, &alice.token).await, download(&a, &root.token).await), (404, 404));
    assert_eq!(s.get(&info, Some(&root.token)).await.1["media_info"]["quarantined_by"], json!(root.user_id));
    assert_eq!(s.post(&format!("{ADMIN}/v1/media/unquarantine/test/{a}"), Some(&root.token), json!({})).await.0, 200);
    assert_eq!(download(&a, &alice.token).await, 200);

    // A protected file survives its uploader's quarantine.
    assert_eq!(s.post(&format!("{ADMIN}/v1/media/protect/{b}"), Some(&root.token), json!({})).await.0, 200);
    assert_eq!(s.post(&format!("{ADMIN}/v1/media/protect/nope"), Some(&root.token), json!({})).await.0, 404);
    let (st, q) =
        s.post(&format!("{ADMIN}/v1/user/{}/media/quarantine", alice.user_id), Some(&root.token), json!({})).await;
    assert_eq!((st, q), (200, json!({"num_quarantined": 2})));
    assert_eq!(
        (download(&a, &alice.token).await, download(&b, &alice.token).await, download(&c, &alice.token).await),
        (404, 200, 404)
    );
    assert_eq!(s.post(&format!("{ADMIN}/v1/media/unprotect/{b}"), Some(&root.token), json!({})).await.0, 200);
    for id in [&a, &c] {
        assert_eq!(
            s.post(&format!("{ADMIN}/v1/media/unquarantine/test/{id}"), Some(&root.token), json!({})).await.0,
            200
        );
    }
    // Every change so far, in order, and from a position on.
    let changes = format!("{ADMIN}/v1/media/quarantine_changes");
    let (st, log) = s.get(&changes, Some(&root.token)).await;
    assert_eq!(st, 200, "{log}");
    let entry = |id: &str, q: bool| json!({"origin": "test", "media_id": id, "quarantined": q});
    assert_eq!(
        log["changes"],
        json!([
            entry(&a, true),
            entry(&a, false),
            entry(&a, true),
            entry(&c, true),
            entry(&a, false),
            entry(&c, false)
        ])
    );
    let next = log["next_batch"].as_i64().unwrap();
    let (_, rest) = s.get(&format!("{changes}?from={next}"), Some(&root.token)).await;
    assert_eq!((rest["changes"].clone(), rest["next_batch"].as_i64()), (json!([]), Some(next)));
    let (_, tail) = s.get(&format!("{changes}?from={}", next - 2), Some(&root.token)).await;
    assert_eq!(tail["changes"], json!([entry(&a, false), entry(&c, false)]));
    let (st, e) = s.get(&format!("{changes}?from={}", next + 100), Some(&root.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{e}");
    let (st, e) = s.get(&changes, Some(&alice.token)).await;
    assert!(forbidden(st, &e), "{e}");

    // A room's media: what its events' url and thumbnail_url name.
    let room = s.create_room(&alice, json!({})).await;
    let image = json!({"msgtype": "m.image", "body": "pic", "url": format!("mxc://test/{a}"),
                       "info": {"thumbnail_url": "mxc://elsewhere.example/remoteid"}});
    assert_eq!(s.put(&format!("{V3}/rooms/{room}/send/m.room.message/t1"), Some(&alice.token), image).await.0, 200);
    let file = json!({"msgtype": "m.file", "body": "f", "url": format!("mxc://test/{c}")});
    assert_eq!(s.put(&format!("{V3}/rooms/{room}/send/m.room.message/t2"), Some(&alice.token), file).await.0, 200);
    let (st, m) = s.get(&format!("{ADMIN}/v1/room/{room}/media"), Some(&root.token)).await;
    assert_eq!(st, 200, "{m}");
    assert_eq!(
        m,
        json!({"local": [format!("mxc://test/{a}"), format!("mxc://test/{c}")], "remote": ["mxc://elsewhere.example/remoteid"]})
    );
    let (st, q) = s.post(&format!("{ADMIN}/v1/room/{room}/media/quarantine"), Some(&root.token), json!({})).await;
    assert_eq!((st, q), (200, json!({"num_quarantined": 2})), "the remote file was never fetched");
    assert_eq!(download(&c, &alice.token).await, 404);
    assert_eq!(s.get(&format!("{ADMIN}/v1/room/!nope:test/media"), Some(&root.token)).await.0, 404);

    // A user's uploads: newest first by default, ordered and paged on request.
    let list = format!("{ADMIN}/v1/users/{}/media", alice.user_id);
    let (st, l) = s.get(&list, Some(&root.token)).await;
    assert_eq!((st, l["total"].as_i64()), (200, Some(3)), "{l}");
    let listed: Vec<&str> = l["media"].as_array().unwrap().iter().map(|m| m["media_id"].as_str().unwrap()).collect();
    assert_eq!(listed, vec![c.as_str(), b.as_str(), a.as_str()]);
    assert_eq!(l["media"][0]["quarantined_by"], json!(root.user_id));
    let (_, l) = s.get(&format!("{list}?order_by=media_length&dir=f&limit=1"), Some(&root.token)).await;
    assert_eq!((l["media"][0]["media_id"].as_str(), l["next_token"].as_i64()), (Some(a.as_str()), Some(1)), "{l}");
    assert_eq!(s.get(&format!("{list}?order_by=colour"), Some(&root.token)).await.0, 400);
    assert_eq!(s.get(&format!("{ADMIN}/v1/users/@bob:elsewhere/media"), Some(&root.token)).await.0, 400);
    assert_eq!(s.get(&format!("{ADMIN}/v1/users/@nobody:test/media"), Some(&root.token)).await.0, 404);
    let (st, e) = s.get(&list, Some(&alice.token)).await;
    assert!(forbidden(st, &e), "{e}");

    // Deleting old media: the avatar is kept unless asked; quarantined files are not deleted.
    let avatar = format!("{V3}/profile/{}/avatar_url", alice.user_id);
    assert_eq!(s.put(&avatar, Some(&alice.token), json!({"avatar_url": format!("mxc://test/{b}")})).await.0, 200);
    let (st, e) = s.post(&format!("{ADMIN}/v1/media/delete"), Some(&root.token), json!({})).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{e}");
    assert_eq!(s.post(&format!("{ADMIN}/v1/media/delete?before_ts=1000"), Some(&root.token), json!({})).await.0, 400);
    let later = 4_000_000_000_000i64;
    let (st, d) = s.post(&format!("{ADMIN}/v1/media/delete?before_ts={later}"), Some(&root.token), json!({})).await;
    assert_eq!((st, d), (200, json!({"deleted_media": [], "total": 0})));
    let (st, d) = s
        .post(&format!("{ADMIN}/v1/media/delete?before_ts={later}&keep_profiles=false"), Some(&root.token), json!({}))
        .await;
    assert_eq!((st, d), (200, json!({"deleted_media": [b], "total": 1})));
    assert_eq!(download(&b, &alice.token).await, 404);
    assert_eq!(
        s.post(&format!("{ADMIN}/v1/media/elsewhere.example/delete?before_ts={later}"), Some(&root.token), json!({}))
            .await
            .0,
        400
    );

    // Deleting by ID, and a user's remaining uploads.
    assert_eq!(
        s.call("DELETE", &format!("{ADMIN}/v1/media/elsewhere.example/remoteid"), Some(&root.token), None).await.0,
        400
    );
    let (st, d) = s.call("DELETE", &format!("{ADMIN}/v1/media/test/{a}"), Some(&root.token), None).await;
    assert_eq!((st, d), (200, json!({"deleted_media": [a], "total": 1})));
    assert_eq!(s.call("DELETE", &format!("{ADMIN}/v1/media/test/{a}"), Some(&root.token), None).await.0, 404);
    let (st, d) = s.call("DELETE", &list, Some(&root.token), None).await;
    assert_eq!((st, d), (200, json!({"deleted_media": [c], "total": 1})));
    assert_eq!(s.get(&list, Some(&root.token)).await.1["total"], 0);
    assert!(files_under(&s.dir.path().join("data/media/local_content")).is_empty(), "the files are gone too");
}

/// Server notices as Synapse sends them: from the system account, in one room per user (private,
/// named as configured, tagged `m.server_notice`, where the user may not speak), the user
/// invited; a transaction ID sends once; the system account's ID is reserved; refusals for
/// servers without notices, remote and unknown users, non-admins and bodies without content.
#[tokio::test]
async fn admins_send_server_notices() {
    let s = Server::start_with(
        "server_notices:\n  system_mxid_localpart: notices\n  system_mxid_display_name: Server Notices\n  room_name: Notices\n",
    )
    .await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let send = format!("{ADMIN}/v1/send_server_notice");
    let notice = |body: &str| json!({"user_id": alice.user_id, "content": {"msgtype": "m.text", "body": body}});

    let (st, b) = s.post(&send, Some(&root.token), notice("Maintenance tonight")).await;
    assert_eq!(st, 200, "{b}");
    let first = b["event_id"].as_str().unwrap().to_owned();
    let synced = s.sync(&alice, None, 0).await;
    let invites = synced["rooms"]["invite"].as_object().unwrap();
    assert_eq!(invites.len(), 1, "{synced}");
    let (room, invite) = invites.iter().next().unwrap();
    let stripped = invite["invite_state"]["events"].as_array().unwrap();
    assert!(stripped.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Notices"), "{invite}");
    let (_, tags) = s.get(&format!("{V3}/user/{}/rooms/{room}/tags", alice.user_id), Some(&alice.token)).await;
    assert!(tags["tags"].get("m.server_notice").is_some(), "{tags}");
    assert_eq!(s.join(&alice, room).await.0, 200);
    let (_, msgs) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=2"), Some(&alice.token)).await;
    assert_eq!(msgs["chunk"][1]["event_id"], json!(first), "before her join: {msgs}");
    assert_eq!(msgs["chunk"][1]["sender"], "@notices:test");
    assert_eq!(s.send_text(&alice, room, "can I reply?").await.0, 403, "users may not speak there");

    // The next notice goes to the same room; a transaction ID sends once.
    let txn = format!("{send}/txn-1");
    let (st, b) = s.put(&txn, Some(&root.token), notice("Done")).await;
    assert_eq!(st, 200, "{b}");
    let again = s.put(&txn, Some(&root.token), notice("Done")).await.1;
    assert_eq!(b["event_id"], again["event_id"], "idempotent");
    let (_, msgs) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=1"), Some(&alice.token)).await;
    assert_eq!(msgs["chunk"][0]["content"]["body"], "Done", "{msgs}");
    let (_, joined) = s.get(&format!("{V3}/joined_rooms"), Some(&alice.token)).await;
    assert_eq!(joined["joined_rooms"].as_array().unwrap().len(), 1, "one notices room: {joined}");

    // Refusals.
    let (st, e) = s.post(&send, Some(&alice.token), notice("x")).await;
    assert!(forbidden(st, &e), "{e}");
    let (st, e) = s.post(&send, Some(&root.token), json!({"user_id": alice.user_id})).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{e}");
    let (st, e) = s.post(&send, Some(&root.token), json!({"user_id": "@bob:elsewhere", "content": {}})).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("Server notices can only be sent to local users")), "{e}");
    let (st, _) = s.post(&send, Some(&root.token), json!({"user_id": "@nobody:test", "content": {}})).await;
    assert_eq!(st, 404);
    let (st, e) = s.try_register("notices").await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{e}");

    let plain = Server::start().await;
    plain.make_admin_cli("root");
    let root = plain.login("root").await;
    let bob = plain.register("bob").await;
    let (st, e) = plain.post(&send, Some(&root.token), json!({"user_id": bob.user_id, "content": {"body": "x"}})).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("Server notices are not enabled on this server")), "{e}");
}

/// Server notices and room shutdowns are the server's own sends: not rate-limited (Synapse's
/// `ratelimit=False`), while the users' own messages still are.
#[tokio::test]
async fn the_servers_own_sends_are_not_rate_limited() {
    let s = Server::start_with(
        "rc_message: {per_second: 0.001, burst_count: 1}\nrc_registration: {per_second: 10, burst_count: 10}\n\
         rc_login: {address: {per_second: 10, burst_count: 10}, account: {per_second: 10, burst_count: 10}}\n\
         server_notices:\n  system_mxid_localpart: notices\n",
    )
    .await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    for n in 0..4 {
        let body = json!({"user_id": alice.user_id, "content": {"msgtype": "m.text", "body": format!("notice {n}")}});
        let (st, b) = s.post(&format!("{ADMIN}/v1/send_server_notice"), Some(&root.token), body).await;
        assert_eq!(st, 200, "notice {n}: {b}");
    }
    let room = s.create_room(&alice, json!({})).await;
    let (st, b) = s.send_text(&alice, &room, "over the limit").await;
    assert_eq!((st, b["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "users stay limited: {b}");
}

/// Smaller admin endpoints: media statistics per uploader (ordered, searched, paged), an event
/// fetched whoever may see it, a user's sent invites since a time, a room's forward
/// extremities; each refused to non-admins and for bad parameters.
#[tokio::test]
async fn admins_read_statistics_events_invites_and_extremities() {
    use crate::media::upload;
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    for (user, size) in [(&alice, 10), (&alice, 20), (&bob, 5)] {
        assert_eq!(upload(&s, user, vec![0; size], "application/octet-stream", None).await.0, 200);
    }
    let stats = format!("{ADMIN}/v1/statistics/users/media");
    let (st, b) = s.get(&stats, Some(&root.token)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        b,
        json!({"total": 2, "users": [
            {"user_id": alice.user_id, "displayname": "alice", "media_count": 2, "media_length": 30},
            {"user_id": bob.user_id, "displayname": "bob", "media_count": 1, "media_length": 5},
        ]})
    );
    let (_, b) = s.get(&format!("{stats}?order_by=media_length&dir=b&limit=1"), Some(&root.token)).await;
    assert_eq!(
        (b["users"][0]["user_id"].as_str(), b["next_token"].as_i64()),
        (Some(alice.user_id.as_str()), Some(1)),
        "{b}"
    );
    let (_, b) = s.get(&format!("{stats}?search_term=bo"), Some(&root.token)).await;
    assert_eq!(b["total"], 1, "{b}");
    assert_eq!(s.get(&format!("{stats}?from_ts=10&until_ts=5"), Some(&root.token)).await.0, 400);
    assert_eq!(s.get(&format!("{stats}?order_by=colour"), Some(&root.token)).await.0, 400);
    let (st, e) = s.get(&stats, Some(&alice.token)).await;
    assert!(forbidden(st, &e), "{e}");

    // An event in a room the admin is not in; invites alice sent; the room's extremities.
    let room = s.create_room(&alice, json!({})).await;
    let (_, sent) = s.send_text(&alice, &room, "private words").await;
    let event_id = sent["event_id"].as_str().unwrap();
    let (st, b) = s.get(&format!("{ADMIN}/v1/fetch_event/{event_id}"), Some(&root.token)).await;
    assert_eq!((st, b["event"]["content"]["body"].as_str()), (200, Some("private words")), "{b}");
    assert_eq!(s.get(&format!("{ADMIN}/v1/fetch_event/$nope"), Some(&root.token)).await.0, 404);
    let (st, e) = s.get(&format!("{ADMIN}/v1/fetch_event/{event_id}"), Some(&bob.token)).await;
    assert!(forbidden(st, &e), "{e}");
    assert_eq!(s.invite(&alice, &room, &bob.user_id).await.0, 200);
    let count = format!("{ADMIN}/v1/users/{}/sent_invite_count", alice.user_id);
    assert_eq!(s.get(&format!("{count}?from_ts=0"), Some(&root.token)).await, (200, json!({"invite_count": 1})));
    assert_eq!(
        s.get(&format!("{count}?from_ts=99999999999999"), Some(&root.token)).await.1,
        json!({"invite_count": 0})
    );
    let (st, e) = s.get(&count, Some(&root.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{e}");
    // Rooms bob joined since a time, those he left afterwards included.
    let joined = format!("{ADMIN}/v1/users/{}/cumulative_joined_room_count", bob.user_id);
    assert_eq!(s.get(&format!("{joined}?from_ts=0"), Some(&root.token)).await.1["cumulative_joined_room_count"], 0);
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let other = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &other).await.0, 200);
    let leave = format!("{V3}/rooms/{other}/leave");
    assert_eq!(s.post(&leave, Some(&bob.token), json!({})).await.0, 200);
    assert_eq!(
        s.get(&format!("{joined}?from_ts=0"), Some(&root.token)).await,
        (200, json!({"cumulative_joined_room_count": 2}))
    );
    assert_eq!(
        s.get(&format!("{joined}?from_ts=99999999999999"), Some(&root.token)).await.1,
        json!({"cumulative_joined_room_count": 0})
    );
    assert_eq!(s.get(&joined, Some(&root.token)).await.0, 400);
    let (st, e) = s.get(&format!("{joined}?from_ts=0"), Some(&bob.token)).await;
    assert!(forbidden(st, &e), "{e}");
    let (st, b) = s.get(&format!("{ADMIN}/v1/rooms/{room}/forward_extremities"), Some(&root.token)).await;
    assert_eq!((st, b["count"].as_i64()), (200, Some(1)), "{b}");
    assert!(b["results"][0]["event_id"].as_str().is_some_and(|e| e.starts_with('$')), "{b}");
    assert_eq!(s.get(&format!("{ADMIN}/v1/rooms/!nope:test/forward_extremities"), Some(&root.token)).await.0, 404);
    // Dropping extra extremities (the storage contract covers forked rooms): none here.
    let extremities = format!("{ADMIN}/v1/rooms/{room}/forward_extremities");
    assert_eq!(s.call("DELETE", &extremities, Some(&root.token), None).await, (200, json!({"deleted": 0})));
    let (st, e) = s.call("DELETE", &extremities, Some(&alice.token), None).await;
    assert!(forbidden(st, &e), "{st} {e}");
    let (st, e) =
        s.call("DELETE", &format!("{ADMIN}/v1/rooms/!nope:test/forward_extremities"), Some(&root.token), None).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("No forward extremity event found for room !nope:test")), "{e}");
    assert_eq!(s.send_text(&alice, &room, "still fine").await.0, 200);
}

#[tokio::test]
async fn admins_lock_accounts_which_may_then_only_log_out() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let path = "/_synapse/admin/v2/users/@alice:test";
    // Refused: a non-admin, a non-boolean, deactivated and locked at once.
    let (st, b) = s.put(path, Some(&bob.token), json!({"locked": true})).await;
    assert!(forbidden(st, &b), "{st} {b}");
    let (st, b) = s.put(path, Some(&root.token), json!({"locked": "yes"})).await;
    assert_eq!((st, b["error"].as_str()), (400, Some("'locked' parameter is not of type boolean")), "{b}");
    let (st, b) = s.put(path, Some(&root.token), json!({"locked": true, "deactivated": true})).await;
    assert_eq!((st, b["error"].as_str()), (400, Some("An user can't be deactivated and locked")), "{b}");
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200, "nothing changed");

    let (st, b) = s.put(path, Some(&root.token), json!({"locked": true})).await;
    assert_eq!((st, b["locked"].as_bool()), (200, Some(true)), "{b}");
    let (st, b) = s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await;
    assert_eq!(
        (st, b["errcode"].as_str(), b["soft_logout"].as_bool()),
        (401, Some("M_USER_LOCKED"), Some(true)),
        "{b}"
    );
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&bob.token)).await.0, 200, "others unaffected");
    // Locked accounts are listed only when asked for.
    let names = |b: &Value| -> Vec<String> {
        b["users"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_owned()).collect()
    };
    let (_, listed) = s.get("/_synapse/admin/v2/users", Some(&root.token)).await;
    assert!(!names(&listed).contains(&alice.user_id), "{listed}");
    let (_, listed) = s.get("/_synapse/admin/v2/users?locked=true", Some(&root.token)).await;
    let entry = listed["users"].as_array().unwrap().iter().find(|u| u["name"] == alice.user_id.as_str()).cloned();
    assert_eq!(entry.map(|u| u["locked"].clone()), Some(json!(true)), "{listed}");

    // Unlocked, the same token works again; locked again, it may still log out.
    assert_eq!(s.put(path, Some(&root.token), json!({"locked": false})).await.0, 200);
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200);
    assert_eq!(s.put(path, Some(&root.token), json!({"locked": true})).await.0, 200);
    assert!(s.log_shows("lock").await);
    assert_eq!(s.post("/_matrix/client/v3/logout", Some(&alice.token), json!({})).await.0, 200);
    let (st, b) = s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "{b}");
}

#[tokio::test]
async fn suspended_accounts_may_read_leave_and_redact_their_own_events_only() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&bob, json!({"preset": "public_chat"})).await;
    let other_room = s.create_room(&bob, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&alice, &room).await.0, 200);
    let (_, own) = s.send_text(&alice, &room, "mine").await;
    let (_, bobs) = s.send_text(&bob, &room, "bob's").await;

    // The endpoint's refusals.
    let suspend = |user: &str| format!("/_synapse/admin/v1/suspend/{user}");
    let (st, b) = s.put(&suspend("@alice:test"), Some(&bob.token), json!({"suspend": true})).await;
    assert!(forbidden(st, &b), "{st} {b}");
    let (st, b) = s.put(&suspend("@alice:elsewhere"), Some(&root.token), json!({"suspend": true})).await;
    assert_eq!((st, b["error"].as_str()), (400, Some("Can only suspend local users")), "{b}");
    let (st, b) = s.put(&suspend("@nobody:test"), Some(&root.token), json!({"suspend": true})).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");
    let (st, b) = s.put(&suspend("@alice:test"), Some(&root.token), json!({"suspend": "yes"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{b}");

    let (st, b) = s.put(&suspend("@alice:test"), Some(&root.token), json!({"suspend": true})).await;
    assert_eq!((st, b), (200, json!({"user_@alice:test_suspended": true})));
    let (_, details) = s.get("/_synapse/admin/v2/users/@alice:test", Some(&root.token)).await;
    assert_eq!(details["suspended"], json!(true), "{details}");

    let refused = |(st, b): (u16, Value), message: &str| {
        assert_eq!(
            (st, b["errcode"].as_str(), b["error"].as_str()),
            (403, Some("M_USER_SUSPENDED"), Some(message)),
            "{b}"
        );
    };
    let sending = "Sending messages while account is suspended is not allowed.";
    refused(s.send_text(&alice, &room, "no").await, sending);
    let topic = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic");
    refused(s.put(&topic, Some(&alice.token), json!({"topic": "no"})).await, sending);
    refused(s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({})).await, sending);
    refused(s.invite(&alice, &room, "@root:test").await, "Sending invites while account is suspended is not allowed.");
    refused(s.join(&alice, &other_room).await, "Joining rooms while account is suspended is not allowed.");
    let profile = "/_matrix/client/v3/profile/@alice:test/displayname";
    refused(
        s.put(profile, Some(&alice.token), json!({"displayname": "A"})).await,
        "Updating profile while account is suspended is not allowed.",
    );
    let redact = |event: &Value, txn: &str| {
        format!("/_matrix/client/v3/rooms/{room}/redact/{}/{txn}", path_segment(event["event_id"].as_str().unwrap()))
    };
    refused(
        s.put(&redact(&bobs, "t1"), Some(&alice.token), json!({})).await,
        "You can only redact your own events while account is suspended.",
    );
    // What it may do: read, redact its own, leave.
    let (st, _) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&alice.token)).await;
    assert_eq!(st, 200);
    assert_eq!(s.put(&redact(&own, "t2"), Some(&alice.token), json!({})).await.0, 200);
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&alice.token), json!({})).await.0, 200);
    // Nothing it was refused happened.
    let (_, state) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state"), Some(&bob.token)).await;
    assert!(!state.as_array().unwrap().iter().any(|e| e["type"] == "m.room.topic"), "{state}");
    let (_, members) = s.get(&format!("/_matrix/client/v3/rooms/{other_room}/joined_members"), Some(&bob.token)).await;
    assert!(members["joined"].get("@alice:test").is_none(), "{members}");

    // Lifted, everything works again.
    let (st, b) = s.put(&suspend("@alice:test"), Some(&root.token), json!({"suspend": false})).await;
    assert_eq!((st, b), (200, json!({"user_@alice:test_suspended": false})));
    assert_eq!(s.join(&alice, &other_room).await.0, 200);
    assert_eq!(s.send_text(&alice, &other_room, "back").await.0, 200);
}

/// Polls a task's status endpoint until it leaves `scheduled` and `active`.
async fn settled(s: &Server, token: &str, path: &str) -> Value {
    for _ in 0..400 {
        let (st, b) = s.get(path, Some(token)).await;
        assert_eq!(st, 200, "{b}");
        if !matches!(b["status"].as_str(), Some("scheduled" | "active")) {
            return b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{path} never settled");
}

#[tokio::test]
async fn admins_redact_all_of_a_users_events_and_list_the_tasks() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let spammer = s.register("spammer").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&bob, json!({"preset": "public_chat"})).await;
    let quiet = s.create_room(&bob, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&spammer, &room).await.0, 200);
    assert_eq!(s.join(&spammer, &quiet).await.0, 200);
    let mut spam = Vec::new();
    for i in 0..3 {
        spam.push(s.send_text(&spammer, &room, &format!("spam {i}")).await.1["event_id"].as_str().unwrap().to_owned());
    }
    let kept_elsewhere =
        s.send_text(&spammer, &quiet, "in the other room").await.1["event_id"].as_str().unwrap().to_owned();
    let (_, bobs) = s.send_text(&bob, &room, "bob's").await;
    let bobs = bobs["event_id"].as_str().unwrap().to_owned();

    // Refused: not an admin, no rooms list, a bad limit.
    let path = "/_synapse/admin/v1/user/@spammer:test/redact";
    let (st, b) = s.post(path, Some(&bob.token), json!({"rooms": []})).await;
    assert!(forbidden(st, &b), "{st} {b}");
    let (st, b) = s.post(path, Some(&root.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{b}");
    let (st, b) = s.post(path, Some(&root.token), json!({"rooms": [], "limit": 0})).await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = s.get("/_synapse/admin/v1/user/redact_status/nope", Some(&root.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");

    // In one room only, at most 2 events: the newest two.
    let (st, b) = s.post(path, Some(&root.token), json!({"rooms": [room], "limit": 2, "reason": "spam"})).await;
    assert_eq!(st, 200, "{b}");
    let id = b["redact_id"].as_str().unwrap().to_owned();
    let status = settled(&s, &root.token, &format!("/_synapse/admin/v1/user/redact_status/{id}")).await;
    assert_eq!(status, json!({"status": "complete", "failed_redactions": {}}));
    let redacted = |event: &str| {
        let url = format!("/_matrix/client/v3/rooms/{room}/event/{}", path_segment(event));
        let token = bob.token.clone();
        let s = &s;
        async move {
            let (_, b) = s.get(&url, Some(&token)).await;
            b["content"].as_object().is_some_and(|c| c.is_empty())
        }
    };
    assert!(redacted(&spam[2]).await && redacted(&spam[1]).await);
    assert!(!redacted(&spam[0]).await, "beyond the limit");
    assert!(!redacted(&bobs).await, "someone else's");
    let other = format!("/_matrix/client/v3/rooms/{quiet}/event/{}", path_segment(&kept_elsewhere));
    assert_eq!(s.get(&other, Some(&bob.token)).await.1["content"]["body"], "in the other room");

    // Every room (the list empty): the rest of their messages, their joins too.
    let (_, b) = s.post(path, Some(&root.token), json!({"rooms": []})).await;
    let id2 = b["redact_id"].as_str().unwrap().to_owned();
    settled(&s, &root.token, &format!("/_synapse/admin/v1/user/redact_status/{id2}")).await;
    assert!(redacted(&spam[0]).await);
    assert!(s.get(&other, Some(&bob.token)).await.1["content"].as_object().unwrap().is_empty());
    assert!(!redacted(&bobs).await);

    // The scheduled tasks list both, and filters.
    let (st, b) = s.get("/_synapse/admin/v1/scheduled_tasks", Some(&root.token)).await;
    assert_eq!(st, 200, "{b}");
    let tasks = b["scheduled_tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "{b}");
    assert_eq!(
        (tasks[0]["action"].as_str(), tasks[0]["resource_id"].as_str()),
        (Some("redact_all_events"), Some("@spammer:test"))
    );
    assert_eq!(tasks[0]["status"], "complete");
    let (_, b) =
        s.get("/_synapse/admin/v1/scheduled_tasks?action_name=shutdown_and_purge_room", Some(&root.token)).await;
    assert_eq!(b["scheduled_tasks"], json!([]));
    let (_, b) = s.get("/_synapse/admin/v1/scheduled_tasks?status=active&status=scheduled", Some(&root.token)).await;
    assert_eq!(b["scheduled_tasks"], json!([]));
    let (st, b) = s.get("/_synapse/admin/v1/scheduled_tasks?status=bogus", Some(&root.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{b}");
    let (st, b) = s.get("/_synapse/admin/v1/scheduled_tasks", Some(&bob.token)).await;
    assert!(forbidden(st, &b), "{st} {b}");
}

#[tokio::test]
async fn background_updates_answer_as_synapse_with_none_to_run() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let bob = s.register("bob").await;
    let base = "/_synapse/admin/v1/background_updates";
    let (st, b) = s.get(&format!("{base}/status"), Some(&root.token)).await;
    assert_eq!((st, b), (200, json!({"enabled": true, "current_updates": {}})));
    let (st, b) = s.post(&format!("{base}/enabled"), Some(&root.token), json!({"enabled": false})).await;
    assert_eq!((st, b), (200, json!({"enabled": false})));
    assert_eq!(s.get(&format!("{base}/enabled"), Some(&root.token)).await.1, json!({"enabled": false}));
    let (st, b) = s.post(&format!("{base}/enabled"), Some(&root.token), json!({"enabled": "no"})).await;
    assert_eq!((st, b["error"].as_str()), (400, Some("'enabled' parameter must be a boolean")), "{b}");
    let (st, b) =
        s.post(&format!("{base}/start_job"), Some(&root.token), json!({"job_name": "regenerate_directory"})).await;
    assert_eq!((st, b), (200, json!({})));
    let (st, b) = s.post(&format!("{base}/start_job"), Some(&root.token), json!({"job_name": "nonsense"})).await;
    assert_eq!((st, b["error"].as_str()), (400, Some("Invalid job_name")), "{b}");
    let (st, b) = s.post(&format!("{base}/start_job"), Some(&root.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{b}");
    let (st, b) = s.get(&format!("{base}/status"), Some(&bob.token)).await;
    assert!(forbidden(st, &b), "{st} {b}");
}

#[tokio::test]
async fn admins_read_any_rooms_history_and_make_themselves_room_admins() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s
        .create_room(
            &bob,
            json!({"preset": "private_chat", "initial_state": [
                {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}
            ]}),
        )
        .await;
    let (_, sent) = s.send_text(&bob, &room, "private words").await;
    let sent_id = sent["event_id"].as_str().unwrap().to_owned();

    // Messages: the admin reads what only members may; others are refused.
    let messages = format!("/_synapse/admin/v1/rooms/{room}/messages?dir=b&limit=50");
    let (st, page) = s.get(&messages, Some(&root.token)).await;
    assert_eq!(st, 200, "{page}");
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["private words"], "{page}");
    assert!(page["end"].is_string());
    let (st, e) = s.get(&messages, Some(&carol.token)).await;
    assert!(forbidden(st, &e), "{st} {e}");
    let (st, _) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&root.token)).await;
    assert_eq!(st, 403, "the client API still applies to the admin as a user");
    let (st, e) = s.get("/_synapse/admin/v1/rooms/!unknown:test/messages", Some(&root.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{e}");

    // timestamp_to_event likewise.
    let ts = s
        .get(&format!("/_synapse/admin/v1/rooms/{room}/timestamp_to_event?ts=9999999999999&dir=b"), Some(&root.token))
        .await;
    assert_eq!((ts.0, ts.1["event_id"].as_str()), (200, Some(sent_id.as_str())), "{}", ts.1);
    let (st, e) =
        s.get(&format!("/_synapse/admin/v1/rooms/{room}/timestamp_to_event?ts=0&dir=b"), Some(&root.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{e}");

    // make_room_admin: refused for non-admins, unknown rooms, rooms without a local admin.
    let make = format!("/_synapse/admin/v1/rooms/{room}/make_room_admin");
    let (st, e) = s.post(&make, Some(&carol.token), json!({})).await;
    assert!(forbidden(st, &e), "{st} {e}");
    let (st, e) = s.post("/_synapse/admin/v1/rooms/!unknown:test/make_room_admin", Some(&root.token), json!({})).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("Server not in room")), "{e}");
    let abandoned = s.create_room(&carol, json!({"preset": "private_chat"})).await;
    assert_eq!(
        s.post(&format!("/_matrix/client/v3/rooms/{abandoned}/leave"), Some(&carol.token), json!({})).await.0,
        200
    );
    let (st, e) =
        s.post(&format!("/_synapse/admin/v1/rooms/{abandoned}/make_room_admin"), Some(&root.token), json!({})).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("No local admin user in room")), "{e}");

    // The admin is given bob's power and invited (the room is private); they can then act.
    let (st, b) = s.post(&make, Some(&root.token), json!({})).await;
    assert_eq!((st, b), (200, json!({})));
    assert!(s.log_shows("make room admin").await);
    assert_eq!(s.join(&root, &room).await.0, 200);
    let (_, pl) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"), Some(&root.token)).await;
    assert!(pl["users"]["@root:test"].as_i64().unwrap() >= 100, "{pl}");
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            Some(&root.token),
            json!({"name": "moderated"}),
        )
        .await;
    assert_eq!(st, 200);
    // Another user, named: given power too.
    let (st, _) = s.post(&make, Some(&root.token), json!({"user_id": "@carol:test"})).await;
    assert_eq!(st, 200);
    let (_, pl) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"), Some(&root.token)).await;
    assert!(pl["users"]["@carol:test"].as_i64().unwrap() >= 100, "{pl}");
    assert_eq!(s.join(&carol, &room).await.0, 200, "carol was invited");
}

#[tokio::test]
async fn admins_purge_a_rooms_old_history() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&bob, json!({"preset": "private_chat"})).await;
    let other = s.create_room(&bob, json!({})).await;
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        ids.push(s.send_text(&bob, &room, text).await.1["event_id"].as_str().unwrap().to_owned());
    }
    let foreign = s.send_text(&bob, &other, "elsewhere").await.1["event_id"].as_str().unwrap().to_owned();
    let purge = format!("/_synapse/admin/v1/purge_history/{room}");

    // Refused: no admin, no cut-off, a bad timestamp, an event of another room or none.
    let (st, e) = s.post(&purge, Some(&bob.token), json!({"purge_up_to_event_id": ids[2]})).await;
    assert!(forbidden(st, &e), "{st} {e}");
    let (st, e) = s.post(&purge, Some(&root.token), json!({})).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{e}");
    let (st, e) = s.post(&purge, Some(&root.token), json!({"purge_up_to_ts": "soon"})).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("purge_up_to_ts must be an int")), "{e}");
    let (st, e) = s.post(&purge, Some(&root.token), json!({"purge_up_to_event_id": foreign})).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("Event is for wrong room.")), "{e}");
    let (st, e) = s.post(&purge, Some(&root.token), json!({"purge_up_to_event_id": "$nope"})).await;
    assert_eq!((st, e["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{e}");
    let (st, e) = s.get("/_synapse/admin/v1/purge_history_status/nope", Some(&root.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{e}");

    let event = |id: &str| format!("/_matrix/client/v3/rooms/{room}/event/{}", path_segment(id));
    let run = |body: Value| {
        let (s, purge, token) = (&s, purge.clone(), root.token.clone());
        async move {
            let (st, b) = s.post(&purge, Some(&token), body).await;
            assert_eq!(st, 200, "{b}");
            let id = b["purge_id"].as_str().unwrap().to_owned();
            settled(s, &token, &format!("/_synapse/admin/v1/purge_history_status/{id}")).await
        }
    };
    // This server's own events stay unless asked for.
    assert_eq!(run(json!({"purge_up_to_event_id": ids[2]})).await, json!({"status": "complete"}));
    assert_eq!(s.get(&event(&ids[0]), Some(&bob.token)).await.0, 200);
    // With them: everything before the event goes, the event and the room's state stay.
    assert_eq!(
        run(json!({"purge_up_to_event_id": ids[2], "delete_local_events": true})).await,
        json!({"status": "complete"})
    );
    assert_eq!(s.get(&event(&ids[0]), Some(&bob.token)).await.0, 404);
    assert_eq!(s.get(&event(&ids[1]), Some(&bob.token)).await.0, 404);
    assert_eq!(s.get(&event(&ids[2]), Some(&bob.token)).await.0, 200);
    let (_, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&bob.token)).await;
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["three"], "{page}");
    let (st, state) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state"), Some(&bob.token)).await;
    assert_eq!(st, 200);
    assert!(state.as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"), "{state}");
    assert!(s.log_shows("purge history").await);
    // The room carries on; the other room was not touched.
    assert_eq!(s.send_text(&bob, &room, "four").await.0, 200);
    let other_event = format!("/_matrix/client/v3/rooms/{other}/event/{}", path_segment(&foreign));
    assert_eq!(s.get(&other_event, Some(&bob.token)).await.0, 200);
    // By time: before the last event sent by then.
    let (st, _) = s.post(&purge, Some(&root.token), json!({"purge_up_to_ts": 1, "delete_local_events": true})).await;
    assert_eq!(st, 404, "nothing was sent before 1970");
}

#[tokio::test]
async fn admins_join_users_to_rooms_and_list_memberships_and_v3_users() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let gone = s.register("gone").await;
    let public = s.create_room(&bob, json!({"preset": "public_chat"})).await;
    let private = s.create_room(&root, json!({"preset": "private_chat"})).await;

    // Joining users: a public room directly, a private one by the admin's invite.
    let (st, b) =
        s.post(&format!("{ADMIN}/v1/join/{public}"), Some(&root.token), json!({"user_id": alice.user_id})).await;
    assert_eq!((st, b), (200, json!({"room_id": public})));
    let (st, b) =
        s.post(&format!("{ADMIN}/v1/join/{private}"), Some(&root.token), json!({"user_id": alice.user_id})).await;
    assert_eq!((st, b["room_id"].as_str()), (200, Some(private.as_str())), "{b}");
    let (_, joined) = s.get(&format!("{V3}/joined_rooms"), Some(&alice.token)).await;
    assert_eq!(joined["joined_rooms"].as_array().unwrap().len(), 2, "{joined}");
    // Refused: non-admins, remote and unknown users, no user.
    let (st, e) =
        s.post(&format!("{ADMIN}/v1/join/{public}"), Some(&bob.token), json!({"user_id": alice.user_id})).await;
    assert!(forbidden(st, &e), "{st} {e}");
    let (st, e) =
        s.post(&format!("{ADMIN}/v1/join/{public}"), Some(&root.token), json!({"user_id": "@x:elsewhere"})).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("This endpoint can only be used with local users")), "{e}");
    let (st, e) =
        s.post(&format!("{ADMIN}/v1/join/{public}"), Some(&root.token), json!({"user_id": "@nobody:test"})).await;
    assert_eq!((st, e["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{e}");
    let (st, e) = s.post(&format!("{ADMIN}/v1/join/{public}"), Some(&root.token), json!({})).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{e}");

    // Memberships, leaves included.
    assert_eq!(s.post(&format!("{V3}/rooms/{public}/leave"), Some(&alice.token), json!({})).await.0, 200);
    let (st, b) = s.get(&format!("{ADMIN}/v1/users/{}/memberships", alice.user_id), Some(&root.token)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["memberships"], json!({public.clone(): "leave", private.clone(): "join"}));

    // The legacy user search: IDs containing the term, no password hashes.
    let (st, found) = s.get(&format!("{ADMIN}/v1/search_users/@root:test?term=ALI"), Some(&root.token)).await;
    assert_eq!(st, 200, "{found}");
    assert_eq!(
        found,
        json!([{"name": "@alice:test", "password_hash": null, "is_guest": false, "admin": false, "user_type": null}])
    );
    let (st, e) = s.get(&format!("{ADMIN}/v1/search_users/@root:test"), Some(&root.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{e}");
    let (st, e) = s.get(&format!("{ADMIN}/v1/search_users/@x:elsewhere?term=a"), Some(&root.token)).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("Can only users a local user")), "{e}");
    let (st, e) = s.get(&format!("{ADMIN}/v1/search_users/@bob:test?term=a"), Some(&bob.token)).await;
    assert!(forbidden(st, &e), "{st} {e}");

    // Third-party identifiers: Myelin's accounts have none.
    let (st, e) = s.get(&format!("{ADMIN}/v1/threepid/email/users/alice%40example.org"), Some(&root.token)).await;
    assert_eq!((st, e["error"].as_str()), (404, Some("User not found")), "{e}");

    // v3 users: `deactivated` selects rather than includes.
    assert_eq!(s.post(&format!("{ADMIN}/v1/deactivate/{}", gone.user_id), Some(&root.token), json!({})).await.0, 200);
    let names = |b: &Value| -> Vec<String> {
        let mut n: Vec<String> =
            b["users"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_owned()).collect();
        n.sort();
        n
    };
    let (_, all) = s.get(&format!("{ADMIN}/v3/users"), Some(&root.token)).await;
    assert_eq!(names(&all), ["@alice:test", "@bob:test", "@gone:test", "@root:test"]);
    let (_, only) = s.get(&format!("{ADMIN}/v3/users?deactivated=true"), Some(&root.token)).await;
    assert_eq!(names(&only), ["@gone:test"]);
    let (_, active) = s.get(&format!("{ADMIN}/v3/users?deactivated=false"), Some(&root.token)).await;
    assert_eq!(names(&active), ["@alice:test", "@bob:test", "@root:test"]);
    let (_, v2) = s.get(&format!("{ADMIN}/v2/users"), Some(&root.token)).await;
    assert_eq!(names(&v2), ["@alice:test", "@bob:test", "@root:test"], "v2 leaves them out by default");
    let (_, v2_all) = s.get(&format!("{ADMIN}/v2/users?deactivated=true"), Some(&root.token)).await;
    assert_eq!(names(&v2_all).len(), 4, "and includes them when asked");
}

#[tokio::test]
async fn experimental_features_master_key_replacement_account_validity_and_largest_rooms() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let features = format!("{ADMIN}/v1/experimental_features/@alice:test");
    let (st, b) = s.get(&features, Some(&root.token)).await;
    assert_eq!((st, b), (200, json!({"features": {"msc3881": false, "msc3575": false, "msc4222": false}})));
    let (st, _) = s.put(&features, Some(&root.token), json!({"features": {"msc3881": true}})).await;
    assert_eq!(st, 200);
    let (_, b) = s.get(&features, Some(&root.token)).await;
    assert_eq!(b["features"], json!({"msc3881": true, "msc3575": false, "msc4222": false}));
    for (body, error) in [
        (json!({"features": {"msc9999": true}}), "'msc9999' is not recognised as a valid experimental feature."),
        (json!({"features": {}}), "You must provide features to set."),
        (json!({}), "You must provide features to set."),
    ] {
        let (st, b) = s.put(&features, Some(&root.token), body).await;
        assert_eq!((st, b["error"].as_str()), (400, Some(error)));
    }
    let (_, b) = s.get(&features, Some(&root.token)).await;
    assert_eq!(b["features"]["msc3881"], true, "a refused change changed nothing");
    let (st, _) = s.get(&format!("{ADMIN}/v1/experimental_features/@bob:elsewhere"), Some(&root.token)).await;
    assert_eq!(st, 400);
    assert_eq!(s.get(&features, Some(&alice.token)).await.0, 403);
    assert_eq!(s.put(&features, Some(&alice.token), json!({"features": {"msc3881": false}})).await.0, 403);

    // Master key replacement without UIA: only with a master key, only for a while, only by admins.
    let allow = format!("{ADMIN}/v1/users/@alice:test/_allow_cross_signing_replacement_without_uia");
    let (st, b) = s.post(&allow, Some(&root.token), json!({})).await;
    assert_eq!((st, b["error"].as_str()), (404, Some("User has no master cross-signing key")));
    let key = |public: &str| json!({"master_key": {"user_id": alice.user_id, "usage": ["master"], "keys": {format!("ed25519:{public}"): public}}});
    let upload = format!("{V3}/keys/device_signing/upload");
    assert_eq!(s.post(&upload, Some(&alice.token), key("FIRST")).await.0, 200);
    assert_eq!(s.post(&upload, Some(&alice.token), key("SECOND")).await.0, 401, "replacing needs UIA");
    assert_eq!(s.post(&allow, Some(&alice.token), json!({})).await.0, 403);
    let (st, b) = s.post(&allow, Some(&root.token), json!({})).await;
    assert_eq!(st, 200, "{b}");
    let until = b["updatable_without_uia_before_ms"].as_i64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((until - now - 600_000).abs() < 60_000, "ten minutes: {until} vs {now}");
    let (st, b) = s.post(&upload, Some(&alice.token), key("SECOND")).await;
    assert_eq!(st, 200, "no UIA now: {b}");

    // Account validity: Myelin has none of its own.
    let validity = format!("{ADMIN}/v1/account_validity/validity");
    let (st, b) = s.post(&validity, Some(&root.token), json!({})).await;
    assert_eq!((st, b["error"].as_str()), (400, Some("Missing property 'user_id' in the request body")));
    let (st, b) = s.post(&validity, Some(&root.token), json!({"user_id": alice.user_id})).await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(s.post(&validity, Some(&alice.token), json!({"user_id": alice.user_id})).await.0, 403);

    // The largest rooms: PostgreSQL only, as on Synapse.
    let room = s.create_room(&alice, json!({})).await;
    s.send_text(&alice, &room, &"x".repeat(2000)).await;
    let (st, b) = s.get(&format!("{ADMIN}/v1/statistics/database/rooms"), Some(&root.token)).await;
    if std::env::var("MYELIN_TEST_BACKEND").as_deref() == Ok("postgres") {
        assert_eq!((st, &b["rooms"][0]["room_id"]), (200, &json!(room)), "{b}");
        assert!(b["rooms"][0]["estimated_size"].as_i64().unwrap() > 2000);
    } else {
        assert_eq!((st, b["error"].as_str()), (400, Some("Endpoint requires using PostgreSQL")));
    }
    assert_eq!(s.get(&format!("{ADMIN}/v1/statistics/database/rooms"), Some(&alice.token)).await.0, 403);

    // Purging the remote media cache: its parameters checked; nothing cached here yet.
    let purge = format!("{ADMIN}/v1/purge_media_cache");
    let (st, b) = s.post(&purge, Some(&root.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")));
    let (st, b) = s.post(&format!("{purge}?before_ts=1000"), Some(&root.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) = s.post(&format!("{purge}?before_ts={}", now + 1000), Some(&root.token), json!({})).await;
    assert_eq!((st, b), (200, json!({"deleted": 0})));
    assert_eq!(s.post(&format!("{purge}?before_ts={now}"), Some(&alice.token), json!({})).await.0, 403);
}

#[tokio::test]
async fn admins_read_the_context_of_any_event() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, b) = s.send_text(&alice, &room, &format!("message {i}")).await;
        ids.push(b["event_id"].as_str().unwrap().to_owned());
    }
    let path =
        |event: &str| format!("{ADMIN}/v1/rooms/{}/context/{}?limit=4", path_segment(&room), path_segment(event));
    let (st, b) = s.get(&path(&ids[2]), Some(&root.token)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["event"]["content"]["body"], "message 2");
    let bodies = |key: &str| -> Vec<String> {
        b[key].as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned()).collect()
    };
    assert_eq!(bodies("events_before"), vec!["message 1", "message 0"]);
    assert_eq!(bodies("events_after"), vec!["message 3", "message 4"]);
    assert!(b["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
    // Bob, not in the room and no admin, may not; the client API refuses him too.
    assert_eq!(s.get(&path(&ids[2]), Some(&bob.token)).await.0, 403);
    let client = format!("{V3}/rooms/{}/context/{}", path_segment(&room), path_segment(&ids[2]));
    assert_eq!(s.get(&client, Some(&bob.token)).await.0, 403);
    // Unknown events, and events of another room, are 404.
    let (st, _) = s.get(&path("$nosuchevent"), Some(&root.token)).await;
    assert_eq!(st, 404);
    let other = s.create_room(&bob, json!({})).await;
    let (_, sent) = s.send_text(&bob, &other, "elsewhere").await;
    assert_eq!(s.get(&path(sent["event_id"].as_str().unwrap()), Some(&root.token)).await.0, 404);
}
