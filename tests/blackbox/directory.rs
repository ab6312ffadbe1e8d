//! Aliases, the room directory and the user directory, with their module callbacks
//! (spec/synapse-modules.md cases 38-43).

use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test]
async fn aliases_create_resolve_delete_and_join_by_alias() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let path = "/_matrix/client/v3/directory/room/%23lobby:test";
    assert_eq!(s.put(path, Some(&alice.token), json!({"room_id": room})).await, (200, json!({})));
    assert_eq!(s.get(path, None).await, (200, json!({"room_id": room, "servers": ["test"]})));
    let (st, b) = s.put(path, Some(&alice.token), json!({"room_id": room})).await;
    assert_eq!((st, b), (409, json!({"errcode": "M_UNKNOWN", "error": "Room alias #lobby:test already exists"})));
    let (st, b) = s.put("/_matrix/client/v3/directory/room/lobby", Some(&alice.token), json!({"room_id": room})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) =
        s.put("/_matrix/client/v3/directory/room/%23x:elsewhere", Some(&alice.token), json!({"room_id": room})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, _) =
        s.put("/_matrix/client/v3/directory/room/%23x:test", Some(&bob.token), json!({"room_id": room})).await;
    assert_eq!(st, 403, "must be in the room");
    let (st, _) = s
        .put("/_matrix/client/v3/directory/room/%23x:test", Some(&alice.token), json!({"room_id": "!nope:test"}))
        .await;
    assert_eq!(st, 404);
    let (st, b) = s.get("/_matrix/client/v3/directory/room/%23missing:test", None).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    // Join by alias.
    let (st, b) = s.post("/_matrix/client/v3/join/%23lobby:test", Some(&bob.token), json!({})).await;
    assert_eq!((st, b["room_id"].as_str()), (200, Some(room.as_str())));
    let (st, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/aliases"), Some(&bob.token)).await;
    assert_eq!((st, b), (200, json!({"aliases": ["#lobby:test"]})));
    // Bob (no power) may not delete alice's alias; alice may.
    assert_eq!(s.call("DELETE", path, Some(&bob.token), None).await.0, 403);
    assert_eq!(s.call("DELETE", path, Some(&alice.token), None).await.0, 200);
    assert_eq!(s.get(path, None).await.0, 404);
    assert_eq!(s.call("DELETE", path, Some(&alice.token), None).await.0, 404);
}

#[tokio::test]
async fn create_room_alias_and_canonical_alias_validation() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"room_alias_name": "club"})).await;
    assert_eq!(st, 200);
    assert_eq!(b["room_alias"], "#club:test");
    let room = b["room_id"].as_str().unwrap().to_owned();
    let (_, c) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias"), Some(&alice.token)).await;
    assert_eq!(c, json!({"alias": "#club:test"}));
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"room_alias_name": "club"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_ROOM_IN_USE")));
    let (st, b) =
        s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"room_alias_name": "bad alias"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let other = s.create_room(&alice, json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{other}/state/m.room.canonical_alias");
    let (st, b) = s.put(&path, Some(&alice.token), json!({"alias": "#club:test"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_ALIAS")), "the alias points at another room");
    let (st, _) = s.put(&path, Some(&alice.token), json!({"alt_aliases": ["#nowhere:test"]})).await;
    assert_eq!(st, 400);
    // Something that is not an alias at all is an invalid parameter (Synapse).
    let (st, b) = s.put(&path, Some(&alice.token), json!({"alt_aliases": ["%club:test"]})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{b}");
    // Deleting an alias removes it from the canonical alias event.
    assert_eq!(
        s.call("DELETE", "/_matrix/client/v3/directory/room/%23club:test", Some(&alice.token), None).await.0,
        200
    );
    let (_, c) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias"), Some(&alice.token)).await;
    assert_eq!(c, json!({}));
}

#[tokio::test]
async fn room_directory_publish_list_search_and_paginate() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let a = s
        .create_room(
            &alice,
            json!({"visibility": "public", "name": "Alpha", "topic": "first", "room_alias_name": "alpha"}),
        )
        .await;
    let b = s.create_room(&alice, json!({"name": "Beta"})).await;
    let c = s.create_room(&alice, json!({"visibility": "public", "name": "Gamma"})).await;
    s.join(&bob, &c).await;
    assert_eq!(
        s.get(&format!("/_matrix/client/v3/directory/list/room/{b}"), None).await,
        (200, json!({"visibility": "private"}))
    );
    assert_eq!(s.get("/_matrix/client/v3/directory/list/room/!nope:test", None).await.0, 404);
    let (st, _) = s
        .put(&format!("/_matrix/client/v3/directory/list/room/{b}"), Some(&bob.token), json!({"visibility": "public"}))
        .await;
    assert_eq!(st, 403, "bob is not in the room");
    assert_eq!(
        s.put(
            &format!("/_matrix/client/v3/directory/list/room/{b}"),
            Some(&alice.token),
            json!({"visibility": "public"})
        )
        .await
        .0,
        200
    );
    let (st, list) = s.get("/_matrix/client/v3/publicRooms", None).await;
    assert_eq!(st, 200);
    assert_schema("/_matrix/client/v3/publicRooms", "get", 200, &list);
    assert_eq!(list["total_room_count_estimate"], 3);
    let chunk = list["chunk"].as_array().unwrap();
    assert_eq!(chunk[0]["room_id"], json!(c), "most members first");
    let alpha = chunk.iter().find(|r| r["room_id"] == json!(a)).unwrap();
    assert_eq!(alpha["name"], "Alpha");
    assert_eq!(alpha["topic"], "first");
    assert_eq!(alpha["canonical_alias"], "#alpha:test");
    assert_eq!(alpha["join_rule"], "public");
    assert_eq!(alpha["num_joined_members"], 1);
    assert_eq!(alpha["world_readable"], false);
    // Pagination.
    let (_, p1) = s.get("/_matrix/client/v3/publicRooms?limit=2", None).await;
    assert_eq!(p1["chunk"].as_array().unwrap().len(), 2);
    let next = p1["next_batch"].as_str().unwrap();
    let (_, p2) = s.get(&format!("/_matrix/client/v3/publicRooms?limit=2&since={next}"), None).await;
    assert_eq!(p2["chunk"].as_array().unwrap().len(), 1);
    assert!(p2.get("next_batch").is_none());
    // Search.
    let (st, found) = s
        .post("/_matrix/client/v3/publicRooms", Some(&bob.token), json!({"filter": {"generic_search_term": "gam"}}))
        .await;
    assert_eq!(st, 200);
    assert_schema("/_matrix/client/v3/publicRooms", "post", 200, &found);
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(found["chunk"][0]["name"], "Gamma");
    // Unpublish.
    assert_eq!(
        s.put(
            &format!("/_matrix/client/v3/directory/list/room/{a}"),
            Some(&alice.token),
            json!({"visibility": "private"})
        )
        .await
        .0,
        200
    );
    assert_eq!(s.get("/_matrix/client/v3/publicRooms", None).await.1["total_room_count_estimate"], 2);
    assert_eq!(s.get("/_matrix/client/v3/publicRooms?since=bogus", None).await.0, 400);
}

#[tokio::test]
async fn publication_rules_restrict_who_may_publish() {
    let s = Server::start_with(
        "room_list_publication_rules:\n  - user_id: '@alice:test'\n    action: allow\n  - action: deny\n",
    )
    .await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let ra = s.create_room(&alice, json!({})).await;
    let rb = s.create_room(&bob, json!({})).await;
    assert_eq!(
        s.put(
            &format!("/_matrix/client/v3/directory/list/room/{ra}"),
            Some(&alice.token),
            json!({"visibility": "public"})
        )
        .await
        .0,
        200
    );
    let (st, _) = s
        .put(&format!("/_matrix/client/v3/directory/list/room/{rb}"), Some(&bob.token), json!({"visibility": "public"}))
        .await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn user_directory_visibility_rename_and_leave() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let search = |u: User, term: &'static str| {
        let s = &s;
        async move { directory_search(s, &u, term).await }
    };
    assert!(search(alice.clone(), "bob").await.is_empty(), "no shared room yet");
    let room = s.create_room(&alice, json!({"invite": ["@bob:test"]})).await;
    s.join(&bob, &room).await;
    assert_eq!(search(alice.clone(), "bob").await, vec!["@bob:test"]);
    assert!(search(carol.clone(), "bob").await.is_empty(), "private room: carol shares nothing with bob");
    // A rename is found by display-name prefix, case-insensitively.
    s.put(
        "/_matrix/client/v3/profile/@bob:test/displayname",
        Some(&bob.token),
        json!({"displayname": "Robert Tables"}),
    )
    .await;
    assert_eq!(search(alice.clone(), "rob").await, vec!["@bob:test"]);
    assert_eq!(search(alice.clone(), "TABLES").await, vec!["@bob:test"]);
    // Leaving the only shared room hides him again.
    s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert!(search(alice.clone(), "rob").await.is_empty());
    // Users in public rooms are visible to everyone.
    let public = s.create_room(&carol, json!({"preset": "public_chat"})).await;
    s.join(&bob, &public).await;
    assert_eq!(search(alice.clone(), "robert").await, vec!["@bob:test"]);
    let (st, b) =
        s.post("/_matrix/client/v3/user_directory/search", Some(&alice.token), json!({"search_term": 5})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")));
}

#[tokio::test]
async fn search_all_users_shows_everyone() {
    let s = Server::start_with("user_directory:\n  search_all_users: true\n").await;
    let alice = s.register("alice").await;
    s.register("zed").await;
    let (_, b) =
        s.post("/_matrix/client/v3/user_directory/search", Some(&alice.token), json!({"search_term": "zed"})).await;
    assert_eq!(b["results"][0]["user_id"], "@zed:test");
}

fn scripted(label: &str, callbacks: Value) -> String {
    format!(
        "modules:\n  - module: myelin.test.Scripted\n    config: {}\n",
        json!({"label": label, "callbacks": callbacks})
    )
}

#[tokio::test]
async fn case_38_39_user_may_create_room_alias() {
    let s =
        Server::start_with(&scripted("al", json!({"user_may_create_room_alias": {"deny_if": "zzz", "then": "deny"}})))
            .await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    assert_eq!(
        s.put("/_matrix/client/v3/directory/room/%23fine:test", Some(&alice.token), json!({"room_id": room})).await.0,
        200
    );
    let (st, b) =
        s.put("/_matrix/client/v3/directory/room/%23zzz:test", Some(&alice.token), json!({"room_id": room})).await;
    assert_eq!(
        (st, b),
        (403, json!({"errcode": "M_FORBIDDEN", "error": "This user is not permitted to create this alias"}))
    );
    assert_eq!(s.calls("al").await[0]["args"], json!(["@alice:test", "#fine:test"]));
    // 39: inside createRoom, after the room exists; the alias is not created.
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"room_alias_name": "zzz"})).await;
    assert_eq!((st, b["error"].as_str()), (403, Some("This user is not permitted to create this alias")));
    assert_eq!(s.get("/_matrix/client/v3/directory/room/%23zzz:test", None).await.0, 404);
    assert_eq!(
        s.get("/_matrix/client/v3/joined_rooms", Some(&alice.token)).await.1["joined_rooms"].as_array().unwrap().len(),
        2
    );
    // Not skipped for admins.
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let r2 = s.create_room(&root, json!({})).await;
    assert_eq!(
        s.put("/_matrix/client/v3/directory/room/%23zzz:test", Some(&root.token), json!({"room_id": r2})).await.0,
        403
    );
}

#[tokio::test]
async fn case_40_user_may_publish_room() {
    let s = Server::start_with(&scripted("p", json!({"user_may_publish_room": "deny"}))).await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"visibility": "public"})).await;
    assert_eq!(s.calls("p").await.len(), 0, "createRoom's visibility does not call it");
    for visibility in ["public", "private"] {
        let (st, b) = s
            .put(
                &format!("/_matrix/client/v3/directory/list/room/{room}"),
                Some(&alice.token),
                json!({"visibility": visibility}),
            )
            .await;
        assert_eq!(
            (st, b),
            (
                403,
                json!({"errcode": "M_FORBIDDEN", "error": "This user is not permitted to publish rooms to the room list"})
            )
        );
    }
    assert_eq!(s.calls("p").await[0]["args"], json!(["@alice:test", room]));
    // It runs first: even for an unknown room.
    let (st, _) = s
        .put("/_matrix/client/v3/directory/list/room/!nope:test", Some(&alice.token), json!({"visibility": "public"}))
        .await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn case_41_43_check_username_for_spam_filters_after_the_limit() {
    let s =
        Server::start_with(&scripted("u", json!({"check_username_for_spam": {"deny_if": "user2", "then": "spammy"}})))
            .await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    for n in ["user1", "user2", "user3"] {
        let u = s.register(n).await;
        s.join(&u, &room).await;
    }
    let (_, b) = s
        .post(
            "/_matrix/client/v3/user_directory/search",
            Some(&alice.token),
            json!({"search_term": "user", "limit": 2}),
        )
        .await;
    // user1 and user2 are the first two; user2 is filtered; no backfill; limited stays true.
    assert_eq!(b, json!({"results": [{"user_id": "@user1:test", "display_name": "user1"}], "limited": true}));
    let calls = s.calls("u").await;
    assert_eq!(
        calls[0]["args"],
        json!([{"user_id": "@user1:test", "display_name": "user1", "avatar_url": null}, "@alice:test"])
    );
}

/// MSC3266 room summaries: what may be known of a room before joining it, and only that.
#[tokio::test]
async fn room_summaries_show_open_rooms_and_hide_the_rest() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let public = s
        .create_room(
            &alice,
            json!({"preset": "public_chat", "name": "Plaza", "topic": "all welcome", "room_alias_name": "plaza"}),
        )
        .await;
    let private = s.create_room(&alice, json!({"preset": "private_chat", "name": "Secret plans"})).await;
    for path in ["/_matrix/client/v1/room_summary", "/_matrix/client/unstable/im.nheko.summary/summary"] {
        let (st, b) = s.get(&format!("{path}/{public}"), Some(&bob.token)).await;
        assert_eq!(st, 200, "{b}");
        assert_eq!((b["room_id"].as_str(), b["name"].as_str()), (Some(public.as_str()), Some("Plaza")));
        assert_eq!((b["topic"].as_str(), b["join_rule"].as_str()), (Some("all welcome"), Some("public")));
        assert_eq!((b["num_joined_members"].as_i64(), b["membership"].as_str()), (Some(1), Some("leave")));
        assert_eq!(b["room_version"], "12", "{b}");
        assert_eq!(b["canonical_alias"], "#plaza:test");
        // By alias, and without an access token (no membership then).
        let (st, b) = s.get(&format!("{path}/%23plaza:test"), None).await;
        assert_eq!((st, b["room_id"].as_str()), (200, Some(public.as_str())), "{b}");
        assert!(b.get("membership").is_none());
        // A private room is unknown to strangers, known to its invitees.
        let (st, b) = s.get(&format!("{path}/{private}"), Some(&bob.token)).await;
        assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");
        assert!(b.to_string().find("Secret").is_none());
        let (st, _) = s.get(&format!("{path}/!nowhere:test"), Some(&bob.token)).await;
        assert_eq!(st, 404);
    }
    assert_eq!(s.invite(&alice, &private, &bob.user_id).await.0, 200);
    let (st, b) = s.get(&format!("/_matrix/client/v1/room_summary/{private}"), Some(&bob.token)).await;
    assert_eq!((st, b["membership"].as_str(), b["name"].as_str()), (200, Some("invite"), Some("Secret plans")), "{b}");
}

#[tokio::test]
async fn the_user_directory_shows_public_rooms_and_others_in_private_ones() {
    let s = Server::start().await;
    let (alice, bob, carol) = (s.register("alice").await, s.register("bob").await, s.register("carol").await);
    let room = s.create_room(&alice, json!({"preset": "private_chat", "invite": [bob.user_id]})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let search = |user: &User, term: &str| {
        let (s, user, term) = (&s, user.clone(), term.to_owned());
        async move { directory_search(s, &user, &term).await }
    };
    // A private room: Bob finds Alice, not himself; Carol finds neither.
    assert_eq!(search(&bob, "alice").await, vec![alice.user_id.clone()]);
    assert_eq!(search(&bob, "bob").await, Vec::<String>::new());
    assert_eq!(search(&carol, "bob").await, Vec::<String>::new());
    // A world-readable history makes the room public: everyone finds its members.
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility");
    assert_eq!(s.put(&path, Some(&alice.token), json!({"history_visibility": "world_readable"})).await.0, 200);
    assert_eq!(search(&carol, "bob").await, vec![bob.user_id.clone()]);
    assert_eq!(search(&bob, "bob").await, vec![bob.user_id.clone()]);
}

/// The user IDs a user-directory search by `user` finds (the answer checked against the spec).
async fn directory_search(s: &Server, user: &User, term: &str) -> Vec<String> {
    let (st, b) =
        s.post("/_matrix/client/v3/user_directory/search", Some(&user.token), json!({"search_term": term})).await;
    assert_eq!(st, 200, "{b}");
    assert_schema("/_matrix/client/v3/user_directory/search", "post", 200, &b);
    b["results"].as_array().unwrap().iter().map(|r| r["user_id"].as_str().unwrap().to_owned()).collect()
}
