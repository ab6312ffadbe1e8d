//! `/sync`: initial, incremental, long-poll wake-up, invites, leaves, limits and filters.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn initial_sync_has_joined_rooms_with_state_and_timeline() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"name": "R"})).await;
    s.send_text(&alice, &room, "hello").await;
    let body = s.sync(&alice, None, 0).await;
    assert!(body["next_batch"].as_str().unwrap().starts_with('s'));
    let r = &body["rooms"]["join"][&room];
    let timeline = r["timeline"]["events"].as_array().unwrap();
    assert_eq!(timeline.last().unwrap()["content"]["body"], "hello");
    let mut types: Vec<String> = timeline
        .iter()
        .chain(r["state"]["events"].as_array().unwrap())
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    types.dedup();
    for t in ["m.room.create", "m.room.member", "m.room.power_levels", "m.room.name", "m.room.message"] {
        assert!(types.iter().any(|x| x == t), "{t} missing");
    }
    assert_eq!(r["summary"]["m.joined_member_count"], 1);
    for key in ["presence", "account_data", "to_device", "device_lists"] {
        assert!(body[key].is_object(), "{key}");
    }
}

#[tokio::test]
async fn the_sending_device_alone_sees_its_transaction_ids() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/txn-one");
    let (st, sent) = s.put(&path, Some(&alice.token), json!({"msgtype": "m.text", "body": "mine"})).await;
    assert_eq!(st, 200);
    let own = |body: &serde_json::Value| {
        body["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == sent["event_id"])
            .cloned()
            .unwrap()
    };
    // The sending device, on an initial and on an incremental sync.
    let first = s.sync(&alice, None, 0).await;
    assert_eq!(own(&first)["unsigned"]["transaction_id"], "txn-one", "{first}");
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let (_, second) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/txn-two"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "again"}),
        )
        .await;
    let next = s.sync(&alice, Some(&since), 0).await;
    let events = next["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["event_id"] == second["event_id"] && e["unsigned"]["transaction_id"] == "txn-two"));
    // Not another member, nor another device of the sender.
    let theirs = s.sync(&bob, None, 0).await;
    assert!(own(&theirs)["unsigned"].get("transaction_id").is_none(), "{theirs}");
    let other_device = s.login("alice").await;
    let other = s.sync(&other_device, None, 0).await;
    assert!(own(&other)["unsigned"].get("transaction_id").is_none(), "{other}");
}

#[tokio::test]
async fn state_and_timeline_filters_choose_what_sync_sends() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"name": "R"})).await;
    for i in 0..5 {
        s.send_text(&alice, &room, &format!("m{i}")).await;
        let path = format!("/_matrix/client/v3/rooms/{room}/state/a.madeup.state/k{i}");
        assert_eq!(s.put(&path, Some(&alice.token), json!({"i": i})).await.0, 200);
    }
    let sync_with = |filter: serde_json::Value| {
        let s = &s;
        let alice = &alice;
        let room = room.clone();
        async move {
            let q = filter.to_string().replace('{', "%7B").replace('}', "%7D").replace('"', "%22");
            let (st, body) = s.get(&format!("/_matrix/client/v3/sync?filter={q}"), Some(&alice.token)).await;
            assert_eq!(st, 200, "{body}");
            body["rooms"]["join"][&room].clone()
        }
    };
    // Only the state types asked for; the timeline's limit counts the events that match.
    let r = sync_with(
        json!({"room": {"state": {"types": ["m.room.name"]}, "timeline": {"limit": 3, "types": ["a.madeup.*"]}}}),
    )
    .await;
    let state: Vec<&str> =
        r["state"]["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(state, vec!["m.room.name"], "{r}");
    let timeline = r["timeline"]["events"].as_array().unwrap();
    assert_eq!(timeline.len(), 3, "{r}");
    assert!(timeline.iter().all(|e| e["type"] == "a.madeup.state"), "{r}");
    assert_eq!(r["timeline"]["limited"], true);
    // Excluded types and senders; a limit of 0 sends no events.
    let r = sync_with(json!({"room": {"timeline": {"not_types": ["a.madeup.state"], "limit": 50}}})).await;
    assert!(r["timeline"]["events"].as_array().unwrap().iter().all(|e| e["type"] != "a.madeup.state"), "{r}");
    let r = sync_with(json!({"room": {"timeline": {"limit": 0}, "state": {"not_senders": [alice.user_id]}}})).await;
    assert_eq!(r["timeline"]["events"], json!([]), "{r}");
    assert_eq!(r["state"]["events"], json!([]), "{r}");
}

#[tokio::test]
async fn long_poll_wakes_at_once_on_a_new_message() {
    let s = std::sync::Arc::new(Server::start().await);
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    s.join(&bob, &room).await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    // Nothing new: an incremental sync with a short timeout returns empty after the timeout.
    let started = Instant::now();
    let empty = s.sync(&bob, Some(&since), 300).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(empty["rooms"]["join"].as_object().unwrap().is_empty());
    let (s2, bob2, since2) = (s.clone(), bob.clone(), since.clone());
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let body = s2.sync(&bob2, Some(&since2), 20_000).await;
        (body, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.send_text(&alice, &room, "wake up").await;
    let (body, waited) = waiter.await.unwrap();
    assert!(waited < Duration::from_secs(10), "woke after {waited:?}");
    let events = body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["content"]["body"], "wake up");
    assert_eq!(body["rooms"]["join"][&room]["timeline"]["limited"], false);
    // The next token moves past it.
    let next = body["next_batch"].as_str().unwrap();
    let again = s.sync(&bob, Some(next), 0).await;
    assert!(again["rooms"]["join"].as_object().unwrap().is_empty());
}

#[tokio::test]
async fn invites_and_leaves_appear_in_their_sections() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"name": "Secret club"})).await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.invite(&alice, &room, "@bob:test").await;
    let body = s.sync(&bob, Some(&since), 5000).await;
    let invite = &body["rooms"]["invite"][&room]["invite_state"]["events"];
    let names: Vec<_> = invite.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(names.contains(&"m.room.name"));
    assert!(names.contains(&"m.room.member"));
    let since = body["next_batch"].as_str().unwrap().to_owned();
    s.join(&bob, &room).await;
    let body = s.sync(&bob, Some(&since), 5000).await;
    let joined = &body["rooms"]["join"][&room];
    let all: Vec<&serde_json::Value> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(joined["timeline"]["events"].as_array().unwrap())
        .collect();
    assert!(all.iter().any(|e| e["type"] == "m.room.name"), "a newly joined room comes with its state");
    assert!(all.iter().any(|e| e["type"] == "m.room.create"), "and its history");
    let since = body["next_batch"].as_str().unwrap().to_owned();
    s.post(&format!("/_matrix/client/v3/rooms/{room}/kick"), Some(&alice.token), json!({"user_id": "@bob:test"})).await;
    let body = s.sync(&bob, Some(&since), 5000).await;
    assert!(body["rooms"]["leave"][&room].is_object(), "{body}");
}

#[tokio::test]
async fn timeline_limit_filters_and_bad_tokens() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    for i in 0..5 {
        s.send_text(&alice, &room, &format!("m{i}")).await;
    }
    let filter = urlencode(r#"{"room":{"timeline":{"limit":2}}}"#);
    let (st, body) = s.get(&format!("/_matrix/client/v3/sync?since={since}&filter={filter}"), Some(&alice.token)).await;
    assert_eq!(st, 200);
    let t = &body["rooms"]["join"][&room]["timeline"];
    assert_eq!(t["events"].as_array().unwrap().len(), 2);
    assert_eq!(t["limited"], true);
    assert_eq!(t["events"][1]["content"]["body"], "m4");
    // prev_batch continues backwards through /messages.
    let prev = t["prev_batch"].as_str().unwrap();
    let (_, page) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={prev}&limit=1"), Some(&alice.token)).await;
    assert_eq!(page["chunk"][0]["content"]["body"], "m2");
    // A stored filter by ID.
    let (_, f) = s
        .post(
            "/_matrix/client/v3/user/@alice:test/filter",
            Some(&alice.token),
            json!({"room": {"timeline": {"limit": 1}}}),
        )
        .await;
    let fid = f["filter_id"].as_str().unwrap();
    let (_, body) = s.get(&format!("/_matrix/client/v3/sync?filter={fid}"), Some(&alice.token)).await;
    assert_eq!(body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().len(), 1);
    assert_eq!(s.get("/_matrix/client/v3/sync?since=garbage", Some(&alice.token)).await.0, 400);
    assert_eq!(s.get("/_matrix/client/v3/sync?timeout=soon", Some(&alice.token)).await.0, 400);
    assert_eq!(s.get("/_matrix/client/v3/sync?filter=%7Bbad", Some(&alice.token)).await.0, 400);
    assert_eq!(s.get("/_matrix/client/v3/sync?filter=12345", Some(&alice.token)).await.0, 404);
}

#[tokio::test]
async fn account_data_arrives_through_sync() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.put("/_matrix/client/v3/user/@alice:test/account_data/org.example.x", Some(&alice.token), json!({"v": 1})).await;
    let body = s.sync(&alice, Some(&since), 5000).await;
    assert_eq!(body["account_data"]["events"][0], json!({"type": "org.example.x", "content": {"v": 1}}));
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Initial syncs reuse each room's serialised section until the room changes: every kind of
/// change must show in the next initial sync, for every member, across a restart too.
#[tokio::test]
async fn repeated_initial_syncs_see_every_change() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "name": "first"})).await;
    let texts = |body: &serde_json::Value| -> Vec<String> {
        body["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect()
    };
    // The second is served from the sections the first built.
    let first = s.sync(&alice, None, 0).await;
    assert_eq!(first["rooms"], s.sync(&alice, None, 0).await["rooms"]);
    s.send_text(&alice, &room, "one").await;
    assert_eq!(texts(&s.sync(&alice, None, 0).await), ["one"]);

    // Another member, and the summary and unread counts that follow.
    s.join(&bob, &room).await;
    s.send_text(&alice, &room, "two").await;
    let a = s.sync(&alice, None, 0).await;
    assert_eq!(a["rooms"]["join"][&room]["summary"]["m.joined_member_count"], 2);
    let b = s.sync(&bob, None, 0).await;
    assert_eq!(texts(&b), ["one", "two"]);
    assert_eq!(b["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 1);
    let (_, sent) = s.send_text(&alice, &room, "three").await;
    let b = s.sync(&bob, None, 0).await;
    assert_eq!(b["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 2);

    // State and redactions change earlier parts of the section.
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/");
    assert_eq!(s.put(&path, Some(&alice.token), json!({"name": "second"})).await.0, 200);
    let three = sent["event_id"].as_str().unwrap();
    let redact = format!("/_matrix/client/v3/rooms/{room}/redact/{three}/t1");
    assert_eq!(s.put(&redact, Some(&alice.token), json!({})).await.0, 200);
    let check = |body: &serde_json::Value| {
        let r = &body["rooms"]["join"][&room];
        let all: Vec<&serde_json::Value> = r["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .chain(r["state"]["events"].as_array().unwrap())
            .collect();
        // The new name is in the timeline; the state before it is not the stale one.
        let names: Vec<&str> =
            all.iter().filter(|e| e["type"] == "m.room.name").filter_map(|e| e["content"]["name"].as_str()).collect();
        assert_eq!(names.iter().filter(|n| **n == "second").count(), 1, "{names:?}");
        assert!(r["state"]["events"].as_array().unwrap().iter().all(|e| e["content"]["name"] != "second"));
        let redacted = all.iter().find(|e| e["event_id"] == three).unwrap();
        assert_eq!(redacted["content"], json!({}));
    };
    check(&s.sync(&alice, None, 0).await);
    check(&s.sync(&bob, None, 0).await);

    // After a restart the cache starts empty; counts and sections are read again.
    let dir = s.stop();
    let s = Server::start_in(dir).await;
    let b = s.sync(&bob, None, 0).await;
    check(&b);
    assert_eq!(b["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 2);
    s.send_text(&alice, &room, "four").await;
    let b = s.sync(&bob, None, 0).await;
    assert_eq!(texts(&b).last().map(String::as_str), Some("four"));
    assert_eq!(b["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 3);
}

/// A sync with a filter given inline, since `since` if any.
async fn sync_filtered(s: &Server, user: &User, filter: &serde_json::Value, since: Option<&str>) -> serde_json::Value {
    let mut path = format!("/_matrix/client/v3/sync?filter={}", urlencode(&filter.to_string()));
    if let Some(since) = since {
        path.push_str(&format!("&since={since}"));
    }
    let (st, body) = s.get(&path, Some(&user.token)).await;
    assert_eq!(st, 200, "{body}");
    body
}

/// The state keys of the member events in a room's `state` section, sorted.
fn state_members(room: &serde_json::Value) -> Vec<String> {
    let mut members: Vec<String> = room["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    members.sort();
    members
}

#[tokio::test]
async fn lazy_loading_sends_only_the_memberships_the_timeline_needs() {
    let s = Server::start().await;
    let (alice, bob, carol) = (s.register("alice").await, s.register("bob").await, s.register("carol").await);
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    assert_eq!(s.join(&carol, &room).await.0, 200);
    for i in 0..5 {
        s.send_text(&bob, &room, &format!("bob {i}")).await;
    }
    let lazy = json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 5}}});
    // Initial: Bob (who speaks in the timeline) and Alice herself; not Carol.
    let body = sync_filtered(&s, &alice, &lazy, None).await;
    assert_eq!(state_members(&body["rooms"]["join"][&room]), vec!["@alice:test", "@bob:test"], "{body}");
    // Without lazy loading every member is there.
    let full = sync_filtered(&s, &alice, &json!({"room": {"timeline": {"limit": 5}}}), None).await;
    assert_eq!(state_members(&full["rooms"]["join"][&room]), vec!["@alice:test", "@bob:test", "@carol:test"]);

    // Incremental: Carol speaks, so her membership comes along once; Bob's was sent already.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    s.send_text(&carol, &room, "carol here").await;
    s.send_text(&bob, &room, "bob again").await;
    let next = sync_filtered(&s, &alice, &lazy, Some(&since)).await;
    assert_eq!(state_members(&next["rooms"]["join"][&room]), vec!["@carol:test"], "{next}");
    let since = next["next_batch"].as_str().unwrap().to_owned();
    s.send_text(&carol, &room, "carol again").await;
    let again = sync_filtered(&s, &alice, &lazy, Some(&since)).await;
    assert_eq!(state_members(&again["rooms"]["join"][&room]), Vec::<String>::new(), "not sent twice: {again}");
    // Unless the filter asks for redundant memberships.
    s.send_text(&carol, &room, "and again").await;
    let redundant = json!({"room": {"state": {"lazy_load_members": true, "include_redundant_members": true}}});
    let body = sync_filtered(&s, &alice, &redundant, Some(&since)).await;
    assert_eq!(state_members(&body["rooms"]["join"][&room]), vec!["@carol:test"], "{body}");
    // Another device of Alice's was sent nothing yet: its initial sync starts afresh.
    let other = s.login("alice").await;
    let body = sync_filtered(&s, &other, &lazy, None).await;
    assert_eq!(state_members(&body["rooms"]["join"][&room]), vec!["@alice:test", "@bob:test", "@carol:test"]);
}

#[tokio::test]
async fn ignored_users_messages_and_invites_are_not_shown() {
    let s = Server::start().await;
    let (alice, bob, carol) = (s.register("alice").await, s.register("bob").await, s.register("carol").await);
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    assert_eq!(s.join(&carol, &room).await.0, 200);
    s.send_text(&bob, &room, "from bob").await;
    s.send_text(&carol, &room, "from carol").await;

    let path = format!("/_matrix/client/v3/user/{}/account_data/m.ignored_user_list", alice.user_id);
    let ignore_bob = json!({"ignored_users": {bob.user_id.clone(): {}}});
    assert_eq!(s.put(&path, Some(&alice.token), ignore_bob).await.0, 200);
    let bodies = |events: &serde_json::Value| -> Vec<String> {
        events
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.message")
            .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
            .collect()
    };
    // Alice's timeline and /messages leave Bob's messages out; his membership stays (state).
    let body = s.sync(&alice, None, 0).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]["events"]), vec!["from carol"], "{joined}");
    let (st, page) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&alice.token)).await;
    assert_eq!((st, bodies(&page["chunk"])), (200, vec!["from carol".to_owned()]), "{page}");
    assert!(
        page["chunk"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.member" && e["sender"] == bob.user_id)
    );
    // Carol, who ignores nobody, sees both.
    let body = s.sync(&carol, None, 0).await;
    assert_eq!(bodies(&body["rooms"]["join"][&room]["timeline"]["events"]), vec!["from bob", "from carol"]);

    // A room whose only news is Bob's is left out of Alice's incremental sync.
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.send_text(&bob, &room, "bob again").await;
    let next = s.sync(&alice, Some(&since), 0).await;
    assert!(next["rooms"]["join"].get(&room).is_none(), "{next}");

    // Bob's invites do not show; Carol's do.
    let bobs = s.create_room(&bob, json!({})).await;
    assert_eq!(s.invite(&bob, &bobs, &alice.user_id).await.0, 200);
    let carols = s.create_room(&carol, json!({})).await;
    assert_eq!(s.invite(&carol, &carols, &alice.user_id).await.0, 200);
    let body = s.sync(&alice, None, 0).await;
    let invites = body["rooms"]["invite"].as_object().unwrap();
    assert!(invites.contains_key(&carols) && !invites.contains_key(&bobs), "{body}");

    // Un-ignoring brings Bob's messages back.
    assert_eq!(s.put(&path, Some(&alice.token), json!({"ignored_users": {}})).await.0, 200);
    let body = s.sync(&alice, None, 0).await;
    assert!(bodies(&body["rooms"]["join"][&room]["timeline"]["events"]).contains(&"bob again".to_owned()));
}

#[tokio::test]
async fn a_profile_change_is_an_event_not_a_new_room() {
    let s = Server::start().await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/profile/{}/displayname", bob.user_id);
    assert_eq!(s.put(&path, Some(&bob.token), json!({"displayname": "Robert"})).await.0, 200);
    // Only the new member event, in the timeline; no state resent as for a room just joined.
    let next = s.sync(&bob, Some(&since), 0).await;
    let joined = &next["rooms"]["join"][&room];
    assert_eq!(joined["state"]["events"], json!([]), "{joined}");
    let timeline = joined["timeline"]["events"].as_array().unwrap();
    assert_eq!(timeline.len(), 1, "{joined}");
    assert_eq!(timeline[0]["content"]["displayname"], "Robert");
    assert_eq!(joined["timeline"]["limited"], false);
    // Someone who really joins since is sent the room whole.
    let carol = s.register("carol").await;
    let since = s.sync(&carol, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(s.join(&carol, &room).await.0, 200);
    let next = s.sync(&carol, Some(&since), 0).await;
    let section = next["rooms"]["join"][&room].to_string();
    assert!(section.contains("m.room.create") && section.contains("\"@alice:test\""), "{next}");
}

#[tokio::test]
async fn messages_and_context_lazy_load_the_senders_memberships() {
    let s = Server::start().await;
    let (alice, bob, carol) = (s.register("alice").await, s.register("bob").await, s.register("carol").await);
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    assert_eq!(s.join(&carol, &room).await.0, 200);
    s.send_text(&carol, &room, "carol speaks").await;
    let (_, sent) = s.send_text(&bob, &room, "bob speaks").await;
    let bob_event = sent["event_id"].as_str().unwrap().to_owned();
    s.send_text(&bob, &room, "bob again").await;
    let lazy = urlencode(&json!({"lazy_load_members": true, "types": ["m.room.message"]}).to_string());

    let (st, page) = s
        .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=2&filter={lazy}"), Some(&alice.token))
        .await;
    assert_eq!(st, 200, "{page}");
    let members = |v: &serde_json::Value| -> Vec<String> {
        let mut m: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{}={}", e["state_key"].as_str().unwrap(), e["content"]["membership"].as_str().unwrap()))
            .collect();
        m.sort();
        m
    };
    assert_eq!(members(&page["state"]), vec!["@bob:test=join"], "only Bob spoke on this page: {page}");
    // Without lazy loading there is no state.
    let (_, page) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=2"), Some(&alice.token)).await;
    assert_eq!(page["state"], json!([]));

    // /context: the senders of the event and of those around it; the filter applies to those
    // around it.
    let (st, ctx) = s
        .get(&format!("/_matrix/client/v3/rooms/{room}/context/{bob_event}?limit=2&filter={lazy}"), Some(&alice.token))
        .await;
    assert_eq!(st, 200, "{ctx}");
    assert_eq!(members(&ctx["state"]), vec!["@bob:test=join", "@carol:test=join"], "{ctx}");
    assert!(ctx["events_before"].as_array().unwrap().iter().all(|e| e["type"] == "m.room.message"), "{ctx}");
    let (st, b) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/context/{bob_event}?filter=%7Bnope"), Some(&alice.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{b}");
}

#[tokio::test]
async fn initial_sync_snapshots_every_room_and_stops_at_a_leave() {
    let s = Server::start().await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let room = s.create_room(&alice, json!({"preset": "public_chat", "visibility": "public", "topic": "T"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    s.send_text(&alice, &room, "m1").await;
    s.send_text(&alice, &room, "m2").await;
    let tag = format!("/_matrix/client/v3/user/{}/rooms/{room}/tags/u.work", bob.user_id);
    assert_eq!(s.put(&tag, Some(&bob.token), json!({"order": 0.5})).await.0, 200);
    let invite_room = s.create_room(&alice, json!({})).await;
    assert_eq!(s.invite(&alice, &invite_room, &bob.user_id).await.0, 200);

    let (st, body) = s.get("/_matrix/client/v3/initialSync?limit=2", Some(&bob.token)).await;
    assert_eq!(st, 200, "{body}");
    assert!(body["end"].as_str().is_some_and(|e| e.starts_with('s')), "{body}");
    let rooms = body["rooms"].as_array().unwrap();
    let entry = |id: &str| rooms.iter().find(|r| r["room_id"] == id).cloned().unwrap_or_else(|| panic!("{id}: {body}"));
    let joined = entry(&room);
    assert_eq!((joined["membership"].as_str(), joined["visibility"].as_str()), (Some("join"), Some("public")));
    let chunk = joined["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 2, "{joined}");
    assert_eq!((chunk[1]["content"]["body"].as_str(), chunk[1]["user_id"].as_str()), (Some("m2"), Some("@alice:test")));
    assert!(joined["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.topic"), "{joined}");
    assert_eq!(joined["account_data"][0]["type"], "m.tag", "{joined}");
    let invited = entry(&invite_room);
    assert_eq!((invited["membership"].as_str(), invited["inviter"].as_str()), (Some("invite"), Some("@alice:test")));
    // The user's own presence is there (a client taking a snapshot is online).
    assert!(body["presence"].as_array().unwrap().iter().any(|p| p["content"]["user_id"] == bob.user_id), "{body}");
    let (_, none) = s.get("/_matrix/client/v3/initialSync?limit=0", Some(&bob.token)).await;
    let zero = none["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == room).unwrap().clone();
    assert_eq!(zero["messages"]["chunk"], json!([]));

    // Receipts never move back.
    let (_, first) = s.send_text(&alice, &room, "m3").await;
    let (_, second) = s.send_text(&alice, &room, "m4").await;
    for id in [&second["event_id"], &first["event_id"]] {
        let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", id.as_str().unwrap());
        assert_eq!(s.post(&path, Some(&bob.token), json!({})).await.0, 200);
    }
    let (_, body) = s.get("/_matrix/client/v3/initialSync", Some(&bob.token)).await;
    let receipts = body["receipts"].to_string();
    assert!(receipts.contains(second["event_id"].as_str().unwrap()), "{receipts}");
    assert!(!receipts.contains(first["event_id"].as_str().unwrap()), "the receipt moved back: {receipts}");

    // Bob leaves: what follows is not his to see, in either snapshot (archived rooms only when
    // asked for).
    let leave = format!("/_matrix/client/v3/rooms/{room}/leave");
    assert_eq!(s.post(&leave, Some(&bob.token), json!({})).await.0, 200);
    s.send_text(&alice, &room, "after bob").await;
    let topic = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic");
    assert_eq!(s.put(&topic, Some(&alice.token), json!({"topic": "after"})).await.0, 200);
    let (_, body) = s.get("/_matrix/client/v3/initialSync", Some(&bob.token)).await;
    assert!(body["rooms"].as_array().unwrap().iter().all(|r| r["room_id"] != room), "{body}");
    let (_, body) = s.get("/_matrix/client/v3/initialSync?archived=true", Some(&bob.token)).await;
    let left = body["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == room).unwrap().clone();
    assert_eq!(left["membership"], "leave");
    assert!(!left.to_string().contains("after bob") && !left.to_string().contains("\"after\""), "{left}");
    let (st, one) = s.get(&format!("/_matrix/client/v3/rooms/{room}/initialSync?limit=2"), Some(&bob.token)).await;
    assert_eq!((st, one["membership"].as_str()), (200, Some("leave")), "{one}");
    assert!(!one.to_string().contains("after bob"), "{one}");
    assert_eq!((one["presence"].clone(), one["receipts"].clone()), (json!([]), json!([])));
    // Someone who was never in the room may not take its snapshot.
    let carol = s.register("carol").await;
    let (st, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/initialSync"), Some(&carol.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    let (st, b) = s.get("/_matrix/client/v3/initialSync?limit=x", Some(&carol.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{b}");
}

#[tokio::test]
async fn the_v1_event_stream_carries_account_data_and_receipts() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let (_, first) = s.get("/_matrix/client/v3/events?timeout=0", Some(&alice.token)).await;
    let from = first["end"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/user/{}/account_data/org.example.x", alice.user_id);
    assert_eq!(s.put(&path, Some(&alice.token), json!({"v": 1})).await.0, 200);
    let path = format!("/_matrix/client/v3/user/{}/rooms/{room}/account_data/org.example.y", alice.user_id);
    assert_eq!(s.put(&path, Some(&alice.token), json!({"v": 2})).await.0, 200);
    let (st, body) = s.get(&format!("/_matrix/client/v3/events?timeout=0&from={from}"), Some(&alice.token)).await;
    assert_eq!(st, 200, "{body}");
    let chunk = body["chunk"].as_array().unwrap();
    assert!(chunk.iter().any(|e| e["type"] == "org.example.x" && e.get("room_id").is_none()), "{body}");
    assert!(chunk.iter().any(|e| e["type"] == "org.example.y" && e["room_id"] == room), "{body}");
}

#[tokio::test]
async fn unnamed_rooms_come_with_heroes_named_rooms_without() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let mut others = Vec::new();
    for name in ["bob", "carol", "dan", "erin", "frank", "gina"] {
        others.push(s.register(name).await);
    }
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    for user in &others {
        assert_eq!(s.join(user, &room).await.0, 200);
    }
    let summary = |body: &serde_json::Value| body["rooms"]["join"][&room]["summary"].clone();
    // Five others, sorted, never the syncing user.
    let body = s.sync(&alice, None, 0).await;
    assert_eq!(
        summary(&body)["m.heroes"],
        json!(["@bob:test", "@carol:test", "@dan:test", "@erin:test", "@frank:test"]),
        "{}",
        summary(&body)
    );
    assert_eq!(summary(&body)["m.joined_member_count"], 7);
    let body = s.sync(&others[0], None, 0).await;
    assert_eq!(summary(&body)["m.heroes"][0], "@alice:test", "{}", summary(&body));
    assert!(!summary(&body)["m.heroes"].to_string().contains("@bob:test"));
    // A name makes heroes unnecessary.
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.name");
    assert_eq!(s.put(&path, Some(&alice.token), json!({"name": "Named"})).await.0, 200);
    let body = s.sync(&alice, None, 0).await;
    assert!(summary(&body).get("m.heroes").is_none(), "{}", summary(&body));
}

#[tokio::test]
async fn coming_to_share_a_room_brings_the_others_presence() {
    let s = Server::start().await;
    let (alice, bob, carol) = (s.register("alice").await, s.register("bob").await, s.register("carol").await);
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let path = format!("/_matrix/client/v3/presence/{}/status", alice.user_id);
    assert_eq!(s.put(&path, Some(&alice.token), json!({"presence": "online"})).await.0, 200);
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let next = s.sync(&bob, Some(&since), 0).await;
    let senders = |body: &serde_json::Value| -> Vec<String> {
        body["presence"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["sender"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(senders(&next).contains(&alice.user_id), "{next}");
    assert!(!senders(&next).contains(&carol.user_id), "Carol shares no room: {next}");
    // Once only.
    let again = s.sync(&bob, Some(next["next_batch"].as_str().unwrap()), 0).await;
    assert!(!senders(&again).contains(&alice.user_id), "{again}");
    // Carol, never online, comes as offline to Alice when she joins.
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(s.join(&carol, &room).await.0, 200);
    let next = s.sync(&alice, Some(&since), 0).await;
    let carols: Vec<&serde_json::Value> =
        next["presence"]["events"].as_array().unwrap().iter().filter(|e| e["sender"] == carol.user_id).collect();
    assert_eq!(carols.len(), 1, "{next}");
}

#[tokio::test]
async fn event_format_federation_sends_events_as_stored_and_a_whole_timeline_paginates_back_to_an_end() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"name": "R"})).await;
    let (_, sent) = s.send_text(&alice, &room, "as stored").await;
    let get_sync = |filter: serde_json::Value| {
        let (s, alice) = (&s, &alice);
        async move {
            let q = filter.to_string().replace('{', "%7B").replace('}', "%7D").replace('"', "%22");
            let (st, body) = s.get(&format!("/_matrix/client/v3/sync?filter={q}"), Some(&alice.token)).await;
            assert_eq!(st, 200, "{body}");
            body
        }
    };
    let body = get_sync(json!({"event_format": "federation", "room": {"timeline": {"limit": 1}}})).await;
    let event = &body["rooms"]["join"][&room]["timeline"]["events"][0];
    for key in ["event_id", "prev_events", "auth_events", "depth", "hashes", "signatures", "origin_server_ts"] {
        assert!(event.get(key).is_some(), "{key} missing: {event}");
    }
    assert_eq!((&event["event_id"], &event["content"]["body"]), (&sent["event_id"], &json!("as stored")));
    // The client format (the default, or asked for) has none of the federation fields.
    let body = get_sync(json!({"event_format": "client", "room": {"timeline": {"limit": 1}}})).await;
    let event = &body["rooms"]["join"][&room]["timeline"]["events"][0];
    assert!(event.get("prev_events").is_none() && event.get("signatures").is_none(), "{event}");

    // A timeline holding the whole room (not limited): paginating back from its prev_batch
    // reads the room again and ends with an `end`; from there, nothing and no `end`, as
    // Synapse answers.
    let body = s.sync(&alice, None, 0).await;
    let timeline = &body["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], false, "{timeline}");
    let prev = timeline["prev_batch"].as_str().unwrap();
    let (st, page) = s
        .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={prev}&limit=50"), Some(&alice.token))
        .await;
    assert_eq!(st, 200, "{page}");
    assert!(!page["chunk"].as_array().unwrap().is_empty(), "{page}");
    let end = page["end"].as_str().unwrap_or_else(|| panic!("an end: {page}"));
    let (_, page) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={end}&limit=50"), Some(&alice.token)).await;
    assert_eq!(page["chunk"], json!([]), "{page}");
    assert!(page.get("end").is_none(), "{page}");
}
