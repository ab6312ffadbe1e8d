//! Simplified sliding sync (MSC4186): lists, subscriptions, incremental responses and
//! long-polls, extensions, and who may not see what. Every 200 is checked against the MSC's
//! response schema (`schemas/msc4186-response.json`).

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

const V3: &str = "/_matrix/client/v3";
const SSS: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

fn schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text = include_str!("schemas/msc4186-response.json");
        jsonschema::validator_for(&serde_json::from_str(text).unwrap()).unwrap()
    })
}

/// One sliding sync request; a 200 must match the MSC's schema.
async fn sliding(s: &Server, user: &User, pos: Option<&str>, timeout_ms: u64, body: Value) -> (u16, Value) {
    let mut path = format!("{SSS}?timeout={timeout_ms}");
    if let Some(pos) = pos {
        path.push_str(&format!("&pos={pos}"));
    }
    let (status, body) = s.post(&path, Some(&user.token), body).await;
    if status == 200 {
        let errors: Vec<String> =
            schema().iter_errors(&body).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "not an MSC4186 response:\n{}\n{body}", errors.join("\n"));
    }
    (status, body)
}

async fn ok(s: &Server, user: &User, pos: Option<&str>, timeout_ms: u64, body: Value) -> Value {
    let (status, b) = sliding(s, user, pos, timeout_ms, body).await;
    assert_eq!(status, 200, "{b}");
    b
}

fn list_ids(body: &Value, list: &str) -> Vec<String> {
    body["lists"][list]["ops"][0]["room_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no list {list}: {body}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn state_keys(room: &Value, kind: &str) -> Vec<String> {
    let mut keys: Vec<String> = room["required_state"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == kind)
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn lists_sort_by_activity_cut_to_ranges_and_send_what_is_asked() {
    let s = Server::start().await;
    let (_, versions) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.simplified_msc3575"], true, "{versions}");
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let mut rooms = Vec::new();
    for name in ["first", "second", "third"] {
        let room = s.create_room(&alice, json!({"preset": "public_chat", "name": name})).await;
        rooms.push(room);
    }
    let unnamed = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &unnamed).await.0, 200);
    assert_eq!(s.invite(&alice, &unnamed, &carol.user_id).await.0, 200);
    // Activity order, newest first: first, unnamed, third, second.
    for (room, text) in [(&rooms[1], "two"), (&rooms[2], "three"), (&unnamed, "hello bob"), (&rooms[0], "one")] {
        assert_eq!(s.send_text(&alice, room, text).await.0, 200);
    }
    for n in 0..4 {
        assert_eq!(s.send_text(&bob, &unnamed, &format!("bob {n}")).await.0, 200);
    }

    let request = json!({
        "lists": {"all": {
            "ranges": [[0, 1]],
            "timeline_limit": 3,
            "required_state": [["m.room.create", ""], ["m.room.member", "$ME"], ["m.room.member", "$LAZY"]],
        }},
    });
    let b = ok(&s, &alice, None, 0, request.clone()).await;
    assert_eq!(b["lists"]["all"]["count"], 4, "{b}");
    assert_eq!(b["lists"]["all"]["ops"][0]["range"], json!([0, 1]));
    assert_eq!(list_ids(&b, "all"), vec![unnamed.clone(), rooms[0].clone()], "most recent activity first");
    let mut keys: Vec<&String> = b["rooms"].as_object().unwrap().keys().collect();
    keys.sort();
    let mut expected = vec![&unnamed, &rooms[0]];
    expected.sort();
    assert_eq!(keys, expected, "only the rooms in range are sent");

    let first = &b["rooms"][&rooms[0]];
    assert_eq!(first["initial"], true);
    assert_eq!(first["name"], "first");
    assert_eq!(first["joined_count"], 1);
    assert_eq!(first["limited"], true, "more events than the limit: {first}");
    assert_eq!(first["timeline"].as_array().unwrap().len(), 3);
    assert_eq!(first["num_live"], 0, "nothing is live in a first response");
    assert!(first["bump_stamp"].as_i64().unwrap() > 0);
    assert_eq!(state_keys(first, "m.room.create"), vec![""]);
    assert_eq!(state_keys(first, "m.room.member"), vec![alice.user_id.clone()], "$ME and lazy senders");
    assert!(first.get("heroes").is_none(), "a named room has no heroes: {first}");

    let chat = &b["rooms"][&unnamed];
    assert!(chat.get("name").is_none(), "{chat}");
    let heroes: Vec<&str> = chat["heroes"].as_array().unwrap().iter().map(|h| h["user_id"].as_str().unwrap()).collect();
    assert_eq!(heroes, vec![bob.user_id.as_str(), carol.user_id.as_str()], "joined and invited, in arrival order");
    assert_eq!((chat["joined_count"].as_i64(), chat["invited_count"].as_i64()), (Some(2), Some(1)));
    assert_eq!(bodies(chat), vec!["bob 1", "bob 2", "bob 3"]);
    assert_eq!(
        state_keys(chat, "m.room.member"),
        vec![alice.user_id.clone(), bob.user_id.clone()],
        "$ME and the timeline's senders, not carol"
    );
    assert!(chat["timeline"][0].get("room_id").is_none(), "events are sent without room_id");
    let own = &b["rooms"][&rooms[0]]["timeline"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(own["content"]["body"], "one");
    assert!(own["unsigned"]["transaction_id"].is_string(), "the sending device sees its txn ID: {own}");

    // `prev_batch` continues with /messages.
    let prev = chat["prev_batch"].as_str().unwrap();
    let (st, page) =
        s.get(&format!("{V3}/rooms/{unnamed}/messages?dir=b&limit=2&from={prev}"), Some(&alice.token)).await;
    assert_eq!(st, 200, "{page}");
    let older: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(older, vec!["bob 0", "hello bob"]);

    // Everything (no ranges), and a room subscription with all state.
    let b = ok(
        &s,
        &alice,
        None,
        0,
        json!({
            "lists": {"everything": {"timeline_limit": 0, "required_state": []}},
            "room_subscriptions": {&rooms[1]: {"timeline_limit": 1, "required_state": [["*", "*"]]}},
        }),
    )
    .await;
    assert_eq!(list_ids(&b, "everything").len(), 4);
    assert_eq!(list_ids(&b, "everything")[3], rooms[1], "{b}");
    let sub = &b["rooms"][&rooms[1]];
    assert_eq!(bodies(sub), vec!["two"]);
    for kind in ["m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.name"] {
        assert_eq!(state_keys(sub, kind), vec![""], "{kind} in {sub}");
    }
    let listed_only = &b["rooms"][&rooms[2]];
    assert!(listed_only.get("timeline").is_none() && listed_only.get("required_state").is_none(), "{listed_only}");
}

#[tokio::test]
async fn incremental_responses_send_only_changes_and_wait_for_them() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let quiet = s.create_room(&alice, json!({"name": "quiet"})).await;
    let busy = s.create_room(&alice, json!({"preset": "public_chat", "name": "busy"})).await;
    assert_eq!(s.join(&bob, &busy).await.0, 200);
    let request = json!({
        "conn_id": "main",
        "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 5, "required_state": [["m.room.name", ""]]}},
    });
    let first = ok(&s, &alice, None, 0, request.clone()).await;
    let pos = first["pos"].as_str().unwrap().to_owned();
    assert_eq!(first["rooms"].as_object().unwrap().len(), 2);

    // Nothing new: an empty answer at once, or after the timeout.
    let b = ok(&s, &alice, Some(&pos), 0, request.clone()).await;
    assert_eq!(b["rooms"], json!({}), "{b}");
    let started = std::time::Instant::now();
    let b = ok(&s, &alice, Some(&pos), 300, request.clone()).await;
    assert_eq!(b["rooms"], json!({}));
    assert!(started.elapsed() >= Duration::from_millis(250), "a long-poll waits for its timeout");

    // A message wakes a waiting request, which sends that room alone and only the news.
    let waiting = {
        let (s, alice, pos, request) = (&s, &alice, pos.clone(), request.clone());
        async move { ok(s, alice, Some(&pos), 20_000, request).await }
    };
    let send = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.send_text(&bob, &busy, "news").await
    };
    let (b, sent) = tokio::join!(waiting, send);
    assert_eq!(sent.0, 200);
    let rooms = b["rooms"].as_object().unwrap();
    assert_eq!(rooms.keys().collect::<Vec<_>>(), vec![&busy], "{b}");
    let room = &rooms[&busy];
    assert_eq!(bodies(room), vec!["news"]);
    assert_eq!((room["num_live"].as_i64(), room["limited"].as_bool()), (Some(1), Some(false)));
    assert!(room.get("initial").is_none() && room.get("name").is_none(), "unchanged fields are left out: {room}");
    assert_eq!(list_ids(&b, "all")[0], busy, "the busy room moved up");
    assert_eq!(room["notification_count"], 1, "{room}");

    // Reading it moves the count: the room is sent again with the count alone.
    let news = room["timeline"][0]["event_id"].as_str().unwrap().to_owned();
    let (st, _) = s.post(&format!("{V3}/rooms/{busy}/receipt/m.read/{news}"), Some(&alice.token), json!({})).await;
    assert_eq!(st, 200);
    let b = ok(&s, &alice, b["pos"].as_str(), 0, request.clone()).await;
    assert_eq!(b["rooms"][&busy]["notification_count"], 0, "{b}");
    assert!(b["rooms"][&busy].get("timeline").is_none(), "{b}");
    let pos2 = b["pos"].as_str().unwrap().to_owned();

    // A renamed room sends its new name and the changed state.
    let (st, _) =
        s.put(&format!("{V3}/rooms/{quiet}/state/m.room.name/"), Some(&alice.token), json!({"name": "loud"})).await;
    assert_eq!(st, 200);
    let b = ok(&s, &alice, Some(&pos2), 0, request.clone()).await;
    assert_eq!(b["rooms"][&quiet]["name"], "loud", "{b}");
    assert_eq!(state_keys(&b["rooms"][&quiet], "m.room.name"), vec![""]);
    assert!(b["rooms"].get(&busy).is_none());

    // The same position again answers the same (a lost response is asked for again); older
    // ones are forgotten once a later one was used.
    let again = ok(&s, &alice, Some(&pos2), 0, request.clone()).await;
    assert_eq!(again["rooms"][&quiet]["name"], "loud", "{again}");
    let (st, e) = sliding(&s, &alice, Some(&pos), 0, request.clone()).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{e}");

    // Another room config on the same connection: the room is sent again with the new state.
    let mut wider = request.clone();
    wider["lists"]["all"]["required_state"] = json!([["m.room.name", ""], ["m.room.create", ""]]);
    let b = ok(&s, &alice, Some(b["pos"].as_str().unwrap()), 0, wider).await;
    assert_eq!(state_keys(&b["rooms"][&busy], "m.room.create"), vec![""], "{b}");

    // Refusals: a position this server never gave, one of another connection, nonsense.
    for bad_pos in ["999_1", &pos.replace('_', "0_")] {
        let (st, e) = sliding(&s, &alice, Some(bad_pos), 0, request.clone()).await;
        assert_eq!((st, e["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{bad_pos}: {e}");
    }
    let mut other_conn = request.clone();
    other_conn["conn_id"] = json!("other");
    let (st, e) = sliding(&s, &alice, Some(&pos2), 0, other_conn).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{e}");
    let (st, e) = sliding(&s, &bob, Some(&pos2), 0, request.clone()).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "another user's position: {e}");
    let (st, e) = sliding(&s, &alice, Some("garbage"), 0, request.clone()).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{e}");
    for bad in [
        json!({"lists": {"a": {"ranges": [[0, 1]], "required_state": []}}}),
        json!({"lists": {"a": {"ranges": [[0, "1"]], "timeline_limit": 1, "required_state": []}}}),
        json!({"lists": {"a": {"timeline_limit": 1001, "required_state": []}}}),
        json!({"lists": {"a": {"timeline_limit": 1, "required_state": [["m.room.name", "", "x"]]}}}),
        json!({"room_subscriptions": {"!x:test": {"timeline_limit": true, "required_state": []}}}),
        json!({"extensions": {"to_device": {"enabled": true, "since": "yesterday"}}}),
    ] {
        let (st, e) = sliding(&s, &alice, None, 0, bad.clone()).await;
        assert_eq!((st, e["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{bad}: {e}");
    }
    let (st, e) = sliding(&s, &alice, None, 0, json!(["not", "an", "object"])).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_NOT_JSON")), "as every JSON endpoint: {e}");
    let (st, e) = s.raw("POST", SSS, b"{not json".to_vec()).await;
    assert!(st == 400 || st == 401, "{st} {e}");
    let (st, e) = s.post(SSS, None, json!({})).await;
    assert_eq!((st, e["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")));
    let (st, e) = s.post(&format!("{SSS}?timeout=soon"), Some(&alice.token), json!({})).await;
    assert_eq!((st, e["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{e}");
    // The server is fine after all that.
    assert_eq!(sliding(&s, &alice, None, 0, request).await.0, 200);
}

#[tokio::test]
async fn nobody_sees_more_than_their_membership_allows() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let mallory = s.register("mallory").await;
    let eve = s.register("eve").await;
    // History visible only to joined members: bob joins after the secrets.
    let room = s.create_room(&alice, room_with_visibility("public_chat", "joined")).await;
    assert_eq!(s.send_text(&alice, &room, "before bob").await.0, 200);
    assert_eq!(s.join(&bob, &room).await.0, 200);
    assert_eq!(s.send_text(&alice, &room, "after bob").await.0, 200);
    let all = json!({"lists": {"all": {"timeline_limit": 10, "required_state": [["*", "*"]]}}});
    let b = ok(&s, &bob, None, 0, all.clone()).await;
    let texts = bodies(&b["rooms"][&room]);
    assert_eq!(texts, vec!["after bob"], "history before the join stays hidden: {b}");

    // Mallory is banned: her room shows what happened up to the ban, nothing after.
    assert_eq!(s.join(&mallory, &room).await.0, 200);
    assert_eq!(s.send_text(&alice, &room, "mallory is here").await.0, 200);
    let (st, _) =
        s.post(&format!("{V3}/rooms/{room}/ban"), Some(&alice.token), json!({"user_id": mallory.user_id})).await;
    assert_eq!(st, 200);
    assert_eq!(s.send_text(&alice, &room, "after the ban").await.0, 200);
    let (st, _) = s
        .put(&format!("{V3}/rooms/{room}/state/m.room.topic/"), Some(&alice.token), json!({"topic": "secret topic"}))
        .await;
    assert_eq!(st, 200);
    let b = ok(&s, &mallory, None, 0, all.clone()).await;
    assert_eq!(list_ids(&b, "all"), vec![room.clone()], "a ban stays in the list");
    let banned = &b["rooms"][&room];
    let texts = bodies(banned);
    assert!(texts.contains(&"mallory is here".to_owned()), "{banned}");
    assert!(!texts.contains(&"after the ban".to_owned()), "nothing after the ban: {banned}");
    assert!(state_keys(banned, "m.room.topic").is_empty(), "no state set after the ban: {banned}");
    assert!(banned.get("joined_count").is_none(), "{banned}");

    // Eve was never in the room: subscribing to it shows nothing.
    let b = ok(
        &s,
        &eve,
        None,
        0,
        json!({"room_subscriptions": {&room: {"timeline_limit": 10, "required_state": [["*", "*"]]}}}),
    )
    .await;
    assert_eq!(b["rooms"], json!({}), "{b}");

    // An invitee sees the invite's stripped state, not the room's timeline.
    let private = s.create_room(&alice, json!({"preset": "private_chat", "name": "plans"})).await;
    assert_eq!(s.send_text(&alice, &private, "the plan").await.0, 200);
    assert_eq!(s.invite(&alice, &private, &eve.user_id).await.0, 200);
    let b = ok(&s, &eve, None, 0, all.clone()).await;
    let invite = &b["rooms"][&private];
    assert!(invite.get("timeline").is_none() && invite.get("required_state").is_none(), "{invite}");
    let stripped: Vec<&str> =
        invite["invite_state"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(stripped.contains(&"m.room.name") && stripped.contains(&"m.room.member"), "{invite}");
    let inviter = invite["invite_state"].as_array().unwrap().iter().any(|e| {
        e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str() && e["content"]["membership"] == "join"
    });
    assert!(inviter, "the inviter's membership comes with the invite (MSC4319): {invite}");
    let pos = b["pos"].as_str().unwrap().to_owned();
    // Joining makes it a room new to the connection, sent whole.
    assert_eq!(s.join(&eve, &private).await.0, 200);
    let b = ok(&s, &eve, Some(&pos), 5_000, all.clone()).await;
    let joined = &b["rooms"][&private];
    assert_eq!(joined["initial"], true, "{b}");
    assert!(joined.get("invite_state").is_none());

    // Leaving: the leave is sent once, then the room drops out of the lists.
    let pos = b["pos"].as_str().unwrap().to_owned();
    let (st, _) = s.post(&format!("{V3}/rooms/{private}/leave"), Some(&eve.token), json!({})).await;
    assert_eq!(st, 200);
    assert_eq!(s.send_text(&alice, &private, "after eve left").await.0, 200);
    let b = ok(&s, &eve, Some(&pos), 5_000, all.clone()).await;
    assert!(list_ids(&b, "all").contains(&private), "just left: still listed once: {b}");
    assert!(!bodies(&b["rooms"][&private]).contains(&"after eve left".to_owned()), "{b}");
    let b = ok(&s, &eve, None, 0, all).await;
    assert!(!list_ids(&b, "all").contains(&private), "a room left long ago is not listed: {b}");
}

#[tokio::test]
async fn filters_choose_rooms_and_extensions_carry_the_rest() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let plain = s.create_room(&alice, json!({"name": "plain"})).await;
    let encrypted = s
        .create_room(
            &alice,
            json!({"name": "enc", "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
        )
        .await;
    let space = s.create_room(&alice, json!({"name": "space", "creation_content": {"type": "m.space"}})).await;
    let (st, _) = s
        .put(&format!("{V3}/rooms/{space}/state/m.space.child/{plain}"), Some(&alice.token), json!({"via": ["test"]}))
        .await;
    assert_eq!(st, 200);
    let dm = s
        .create_room(&bob, json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [alice.user_id]}))
        .await;
    let (st, _) = s
        .put(
            &format!("{V3}/user/{}/account_data/m.direct", alice.user_id),
            Some(&alice.token),
            json!({&bob.user_id: [dm]}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .put(&format!("{V3}/user/{}/rooms/{plain}/tags/m.favourite", alice.user_id), Some(&alice.token), json!({}))
        .await;
    assert_eq!(st, 200);

    let list = |filters: Value| json!({"timeline_limit": 0, "required_state": [], "filters": filters});
    let b = ok(
        &s,
        &alice,
        None,
        0,
        json!({"lists": {
            "dms": list(json!({"is_dm": true})),
            "not_dms": list(json!({"is_dm": false})),
            "invites": list(json!({"is_invite": true})),
            "encrypted": list(json!({"is_encrypted": true})),
            "spaces": list(json!({"room_types": ["m.space"]})),
            "no_spaces": list(json!({"not_room_types": ["m.space"], "is_invite": false})),
            "untyped": list(json!({"room_types": [null], "is_invite": false})),
            "in_space": list(json!({"spaces": [space]})),
            "favourites": list(json!({"tags": ["m.favourite"]})),
            "named_like": list(json!({"room_name_like": "PLA"})),
        }}),
    )
    .await;
    let sorted = |list: &str| {
        let mut ids = list_ids(&b, list);
        ids.sort();
        ids
    };
    let set = |ids: &[&String]| {
        let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(sorted("dms"), set(&[&dm]), "{b}");
    assert_eq!(b["rooms"][&dm]["is_dm"], true);
    assert_eq!(sorted("not_dms"), set(&[&plain, &encrypted, &space]));
    assert_eq!(sorted("invites"), set(&[&dm]));
    assert_eq!(sorted("encrypted"), set(&[&encrypted]));
    assert_eq!(sorted("spaces"), set(&[&space]));
    assert_eq!(sorted("no_spaces"), set(&[&plain, &encrypted]));
    assert_eq!(sorted("untyped"), set(&[&plain, &encrypted]));
    assert_eq!(sorted("in_space"), set(&[&plain]));
    assert_eq!(sorted("favourites"), set(&[&plain]));
    assert_eq!(sorted("named_like"), set(&[&plain]));

    // Extensions: to-device (acknowledged with `since`), E2EE counts, account data, receipts,
    // typing.
    let (st, _) = s
        .put(
            &format!("{V3}/sendToDevice/m.test/t1"),
            Some(&bob.token),
            json!({"messages": {&alice.user_id: {&alice.device_id: {"hello": "alice"}}}}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) =
        s.put(&format!("{V3}/user/{}/account_data/m.test", alice.user_id), Some(&alice.token), json!({"n": 1})).await;
    assert_eq!(st, 200);
    let sent = s.send_text(&alice, &plain, "read me").await.1["event_id"].as_str().unwrap().to_owned();
    let (st, _) = s.post(&format!("{V3}/rooms/{plain}/receipt/m.read/{sent}"), Some(&alice.token), json!({})).await;
    assert_eq!(st, 200);
    let (st, _) = s
        .put(
            &format!("{V3}/rooms/{plain}/typing/{}", alice.user_id),
            Some(&alice.token),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    assert_eq!(st, 200);
    let request = json!({
        "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": []}},
        "extensions": {
            "to_device": {"enabled": true},
            "e2ee": {"enabled": true},
            "account_data": {"enabled": true},
            "receipts": {"enabled": true},
            "typing": {"enabled": true},
            "unknown_extension": {"enabled": true},
        },
    });
    let b = ok(&s, &alice, None, 0, request.clone()).await;
    let ext = &b["extensions"];
    assert_eq!(ext["to_device"]["events"][0]["content"]["hello"], "alice", "{ext}");
    assert_eq!(ext["to_device"]["events"][0]["sender"], bob.user_id.as_str());
    assert!(ext["e2ee"]["device_one_time_keys_count"].is_object(), "{ext}");
    let globals: Vec<&str> =
        ext["account_data"]["global"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(globals.contains(&"m.test") && globals.contains(&"m.direct"), "{ext}");
    assert_eq!(ext["account_data"]["rooms"][&plain][0]["type"], "m.tag", "{ext}");
    assert!(ext["receipts"]["rooms"][&plain]["content"][&sent]["m.read"][&alice.user_id].is_object(), "{ext}");
    assert_eq!(ext["typing"]["rooms"][&plain]["content"]["user_ids"], json!([alice.user_id]));
    assert!(ext.get("unknown_extension").is_none());

    // Acknowledged to-device messages are gone; unacknowledged ones come again.
    let next = ext["to_device"]["next_batch"].as_str().unwrap().to_owned();
    let again = ok(&s, &alice, None, 0, request.clone()).await;
    assert_eq!(again["extensions"]["to_device"]["events"].as_array().unwrap().len(), 1, "not acknowledged yet");
    let mut ack = request.clone();
    ack["extensions"]["to_device"]["since"] = json!(next);
    let b = ok(&s, &alice, Some(b["pos"].as_str().unwrap()), 0, ack).await;
    assert_eq!(b["extensions"]["to_device"]["events"], json!([]), "{b}");
    assert!(b["extensions"]["account_data"]["global"].as_array().unwrap().is_empty(), "nothing new: {b}");

    // Bob's extensions never carry alice's private things.
    let b = ok(&s, &bob, None, 0, request).await;
    let ext = &b["extensions"];
    assert_eq!(ext["to_device"]["events"], json!([]), "{ext}");
    let globals: Vec<&str> =
        ext["account_data"]["global"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(!globals.contains(&"m.test") && !globals.contains(&"m.direct"), "{ext}");
    assert!(ext["receipts"]["rooms"].get(&plain).is_none(), "bob is not in alice's room: {ext}");
    assert!(ext["typing"]["rooms"].get(&plain).is_none(), "{ext}");
}
