//! Every room version Myelin speaks, on one server: rooms of each are made and used, event IDs
//! have each version's format, and room version 12's rules hold (room IDs named after the
//! create event, creators with unlimited power, upgrades into and out of it).

use serde_json::{Value, json};

use crate::harness::{Server, User};

const VERSIONS: [&str; 12] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

async fn state_of(s: &Server, user: &User, room: &str, kind: &str) -> (u16, Value) {
    s.get(&format!("/_matrix/client/v3/rooms/{room}/state/{kind}"), Some(&user.token)).await
}

/// A path segment with everything but letters and digits percent-encoded (version 3 event
/// IDs hold `/` and `+`; versions 1 and 2 hold `:`).
fn segment(id: &str) -> String {
    id.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

async fn event(s: &Server, user: &User, room: &str, event_id: &str) -> Value {
    let path = format!("/_matrix/client/v3/rooms/{room}/event/{}", segment(event_id));
    let (st, e) = s.get(&path, Some(&user.token)).await;
    assert_eq!(st, 200, "{e}");
    e
}

async fn joined_rooms(s: &Server, user: &User) -> Vec<Value> {
    s.get("/_matrix/client/v3/joined_rooms", Some(&user.token)).await.1["joined_rooms"].as_array().unwrap().clone()
}

#[tokio::test]
async fn rooms_of_every_version_are_made_and_used_with_their_event_id_formats() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    for version in VERSIONS {
        let room = s.create_room(&alice, json!({"room_version": version, "preset": "public_chat"})).await;
        let (st, create) = state_of(&s, &alice, &room, "m.room.create").await;
        assert_eq!((st, create["room_version"].as_str()), (200, Some(version)), "{create}");
        // Versions 1 to 10 name the creator in the create event; 11 on use its sender.
        assert_eq!(create.get("creator").is_some(), version.parse::<u32>().unwrap() <= 10, "v{version}: {create}");
        assert_eq!(s.join(&bob, &room).await.0, 200, "v{version}");
        let (st, sent) = s.send_text(&bob, &room, "hello").await;
        assert_eq!(st, 200, "v{version}: {sent}");
        let id = sent["event_id"].as_str().unwrap();
        // Versions 1 and 2: `$local:server`. Then `$` and an unpadded base64 SHA-256 (43
        // characters): the standard alphabet in version 3, the URL-safe one from 4.
        let hash = &id[1..];
        if ["1", "2"].contains(&version) {
            assert!(id.ends_with(":test"), "v{version}: {id}");
        } else {
            assert_eq!(hash.len(), 43, "v{version}: {id}");
            let url_safe = hash.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            let standard = hash.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
            assert!(if version == "3" { standard } else { url_safe }, "v{version}: {id}");
        }
        let (st, _) = s
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"),
                Some(&alice.token),
                json!({"topic": "t"}),
            )
            .await;
        assert_eq!(st, 200, "v{version}");
        // Bob (power 0) may not set the topic, in any version.
        let (st, b) = s
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"),
                Some(&bob.token),
                json!({"topic": "x"}),
            )
            .await;
        assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "v{version}");
        // Alice (a moderator, or a creator) redacts Bob's message: its content goes.
        let (st, b) = s
            .put(
                &format!("/_matrix/client/v3/rooms/{room}/redact/{}/r{version}", segment(id)),
                Some(&alice.token),
                json!({"reason": "tidy"}),
            )
            .await;
        assert_eq!(st, 200, "v{version}: {b}");
        let redacted = event(&s, &bob, &room, id).await;
        assert_eq!(redacted["content"], json!({}), "v{version}: {redacted}");
        // Bob leaves; Alice bans him; he cannot come back.
        let (st, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
        assert_eq!(st, 200);
        let (st, _) = s
            .post(&format!("/_matrix/client/v3/rooms/{room}/ban"), Some(&alice.token), json!({"user_id": bob.user_id}))
            .await;
        assert_eq!(st, 200, "v{version}");
        assert_eq!(s.join(&bob, &room).await.0, 403, "v{version}");
    }
    // Versions Myelin does not speak are refused, and nothing is made.
    let before = joined_rooms(&s, &alice).await.len();
    for version in ["0", "13", "org.example.v99"] {
        let (st, b) =
            s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"room_version": version})).await;
        assert_eq!((st, b["errcode"].as_str()), (400, Some("M_UNSUPPORTED_ROOM_VERSION")), "v{version}: {b}");
    }
    assert_eq!(joined_rooms(&s, &alice).await.len(), before);
}

#[tokio::test]
async fn room_version_12_gives_creators_unlimited_power_and_names_rooms_after_their_create_event() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;

    // A trusted private chat makes its invitees creators too (as Synapse does in version 12).
    let room = s
        .create_room(&alice, json!({"room_version": "12", "preset": "trusted_private_chat", "invite": [bob.user_id]}))
        .await;
    assert!(!room.contains(':'), "a version 12 room ID names no server: {room}");
    assert_eq!(room.len(), 44, "{room}");
    let (_, create) = state_of(&s, &alice, &room, "m.room.create").await;
    assert_eq!(create["additional_creators"], json!([bob.user_id]), "{create}");
    let (_, pl) = state_of(&s, &alice, &room, "m.room.power_levels").await;
    assert!(pl["users"].get(&alice.user_id).is_none() && pl["users"].get(&bob.user_id).is_none(), "{pl}");
    assert_eq!(s.join(&bob, &room).await.0, 200);

    // Creators may not be listed in the power levels, whoever tries.
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels");
    let mut listed = pl.clone();
    listed["users"][&alice.user_id] = json!(100);
    let (st, b) = s.put(&path, Some(&alice.token), listed).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    // Bob, an additional creator, has unlimited power: he makes Carol a moderator at 100.
    let mut carol_at_100 = pl.clone();
    carol_at_100["users"][&carol.user_id] = json!(100);
    let (st, b) = s.put(&path, Some(&bob.token), carol_at_100).await;
    assert_eq!(st, 200, "{b}");
    let (st, _) = s.invite(&alice, &room, &carol.user_id).await;
    assert_eq!(st, 200);
    assert_eq!(s.join(&carol, &room).await.0, 200);
    // Carol (100) may set the name but may not upgrade the room (the tombstone needs 150) nor
    // kick a creator; a creator may upgrade.
    let (st, _) = s
        .put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"), Some(&carol.token), json!({"name": "n"}))
        .await;
    assert_eq!(st, 200);
    let upgrade = format!("/_matrix/client/v3/rooms/{room}/upgrade");
    let (st, b) = s.post(&upgrade, Some(&carol.token), json!({"new_version": "12"})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    let (st, b) = s
        .post(&format!("/_matrix/client/v3/rooms/{room}/kick"), Some(&carol.token), json!({"user_id": alice.user_id}))
        .await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");

    // Bad `additional_creators` are refused before anything is made.
    let before = joined_rooms(&s, &alice).await.len();
    let (st, b) = s
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({"room_version": "12", "creation_content": {"additional_creators": ["not a user"]}}),
        )
        .await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{b}");
    assert_eq!(joined_rooms(&s, &alice).await.len(), before);

    // A version 12 room ID names no server: joining one this server is not in needs a via.
    let unknown = format!("!{}", "A".repeat(43));
    let (st, b) = s.join(&carol, &unknown).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");
}

#[tokio::test]
async fn rooms_upgrade_from_10_to_12_and_back_with_their_power_levels() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let old = s
        .create_room(
            &alice,
            json!({"room_version": "10", "preset": "public_chat", "name": "Old",
                   "power_level_content_override": {"users": {alice.user_id.clone(): 100, bob.user_id.clone(): 50}}}),
        )
        .await;
    assert!(old.contains(':'), "{old}");
    assert_eq!(s.join(&bob, &old).await.0, 200);
    // Bob (50) may not upgrade.
    let (st, _) = s
        .post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), Some(&bob.token), json!({"new_version": "12"}))
        .await;
    assert_eq!(st, 403);
    let (st, b) = s
        .post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), Some(&alice.token), json!({"new_version": "12"}))
        .await;
    assert_eq!(st, 200, "{b}");
    let new = b["replacement_room"].as_str().unwrap().to_owned();
    assert!(!new.contains(':'), "the new room has a version 12 ID: {new}");
    let (_, tombstone) = state_of(&s, &alice, &old, "m.room.tombstone").await;
    assert_eq!(tombstone["replacement_room"], new.as_str());
    let (_, create) = state_of(&s, &alice, &new, "m.room.create").await;
    assert_eq!((create["room_version"].as_str(), create["predecessor"]["room_id"].as_str()), (Some("12"), Some(&*old)));
    // The upgrader is the new room's creator: not listed; Bob keeps his 50; the name moved.
    let (_, pl) = state_of(&s, &alice, &new, "m.room.power_levels").await;
    assert!(pl["users"].get(&alice.user_id).is_none(), "{pl}");
    assert_eq!(pl["users"][&bob.user_id], 50, "{pl}");
    let (_, name) = state_of(&s, &alice, &new, "m.room.name").await;
    assert_eq!(name["name"], "Old");
    assert_eq!(s.join(&bob, &new).await.0, 200);
    assert_eq!(s.send_text(&bob, &new, "in the new room").await.0, 200);

    // And back out of version 12: the upgrader is listed at 100 again.
    let (st, b) = s
        .post(&format!("/_matrix/client/v3/rooms/{new}/upgrade"), Some(&alice.token), json!({"new_version": "11"}))
        .await;
    assert_eq!(st, 200, "{b}");
    let newer = b["replacement_room"].as_str().unwrap().to_owned();
    assert!(newer.contains(':'), "{newer}");
    let (_, pl) = state_of(&s, &alice, &newer, "m.room.power_levels").await;
    assert_eq!(pl["users"][&alice.user_id], 100, "{pl}");
    assert_eq!(pl["users"][&bob.user_id], 50, "{pl}");
    let (st, b) = s
        .post(&format!("/_matrix/client/v3/rooms/{newer}/upgrade"), Some(&alice.token), json!({"new_version": "13"}))
        .await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_UNSUPPORTED_ROOM_VERSION")), "{b}");
}

#[tokio::test]
async fn many_identical_rooms_made_at_once_get_distinct_ids() {
    // A version 12 room is named after its create event, whose only entropy is its
    // timestamp: the same user making the same room many times at once must still get as
    // many rooms (the benchmark found this answering 500).
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let url = s.url("/_matrix/client/v3/createRoom");
    let http = reqwest::Client::new();
    let requests = (0..20).map(|_| {
        let request = http.post(&url).bearer_auth(&alice.token).json(&json!({"preset": "public_chat"}));
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    });
    let answers = futures_join_all(requests).await;
    let mut ids = std::collections::HashSet::new();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        ids.insert(body["room_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 20);
    assert_eq!(joined_rooms(&s, &alice).await.len(), 20);
}

/// Runs the futures at once and waits for all.
async fn futures_join_all<F: std::future::Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn one_user_making_many_identical_version_12_rooms_at_once_gets_distinct_rooms() {
    // A version 12 room is named after its create event, whose only entropy is its timestamp:
    // the same user making rooms with the same create content at once must still get a room
    // each (the benchmark made 4 at a time and once got "could not find a free room ID").
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let creates = (0..24).map(|_| s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({})));
    let answers = futures::future::join_all(creates).await;
    let mut rooms: Vec<String> = answers
        .into_iter()
        .map(|(st, b)| {
            assert_eq!(st, 200, "{b}");
            b["room_id"].as_str().unwrap().to_owned()
        })
        .collect();
    rooms.sort();
    rooms.dedup();
    assert_eq!(rooms.len(), 24);
    assert_eq!(joined_rooms(&s, &alice).await.len(), 24);
}
