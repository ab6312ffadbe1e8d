//! Abuse limits and outbound safety (issue 17): Synapse's rate limits with their defaults and
//! answers, outbound requests that no spelling of a private address gets past, listeners that
//! serve only what they name, request hygiene, and shutdown under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Server, User, run_cli, sql_in};

/// Lifts one family of limits (so a test can set up what it needs) and leaves the rest at
/// Synapse's defaults.
const LIFT_REGISTRATION: &str = "rc_registration: {per_second: 1000, burst_count: 1000}\n";
const LIFT_ROOMS: &str = "rc_room_creation: {per_second: 1000, burst_count: 1000}\n";

fn assert_limited(status: u16, body: &Value) {
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{body}");
    assert!(body["retry_after_ms"].as_u64().is_some(), "retry_after_ms: {body}");
}

async fn login(server: &Server, user: &str, password: &str) -> (u16, Value) {
    server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
        )
        .await
}

#[tokio::test]
async fn a_password_brute_force_is_stopped_after_synapses_burst() {
    // Only the defaults: the first registration and logins stay within them.
    let server = Server::start_with("rc_message: {}\n").await;
    server.register("victim").await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(login(&server, "victim", "wrong").await);
    }
    // rc_login.failed_attempts: burst 3, then 429 before the password is even checked.
    for (s, b) in &statuses[..3] {
        assert_eq!((*s, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    }
    assert_limited(statuses[3].0, &statuses[3].1);
    // The right password does not get through the limit either (as on Synapse).
    let (s, b) = login(&server, "victim", "password").await;
    assert_limited(s, &b);
    // The header says the same in seconds.
    let response = reqwest::Client::new()
        .post(server.url("/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password", "user": "victim", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
}

#[tokio::test]
async fn logins_from_one_address_across_accounts_are_limited() {
    let server = Server::start_with(LIFT_REGISTRATION).await;
    // rc_login.address: 5 attempts per address, whichever accounts they name.
    for i in 0..5 {
        let (s, b) = login(&server, &format!("nobody{i}"), "x").await;
        assert_eq!(s, 403, "attempt {i}: {b}");
    }
    let (s, b) = login(&server, "nobody9", "x").await;
    assert_limited(s, &b);
}

#[tokio::test]
async fn registrations_per_address_are_limited_and_a_lifted_limit_is_honoured() {
    let server = Server::start_with("rc_message: {}\n").await;
    for i in 0..3 {
        let (s, b) = server.try_register(&format!("reg{i}")).await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = server.try_register("reg3").await;
    assert_limited(s, &b);
    drop(server);
    let lifted = Server::start_with(LIFT_REGISTRATION).await;
    for i in 0..6 {
        let (s, b) = lifted.try_register(&format!("reg{i}")).await;
        assert_eq!(s, 200, "{b}");
    }
}

async fn send_until_limited(server: &Server, user: &User, room: &str, tries: usize) -> Option<usize> {
    for i in 0..tries {
        let (s, b) = server.send_text(user, room, &format!("m{i}")).await;
        if s == 429 {
            assert_limited(s, &b);
            return Some(i);
        }
        assert_eq!(s, 200, "{b}");
    }
    None
}

#[tokio::test]
async fn message_bursts_are_limited_unless_the_user_has_an_override() {
    let server = Server::start_with(LIFT_REGISTRATION).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(server.join(&bob, &room).await.0, 200);
    // rc_message: burst 10, and createRoom took one of alice's.
    let limited_at = send_until_limited(&server, &alice, &room, 30).await.expect("alice is limited");
    assert!((9..=11).contains(&limited_at), "limited after {limited_at} messages");
    // Buckets are per user.
    assert_eq!(server.send_text(&bob, &room, "still fine").await.0, 200);

    // An override row with messages_per_second 0 exempts bob (as Synapse's table does).
    let dir = server.stop();
    sql_in(dir.path(), &format!("INSERT INTO ratelimit_override VALUES ('{}', 0, 0)", bob.user_id));
    let server = Server::start_in(dir).await;
    assert_eq!(send_until_limited(&server, &bob, &room, 30).await, None, "bob is exempt");
    assert!(send_until_limited(&server, &alice, &room, 30).await.is_some(), "alice is not");
}

#[tokio::test]
async fn join_and_invite_bursts_are_limited() {
    let server = Server::start_with(&format!(
        "{LIFT_REGISTRATION}{LIFT_ROOMS}rc_message: {{per_second: 1000, burst_count: 1000}}\n"
    ))
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut rooms = Vec::new();
    for _ in 0..12 {
        rooms.push(server.create_room(&alice, json!({"preset": "public_chat"})).await);
    }
    // rc_joins.local: burst 10.
    for room in &rooms[..10] {
        let (s, b) = server.join(&bob, room).await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = server.join(&bob, &rooms[10]).await;
    assert_limited(s, &b);
    // Joining a room again (a profile update) is not a join to limit.
    let (s, b) = server.join(&bob, &rooms[0]).await;
    assert_eq!(s, 200, "{b}");

    // rc_invites.per_user: a user receives at most 5 invites in a burst.
    let carol = server.register("carol").await;
    for room in &rooms[..5] {
        let (s, b) = server.invite(&alice, room, &carol.user_id).await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = server.invite(&alice, &rooms[5], &carol.user_id).await;
    assert_limited(s, &b);
    // The refused invite wrote nothing.
    let (_, state) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", rooms[5], carol.user_id),
            Some(&alice.token),
        )
        .await;
    assert_eq!(state["errcode"], "M_NOT_FOUND", "{state}");
}

#[tokio::test]
async fn room_creation_and_media_create_are_limited() {
    let server =
        Server::start_with(&format!("{LIFT_REGISTRATION}rc_message: {{per_second: 1000, burst_count: 1000}}\n")).await;
    let alice = server.register("alice").await;
    for i in 0..10 {
        let (s, b) = server.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({})).await;
        assert_eq!(s, 200, "room {i}: {b}");
    }
    let (s, b) = server.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({})).await;
    assert_limited(s, &b);
    // rc_media_create: burst 50, refilling at 10/s, so a fast client is stopped soon after.
    let mut created = 0;
    loop {
        let (s, b) = server.post("/_matrix/media/v1/create", Some(&alice.token), json!({})).await;
        if s == 429 {
            assert_limited(s, &b);
            break;
        }
        assert_eq!(s, 200, "{b}");
        created += 1;
        assert!(created < 500, "never limited");
    }
    assert!(created >= 50, "limited after {created}");
}

#[tokio::test]
async fn x_forwarded_listeners_limit_by_the_forwarded_address() {
    let cfg = crate::harness::base_config("rc_message: {}\n").replace(
        "resources:\n      - names: [client, federation, metrics]",
        "x_forwarded: true\n    resources:\n      - names: [client]",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), cfg).unwrap();
    let server = Server::start_in(dir).await;
    let client = reqwest::Client::new();
    let register = |name: String, ip: &'static str| {
        client
            .post(server.url("/_matrix/client/v3/register"))
            .header("x-forwarded-for", ip)
            .json(&json!({"username": name, "password": "password", "auth": {"type": "m.login.dummy"}}))
            .send()
    };
    for i in 0..3 {
        assert_eq!(register(format!("a{i}"), "203.0.113.1").await.unwrap().status(), 200);
    }
    assert_eq!(register("a3".into(), "203.0.113.1").await.unwrap().status(), 429);
    // Another client behind the same proxy has its own bucket.
    assert_eq!(register("b0".into(), "203.0.113.2, 10.0.0.1").await.unwrap().status(), 200);
}

/// A TCP listener on loopback that counts connections (and answers nothing useful).
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
        }
    });
    (port, count)
}

#[tokio::test]
async fn no_spelling_of_a_private_address_reaches_the_network() {
    // Synapse's default ip_range_blacklist (no whitelist).
    let server = Server::start_with("").await;
    let alice = server.register("alice").await;
    let (port, connections) = counting_listener().await;
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let hosts = [
        "127.0.0.1",
        "127.1",
        "0x7f000001",
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::1]",
        "localhost",
    ];
    let mut answers = Vec::new();
    for host in hosts {
        for p in [port, closed_port] {
            let server_name = format!("{host}:{p}");
            let paths = [
                (format!("/_matrix/media/v3/download/{server_name}/abcdef"), None),
                (format!("/_matrix/client/v1/media/download/{server_name}/abcdef"), Some(alice.token.as_str())),
                (format!("/_matrix/client/v3/profile/@x:{server_name}"), Some(alice.token.as_str())),
                (format!("/_matrix/client/v3/directory/room/%23x:{server_name}"), Some(alice.token.as_str())),
            ];
            for (path, token) in paths {
                let (s, b) = server.get(&path, token).await;
                assert!(s >= 400 && s != 500, "{path}: {s} {b}");
                // What a client learns does not depend on the port being open.
                let text = b["error"].as_str().unwrap_or_default().replace(&p.to_string(), "PORT");
                answers.push((path.replace(&p.to_string(), "PORT"), s, b["errcode"].clone(), text));
            }
        }
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "the server connected to a blocked address");
    for pair in answers.chunks(8) {
        let (open, closed) = pair.split_at(4);
        assert_eq!(open, closed, "open and closed ports answer alike");
    }
    // The same requests with loopback allowed do connect: the test would see a bypass.
    drop(server);
    let allowed = Server::start_with("ip_range_whitelist: ['127.0.0.0/8']\n").await;
    let _ = allowed.get(&format!("/_matrix/media/v3/download/127.1:{port}/abcdef"), None).await;
    assert!(connections.load(Ordering::SeqCst) > 0, "with the whitelist the listener is reached");
}

#[tokio::test]
async fn listeners_serve_only_the_resources_they_name() {
    let cfg = crate::harness::base_config("").replace(
        "listeners:\n  - port: 0\n    bind_addresses: ['127.0.0.1']\n    resources:\n      - names: [client, federation, metrics]\n",
        "listeners:\n  - port: 0\n    bind_addresses: ['127.0.0.1']\n    resources:\n      - names: [client]\n\
         \x20 - port: 0\n    bind_addresses: ['127.0.0.1']\n    resources:\n      - names: [federation]\n\
         \x20 - port: 0\n    type: metrics\n    bind_addresses: ['127.0.0.1']\n",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), &cfg).unwrap();
    let server = Server::start_in(dir).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let urls = server.listener_urls();
    assert_eq!(urls.len(), 3, "{urls:?}");
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (client, federation, metrics) = (&urls[0], &urls[1], &urls[2]);
    assert_eq!(get(format!("{client}/_matrix/client/versions")).await.0, 200);
    assert_eq!(get(format!("{client}/_matrix/federation/v1/version")).await.0, 404);
    assert_eq!(get(format!("{client}/_matrix/key/v2/server")).await.0, 404);
    let (s, b) = get(format!("{federation}/_matrix/client/versions")).await;
    assert_eq!((s, b["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")), "{b}");
    assert_eq!(get(format!("{federation}/_synapse/admin/v1/register")).await.0, 404);
    // The admin API is there on the client listener (asking for a token), not elsewhere.
    let (s, b) = get(format!("{client}/_synapse/admin/v1/registration_tokens")).await;
    assert_eq!((s, b["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")), "{b}");
    assert_eq!(get(format!("{federation}/_matrix/federation/v1/version")).await.0, 200);
    assert_eq!(get(format!("{federation}/_matrix/key/v2/server")).await.0, 200);
    assert_eq!(get(format!("{federation}/health")).await.0, 200);
    let metrics_text = http.get(format!("{metrics}/_synapse/metrics")).send().await.unwrap();
    assert_eq!(metrics_text.status(), 200);
    assert_eq!(get(format!("{metrics}/_matrix/client/versions")).await.0, 404);
    assert_eq!(get(format!("{client}/_synapse/metrics")).await.0, 404, "client does not serve metrics");

    // An unknown resource name is a config error.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("homeserver.yaml"),
        cfg.replace("names: [federation]", "names: [federation, clinet]"),
    )
    .unwrap();
    let (code, _, err) = run_cli(bad.path(), &["-c", "homeserver.yaml", "check-config"]);
    assert_ne!(code, 0);
    assert!(err.contains("listeners.<item 1>.resources.<item 0>.names.<item 1>") && err.contains("clinet"), "{err}");
}

#[tokio::test]
async fn a_join_whose_body_arrives_late_keeps_the_connection_usable() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({"preset": "public_chat"})).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /_matrix/client/v3/join/{room} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\n\r\n",
        bob.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(b"{}").await.unwrap();
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The same connection answers the next request.
    let next = format!("GET /_matrix/client/versions HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    stream.write_all(next.as_bytes()).await.unwrap();
    let second = read_response(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200"), "second answer: {second:?}");
}

/// Reads one HTTP/1.1 response with a content-length body.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return String::from_utf8_lossy(&buf).to_string(),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn an_event_over_64_kib_is_413_and_nothing_is_written() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let big = "x".repeat(70_000);
    let (s, b) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/big1"),
            Some(&alice.token),
            json!({"body": big, "msgtype": "m.text"}),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (413, Some("M_TOO_LARGE")), "{b}");
    let (s, b) = server
        .put(&format!("/_matrix/client/v3/rooms/{room}/state/m.big/k"), Some(&alice.token), json!({"v": big}))
        .await;
    assert_eq!((s, b["errcode"].as_str()), (413, Some("M_TOO_LARGE")), "{b}");
    let (_, messages) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&alice.token)).await;
    assert!(!messages.to_string().contains("xxxxxxxxxx"), "nothing of the big events was stored");
    assert_eq!(server.send_text(&alice, &room, "small").await.0, 200);
}

#[tokio::test]
async fn password_policy_and_password_login_switches() {
    let server = Server::start_with(
        "password_config:\n  policy:\n    enabled: true\n    minimum_length: 10\n    require_digit: true\n    \
         require_symbol: true\n    require_lowercase: true\n    require_uppercase: true\n",
    )
    .await;
    let register = |name: &'static str, password: &'static str| {
        server.post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": name, "password": password, "auth": {"type": "m.login.dummy"}}),
        )
    };
    for (password, code) in [
        ("Sh0rt!", "M_PASSWORD_TOO_SHORT"),
        ("NoDigitsHere!", "M_PASSWORD_NO_DIGIT"),
        ("NoSymbols123", "M_PASSWORD_NO_SYMBOL"),
        ("alllower123!", "M_PASSWORD_NO_UPPERCASE"),
        ("ALLUPPER123!", "M_PASSWORD_NO_LOWERCASE"),
    ] {
        let (s, b) = register("weak", password).await;
        assert_eq!((s, b["errcode"].as_str()), (400, Some(code)), "{password}: {b}");
    }
    let (s, b) = register("strong", "Good-Passw0rd").await;
    assert_eq!(s, 200, "{b}");
    let token = b["access_token"].as_str().unwrap().to_owned();
    // Changing the password meets the same policy.
    let (s, b) = server
        .post(
            "/_matrix/client/v3/account/password",
            Some(&token),
            json!({"new_password": "weak", "auth": {"type": "m.login.password", "user": "strong", "password": "Good-Passw0rd"}}),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (400, Some("M_PASSWORD_TOO_SHORT")), "{b}");
    assert_eq!(login(&server, "strong", "Good-Passw0rd").await.0, 200, "the old password still works");
    drop(server);

    let disabled = Server::start_with("password_config:\n  enabled: false\n").await;
    disabled.make_admin_cli("admin");
    let (_, flows) = disabled.get("/_matrix/client/v3/login", None).await;
    assert!(!flows.to_string().contains("m.login.password"), "{flows}");
    let (s, _) = login(&disabled, "admin", "password").await;
    assert_eq!(s, 400);
    drop(disabled);

    let no_local = Server::start_with("password_config:\n  localdb_enabled: false\n").await;
    no_local.register("local").await;
    let (s, b) = login(&no_local, "local", "password").await;
    assert_eq!((s, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
}

#[tokio::test]
async fn sigterm_answers_long_polls_at_once_and_keeps_every_acknowledged_write() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let first = server.sync(&alice, None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let base = server.base.clone();
    let token = alice.token.clone();
    let long_poll = tokio::spawn({
        let (base, token, since) = (base.clone(), token.clone(), since.clone());
        async move {
            let started = std::time::Instant::now();
            let r = reqwest::Client::new()
                .get(format!("{base}/_matrix/client/v3/sync?since={since}&timeout=30000"))
                .bearer_auth(token)
                .send()
                .await;
            (r.map(|r| r.status().as_u16()).unwrap_or(0), started.elapsed())
        }
    });
    // Writers keep sending while the signal arrives.
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (base, token, room, acknowledged) = (base.clone(), token.clone(), room.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..200 {
                let url = format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/w{w}-{i}");
                let Ok(r) =
                    http.put(url).bearer_auth(&token).json(&json!({"msgtype": "m.text", "body": "x"})).send().await
                else {
                    return;
                };
                if r.status() != 200 {
                    return;
                }
                if let Ok(b) = r.json::<Value>().await {
                    acknowledged.lock().unwrap().push(b["event_id"].as_str().unwrap_or_default().to_owned());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let (sync_status, waited) = long_poll.await.unwrap();
    assert_eq!(sync_status, 200, "the long-poll is answered");
    assert!(waited < Duration::from_secs(10), "answered after {waited:?}");
    for w in writers {
        let _ = w.await;
    }
    let mut server = server;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while server.try_exit().is_none() {
        assert!(std::time::Instant::now() < deadline, "the server did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty());
    let server = Server::start_in(server.stop()).await;
    let alice = server.login("alice").await;
    for event_id in acknowledged {
        let (s, b) = server.get(&format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"), Some(&alice.token)).await;
        assert_eq!(s, 200, "acknowledged {event_id} was lost: {b}");
    }
}
