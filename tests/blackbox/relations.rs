//! Relations (issue 16): `/relations` in its three forms with `dir` and `recurse`, `/threads`,
//! `/timestamp_to_event`, the bundled aggregations of `unsigned."m.relations"`, and the
//! history visibility of all of them.

use serde_json::{Value, json};

use crate::harness::{Server, User, assert_schema};

async fn send(server: &Server, user: &User, room: &str, content: Value) -> String {
    let txn = crate::harness::rand_suffix();
    let (s, b) = server
        .put(&format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/r{txn}"), Some(&user.token), content)
        .await;
    assert_eq!(s, 200, "{b}");
    b["event_id"].as_str().unwrap().to_owned()
}

fn reply(root: &str, body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
}

fn bodies(chunk: &Value) -> Vec<String> {
    chunk.as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect()
}

#[tokio::test]
async fn relations_threads_and_bundled_aggregations() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(server.join(&bob, &room).await.0, 200);
    let root = send(&server, &alice, &room, json!({"msgtype": "m.text", "body": "root"})).await;
    let r1 = send(&server, &bob, &room, reply(&root, "reply 1")).await;
    send(&server, &alice, &room, reply(&root, "reply 2")).await;
    // An edit of the root by alice, and one by bob (not applied: only the sender's count).
    send(
        &server,
        &alice,
        &room,
        json!({"msgtype": "m.text", "body": "* root edited", "m.new_content": {"msgtype": "m.text", "body": "root edited"},
               "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
    )
    .await;
    send(
        &server,
        &bob,
        &room,
        json!({"msgtype": "m.text", "body": "* hijack", "m.new_content": {"msgtype": "m.text", "body": "hijack"},
               "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
    )
    .await;
    send(&server, &bob, &room, json!({"msgtype": "m.text", "body": "see above", "m.relates_to": {"rel_type": "m.reference", "event_id": root}})).await;
    // A reaction to a reply: reached only with recurse.
    let (s, b) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.reaction/react1"),
            Some(&alice.token),
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": r1, "key": "👍"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");

    let base = format!("/_matrix/client/v1/rooms/{room}/relations/{root}");
    let (s, all) = server.get(&format!("{base}?limit=50"), Some(&alice.token)).await;
    assert_eq!(s, 200, "{all}");
    assert_schema("/_matrix/client/v1/rooms/{roomId}/relations/{eventId}", "get", 200, &all);
    assert_eq!(
        bodies(&all["chunk"]),
        vec!["see above", "* hijack", "* root edited", "reply 2", "reply 1"],
        "newest first"
    );
    let (_, threads_only) = server.get(&format!("{base}/m.thread?dir=f"), Some(&alice.token)).await;
    assert_eq!(bodies(&threads_only["chunk"]), vec!["reply 1", "reply 2"]);
    let (_, typed) = server.get(&format!("{base}/m.thread/m.room.message"), Some(&alice.token)).await;
    assert_eq!(typed["chunk"].as_array().unwrap().len(), 2);
    let (_, none) = server.get(&format!("{base}/m.thread/m.reaction"), Some(&alice.token)).await;
    assert_eq!(none["chunk"], json!([]));
    // Paging: two at a time, following next_batch.
    let (_, first) = server.get(&format!("{base}?limit=2"), Some(&alice.token)).await;
    assert_eq!(first["chunk"].as_array().unwrap().len(), 2);
    let next = first["next_batch"].as_str().expect("more to come");
    let (_, second) = server.get(&format!("{base}?limit=2&from={next}"), Some(&alice.token)).await;
    assert_eq!(bodies(&second["chunk"]), vec!["* root edited", "reply 2"]);
    // recurse reaches the reaction to reply 1.
    let (_, deep) = server.get(&format!("{base}?recurse=true&limit=50"), Some(&alice.token)).await;
    assert_eq!(deep["recursion_depth"], 3, "{deep}");
    assert!(deep["chunk"].as_array().unwrap().iter().any(|e| e["type"] == "m.reaction"), "{deep}");
    assert!(!all["chunk"].as_array().unwrap().iter().any(|e| e["type"] == "m.reaction"));

    // Bundled aggregations on the root, wherever it is read.
    let (_, event) = server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{root}"), Some(&bob.token)).await;
    let bundle = &event["unsigned"]["m.relations"];
    assert_eq!(bundle["m.replace"]["content"]["m.new_content"]["body"], "root edited", "{bundle}");
    assert_eq!(bundle["m.thread"]["count"], 2, "{bundle}");
    assert_eq!(bundle["m.thread"]["latest_event"]["content"]["body"], "reply 2");
    assert_eq!(bundle["m.thread"]["current_user_participated"], true);
    assert_eq!(bundle["m.reference"]["chunk"].as_array().unwrap().len(), 1);
    let (_, page) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&alice.token)).await;
    let in_page = page["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == root).unwrap();
    assert_eq!(in_page["unsigned"]["m.relations"]["m.thread"]["count"], 2);

    // /threads lists the root, with its summary; `participated` for someone who did not is empty.
    let (s, threads) = server.get(&format!("/_matrix/client/v1/rooms/{room}/threads"), Some(&alice.token)).await;
    assert_eq!(s, 200, "{threads}");
    assert_schema("/_matrix/client/v1/rooms/{roomId}/threads", "get", 200, &threads);
    assert_eq!(bodies(&threads["chunk"]), vec!["root"]);
    let carol = server.register("carol").await;
    assert_eq!(server.join(&carol, &room).await.0, 200);
    let (_, mine) =
        server.get(&format!("/_matrix/client/v1/rooms/{room}/threads?include=participated"), Some(&carol.token)).await;
    assert_eq!(mine["chunk"], json!([]));
    let (_, bobs) =
        server.get(&format!("/_matrix/client/v1/rooms/{room}/threads?include=participated"), Some(&bob.token)).await;
    assert_eq!(bodies(&bobs["chunk"]), vec!["root"]);

    // Bad input.
    let (s, b) = server.get(&format!("{base}?dir=sideways"), Some(&alice.token)).await;
    assert_eq!((s, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{b}");
    let (s, _) = server.get(&format!("/_matrix/client/v1/rooms/{room}/relations/$nope"), Some(&alice.token)).await;
    assert_eq!(s, 404);
    let (s, b) = server.get(&format!("/_matrix/client/v1/rooms/{room}/threads?include=mine"), Some(&alice.token)).await;
    assert_eq!((s, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{b}");
}

#[tokio::test]
async fn relations_respect_history_visibility() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let erin = server.register("erin").await;
    let nina = server.register("nina").await;
    let room = server.create_room(&alice, crate::harness::room_with_visibility("public_chat", "joined")).await;
    let root = send(&server, &alice, &room, json!({"msgtype": "m.text", "body": "root"})).await;
    send(&server, &alice, &room, reply(&root, "early secret")).await;
    assert_eq!(server.join(&erin, &room).await.0, 200);
    let late = send(&server, &alice, &room, reply(&root, "late reply")).await;

    // Erin cannot read the root (sent before she joined): not its relations either (403, as on
    // Synapse).
    let (s, b) = server.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}"), Some(&erin.token)).await;
    assert_eq!((s, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    let (s, threads) = server.get(&format!("/_matrix/client/v1/rooms/{room}/threads"), Some(&erin.token)).await;
    assert_eq!(s, 200);
    assert!(!threads.to_string().contains("early secret"), "{threads}");
    // The late reply is hers to read, without the early one in its thread summary.
    let (s, event) = server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{late}"), Some(&erin.token)).await;
    assert_eq!(s, 200, "{event}");
    // A non-member of a non-world-readable room reads nothing.
    let (s, b) = server.get(&format!("/_matrix/client/v1/rooms/{room}/threads"), Some(&nina.token)).await;
    assert_eq!((s, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    let (s, _) = server.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}"), Some(&nina.token)).await;
    assert_eq!(s, 403);
    // Alice sees the whole thread.
    let (_, all) =
        server.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{root}?dir=f"), Some(&alice.token)).await;
    assert_eq!(bodies(&all["chunk"]), vec!["early secret", "late reply"]);
}

#[tokio::test]
async fn timestamp_to_event_finds_the_closest_visible_event() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let first = send(&server, &alice, &room, json!({"msgtype": "m.text", "body": "one"})).await;
    let (_, ev) = server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{first}"), Some(&alice.token)).await;
    let ts = ev["origin_server_ts"].as_i64().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = send(&server, &alice, &room, json!({"msgtype": "m.text", "body": "two"})).await;
    let path = |ts: i64, dir: &str| format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts={ts}&dir={dir}");
    let (s, found) = server.get(&path(ts, "f"), Some(&alice.token)).await;
    assert_eq!(s, 200, "{found}");
    assert_schema("/_matrix/client/v1/rooms/{roomId}/timestamp_to_event", "get", 200, &found);
    assert_eq!(found["event_id"], first);
    let (_, found) = server.get(&path(ts + 1, "f"), Some(&alice.token)).await;
    assert_eq!(found["event_id"], second);
    let (_, found) = server.get(&path(ts + 1, "b"), Some(&alice.token)).await;
    assert_eq!(found["event_id"], first);
    let (s, b) = server.get(&path(ts + 60_000, "f"), Some(&alice.token)).await;
    assert_eq!((s, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");
    let (s, b) =
        server.get(&format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?ts=x&dir=f"), Some(&alice.token)).await;
    assert_eq!((s, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{b}");
    let nina = server.register("nina").await;
    let (s, _) = server.get(&path(ts, "f"), Some(&nina.token)).await;
    assert_eq!(s, 403, "a non-member of a private room");
}

#[tokio::test]
async fn sync_timelines_carry_bundled_aggregations_per_user() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(server.join(&bob, &room).await.0, 200);
    let root = send(&server, &alice, &room, json!({"msgtype": "m.text", "body": "root"})).await;
    send(&server, &bob, &room, reply(&root, "bob replies")).await;
    let root_in = |sync: &Value| {
        sync["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event_id"] == root)
            .cloned()
            .unwrap()
    };
    // Bob took part, alice started it: both participated; carol, joining now, did not.
    let carol = server.register("carol").await;
    assert_eq!(server.join(&carol, &room).await.0, 200);
    let for_bob = root_in(&server.sync(&bob, None, 0).await);
    assert_eq!(for_bob["unsigned"]["m.relations"]["m.thread"]["count"], 1, "{for_bob}");
    assert_eq!(for_bob["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], true);
    let for_carol = root_in(&server.sync(&carol, None, 0).await);
    assert_eq!(for_carol["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], false, "{for_carol}");
}
