//! Rooms: creation, membership, sending, state, history, and the graph under concurrency.

use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test]
async fn create_room_with_presets_name_topic_and_initial_state() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let room = s
        .create_room(
            &alice,
            json!({"name": "Lobby", "topic": "hello", "preset": "public_chat",
                   "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
                   "power_level_content_override": {"events_default": 10}}),
        )
        .await;
    let (st, state) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state"), Some(&alice.token)).await;
    assert_eq!(st, 200);
    let find = |t: &str| state.as_array().unwrap().iter().find(|e| e["type"] == t).cloned().unwrap_or(Value::Null);
    // Room version 12 by default: the room is named after its create event, and the creator
    // (unlimited power) is not listed in the power levels.
    assert_eq!(find("m.room.create")["content"]["room_version"], "12");
    assert_eq!(room, format!("!{}", &find("m.room.create")["event_id"].as_str().unwrap()[1..]));
    assert_eq!(find("m.room.create")["room_id"], room.as_str());
    assert_eq!(find("m.room.name")["content"]["name"], "Lobby");
    assert_eq!(find("m.room.topic")["content"]["topic"], "hello");
    assert_eq!(find("m.room.join_rules")["content"]["join_rule"], "public");
    assert_eq!(find("m.room.power_levels")["content"]["events_default"], 10);
    assert!(find("m.room.power_levels")["content"]["users"].get("@alice:test").is_none());
    assert_eq!(find("m.room.power_levels")["content"]["events"]["m.room.tombstone"], 150);
    assert_eq!(find("m.room.encryption")["content"]["algorithm"], "m.megolm.v1.aes-sha2");
    let (_, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"), Some(&alice.token)).await;
    assert_eq!(b, json!({"name": "Lobby"}));
    // `?format=event`: the whole event.
    let (_, e) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name?format=event"), Some(&alice.token)).await;
    assert_eq!((e["type"].as_str(), e["sender"].as_str()), (Some("m.room.name"), Some("@alice:test")), "{e}");
    assert_eq!(e["content"], json!({"name": "Lobby"}));
    let (_, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"), Some(&alice.token)).await;
    assert_eq!(b, json!({"name": "Lobby"}));
    // Room version 11 works too; unknown versions and presets are refused.
    let v11 = s.create_room(&alice, json!({"room_version": "11"})).await;
    let (_, c) = s.get(&format!("/_matrix/client/v3/rooms/{v11}/state/m.room.create"), Some(&alice.token)).await;
    assert_eq!(c["room_version"], "11");
    assert!(c.get("creator").is_none(), "v11 create events have no creator");
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"room_version": "999"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_UNSUPPORTED_ROOM_VERSION")));
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"preset": "party"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"invite": ["not-a-user"]})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"name": 5})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")));
}

#[tokio::test]
async fn membership_invite_join_leave_kick_ban_unban() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    // Private room: bob can't join uninvited.
    let (st, _) = s.join(&bob, &room).await;
    assert_eq!(st, 403);
    assert_eq!(s.invite(&alice, &room, "@bob:test").await.0, 200);
    // The join's body goes into the member event (a reason, or anything else), but not a
    // membership of the client's choosing.
    let (st, b) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(&bob.token),
            json!({"reason": "hi", "foo": "bar", "membership": "ban"}),
        )
        .await;
    assert_eq!((st, b["room_id"].as_str()), (200, Some(room.as_str())), "{b}");
    let (_, member) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@bob:test"), Some(&alice.token)).await;
    assert_eq!((member["membership"].as_str(), member["foo"].as_str()), (Some("join"), Some("bar")), "{member}");
    assert_eq!(member["reason"], "hi");
    let (st, b) = s.invite(&bob, &room, "@alice:test").await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "already joined");
    let (_, jm) = s.get(&format!("/_matrix/client/v3/rooms/{room}/joined_members"), Some(&alice.token)).await;
    assert_eq!(jm["joined"].as_object().unwrap().len(), 2);
    assert_eq!(jm["joined"]["@bob:test"]["display_name"], "bob");
    let (_, rooms) = s.get("/_matrix/client/v3/joined_rooms", Some(&bob.token)).await;
    assert_eq!(rooms["joined_rooms"], json!([room]));
    // Bob (power 0) can't kick; alice can.
    let (st, _) = s
        .post(&format!("/_matrix/client/v3/rooms/{room}/kick"), Some(&bob.token), json!({"user_id": "@alice:test"}))
        .await;
    assert_eq!(st, 403);
    assert_eq!(
        s.post(
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            Some(&alice.token),
            json!({"user_id": "@bob:test", "reason": "bye"})
        )
        .await
        .0,
        200
    );
    let (_, members) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/members?membership=leave"), Some(&alice.token)).await;
    assert_eq!(members["chunk"][0]["content"]["reason"], "bye");
    // Only members can be kicked: not Bob again (he left), nor Carol (never here), nor a banned
    // user; nothing is written.
    let kick_path = format!("/_matrix/client/v3/rooms/{room}/kick");
    let kick = |who: &'static str| s.post(&kick_path, Some(&alice.token), json!({"user_id": who}));
    for who in ["@bob:test", "@carol:test"] {
        let (st, b) = kick(who).await;
        assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{who}: {b}");
    }
    let (_, before) = s.get(&format!("/_matrix/client/v3/rooms/{room}/members"), Some(&alice.token)).await;
    assert_eq!(before["chunk"].as_array().unwrap().len(), 2, "{before}");
    assert_eq!(
        s.post(&format!("/_matrix/client/v3/rooms/{room}/ban"), Some(&alice.token), json!({"user_id": "@carol:test"}))
            .await
            .0,
        200
    );
    assert_eq!(s.invite(&alice, &room, "@carol:test").await.0, 403, "banned users can't be invited");
    assert_eq!(kick("@carol:test").await.0, 403, "banned users can't be kicked");
    assert_eq!(
        s.post(
            &format!("/_matrix/client/v3/rooms/{room}/unban"),
            Some(&alice.token),
            json!({"user_id": "@carol:test"})
        )
        .await
        .0,
        200
    );
    assert_eq!(s.invite(&alice, &room, "@carol:test").await.0, 200);
    assert_eq!(s.join(&carol, &room).await.0, 200);
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&carol.token), json!({})).await.0, 200);
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{room}/forget"), Some(&carol.token), json!({})).await.0, 200);
    // Unknown rooms and bad IDs.
    let (st, b) = s.join(&bob, "!nope:test").await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (st, b) = s.join(&bob, "garbage").await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(&alice.token), json!({})).await;
    assert_eq!(st, 400);

    // An invite to a room everyone has left can still be rejected (nobody to ask elsewhere).
    let lonely = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    assert_eq!(s.invite(&alice, &lonely, "@bob:test").await.0, 200);
    assert_eq!(s.post(&format!("/_matrix/client/v3/rooms/{lonely}/leave"), Some(&alice.token), json!({})).await.0, 200);
    let (st, b) = s.post(&format!("/_matrix/client/v3/rooms/{lonely}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(st, 200, "{b}");
    let sync = s.sync(&bob, None, 0).await;
    assert!(sync["rooms"]["invite"].get(&lonely).is_none(), "{sync}");
}

#[tokio::test]
async fn send_is_idempotent_per_transaction_and_history_paginates() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let eve = s.register("eve").await;
    let room = s.create_room(&alice, json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/txn1");
    let (st, a) = s.put(&path, Some(&alice.token), json!({"msgtype": "m.text", "body": "one"})).await;
    assert_eq!(st, 200);
    let (_, b) = s.put(&path, Some(&alice.token), json!({"msgtype": "m.text", "body": "one"})).await;
    assert_eq!(a["event_id"], b["event_id"], "same txn, same event");
    assert!(a["event_id"].as_str().unwrap().starts_with('$'));
    // The old form without a transaction ID: each request a new event.
    let post = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message");
    let (st, c) = s.post(&post, Some(&alice.token), json!({"msgtype": "m.text", "body": "posted"})).await;
    assert_eq!(st, 200, "{c}");
    let (_, d) = s.post(&post, Some(&alice.token), json!({"msgtype": "m.text", "body": "posted"})).await;
    assert_ne!(c["event_id"], d["event_id"]);
    for i in 2..=12 {
        s.send_text(&alice, &room, &format!("msg {i}")).await;
    }
    let (st, page) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5"), Some(&alice.token)).await;
    assert_eq!(st, 200);
    let bodies: Vec<_> = page["chunk"].as_array().unwrap().iter().map(|e| e["content"]["body"].clone()).collect();
    assert_eq!(bodies, vec![json!("msg 12"), json!("msg 11"), json!("msg 10"), json!("msg 9"), json!("msg 8")]);
    let end = page["end"].as_str().unwrap();
    let (_, page2) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5&from={end}"), Some(&alice.token)).await;
    assert_eq!(page2["chunk"][0]["content"]["body"], "msg 7");
    let (_, fwd) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=3"), Some(&alice.token)).await;
    assert_eq!(fwd["chunk"][0]["type"], "m.room.create");
    // Whole history paginates to the end.
    let mut from: Option<String> = None;
    let mut total = 0;
    loop {
        let q = from.as_ref().map(|f| format!("&from={f}")).unwrap_or_default();
        let (_, p) =
            s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=4{q}"), Some(&alice.token)).await;
        total += p["chunk"].as_array().unwrap().len();
        match p["end"].as_str() {
            Some(e) => from = Some(e.to_owned()),
            None => break,
        }
    }
    assert_eq!(total, 12 + 2 + 6, "12 messages, 2 posted ones and 6 creation events");
    // Errors.
    assert_eq!(s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=x"), Some(&alice.token)).await.0, 400);
    assert_eq!(s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?limit=-1"), Some(&alice.token)).await.0, 400);
    assert_eq!(s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?from=zzz"), Some(&alice.token)).await.0, 400);
    assert_eq!(
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?limit=100000"), Some(&alice.token)).await.0,
        200
    );
    let (st, b) = s.send_text(&eve, &room, "intruder").await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    assert_eq!(s.get(&format!("/_matrix/client/v3/rooms/{room}/messages"), Some(&eve.token)).await.0, 403);
    let (st, b) = s
        .put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/x"), Some(&alice.token), json!({"body": 1}))
        .await;
    assert_eq!(st, 200, "content is opaque to the server: {b}");
}

#[tokio::test]
async fn event_context_and_redaction() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let (_, a) = s.send_text(&alice, &room, "first").await;
    let (_, m) = s.send_text(&bob, &room, "secret").await;
    let (_, c) = s.send_text(&alice, &room, "third").await;
    let mid = m["event_id"].as_str().unwrap();
    let (st, ev) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{mid}"), Some(&alice.token)).await;
    assert_eq!(st, 200);
    assert_eq!(ev["content"]["body"], "secret");
    assert_eq!(ev["sender"], "@bob:test");
    assert_eq!(s.get(&format!("/_matrix/client/v3/rooms/{room}/event/$nope"), Some(&alice.token)).await.0, 404);
    let (st, ctx) = s.get(&format!("/_matrix/client/v3/rooms/{room}/context/{mid}?limit=2"), Some(&alice.token)).await;
    assert_eq!(st, 200);
    assert_eq!(ctx["events_before"][0]["event_id"], a["event_id"]);
    assert_eq!(ctx["events_after"][0]["event_id"], c["event_id"]);
    // Bob may not redact alice's message (needs power 50); alice may redact bob's.
    let aid = a["event_id"].as_str().unwrap();
    let (st, _) = s.put(&format!("/_matrix/client/v3/rooms/{room}/redact/{aid}/r1"), Some(&bob.token), json!({})).await;
    assert_eq!(st, 403);
    let (st, r) = s
        .put(&format!("/_matrix/client/v3/rooms/{room}/redact/{mid}/r1"), Some(&alice.token), json!({"reason": "spam"}))
        .await;
    assert_eq!(st, 200, "{r}");
    let (_, ev) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{mid}"), Some(&alice.token)).await;
    assert_eq!(ev["content"], json!({}), "redacted content is gone");
    assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], r["event_id"]);
}

#[tokio::test]
async fn state_changes_obey_power_levels() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let (st, _) = s
        .put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"), Some(&bob.token), json!({"name": "bob's"}))
        .await;
    assert_eq!(st, 403);
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels"),
            Some(&bob.token),
            json!({"users": {"@bob:test": 100}}),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = s
        .put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"), Some(&alice.token), json!({"name": "ok"}))
        .await;
    assert_eq!(st, 200);
    let (st, _) =
        s.put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.create"), Some(&alice.token), json!({})).await;
    assert_eq!(st, 403);
    assert_eq!(s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.avatar"), Some(&alice.token)).await.0, 404);
}

#[tokio::test]
async fn concurrent_sends_keep_a_valid_graph_and_lose_nothing() {
    let s = std::sync::Arc::new(Server::start().await);
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let mut users = vec![alice.clone()];
    for i in 0..7 {
        let u = s.register(&format!("user{i}")).await;
        s.join(&u, &room).await;
        users.push(u);
    }
    let mut tasks = Vec::new();
    for u in users {
        let s = s.clone();
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                let (st, b) = s.send_text(&u, &room, &format!("{} {i}", u.user_id)).await;
                assert_eq!(st, 200, "{b}");
                ids.push(b["event_id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut acked = std::collections::HashSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 80);
    // Walk the whole timeline forwards: every acknowledged event is there, once.
    let (_, page) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=1000"), Some(&alice.token)).await;
    let events = page["chunk"].as_array().unwrap();
    let seen: Vec<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
    for id in &acked {
        assert!(seen.contains(&id.as_str()), "missing {id}");
    }
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
    // Messages sent at the same time may share parents (as on Synapse); the next event merges
    // them. The stored graph must be sound: parents stored first, depth above every parent's,
    // no event lost from the extremities, and one extremity again after a later send.
    let (st, _) = s.send_text(&alice, &room, "after the burst").await;
    assert_eq!(st, 200);
    assert_sound_room_graph(s.dir.path(), &room);
}

#[tokio::test]
async fn room_upgrade_copies_state_and_tombstones_the_old_room() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let old = s
        .create_room(
            &alice,
            json!({"name": "Old name", "topic": "kept", "preset": "public_chat", "visibility": "public", "room_version": "10",
                   "room_alias_name": "lobby", "creation_content": {"m.federate": false},
                   "power_level_content_override": {"users": {"@alice:test": 150}}}),
        )
        .await;
    s.join(&bob, &old).await;
    // A ban, and Alice's own state for the room: a tag and an m.direct entry.
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{old}/ban"),
            Some(&alice.token),
            json!({"user_id": "@mallory:elsewhere"}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/user/@alice:test/rooms/{old}/tags/work"),
            Some(&alice.token),
            json!({"order": 0.5}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .put(
            "/_matrix/client/v3/user/@alice:test/account_data/m.direct",
            Some(&alice.token),
            json!({"@bob:test": [old]}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, b) = s
        .post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), Some(&bob.token), json!({"new_version": "11"}))
        .await;
    assert_eq!(st, 403, "bob lacks the power: {b}");
    let (st, b) = s
        .post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), Some(&alice.token), json!({"new_version": "999"}))
        .await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_UNSUPPORTED_ROOM_VERSION")));
    let (st, b) = s
        .post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), Some(&alice.token), json!({"new_version": "11"}))
        .await;
    assert_eq!(st, 200, "{b}");
    let new = b["replacement_room"].as_str().unwrap().to_owned();
    let get = |room: String, t: &'static str| {
        let s = &s;
        let token = alice.token.clone();
        async move { s.get(&format!("/_matrix/client/v3/rooms/{room}/state/{t}"), Some(&token)).await.1 }
    };
    assert_eq!(get(new.clone(), "m.room.name").await["name"], "Old name");
    assert_eq!(get(new.clone(), "m.room.topic").await["topic"], "kept");
    assert_eq!(get(new.clone(), "m.room.join_rules").await["join_rule"], "public");
    assert_eq!(get(new.clone(), "m.room.create").await["predecessor"]["room_id"], json!(old));
    assert_eq!(get(new.clone(), "m.room.create").await["room_version"], "11");
    assert_eq!(get(old.clone(), "m.room.tombstone").await["replacement_room"], json!(new));
    assert_eq!(get(old.clone(), "m.room.power_levels").await["events_default"], 50);
    // The new room's create event names the tombstone, and keeps m.federate.
    let (_, state) = s.get(&format!("/_matrix/client/v3/rooms/{old}/state"), Some(&alice.token)).await;
    let tombstone = state.as_array().unwrap().iter().find(|e| e["type"] == "m.room.tombstone").unwrap().clone();
    let create = get(new.clone(), "m.room.create").await;
    assert_eq!(create["predecessor"]["event_id"], tombstone["event_id"], "{create}");
    assert_eq!(create["m.federate"], false);
    // An upgrader above 100 keeps their level; the ban, the alias, the directory listing move.
    assert_eq!(get(new.clone(), "m.room.power_levels").await["users"]["@alice:test"], 150);
    assert_eq!(get(new.clone(), "m.room.member/@mallory:elsewhere").await["membership"], "ban");
    assert_eq!(get(new.clone(), "m.room.canonical_alias").await["alias"], "#lobby:test");
    assert_eq!(get(old.clone(), "m.room.canonical_alias").await, json!({}));
    let (_, found) = s.get("/_matrix/client/v3/directory/room/%23lobby:test", None).await;
    assert_eq!(found["room_id"], json!(new));
    let (_, listed) = s.get(&format!("/_matrix/client/v3/directory/list/room/{new}"), None).await;
    assert_eq!(listed["visibility"], "public");
    let (_, tags) = s.get(&format!("/_matrix/client/v3/user/@alice:test/rooms/{new}/tags"), Some(&alice.token)).await;
    assert!(tags["tags"]["work"].is_object(), "{tags}");
    let (_, direct) = s.get("/_matrix/client/v3/user/@alice:test/account_data/m.direct", Some(&alice.token)).await;
    assert_eq!(direct["@bob:test"], json!([old, new]));
    let (st, _) = s.send_text(&bob, &old, "still here?").await;
    assert_eq!(st, 403, "the old room is restricted");
    // Bob's tag on the old room follows him when he joins the new one.
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/user/@bob:test/rooms/{old}/tags/fav"),
            Some(&bob.token),
            json!({"order": 0.1}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(s.join(&bob, &new).await.0, 200);
    let (_, tags) = s.get(&format!("/_matrix/client/v3/user/@bob:test/rooms/{new}/tags"), Some(&bob.token)).await;
    assert!(tags["tags"]["fav"].is_object(), "{tags}");
}

#[tokio::test]
async fn messages_filters_and_members_at_a_point_in_time() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let before_bob = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.join(&bob, &room).await;
    s.send_text(&alice, &room, "from alice").await;
    s.send_text(&bob, &room, "from bob").await;
    let filter = "%7B%22senders%22%3A%5B%22%40bob%3Atest%22%5D%7D"; // {"senders":["@bob:test"]}
    let (st, page) = s
        .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20&filter={filter}"), Some(&alice.token))
        .await;
    assert_eq!(st, 200);
    let senders: Vec<_> = page["chunk"].as_array().unwrap().iter().map(|e| e["sender"].as_str().unwrap()).collect();
    assert!(!senders.is_empty() && senders.iter().all(|x| *x == "@bob:test"), "{senders:?}");
    let types = "%7B%22types%22%3A%5B%22m.room.mem*%22%5D%7D"; // {"types":["m.room.mem*"]}
    let (_, page) = s
        .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20&filter={types}"), Some(&alice.token))
        .await;
    assert!(page["chunk"].as_array().unwrap().iter().all(|e| e["type"] == "m.room.member"));
    assert_eq!(
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?filter=%7Bnope"), Some(&alice.token)).await.0,
        400
    );
    // Members at the token from before bob joined: only alice.
    let (st, m) = s.get(&format!("/_matrix/client/v3/rooms/{room}/members?at={before_bob}"), Some(&alice.token)).await;
    assert_eq!(st, 200);
    assert_eq!(m["chunk"].as_array().unwrap().len(), 1);
    let (_, now) = s.get(&format!("/_matrix/client/v3/rooms/{room}/members"), Some(&alice.token)).await;
    assert_eq!(now["chunk"].as_array().unwrap().len(), 2);
    assert_eq!(s.get(&format!("/_matrix/client/v3/rooms/{room}/members?at=zzz"), Some(&alice.token)).await.0, 400);
}

/// Retries of one transaction ID arriving together (a client resending while the first is
/// still being committed with others) all get the one event.
#[tokio::test]
async fn simultaneous_retries_of_a_transaction_make_one_event() {
    let s = std::sync::Arc::new(Server::start().await);
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/retried");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (s, path, token) = (s.clone(), path.clone(), alice.token.clone());
        // Other messages at the same time, so the retries share commits with them.
        let other = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/other{i}");
        tasks.push(tokio::spawn(async move {
            let (other_status, body) = s.put(&other, Some(&token), json!({"msgtype": "m.text", "body": "other"})).await;
            assert_eq!(other_status, 200, "{body}");
            s.put(&path, Some(&token), json!({"msgtype": "m.text", "body": "once"})).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        ids.insert(body["event_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let (_, page) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"), Some(&alice.token)).await;
    let once = page["chunk"].as_array().unwrap().iter().filter(|e| e["content"]["body"] == "once").count();
    assert_eq!(once, 1);
    // And the room carries on.
    assert_eq!(s.send_text(&alice, &room, "after").await.0, 200);
}

#[tokio::test]
async fn knocking_and_restricted_joins() {
    use crate::harness::assert_schema;
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let join_rule = |rule: Value| json!({"type": "m.room.join_rules", "state_key": "", "content": rule});
    let knockable = s.create_room(&alice, json!({"initial_state": [join_rule(json!({"join_rule": "knock"}))]})).await;

    // Bob knocks: his sync shows the room under `knock`, alice sees the knock, and an invite
    // lets him in.
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (st, b) =
        s.post(&format!("/_matrix/client/v3/knock/{knockable}"), Some(&bob.token), json!({"reason": "hi"})).await;
    assert_eq!(st, 200, "{b}");
    assert_schema("/_matrix/client/v3/knock/{roomIdOrAlias}", "post", 200, &b);
    assert_eq!(b["room_id"], knockable);
    let synced = s.sync(&bob, Some(&since), 0).await;
    let knock_state = &synced["rooms"]["knock"][&knockable]["knock_state"]["events"];
    assert!(
        knock_state
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "knock"),
        "{synced}"
    );
    let initial = s.sync(&bob, None, 0).await;
    assert!(initial["rooms"]["knock"][&knockable].is_object(), "{initial}");
    let (_, member) = s
        .get(&format!("/_matrix/client/v3/rooms/{knockable}/state/m.room.member/{}", bob.user_id), Some(&alice.token))
        .await;
    assert_eq!((member["membership"].as_str(), member["reason"].as_str()), (Some("knock"), Some("hi")));
    // Knocking twice, or on an invite, is refused; the invite then the join work.
    assert_eq!(s.invite(&alice, &knockable, &bob.user_id).await.0, 200);
    let (st, _) = s.post(&format!("/_matrix/client/v3/knock/{knockable}"), Some(&bob.token), json!({})).await;
    assert_eq!(st, 403);
    assert_eq!(s.join(&bob, &knockable).await.0, 200);
    // A knock can be taken back.
    let (st, _) = s.post(&format!("/_matrix/client/v3/knock/{knockable}"), Some(&carol.token), json!({})).await;
    assert_eq!(st, 200);
    let (st, b) = s.post(&format!("/_matrix/client/v3/rooms/{knockable}/leave"), Some(&carol.token), json!({})).await;
    assert_eq!(st, 200, "{b}");
    // Not on a public room (the auth rules refuse), nor on an unknown one.
    let public = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let (st, b) = s.post(&format!("/_matrix/client/v3/knock/{public}"), Some(&carol.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    let (st, _) = s.post("/_matrix/client/v3/knock/!nowhere:test", Some(&carol.token), json!({})).await;
    assert_eq!(st, 404);

    // Restricted: members of the space may join, vouched for by alice; others may not.
    let space = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &space).await.0, 200);
    let allow = json!([{"type": "m.room_membership", "room_id": space}]);
    let restricted = s
        .create_room(&alice, json!({"initial_state": [join_rule(json!({"join_rule": "restricted", "allow": allow}))]}))
        .await;
    let (st, b) = s.join(&bob, &restricted).await;
    assert_eq!(st, 200, "{b}");
    let (_, member) = s
        .get(&format!("/_matrix/client/v3/rooms/{restricted}/state/m.room.member/{}", bob.user_id), Some(&bob.token))
        .await;
    assert_eq!(member["join_authorised_via_users_server"], alice.user_id, "{member}");
    let (st, b) = s.join(&carol, &restricted).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    // knock_restricted: the same, and those outside may knock.
    let knock_restricted = s
        .create_room(
            &alice,
            json!({"initial_state": [join_rule(json!({"join_rule": "knock_restricted", "allow": allow}))]}),
        )
        .await;
    assert_eq!(s.join(&bob, &knock_restricted).await.0, 200);
    assert_eq!(s.join(&carol, &knock_restricted).await.0, 403);
    let (st, b) = s.post(&format!("/_matrix/client/v3/knock/{knock_restricted}"), Some(&carol.token), json!({})).await;
    assert_eq!(st, 200, "{b}");
}

/// Puts `child` under `space` with the given `m.space.child` content.
async fn add_child(s: &Server, user: &User, space: &str, child: &str, content: Value) {
    let path = format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{child}");
    let (st, b) = s.put(&path, Some(&user.token), content).await;
    assert_eq!(st, 200, "{b}");
}

fn hierarchy_ids(body: &Value) -> Vec<String> {
    body["rooms"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn space_hierarchies_list_what_the_requester_may_see_in_order_and_in_pages() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let space = s
        .create_room(&alice, json!({"preset": "public_chat", "name": "Space", "creation_content": {"type": "m.space"}}))
        .await;
    let public = s.create_room(&alice, json!({"preset": "public_chat", "name": "Public"})).await;
    let private = s.create_room(&alice, json!({"preset": "private_chat", "name": "Private"})).await;
    let readable = s
        .create_room(
            &alice,
            json!({"preset": "private_chat", "name": "Readable", "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}]}),
        )
        .await;
    let subspace = s
        .create_room(&alice, json!({"preset": "public_chat", "name": "Sub", "creation_content": {"type": "m.space"}}))
        .await;
    let deep = s.create_room(&alice, json!({"preset": "public_chat", "name": "Deep"})).await;
    let via = json!(["test"]);
    add_child(&s, &alice, &space, &public, json!({"via": via, "order": "b"})).await;
    add_child(&s, &alice, &space, &private, json!({"via": via, "order": "a"})).await;
    add_child(&s, &alice, &space, &readable, json!({"via": via, "order": "c", "suggested": true})).await;
    add_child(&s, &alice, &space, &subspace, json!({"via": via})).await;
    add_child(&s, &alice, &subspace, &deep, json!({"via": via})).await;
    // A child without `via` is no child (a removed one).
    add_child(&s, &alice, &space, &deep, json!({})).await;
    let get = |query: String| {
        let (s, token) = (&s, bob.token.clone());
        let space = space.clone();
        async move { s.get(&format!("/_matrix/client/v1/rooms/{space}/hierarchy{query}"), Some(&token)).await }
    };

    // Bob, in none of them: the private room is left out; depth first, by `order`, then the
    // rest; the space's entry carries its children's events.
    let (st, body) = get(String::new()).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        hierarchy_ids(&body),
        vec![space.clone(), public.clone(), readable.clone(), subspace.clone(), deep.clone()]
    );
    let root = &body["rooms"][0];
    assert_eq!(
        (&root["name"], &root["room_type"], &root["join_rule"]),
        (&json!("Space"), &json!("m.space"), &json!("public"))
    );
    assert_eq!(root["children_state"].as_array().unwrap().len(), 4, "{root}");
    assert_eq!(root["children_state"][0]["state_key"], json!(private));
    assert!(body.get("next_batch").is_none());
    // Alice, in all of them, sees the private room too.
    let (_, body) = s.get(&format!("/_matrix/client/v1/rooms/{space}/hierarchy"), Some(&alice.token)).await;
    assert_eq!(hierarchy_ids(&body)[1], private);
    // max_depth and suggested_only.
    let (_, body) = get("?max_depth=1".into()).await;
    assert!(!hierarchy_ids(&body).contains(&deep), "{body}");
    let (_, body) = get("?suggested_only=true".into()).await;
    assert_eq!(hierarchy_ids(&body), vec![space.clone(), readable.clone()]);
    // Pages of two, continued by next_batch, nothing twice.
    let (_, first) = get("?limit=2".into()).await;
    assert_eq!(hierarchy_ids(&first), vec![space.clone(), public.clone()]);
    let token = first["next_batch"].as_str().unwrap().to_owned();
    let (st, second) = get(format!("?limit=2&from={token}")).await;
    assert_eq!(st, 200, "{second}");
    assert_eq!(hierarchy_ids(&second), vec![readable.clone(), subspace.clone()]);
    let (_, third) = get(format!("?limit=2&from={}", second["next_batch"].as_str().unwrap())).await;
    assert_eq!(hierarchy_ids(&third), vec![deep.clone()]);
    assert!(third.get("next_batch").is_none(), "{third}");
    // A page asked again (a client retrying) is the same page.
    let (_, again) = get(format!("?limit=2&from={token}")).await;
    assert_eq!(hierarchy_ids(&again), hierarchy_ids(&second));

    // Refused: another request's token, bad parameters, a room Bob may not see, no token.
    let (st, e) = get(format!("?limit=2&max_depth=1&from={token}")).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{e}");
    let (st, e) = get("?from=nonsense".into()).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{e}");
    assert_eq!(get("?limit=0".into()).await.0, 400);
    assert_eq!(get("?max_depth=-1".into()).await.0, 400);
    assert_eq!(get("?suggested_only=maybe".into()).await.0, 400);
    let (st, e) = s.get(&format!("/_matrix/client/v1/rooms/{private}/hierarchy"), Some(&bob.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{e}");
    let (st, _) = s.get("/_matrix/client/v1/rooms/!nowhere:test/hierarchy", Some(&bob.token)).await;
    assert_eq!(st, 403);
    assert_eq!(s.get(&format!("/_matrix/client/v1/rooms/{space}/hierarchy"), None).await.0, 401);

    // The admin API's hierarchy: an admin in none of the rooms sees them all, private ones too,
    // with the same parameters; nobody else may use it.
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let admin = |room: &str, query: &str| format!("/_synapse/admin/v1/rooms/{room}/hierarchy{query}");
    let (st, body) = s.get(&admin(&space, ""), Some(&root.token)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        hierarchy_ids(&body),
        vec![space.clone(), private.clone(), public.clone(), readable.clone(), subspace.clone(), deep.clone()]
    );
    let (st, body) = s.get(&admin(&private, ""), Some(&root.token)).await;
    assert_eq!((st, hierarchy_ids(&body)), (200, vec![private.clone()]));
    let (_, body) = s.get(&admin(&space, "?max_depth=1&limit=2"), Some(&root.token)).await;
    assert_eq!(hierarchy_ids(&body), vec![space.clone(), private.clone()]);
    assert_eq!(s.get(&admin(&space, "?limit=0"), Some(&root.token)).await.0, 400);
    assert_eq!(s.get(&admin(&space, ""), Some(&bob.token)).await.0, 403);
    assert_eq!(s.get(&admin("!nowhere:test", ""), Some(&root.token)).await.0, 403);
}

/// `GET /_matrix/client/v1/mutual_rooms` (as Synapse serves it): the rooms both users are
/// joined to, sorted; invites and rooms left do not count; bad parameters are 400.
#[tokio::test]
async fn mutual_rooms_are_the_rooms_both_users_are_joined_to() {
    let s = Server::start().await;
    let (alice, bob, carol) = (s.register("alice").await, s.register("bob").await, s.register("carol").await);
    let public = json!({"preset": "public_chat"});
    let (r1, r2, r3) = (
        s.create_room(&alice, public.clone()).await,
        s.create_room(&alice, public.clone()).await,
        s.create_room(&alice, public).await,
    );
    for room in [&r1, &r2] {
        assert_eq!(s.join(&bob, room).await.0, 200);
    }
    assert_eq!(s.join(&carol, &r2).await.0, 200);
    assert_eq!(s.invite(&alice, &r3, &bob.user_id).await.0, 200);
    let mutual = |who: &User, other: &str| {
        let path = format!("/_matrix/client/v1/mutual_rooms?user_id={}", other.replace('@', "%40").replace(':', "%3A"));
        let token = who.token.clone();
        let s = &s;
        async move { s.get(&path, Some(&token)).await }
    };
    let mut both = vec![r1.clone(), r2.clone()];
    both.sort();
    let (status, body) = mutual(&alice, &bob.user_id).await;
    assert_eq!((status, &body), (200, &json!({"joined": both, "count": 2})), "an invite does not count");
    let (_, body) = mutual(&carol, &alice.user_id).await;
    assert_eq!(body["joined"], json!([r2]), "carol shares only r2 with alice");

    // A room left no longer counts.
    let (status, _) = s.post(&format!("/_matrix/client/v3/rooms/{r1}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200);
    let (_, body) = mutual(&alice, &bob.user_id).await;
    assert_eq!(body["joined"], json!([r2]));

    // `from` continues after the room it names (URL-safe base64 of a room ID).
    use base64::Engine;
    let first = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(both[0].as_bytes());
    let path = |q: &str| format!("/_matrix/client/v1/mutual_rooms?{q}");
    let (status, body) = s.get(&path(&format!("user_id=%40carol%3Atest&from={first}")), Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["joined"], if both[0] == r2 { json!([]) } else { json!([r2]) });

    // Refused: no user, oneself, two users, not a user ID, a bad token, no access token.
    for (query, status, errcode) in [
        ("", 400, "M_MISSING_PARAM"),
        ("user_id=%40alice%3Atest", 400, "M_INVALID_PARAM"),
        ("user_id=%40bob%3Atest&user_id=%40carol%3Atest", 400, "M_INVALID_PARAM"),
        ("user_id=bob", 400, "M_INVALID_PARAM"),
        ("user_id=%40bob%3Atest&from=%%%", 400, "M_INVALID_PARAM"),
    ] {
        let (got, body) = s.get(&path(query), Some(&alice.token)).await;
        assert_eq!((got, body["errcode"].as_str()), (status, Some(errcode)), "{query}: {body}");
    }
    assert_eq!(s.get(&path("user_id=%40bob%3Atest"), None).await.0, 401);
}

/// The event of `id` in a list of client events.
fn event_in<'a>(events: &'a Value, id: &str) -> &'a Value {
    events
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["event_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {events}"))
}

/// The deprecated `GET /events/{eventId}` (Synapse still serves it): the room's rules apply.
#[tokio::test]
async fn events_are_found_by_id_alone_by_those_who_may_see_them() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let carol = s.register("carol").await;
    let room = s.create_room(&alice, json!({"preset": "private_chat"})).await;
    let (_, sent) = s.send_text(&alice, &room, "private words").await;
    let id = sent["event_id"].as_str().unwrap();
    let (st, event) = s.get(&format!("/_matrix/client/v3/events/{}", path_segment(id)), Some(&alice.token)).await;
    assert_eq!(
        (st, &event["content"]["body"], &event["room_id"]),
        (200, &json!("private words"), &json!(room)),
        "{event}"
    );
    assert_eq!(event["unsigned"]["membership"], "join");
    let (st, e) = s.get(&format!("/_matrix/client/v3/events/{}", path_segment(id)), Some(&carol.token)).await;
    assert_eq!((st, e["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "an outsider sees nothing: {e}");
    let (st, _) = s.get("/_matrix/client/v3/events/%24nope", Some(&alice.token)).await;
    assert_eq!(st, 404);
    assert_eq!(s.get(&format!("/_matrix/client/v3/events/{}", path_segment(id)), None).await.0, 401);
}

/// MSC4115 on `/sync`: each timeline event says how the reader stood in the room then.
#[tokio::test]
async fn sync_timelines_say_how_the_reader_stood_at_each_event() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let labels = |timeline: &Value| -> Vec<(String, String)> {
        timeline["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let what = if e["type"] == "m.room.member" {
                    format!("{} {}", e["state_key"].as_str().unwrap(), e["content"]["membership"].as_str().unwrap())
                } else {
                    e["type"].as_str().unwrap().to_owned()
                };
                (what, e["unsigned"]["membership"].as_str().unwrap_or("(none)").to_owned())
            })
            .collect()
    };
    let alice_first = s.sync(&alice, None, 0).await;
    let alice_since = alice_first["next_batch"].as_str().unwrap().to_owned();
    // Alice made the room: "leave" at its creation, "join" from her join on.
    let first = labels(&alice_first["rooms"]["join"][&room]["timeline"]);
    assert_eq!(first[0], ("m.room.create".to_owned(), "leave".to_owned()), "{first:?}");
    assert!(first[1..].iter().all(|(_, m)| m == "join"), "{first:?}");

    assert_eq!(s.join(&bob, &room).await.0, 200);
    s.send_text(&alice, &room, "hello").await;
    let bob_first = s.sync(&bob, None, 0).await;
    let bob_since = bob_first["next_batch"].as_str().unwrap().to_owned();
    let timeline = labels(&bob_first["rooms"]["join"][&room]["timeline"]);
    let bob_join = format!("{} join", bob.user_id);
    let at_join = timeline.iter().position(|(w, _)| *w == bob_join).unwrap();
    assert!(timeline[..at_join].iter().all(|(_, m)| m == "leave"), "before bob joined: {timeline:?}");
    assert!(timeline[at_join..].iter().all(|(_, m)| m == "join"), "from bob's join: {timeline:?}");
    // Alice's timeline holds no member event of hers: every event is "join" for her.
    let alice_next = s.sync(&alice, Some(&alice_since), 0).await;
    let timeline = labels(&alice_next["rooms"]["join"][&room]["timeline"]);
    assert!(!timeline.is_empty() && timeline.iter().all(|(_, m)| m == "join"), "{timeline:?}");

    // Bob leaves: the room comes in `leave`, "join" up to his leave, which is "leave".
    s.send_text(&alice, &room, "still here?").await;
    let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(st, 200);
    let bob_next = s.sync(&bob, Some(&bob_since), 0).await;
    let timeline = labels(&bob_next["rooms"]["leave"][&room]["timeline"]);
    let last = timeline.last().unwrap().clone();
    assert_eq!(last, (format!("{} leave", bob.user_id), "leave".to_owned()), "{timeline:?}");
    assert!(timeline[..timeline.len() - 1].iter().all(|(_, m)| m == "join"), "{timeline:?}");
}

#[tokio::test]
async fn events_carry_unsigned_as_synapse_serves_them() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let alice_phone = s.login("alice").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "name": "First"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let first = s.sync(&bob, None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let join = first["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id)
        .unwrap()["event_id"]
        .clone();

    // Bob's display-name change replaces his join: clients tell it from a join by prev_content.
    let (st, b) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", bob.user_id),
            Some(&bob.token),
            json!({"membership": "join", "displayname": "Bobby"}),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let rename = b["event_id"].as_str().unwrap().to_owned();
    let (_, b) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"),
            Some(&alice.token),
            json!({"name": "Second"}),
        )
        .await;
    let second_name = b["event_id"].as_str().unwrap().to_owned();
    let (_, b) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/alice-txn-1"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "hi"}),
        )
        .await;
    let message = b["event_id"].as_str().unwrap().to_owned();

    let check_rename = |event: &Value| {
        let unsigned = &event["unsigned"];
        assert_eq!(unsigned["replaces_state"], join, "{event}");
        assert_eq!(unsigned["prev_content"]["membership"], "join", "{event}");
        assert_eq!(unsigned["prev_sender"], bob.user_id, "{event}");
        assert!(unsigned["age"].as_i64().is_some_and(|a| a >= 0), "{event}");
    };

    // /sync, incremental and initial.
    let sync = s.sync(&bob, Some(&since), 0).await;
    let timeline = &sync["rooms"]["join"][&room]["timeline"]["events"];
    check_rename(event_in(timeline, &rename));
    assert_eq!(event_in(timeline, &second_name)["unsigned"]["prev_content"], json!({"name": "First"}));
    // Bob did not send the message: no transaction ID for him.
    assert!(event_in(timeline, &message)["unsigned"].get("transaction_id").is_none());
    assert!(event_in(timeline, &message)["unsigned"].get("prev_content").is_none());

    // /messages: the sending device sees its transaction ID, the same user's other device
    // and other users do not.
    let messages = |user: &User| {
        let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=10");
        let token = user.token.clone();
        let s = &s;
        async move {
            let (st, b) = s.get(&path, Some(&token)).await;
            assert_eq!(st, 200, "{b}");
            b["chunk"].clone()
        }
    };
    let chunk = messages(&alice).await;
    check_rename(event_in(&chunk, &rename));
    assert_eq!(event_in(&chunk, &message)["unsigned"]["transaction_id"], "alice-txn-1");
    for other in [&alice_phone, &bob] {
        let chunk = messages(other).await;
        assert!(event_in(&chunk, &message)["unsigned"].get("transaction_id").is_none(), "{}", other.device_id);
        check_rename(event_in(&chunk, &rename));
    }

    // MSC4115: each event says how the reader stood in the room then: bob had not joined when
    // the room was made (history is shared, so he reads it), and had when the message came.
    let chunk = messages(&bob).await;
    assert_eq!(event_in(&chunk, &message)["unsigned"]["membership"], "join");
    let create = chunk.as_array().unwrap().iter().find(|e| e["type"] == "m.room.create").unwrap();
    assert_eq!(create["unsigned"]["membership"], "leave", "{create}");

    // /event and /context.
    let (st, event) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{rename}"), Some(&alice.token)).await;
    assert_eq!(event["unsigned"]["membership"], "join", "{event}");
    assert_eq!(st, 200);
    check_rename(&event);
    let (st, event) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{message}"), Some(&alice.token)).await;
    assert_eq!((st, &event["unsigned"]["transaction_id"]), (200, &json!("alice-txn-1")));
    let (st, context) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/context/{second_name}?limit=4"), Some(&bob.token)).await;
    assert_eq!(st, 200, "{context}");
    assert_eq!(context["event"]["unsigned"]["prev_content"], json!({"name": "First"}));
    check_rename(event_in(&context["events_before"], &rename));
    assert!(event_in(&context["events_after"], &message)["unsigned"].get("transaction_id").is_none());

    // Redacting the replaced name hides it from the next one's prev_content too.
    let (_, state) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state"), Some(&alice.token)).await;
    assert!(state.as_array().unwrap().iter().all(|e| e["unsigned"]["age"].is_i64()), "{state}");
    let first_name = event_in(&chunk, &second_name)["unsigned"]["replaces_state"].as_str().unwrap().to_owned();
    let (st, _) =
        s.put(&format!("/_matrix/client/v3/rooms/{room}/redact/{first_name}/r1"), Some(&alice.token), json!({})).await;
    assert_eq!(st, 200);
    let (_, event) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{second_name}"), Some(&bob.token)).await;
    assert_eq!(event["unsigned"]["prev_content"], json!({}), "{event}");
    assert_eq!(event["unsigned"]["prev_sender"], alice.user_id);
}
