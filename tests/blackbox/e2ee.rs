//! End-to-end encryption plumbing: keys, cross-signing, to-device messages, key backup, and
//! what `/sync` reports about them. Responses are checked against the spec's schemas.

use serde_json::{Value, json};

use crate::harness::*;

const V3: &str = "/_matrix/client/v3";

fn device_keys(user: &User, curve: &str) -> Value {
    json!({
        "user_id": user.user_id,
        "device_id": user.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", user.device_id): curve,
            format!("ed25519:{}", user.device_id): format!("ed-{curve}"),
        },
        "signatures": {user.user_id.clone(): {format!("ed25519:{}", user.device_id): "sig"}},
    })
}

fn otk(n: usize) -> Value {
    let mut keys = serde_json::Map::new();
    for i in 0..n {
        keys.insert(
            format!("signed_curve25519:AAAA{i}"),
            json!({"key": format!("otk{i}"), "signatures": {"@x:test": {"ed25519:D": "s"}}}),
        );
    }
    Value::Object(keys)
}

async fn upload(s: &Server, user: &User, body: Value) -> (u16, Value) {
    s.post(&format!("{V3}/keys/upload"), Some(&user.token), body).await
}

/// Two users in one room.
async fn pair(s: &Server) -> (User, User, String) {
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    (alice, bob, room)
}

#[tokio::test]
async fn device_and_one_time_keys_are_uploaded_queried_and_claimed() {
    let s = Server::start().await;
    let (alice, bob, _) = pair(&s).await;
    let (st, b) = upload(
        &s,
        &alice,
        json!({
            "device_keys": device_keys(&alice, "c1"),
            "one_time_keys": otk(2),
            "fallback_keys": {"signed_curve25519:FB": {"key": "fallback", "fallback": true, "signatures": {}}},
        }),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_schema("/_matrix/client/v3/keys/upload", "post", st, &b);
    assert_eq!(b["one_time_key_counts"]["signed_curve25519"], 2);
    // Bob's own count: zero but present, as Synapse always reports signed_curve25519.
    let (_, b) = upload(&s, &bob, json!({})).await;
    assert_eq!(b["one_time_key_counts"], json!({"signed_curve25519": 0}));

    let sync = s.sync(&alice, None, 0).await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 2);
    assert_eq!(sync["device_unused_fallback_key_types"], json!(["signed_curve25519"]));

    let (st, q) = s
        .post(&format!("{V3}/keys/query"), Some(&bob.token), json!({"device_keys": {alice.user_id.clone(): []}}))
        .await;
    assert_eq!(st, 200, "{q}");
    assert_schema("/_matrix/client/v3/keys/query", "post", st, &q);
    let keys = &q["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(keys["keys"][format!("curve25519:{}", alice.device_id)], "c1");
    // `unsigned` is always there (as Synapse; sytest checks), with the display name when set.
    assert!(keys["unsigned"].is_object(), "{keys}");
    assert!(keys["unsigned"].get("device_display_name").is_none_or(|n| n.is_string()), "{keys}");
    // Naming an unknown device gives nothing for it; an unknown user, an empty map.
    let (_, q) = s
        .post(
            &format!("{V3}/keys/query"),
            Some(&bob.token),
            json!({"device_keys": {alice.user_id.clone(): ["NOPE"], "@nobody:test": []}}),
        )
        .await;
    assert_eq!(q["device_keys"][&alice.user_id], json!({}));
    assert_eq!(q["device_keys"]["@nobody:test"], json!({}));

    // Two one-time keys, then the fallback key (again and again), then counts are zero.
    let claim = json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}});
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (st, c) = s.post(&format!("{V3}/keys/claim"), Some(&bob.token), claim.clone()).await;
        assert_eq!(st, 200, "{c}");
        assert_schema("/_matrix/client/v3/keys/claim", "post", st, &c);
        let got = c["one_time_keys"][&alice.user_id][&alice.device_id].as_object().unwrap().clone();
        seen.push(got.keys().next().unwrap().clone());
    }
    assert_eq!(
        seen,
        ["signed_curve25519:AAAA0", "signed_curve25519:AAAA1", "signed_curve25519:FB", "signed_curve25519:FB"]
    );
    let sync = s.sync(&alice, None, 0).await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));
    // An unknown device claims nothing.
    let (_, c) = s
        .post(
            &format!("{V3}/keys/claim"),
            Some(&bob.token),
            json!({"one_time_keys": {alice.user_id.clone(): {"NOPE": "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(c["one_time_keys"], json!({}));
}

#[tokio::test]
async fn malformed_key_uploads_get_matrix_errors() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let cases = [
        (json!({"device_keys": device_keys(&bob, "x")}), 400, "M_INVALID_PARAM"),
        (json!({"device_keys": "nope"}), 400, "M_BAD_JSON"),
        (json!({"device_keys": {"user_id": alice.user_id, "device_id": alice.device_id}}), 400, "M_BAD_JSON"),
        (json!({"one_time_keys": {"nocolon": "k"}}), 400, "M_INVALID_PARAM"),
        (json!({"one_time_keys": {"signed_curve25519:A": 5}}), 400, "M_BAD_JSON"),
        (json!({"one_time_keys": [1, 2]}), 400, "M_BAD_JSON"),
    ];
    for (body, status, code) in cases {
        let (st, b) = upload(&s, &alice, body.clone()).await;
        assert_eq!((st, b["errcode"].as_str()), (status, Some(code)), "{body}: {b}");
    }
    // Nothing of the bad uploads was kept.
    let (_, b) = upload(&s, &alice, json!({})).await;
    assert_eq!(b["one_time_key_counts"], json!({"signed_curve25519": 0}));
    let (st, b) =
        s.post(&format!("{V3}/keys/query"), Some(&alice.token), json!({"device_keys": {"not-a-user": []}})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) = s
        .post(&format!("{V3}/keys/query"), Some(&alice.token), json!({"device_keys": {alice.user_id.clone(): "x"}}))
        .await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let (st, b) = s.post(&format!("{V3}/keys/claim"), Some(&alice.token), json!({"one_time_keys": 3})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let (st, _) = s.post(&format!("{V3}/keys/upload"), None, json!({})).await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn device_list_changes_reach_room_members() {
    let s = Server::start().await;
    let (alice, bob, _) = pair(&s).await;
    let carol = s.register("carol").await; // shares no room with alice
    let bob_since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let carol_since = s.sync(&carol, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    // Bob's long-poll wakes when alice uploads device keys.
    let poll = {
        let (base, token, since) = (s.url(""), bob.token.clone(), bob_since.clone());
        tokio::spawn(async move {
            let url = format!("{base}{V3}/sync?since={since}&timeout=30000");
            let r = reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap();
            r.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (st, b) = upload(&s, &alice, json!({"device_keys": device_keys(&alice, "c1")})).await;
    assert_eq!(st, 200, "{b}\n{}", s.log_text());
    // Generous: the whole suite runs beside browsers and Node clients on two cores.
    let woke = tokio::time::timeout(std::time::Duration::from_secs(20), poll).await.expect("sync woke").unwrap();
    assert_eq!(woke["device_lists"]["changed"], json!([alice.user_id]));
    assert_schema("/_matrix/client/v3/sync", "get", 200, &woke);
    let carol_sync = s.sync(&carol, Some(&carol_since), 0).await;
    assert_eq!(carol_sync["device_lists"]["changed"], json!([]));
    // keys/changes over the same range.
    let to = woke["next_batch"].as_str().unwrap();
    let (st, c) = s.get(&format!("{V3}/keys/changes?from={bob_since}&to={to}"), Some(&bob.token)).await;
    assert_eq!(st, 200);
    assert_schema("/_matrix/client/v3/keys/changes", "get", st, &c);
    assert_eq!(c["changed"], json!([alice.user_id]));
    let (st, c) = s.get(&format!("{V3}/keys/changes?from=bogus&to={to}"), Some(&bob.token)).await;
    assert_eq!((st, c["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    // Re-uploading the same keys is not a change; deleting the device is.
    let since = s.sync(&bob, Some(to), 0).await["next_batch"].as_str().unwrap().to_owned();
    upload(&s, &alice, json!({"device_keys": device_keys(&alice, "c1")})).await;
    assert_eq!(s.sync(&bob, Some(&since), 0).await["device_lists"]["changed"], json!([]));

    // A new device (a login), a renamed one and a deleted one are changes too, for room
    // members and the user's own devices, not for Carol.
    let changed_since = |since: String| {
        let s = &s;
        let bob = &bob;
        async move {
            let sync = s.sync(bob, Some(&since), 0).await;
            (sync["device_lists"]["changed"].clone(), sync["next_batch"].as_str().unwrap().to_owned())
        }
    };
    let (_, since) = changed_since(since).await;
    let carol_since = s.sync(&carol, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let alice2 = s.login("alice").await;
    let (changed, since) = changed_since(since).await;
    assert_eq!(changed, json!([alice.user_id]), "a login adds a device");
    let (st, _) = s
        .put(&format!("{V3}/devices/{}", alice2.device_id), Some(&alice2.token), json!({"display_name": "tablet"}))
        .await;
    assert_eq!(st, 200);
    let (changed, since) = changed_since(since).await;
    assert_eq!(changed, json!([alice.user_id]), "a rename");
    let auth = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password"}});
    let (st, b) = s.call("DELETE", &format!("{V3}/devices/{}", alice2.device_id), Some(&alice.token), Some(auth)).await;
    assert_eq!(st, 200, "{b}");
    let (changed, _) = changed_since(since).await;
    assert_eq!(changed, json!([alice.user_id]), "a deletion");
    assert_eq!(s.sync(&carol, Some(&carol_since), 0).await["device_lists"]["changed"], json!([]));
}

#[tokio::test]
async fn to_device_messages_are_delivered_once_and_deleted_when_acknowledged() {
    let s = Server::start().await;
    let (alice, bob, _) = pair(&s).await;
    let bob2 = s.login("bob").await;
    let first = s.sync(&bob, None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let send = |txn: &str, body: Value| {
        let path = format!("{V3}/sendToDevice/m.room_key_request/{txn}");
        let (s, token) = (&s, alice.token.clone());
        async move { s.put(&path, Some(&token), body).await }
    };
    let (st, b) =
        send("t1", json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"n": 1}, "UNKNOWN": {"n": 0}}}}))
            .await;
    assert_eq!((st, &b), (200, &json!({})));
    assert_schema("/_matrix/client/v3/sendToDevice/{eventType}/{txnId}", "put", st, &b);
    // The same transaction again is not a second message.
    assert_eq!(send("t1", json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"n": 1}}}})).await.0, 200);
    send("t2", json!({"messages": {bob.user_id.clone(): {"*": {"n": 2}}}})).await;

    let got = s.sync(&bob, Some(&since), 0).await;
    let events = got["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0], json!({"type": "m.room_key_request", "sender": alice.user_id, "content": {"n": 1}}));
    assert_eq!(events[1]["content"], json!({"n": 2}));
    // Not acknowledged yet: the same since gives them again.
    assert_eq!(s.sync(&bob, Some(&since), 0).await["to_device"]["events"].as_array().unwrap().len(), 2);
    // Acknowledged by syncing from the token that delivered them: gone.
    let next = got["next_batch"].as_str().unwrap();
    assert_eq!(s.sync(&bob, Some(next), 0).await["to_device"]["events"], json!([]));
    // `*` reached bob's other device too, and only the `*` message.
    let other = s.sync(&bob2, None, 0).await;
    assert_eq!(other["to_device"]["events"].as_array().unwrap().len(), 1);

    // Bad bodies and oversized messages.
    let (st, b) = send("t3", json!({"messages": 5})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let (st, b) = send("t4", json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): "x"}}})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let (st, b) = send("t5", json!({"messages": {"bob": {"*": {}}}})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let big = "x".repeat(70_000);
    let (st, b) = send("t6", json!({"messages": {bob.user_id.clone(): {"*": {"big": big}}}})).await;
    assert_eq!((st, b["errcode"].as_str()), (413, Some("M_TOO_LARGE")));
    assert_eq!(s.sync(&bob, Some(next), 0).await["to_device"]["events"], json!([]), "nothing half-sent");
}

fn cross_key(user: &User, usage: &str, public: &str) -> Value {
    json!({"user_id": user.user_id, "usage": [usage], "keys": {format!("ed25519:{public}"): public}, "signatures": {}})
}

#[tokio::test]
async fn cross_signing_keys_and_signatures() {
    let s = Server::start().await;
    let (alice, bob, _) = pair(&s).await;
    let path = format!("{V3}/keys/device_signing/upload");
    // The first upload needs no UIA.
    let body = json!({
        "master_key": cross_key(&alice, "master", "MASTER1"),
        "self_signing_key": cross_key(&alice, "self_signing", "SELF1"),
        "user_signing_key": cross_key(&alice, "user_signing", "USER1"),
    });
    let (st, b) = s.post(&path, Some(&alice.token), body.clone()).await;
    assert_eq!((st, &b), (200, &json!({})));
    assert_schema("/_matrix/client/v3/keys/device_signing/upload", "post", st, &b);
    // The same keys again: still no UIA. A new master key: UIA, then the password.
    assert_eq!(s.post(&path, Some(&alice.token), body).await.0, 200);
    let replace = json!({"master_key": cross_key(&alice, "master", "MASTER2")});
    let (st, b) = s.post(&path, Some(&alice.token), replace.clone()).await;
    assert_eq!(st, 401, "{b}");
    assert_eq!(b["flows"][0]["stages"], json!(["m.login.password"]));
    let mut with_auth = replace.clone();
    with_auth["auth"] = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password", "session": b["session"]});
    let (st, b) = s.post(&path, Some(&alice.token), with_auth).await;
    assert_eq!(st, 200, "{b}");
    // Bad keys.
    for bad in [
        json!({"master_key": cross_key(&bob, "master", "X")}),
        json!({"master_key": cross_key(&alice, "self_signing", "X")}),
        json!({"master_key": {"user_id": alice.user_id, "usage": ["master"], "keys": {}}}),
    ] {
        let (st, b) = s.post(&path, Some(&alice.token), bad.clone()).await;
        assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{bad}");
    }
    let (st, b) =
        s.post(&path, Some(&bob.token), json!({"self_signing_key": cross_key(&bob, "self_signing", "S")})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "a master key comes first");

    // Bob sees alice's master and self-signing keys, not her user-signing key; she sees all.
    let query = json!({"device_keys": {alice.user_id.clone(): []}});
    let (_, q) = s.post(&format!("{V3}/keys/query"), Some(&bob.token), query.clone()).await;
    assert_eq!(q["master_keys"][&alice.user_id]["keys"]["ed25519:MASTER2"], "MASTER2");
    assert!(q["self_signing_keys"][&alice.user_id].is_object());
    assert_eq!(q["user_signing_keys"], json!({}));
    let (_, q) = s.post(&format!("{V3}/keys/query"), Some(&alice.token), query.clone()).await;
    assert!(q["user_signing_keys"][&alice.user_id].is_object());

    // Signing her own device: the signature is merged into what others see.
    upload(&s, &alice, json!({"device_keys": device_keys(&alice, "c1")})).await;
    let mut signed = device_keys(&alice, "c1");
    signed["signatures"] = json!({alice.user_id.clone(): {"ed25519:SELF1": "cross-sig"}});
    let sigs = json!({alice.user_id.clone(): {alice.device_id.clone(): signed, "UNKNOWNKEY": {"signatures": {}}}});
    let (st, r) = s.post(&format!("{V3}/keys/signatures/upload"), Some(&alice.token), sigs).await;
    assert_eq!(st, 200, "{r}");
    assert_schema("/_matrix/client/v3/keys/signatures/upload", "post", st, &r);
    assert_eq!(r["failures"][&alice.user_id]["UNKNOWNKEY"]["errcode"], "M_NOT_FOUND");
    let (_, q) = s.post(&format!("{V3}/keys/query"), Some(&bob.token), query).await;
    let device_sigs = &q["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id];
    assert_eq!(device_sigs["ed25519:SELF1"], "cross-sig");
    assert_eq!(device_sigs[format!("ed25519:{}", alice.device_id)], "sig", "the device's own signature stays");

    // A new user-signing key alone is news to Alice only; Bob's sync does not list her.
    let changed = |user: &User, since: String| {
        let s = &s;
        let token = user.token.clone();
        async move {
            let (_, body) = s.get(&format!("{V3}/sync?timeout=0&since={since}"), Some(&token)).await;
            let list: Vec<String> = body["device_lists"]["changed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect();
            (list, body["next_batch"].as_str().unwrap().to_owned())
        }
    };
    let alice_since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let bob_since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let new_user_signing = json!({
        "user_signing_key": cross_key(&alice, "user_signing", "USER2"),
        "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password"},
    });
    let (st, b) = s.post(&path, Some(&alice.token), new_user_signing).await;
    assert_eq!(st, 200, "{b}");
    let (bob_changed, bob_since) = changed(&bob, bob_since).await;
    assert!(!bob_changed.contains(&alice.user_id), "{bob_changed:?}");
    let (alice_changed, alice_since) = changed(&alice, alice_since).await;
    assert!(alice_changed.contains(&alice.user_id), "{alice_changed:?}");

    // Alice signs Bob's master key with it: she sees her signature and hears of the change;
    // Bob, and anyone else, see neither.
    let carol = s.register("carol").await;
    let (st, _) = s.post(&path, Some(&bob.token), json!({"master_key": cross_key(&bob, "master", "BOBMASTER")})).await;
    assert_eq!(st, 200);
    let (_, alice_since) = changed(&alice, alice_since).await;
    let (_, bob_since) = changed(&bob, bob_since).await;
    let mut bob_master = cross_key(&bob, "master", "BOBMASTER");
    bob_master["signatures"] = json!({alice.user_id.clone(): {"ed25519:USER2": "alice-trusts-bob"}});
    let sigs = json!({bob.user_id.clone(): {"BOBMASTER": bob_master}});
    let (st, r) = s.post(&format!("{V3}/keys/signatures/upload"), Some(&alice.token), sigs).await;
    assert_eq!((st, &r["failures"]), (200, &json!({})), "{r}");
    let bob_query = json!({"device_keys": {bob.user_id.clone(): []}});
    let master_sigs = |user: &User| {
        let s = &s;
        let (token, query) = (user.token.clone(), bob_query.clone());
        let bob_id = bob.user_id.clone();
        async move {
            let (_, q) = s.post(&format!("{V3}/keys/query"), Some(&token), query).await;
            q["master_keys"][&bob_id]["signatures"].clone()
        }
    };
    assert_eq!(master_sigs(&alice).await[&alice.user_id]["ed25519:USER2"], "alice-trusts-bob");
    assert!(master_sigs(&bob).await.get(&alice.user_id).is_none(), "Bob does not see it");
    assert!(master_sigs(&carol).await.get(&alice.user_id).is_none(), "nor does Carol");
    let (alice_changed, _) = changed(&alice, alice_since).await;
    assert!(alice_changed.contains(&bob.user_id), "{alice_changed:?}");
    let (bob_changed, _) = changed(&bob, bob_since).await;
    assert!(!bob_changed.contains(&bob.user_id), "{bob_changed:?}");
    // A signature of something other than Bob's key is refused.
    let mut forged = cross_key(&bob, "master", "BOBMASTER");
    forged["usage"] = json!(["master", "extra"]);
    forged["signatures"] = json!({alice.user_id.clone(): {"ed25519:USER2": "x"}});
    let (_, r) = s
        .post(
            &format!("{V3}/keys/signatures/upload"),
            Some(&alice.token),
            json!({bob.user_id.clone(): {"BOBMASTER": forged}}),
        )
        .await;
    assert_eq!(r["failures"][&bob.user_id]["BOBMASTER"]["errcode"], "M_INVALID_SIGNATURE", "{r}");
}

#[tokio::test]
async fn key_backup_versions_and_keys() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let t = Some(alice.token.as_str());
    let (st, b) = s.get(&format!("{V3}/room_keys/version"), t).await;
    assert_eq!((st, &b), (404, &json!({"errcode": "M_NOT_FOUND", "error": "No backup found"})));
    let version_body =
        json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "pk"}});
    let (st, b) = s.post(&format!("{V3}/room_keys/version"), t, version_body.clone()).await;
    assert_eq!((st, &b), (200, &json!({"version": "1"})));
    assert_schema("/_matrix/client/v3/room_keys/version", "post", st, &b);
    let (st, v) = s.get(&format!("{V3}/room_keys/version"), t).await;
    assert_eq!(st, 200);
    assert_schema("/_matrix/client/v3/room_keys/version", "get", st, &v);
    assert_eq!((v["version"].as_str(), v["count"].as_i64()), (Some("1"), Some(0)));

    let key = |index: i64, verified: bool| json!({"first_message_index": index, "forwarded_count": 0, "is_verified": verified, "session_data": {"ciphertext": format!("c{index}{verified}")}});
    let (st, r) = s
        .put(
            &format!("{V3}/room_keys/keys?version=1"),
            t,
            json!({"rooms": {"!r:test": {"sessions": {"s1": key(5, false), "s2": key(0, false)}}}}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_schema("/_matrix/client/v3/room_keys/keys", "put", st, &r);
    assert_eq!(r["count"], 2);
    let etag1 = r["etag"].as_str().unwrap().to_owned();
    // A worse key does not replace a better one; a better one does.
    s.put(&format!("{V3}/room_keys/keys/!r:test/s1?version=1"), t, key(9, false)).await;
    let (_, got) = s.get(&format!("{V3}/room_keys/keys/!r:test/s1?version=1"), t).await;
    assert_eq!(got["first_message_index"], 5);
    let (st, r) = s.put(&format!("{V3}/room_keys/keys/!r:test/s1?version=1"), t, key(9, true)).await;
    assert_eq!(st, 200);
    assert_ne!(r["etag"].as_str().unwrap(), etag1);
    let (st, got) = s.get(&format!("{V3}/room_keys/keys/!r:test/s1?version=1"), t).await;
    assert_eq!((st, got["is_verified"].as_bool()), (200, Some(true)));
    assert_schema("/_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}", "get", st, &got);
    let (st, all) = s.get(&format!("{V3}/room_keys/keys?version=1"), t).await;
    assert_schema("/_matrix/client/v3/room_keys/keys", "get", st, &all);
    assert_eq!(all["rooms"]["!r:test"]["sessions"].as_object().unwrap().len(), 2);
    let (st, room) = s.get(&format!("{V3}/room_keys/keys/!r:test?version=1"), t).await;
    assert_schema("/_matrix/client/v3/room_keys/keys/{roomId}", "get", st, &room);

    // A newer version makes 1 read-only: writes get M_WRONG_ROOM_KEYS_VERSION.
    let (_, b) = s.post(&format!("{V3}/room_keys/version"), t, version_body.clone()).await;
    assert_eq!(b["version"], "2");
    let (st, b) = s.put(&format!("{V3}/room_keys/keys/!r:test/s3?version=1"), t, key(0, false)).await;
    assert_eq!(st, 403, "{b}");
    assert_eq!((b["errcode"].as_str(), b["current_version"].as_str()), (Some("M_WRONG_ROOM_KEYS_VERSION"), Some("2")));
    assert_schema("/_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}", "put", st, &b);
    let (st, b) = s.get(&format!("{V3}/room_keys/keys?version=9"), t).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (st, b) = s.get(&format!("{V3}/room_keys/keys"), t).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")));
    let (st, b) = s.get(&format!("{V3}/room_keys/keys/!r:test/none?version=1"), t).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (st, b) = s.put(&format!("{V3}/room_keys/keys?version=2"), t, json!({"rooms": {"!r:test": 5}})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    // A version needs `auth_data`, which is opaque: kept as sent whatever its JSON type (as
    // Synapse; older clients send a string), also through the `unstable` prefix.
    let no_auth = json!({"algorithm": "m.megolm_backup.v1"});
    let (st, b) = s.post(&format!("{V3}/room_keys/version"), t, no_auth).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{b}");
    let opaque = json!({"algorithm": "m.megolm_backup.v1", "auth_data": "an opaque string"});
    let (st, b) = s.post("/_matrix/client/unstable/room_keys/version", t, opaque).await;
    assert_eq!(st, 200, "{b}");
    let (_, v) = s.get(&format!("{V3}/room_keys/version/{}", b["version"].as_str().unwrap()), t).await;
    assert_eq!(v["auth_data"], "an opaque string", "{v}");
    let (st, b) =
        s.call("DELETE", &format!("{V3}/room_keys/version/{}", b["version"].as_str().unwrap()), t, None).await;
    assert_eq!(st, 200, "{b}");

    // Update and delete versions; keys go with their version.
    let mut update = version_body.clone();
    update["version"] = json!("3");
    let (st, b) = s.put(&format!("{V3}/room_keys/version/2"), t, update).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) = s.put(&format!("{V3}/room_keys/version/2"), t, version_body).await;
    assert_eq!(st, 200);
    assert_schema("/_matrix/client/v3/room_keys/version/{version}", "put", st, &b);
    let (st, r) = s.call("DELETE", &format!("{V3}/room_keys/keys/!r:test?version=1"), t, None).await;
    assert_eq!((st, r["count"].as_i64()), (200, Some(0)));
    assert_schema("/_matrix/client/v3/room_keys/keys/{roomId}", "delete", st, &r);
    let (st, b) = s.call("DELETE", &format!("{V3}/room_keys/version/1"), t, None).await;
    assert_eq!(st, 200);
    assert_schema("/_matrix/client/v3/room_keys/version/{version}", "delete", st, &b);
    let (st, b) = s.get(&format!("{V3}/room_keys/version/1"), t).await;
    assert_eq!(st, 404);
    assert_schema("/_matrix/client/v3/room_keys/version/{version}", "get", st, &b);
    assert_eq!(s.call("DELETE", &format!("{V3}/room_keys/version/1"), t, None).await.0, 404);
    // Another user's backup is theirs alone.
    let bob = s.register("bob").await;
    assert_eq!(s.get(&format!("{V3}/room_keys/version/2"), Some(&bob.token)).await.0, 404);
}

#[tokio::test]
async fn sharing_a_room_starts_and_ends_device_list_tracking() {
    let s = Server::start().await;
    let (alice, bob, carol) = (s.register("alice").await, s.register("bob").await, s.register("carol").await);
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    // Bob joins Alice's room: his keys are new to her (`changed`), Carol's are not.
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let next = s.sync(&alice, Some(&since), 0).await;
    assert_eq!(next["device_lists"], json!({"changed": [bob.user_id], "left": []}), "{next}");
    let to = next["next_batch"].as_str().unwrap().to_owned();
    let (_, c) = s.get(&format!("{V3}/keys/changes?from={since}&to={to}"), Some(&alice.token)).await;
    assert_eq!(c, json!({"changed": [bob.user_id], "left": []}));
    // Bob leaves the only room they share: he is `left` for Alice, and Alice for him.
    let bob_since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/leave"), Some(&bob.token), json!({})).await.0, 200);
    let next = s.sync(&alice, Some(&to), 0).await;
    assert_eq!(next["device_lists"], json!({"changed": [], "left": [bob.user_id]}), "{next}");
    let bob_next = s.sync(&bob, Some(&bob_since), 0).await;
    assert_eq!(bob_next["device_lists"]["left"], json!([alice.user_id]), "{bob_next}");
    // A leave from a room while another is still shared is not `left`.
    let second = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&carol, &room).await.0, 200);
    assert_eq!(s.join(&carol, &second).await.0, 200);
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(s.post(&format!("{V3}/rooms/{second}/leave"), Some(&carol.token), json!({})).await.0, 200);
    let next = s.sync(&alice, Some(&since), 0).await;
    assert_eq!(next["device_lists"]["left"], json!([]), "{next}");
}
