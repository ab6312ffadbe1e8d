//! One homeserver as several processes on one PostgreSQL database (docs/deployment.md): a
//! main process (`-c homeserver.yaml`) and workers (`-c homeserver.yaml -c worker.yaml`), with
//! clients spread over them. These tests always use PostgreSQL (SQLite serves one process).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// Starts the main process and `workers` worker processes sharing one new database; the
/// workers read the main process's signing key and media store (absolute paths in their own
/// worker.yaml, which `-c` reads after the shared homeserver.yaml).
async fn deployment(workers: usize) -> (Server, Vec<Server>) {
    deployment_with(workers, "").await
}

/// [`deployment`] with `extra` in the shared config.
async fn deployment_with(workers: usize, extra: &str) -> (Server, Vec<Server>) {
    let shared = base_config(&format!("{}{extra}", postgres_database_section()));
    let main_dir = tempfile::tempdir().unwrap();
    std::fs::write(main_dir.path().join("homeserver.yaml"), &shared).unwrap();
    let main = Server::start_in(main_dir).await;
    let mut started = Vec::new();
    for i in 1..=workers {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("homeserver.yaml"), &shared).unwrap();
        let worker_yaml = dir.path().join("worker.yaml");
        std::fs::write(
            &worker_yaml,
            format!(
                "worker_app: synapse.app.generic_worker\n\
                 worker_name: worker{i}\n\
                 worker_listeners:\n  - port: 0\n    bind_addresses: ['127.0.0.1']\n    resources:\n      - names: [client, federation]\n\
                 signing_key_path: {key}\n\
                 media_store_path: {media}\n",
                key = main.dir.path().join("data/test.signing.key").display(),
                media = main.dir.path().join("data/media").display(),
            ),
        )
        .unwrap();
        started.push(Server::start_in_with_configs(dir, &[worker_yaml]).await);
    }
    (main, started)
}

/// Alice registered on `a` makes a public room; Bob registered on `b` joins it.
async fn alice_and_bob_in_a_room(a: &Server, b: &Server) -> (User, User, String) {
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(b.join(&bob, &room).await.0, 200, "a room made on one process is joined on another");
    (alice, bob, room)
}

#[tokio::test]
async fn a_send_on_one_process_wakes_a_long_poll_on_another() {
    let (a, workers) = deployment(1).await;
    let b = &workers[0];
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, b).await;
    let first = b.sync(&bob, None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    let waiting = {
        let since = since.clone();
        let bob = bob.clone();
        let base = b.base.clone();
        tokio::spawn(async move {
            let url = format!("{base}/_matrix/client/v3/sync?timeout=20000&since={since}");
            let started = Instant::now();
            let body: Value =
                reqwest::Client::new().get(url).bearer_auth(&bob.token).send().await.unwrap().json().await.unwrap();
            (started.elapsed(), body)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, sent) = a.send_text(&alice, &room, "across processes").await;
    assert_eq!(status, 200, "{sent}");
    let (waited, body) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(5), "the long-poll on the other process waited {waited:?}");
    let timeline = &body["rooms"]["join"][&room]["timeline"]["events"];
    assert!(
        timeline.as_array().unwrap().iter().any(|e| e["event_id"] == sent["event_id"]),
        "the message is in the woken sync: {body}"
    );
}

#[tokio::test]
async fn a_logout_on_one_process_ends_the_session_on_every_other() {
    let (a, workers) = deployment(2).await;
    let alice = a.register("alice").await;
    for w in &workers {
        assert_eq!(w.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200);
    }
    assert_eq!(a.post("/_matrix/client/v3/logout", Some(&alice.token), json!({})).await.0, 200);
    for w in &workers {
        let (status, body) = w.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await;
        assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "at once, on every process");
    }
}

#[tokio::test]
async fn concurrent_sends_through_two_processes_make_one_sound_room_graph() {
    let (a, workers) = deployment(1).await;
    let b = &workers[0];
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, b).await;
    let sends = (0..20).map(|i| {
        let (server, user) = if i % 2 == 0 { (&a, &alice) } else { (b, &bob) };
        let room = room.clone();
        async move { server.send_text(user, &room, &format!("message {i}")).await }
    });
    let results = futures::future::join_all(sends).await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    // One more from each side after the burst: each process has caught up with the other's
    // writes, so the room ends with one forward extremity.
    assert_eq!(a.send_text(&alice, &room, "after, from A").await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.send_text(&bob, &room, "after, from B").await.0, 200);

    let stored = assert_sound_room_graph(a.dir.path(), &room);
    // Both processes page back the same history.
    let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100");
    let (_, from_a) = a.get(&path, Some(&alice.token)).await;
    let (_, from_b) = b.get(&path, Some(&bob.token)).await;
    let ids = |page: &Value| -> Vec<String> {
        page["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(&from_a), ids(&from_b));
    assert_eq!(ids(&from_a).len(), stored.len());
}

#[tokio::test]
async fn typing_on_one_process_shows_on_another() {
    let (a, workers) = deployment(1).await;
    let b = &workers[0];
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, b).await;
    let since = b.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let typing = json!({"typing": true, "timeout": 30000});
    let path = format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id);
    assert_eq!(a.put(&path, Some(&alice.token), typing).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = b.sync(&bob, Some(&since), 2000).await;
        let events = body["rooms"]["join"][&room]["ephemeral"]["events"].as_array().cloned().unwrap_or_default();
        if events.iter().any(|e| e["type"] == "m.typing" && e["content"]["user_ids"] == json!([alice.user_id])) {
            break;
        }
        assert!(Instant::now() < deadline, "alice's typing never reached the other process");
    }
}

#[tokio::test]
async fn a_worker_refuses_sqlite_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), base_config("database: {name: sqlite3}\n")).unwrap();
    std::fs::write(dir.path().join("worker.yaml"), "worker_name: worker1\n").unwrap();
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(dir.path().join("homeserver.yaml"))
        .arg("-c")
        .arg(dir.path().join("worker.yaml"))
        .arg("check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Error in configuration at 'worker_name'"), "{stderr}");
    assert!(stderr.contains("need a shared PostgreSQL database"), "{stderr}");
}

#[tokio::test]
async fn a_registration_begun_on_one_process_completes_on_another() {
    let (a, workers) = deployment(1).await;
    let b = &workers[0];
    let body = json!({"username": "carol", "password": "password"});
    let (status, challenge) = a.post("/_matrix/client/v3/register", None, body.clone()).await;
    assert_eq!(status, 401, "{challenge}");
    let mut finish = body;
    finish["auth"] = json!({"type": "m.login.dummy", "session": challenge["session"]});
    let (status, done) = b.post("/_matrix/client/v3/register", None, finish.clone()).await;
    assert_eq!(status, 200, "the other process knows the UIA session: {done}");
    // The session made its account, as every process knows: repeating it (even naming
    // another user) logs Carol in again and makes nothing new, as on Synapse.
    finish["username"] = json!("carol2");
    let (status, again) = a.post("/_matrix/client/v3/register", None, finish).await;
    assert_eq!((status, again["user_id"].as_str()), (200, Some("@carol:test")), "{again}");
    let (status, _) = a.get("/_matrix/client/v3/register/available?username=carol2", None).await;
    assert_eq!(status, 200, "no carol2 was made");
}

#[tokio::test]
async fn an_openid_token_from_one_process_is_known_to_another() {
    let (a, workers) = deployment(1).await;
    let b = &workers[0];
    let alice = a.register("alice").await;
    let (status, token) = a
        .post(&format!("/_matrix/client/v3/user/{}/openid/request_token", alice.user_id), Some(&alice.token), json!({}))
        .await;
    assert_eq!(status, 200, "{token}");
    let path =
        format!("/_matrix/federation/v1/openid/userinfo?access_token={}", token["access_token"].as_str().unwrap());
    let (status, info) = b.get(&path, None).await;
    assert_eq!((status, info["sub"].as_str()), (200, Some(alice.user_id.as_str())), "{info}");
    let (status, unknown) = b.get("/_matrix/federation/v1/openid/userinfo?access_token=nope", None).await;
    assert_eq!((status, unknown["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "{unknown}");
}

#[tokio::test]
async fn killing_a_process_under_load_loses_no_acknowledged_event() {
    let (a, mut workers) = deployment(1).await;
    let b = workers.remove(0);
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, &b).await;
    // Senders on both processes; B is killed while they run.
    let b_base = b.base.clone();
    let load = |base: String, user: User, room: String, label: &'static str| {
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut acked = Vec::new();
            for i in 0..40 {
                let url = format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/{label}{i}");
                let sent = http
                    .put(url)
                    .bearer_auth(&user.token)
                    .json(&json!({"msgtype": "m.text", "body": format!("{label} {i}")}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => {
                        let body: Value = r.json().await.unwrap();
                        acked.push(body["event_id"].as_str().unwrap().to_owned());
                    }
                    Ok(r) => panic!("{label} {i}: {}", r.status()),
                    Err(_) => break, // the process is gone
                }
            }
            acked
        })
    };
    let on_a = load(a.base.clone(), alice.clone(), room.clone(), "a");
    let on_b = load(b_base, bob.clone(), room.clone(), "b");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let pid = b.pid();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let acked_a = on_a.await.unwrap();
    let acked_b = on_b.await.unwrap();
    assert_eq!(acked_a.len(), 40, "the surviving process carries on");
    drop(b);
    // Everything acknowledged by either process is in the room, as A pages it.
    let (_, page) =
        a.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1000"), Some(&alice.token)).await;
    let seen: std::collections::HashSet<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
    for id in acked_a.iter().chain(&acked_b) {
        assert!(seen.contains(id.as_str()), "acknowledged {id} is missing");
    }
    // And A still serves the room.
    assert_eq!(a.send_text(&alice, &room, "still here").await.0, 200);
}

#[tokio::test]
async fn a_send_retried_on_another_process_gets_the_first_event() {
    let (a, workers) = deployment(1).await;
    let b = &workers[0];
    let alice = a.register("alice").await;
    let room = a.create_room(&alice, json!({"preset": "public_chat"})).await;
    for round in 0..5 {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/retry{round}");
        let body = json!({"msgtype": "m.text", "body": "once"});
        // At the same moment on both processes, then once more on each.
        let (first, second) = tokio::join!(
            a.put(&path, Some(&alice.token), body.clone()),
            b.put(&path, Some(&alice.token), body.clone())
        );
        assert_eq!((first.0, second.0), (200, 200), "{} {}", first.1, second.1);
        assert_eq!(first.1["event_id"], second.1["event_id"], "one event per transaction ID");
        for server in [&a, b] {
            let (status, again) = server.put(&path, Some(&alice.token), body.clone()).await;
            assert_eq!((status, &again["event_id"]), (200, &first.1["event_id"]));
        }
    }
    let rows = sql_in(
        a.dir.path(),
        &format!("SELECT count(*) FROM events WHERE room_id = '{room}' AND type = 'm.room.message'"),
    );
    assert_eq!(rows, vec![vec!["5".to_owned()]]);
}

#[tokio::test]
async fn a_second_process_with_a_live_processs_name_is_refused() {
    let (_main, workers) = deployment(1).await;
    // The same shared config and worker file again, as a second `worker1`.
    let first = &workers[0];
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(first.dir.path().join("homeserver.yaml"))
        .arg("-c")
        .arg(first.dir.path().join("worker.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another live process is already named 'worker1'"), "{stderr}");
    // The first one carries on.
    assert_eq!(first.get("/_matrix/client/versions", None).await.0, 200);
}

#[tokio::test]
async fn a_state_event_redacted_through_one_process_is_redacted_on_another() {
    let (a, workers) = deployment(1).await;
    let b = &workers[0];
    let (alice, bob, room) = alice_and_bob_in_a_room(&a, b).await;
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic");
    let (status, set) = a.put(&path, Some(&alice.token), json!({"topic": "to be taken back"})).await;
    assert_eq!(status, 200, "{set}");
    // B reads it (and keeps the parsed event). B learns of A's write through the bus, a moment
    // later (as Synapse's workers learn through replication): wait for it, within bounds.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, topic) = b.get(&path, Some(&bob.token)).await;
        if (status, topic["topic"].as_str()) == (200, Some("to be taken back")) {
            break;
        }
        assert!(Instant::now() < deadline, "the other process never showed the topic: {status} {topic}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let redact = format!("/_matrix/client/v3/rooms/{room}/redact/{}/r1", set["event_id"].as_str().unwrap());
    assert_eq!(a.put(&redact, Some(&alice.token), json!({})).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, topic) = b.get(&path, Some(&bob.token)).await;
        if status == 200 && topic.get("topic").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the other process still shows the redacted topic: {status} {topic}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rate_limit_override_made_on_one_process_applies_on_every_other() {
    let (a, workers) = deployment_with(1, "rc_message:\n  per_second: 0.1\n  burst_count: 2\n").await;
    let b = &workers[0];
    a.make_admin_cli("root");
    let root = a.login("root").await;
    let alice = a.register("alice").await;
    let room = b.create_room(&alice, json!({})).await;
    let mut limited = false;
    for i in 0..5 {
        if b.send_text(&alice, &room, &format!("m{i}")).await.0 == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "rc_message applies on the worker");
    let path = "/_synapse/admin/v1/users/@alice:test/override_ratelimit";
    let (st, body) = a.post(path, Some(&root.token), json!({"messages_per_second": 0})).await;
    assert_eq!(st, 200, "{body}");
    crate::federating::eventually("the override reaches the worker", || async {
        b.send_text(&alice, &room, "through").await.0 == 200
    })
    .await;
    for i in 0..3 {
        assert_eq!(b.send_text(&alice, &room, &format!("free {i}")).await.0, 200);
    }
}
