//! Reliability: bad input never answers 500 or drops the connection, failed requests leave
//! nothing behind, hostile connections are cut, a clean stop leaves a tidy database.
//! (Power loss is proven by scripts/power-loss.py, which needs root and a loop device.)

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// A message body nested `depth` levels deep (the body object itself is level 1).
fn nested_message(depth: usize) -> Vec<u8> {
    let inner = format!("{}1{}", "{\"a\":".repeat(depth - 1), "}".repeat(depth - 1));
    format!("{{\"msgtype\":\"m.text\",\"body\":\"deep\",\"n\":{inner}}}").into_bytes()
}

async fn put_raw(server: &Server, path: &str, token: &str, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .put(format!("{}{path}", server.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("an answer, not a dropped connection");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_bodies_get_matrix_errors_never_a_500_or_a_dropped_connection() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;

    // An http pusher without `data` (this used to panic and drop the connection).
    let pusher = json!({"kind": "http", "app_id": "a", "pushkey": "k", "app_display_name": "x",
        "device_display_name": "d", "lang": "en"});
    let (status, body) = server.post("/_matrix/client/v3/pushers/set", Some(&alice.token), pusher).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{body}");

    // Nesting: up to 100 levels is accepted; anything deeper is 400 at every depth (127 used
    // to pass the parser and fail with a 500 once wrapped in an event).
    let path = |txn: &str| format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    let (status, body) = put_raw(&server, &path("d100"), &alice.token, nested_message(100)).await;
    assert_eq!(status, 200, "{body}");
    for depth in [101, 127, 128, 129, 10_000] {
        let (status, body) = put_raw(&server, &path(&format!("d{depth}")), &alice.token, nested_message(depth)).await;
        assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "depth {depth}: {body}");
    }
    // Brackets inside strings are not nesting.
    let brackets = json!({"msgtype": "m.text", "body": "[[[[{{{{".repeat(100)});
    assert_eq!(server.put(&path("strings"), Some(&alice.token), brackets).await.0, 200);
    // Nothing of the refused ones was stored, and the server is serving.
    let (_, messages) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"), Some(&alice.token)).await;
    let deep = messages["chunk"].as_array().unwrap().iter().filter(|e| e["content"]["body"] == "deep").count();
    assert_eq!(deep, 1, "only the 100-level message was stored");
    assert_eq!(server.send_text(&alice, &room, "still serving").await.0, 200);
}

/// The server's peak resident memory, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_body_of_millions_of_small_values_is_refused_before_it_is_parsed() {
    let server = Server::start_with("max_upload_size: 8M\n").await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    let before = peak_rss(server.pid());
    // 3.5 million zeros in 7 MB: parsed, they would take over 100 MB.
    let zeros = vec!["0"; 3_500_000].join(",");
    let body = format!("{{\"msgtype\":\"m.text\",\"body\":\"zeros\",\"z\":[{zeros}]}}").into_bytes();
    let path = |i: usize| format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/zeros{i}");
    let paths: Vec<String> = (0..4).map(path).collect();
    let sends: Vec<_> = paths.iter().map(|p| put_raw(&server, p, &alice.token, body.clone())).collect();
    for (status, body) in futures::future::join_all(sends).await {
        assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
        assert!(body["error"].as_str().unwrap().contains("more than 1000000 JSON values"), "{body}");
    }
    let grown = peak_rss(server.pid()).saturating_sub(before);
    // The four bodies themselves (28 MB) and their buffers, no parsed values.
    assert!(grown < 96 * 1024 * 1024, "peak memory grew by {} MB", grown / (1024 * 1024));
    assert_eq!(server.send_text(&alice, &room, "still serving").await.0, 200);
}

#[tokio::test]
async fn a_create_room_that_fails_part_way_leaves_no_room_behind() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let big = "x".repeat(70_000);
    let refused = [
        (json!({"power_level_content_override": {"users_default": 1u64 << 60}}), 400),
        (json!({"power_level_content_override": {"ban": "high"}}), 403),
        (json!({"power_level_content_override": {"users": {"not-a-user": 100}}}), 403),
        (json!({"power_level_content_override": {"events": {"m.room.name": 1.5}}}), 400),
        (json!({"initial_state": [{"type": "m.room.topic", "state_key": "", "content": {"topic": big}}]}), 413),
        (
            json!({"initial_state": [{"type": "m.room.member", "state_key": "@bob:test",
            "content": {"membership": "join"}}]}),
            403,
        ),
        (
            json!({"initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "public", "n": 1u64 << 60}}]}),
            400,
        ),
        (json!({"name": big}), 413),
        (json!({"room_version": "12", "power_level_content_override": {"users": {alice.user_id.clone(): 100}}}), 403),
        (json!({"creation_content": {"x": 1u64 << 60}}), 400),
    ];
    let rooms_in_db = || sql_in(server.dir.path(), "SELECT count(*) FROM rooms");
    let rooms_before = rooms_in_db();
    for (body, expected) in refused {
        let (status, answer) = server.post("/_matrix/client/v3/createRoom", Some(&alice.token), body.clone()).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(answer["errcode"].is_string(), "{answer}");
    }
    assert_eq!(rooms_in_db(), rooms_before, "no room was left behind");
    let (_, joined) = server.get("/_matrix/client/v3/joined_rooms", Some(&alice.token)).await;
    assert_eq!(joined["joined_rooms"], json!([]));
    // Profile changes, which fan out to every joined room, still work.
    let room = server.create_room(&alice, json!({"name": "fine"})).await;
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id),
            Some(&alice.token),
            json!({"displayname": "Alice"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, member) = server
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", alice.user_id), Some(&alice.token))
        .await;
    assert_eq!(member["displayname"], "Alice");
}

/// Reads from `stream` until it is closed; how long that took.
async fn time_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_cut_but_a_slow_body_is_given_time() {
    let server = Server::start_with("request_header_timeout: 1s\n").await;
    let alice = server.register("alice").await;
    let addr = server.base.trim_start_matches("http://").to_owned();

    // Headers that never end (slowloris).
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let cut = time_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(cut.is_some_and(|t| t < Duration::from_secs(3)), "a connection that never finished its headers: {cut:?}");

    // An idle kept-alive connection, after its answer.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let cut = time_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(cut.is_some_and(|t| t < Duration::from_secs(3)), "an idle connection: {cut:?}");

    // A body trickling in over 12 s (once cut at 10 s) is within its budget.
    let body = json!({"displayname": "x".repeat(100)}).to_string().into_bytes();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /_matrix/client/v3/profile/{}/displayname HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        alice.user_id,
        alice.token,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunks: Vec<&[u8]> = body.chunks(body.len().div_ceil(12)).collect();
    for chunk in chunks {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stream.write_all(chunk).await.unwrap();
    }
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503_and_service_resumes_when_they_close() {
    // 300 open files: 256 are kept back, so 44 connections are served at once.
    let server = Server::start_with_open_files_limit("", 300).await;
    assert!(
        server.log.lock().unwrap().contains("the open-files limit (ulimit -n) is low"),
        "a warning names the low limit"
    );
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut hogs = Vec::new();
    for _ in 0..60 {
        hogs.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["errcode"], "M_UNKNOWN");
    drop(hogs);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = server.get("/_matrix/client/versions", None).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "service did not resume: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_clean_stop_leaves_no_write_ahead_log() {
    let server = Server::start_with("database:\n  name: sqlite3\n  args:\n    database: data/homeserver.db\n").await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    for i in 0..20 {
        assert_eq!(server.send_text(&alice, &room, &format!("m{i}")).await.0, 200);
    }
    let wal = server.dir.path().join("data/homeserver.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0, "the WAL holds the writes while running");
    let status = std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.try_exit().is_none() {
        assert!(Instant::now() < deadline, "the server did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(left, 0, "the WAL was moved into the database and truncated");
    // And everything is there after a restart.
    let server = Server::start_in(server.stop()).await;
    let alice = server.login("alice").await;
    let (_, messages) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=30"), Some(&alice.token)).await;
    let bodies = messages["chunk"].as_array().unwrap().iter().filter(|e| e["type"] == "m.room.message").count();
    assert_eq!(bodies, 20);
}

/// A small tmpfs mounted on a directory for the length of a test.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> SmallDisk {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs");
        SmallDisk(path.to_owned())
    }

    /// Fills the disk with one file, up to its last byte.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let mut byte = [7u8];
        while file.write_all(&byte).is_ok() {
            byte[0] = 7;
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_with_507_keeps_reads_and_restarts() {
    // SAFETY: geteuid only reads the process's user ID.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a small disk needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path(), "48m");
    std::fs::write(
        dir.path().join("homeserver.yaml"),
        base_config("database:\n  name: sqlite3\n  args:\n    database: data/homeserver.db\n"),
    )
    .unwrap();
    let server = Server::start_in(dir).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({})).await;
    assert_eq!(server.send_text(&alice, &room, "before").await.0, 200);
    let first = server.sync(&alice, None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    let filler = disk.fill();
    // Writes: 507 with a clear message once nothing more fits (SQLite may first reuse space
    // its log already holds), never a 500.
    let mut refused = None;
    for i in 0..2_000 {
        let (status, body) = server.send_text(&alice, &room, &format!("while full {i} {}", "x".repeat(2000))).await;
        match status {
            200 => continue,
            507 => {
                refused = Some(body);
                break;
            }
            other => {
                let log = server.log.lock().unwrap().clone();
                let causes: Vec<&str> = log.lines().filter(|l| l.contains("cause")).collect();
                panic!("a write on a full disk answered {other}: {body}; {causes:?}")
            }
        }
    }
    let refused = refused.expect("a write was refused");
    assert_eq!(refused["errcode"], "M_UNKNOWN");
    assert!(refused["error"].as_str().unwrap().contains("disk is full"), "{refused}");
    let upload = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload", server.base))
        .bearer_auth(&alice.token)
        .header("content-type", "application/octet-stream")
        .body(vec![1u8; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status().as_u16(), 507, "an upload on a full disk");
    // Reads carry on.
    for path in [
        format!("/_matrix/client/v3/sync?since={since}&timeout=0"),
        "/_matrix/client/v3/sync?timeout=0".to_owned(),
        format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5"),
        format!("/_matrix/client/v3/rooms/{room}/state"),
        "/_matrix/client/v3/joined_rooms".to_owned(),
    ] {
        let (status, body) = server.get(&path, Some(&alice.token)).await;
        assert_eq!(status, 200, "{path} on a full disk: {body}");
    }
    assert!(server.log.lock().unwrap().contains("the disk is full"), "the log says why writes fail");

    // A restart on the full disk works, and serves reads.
    let dir = server.stop();
    let server = Server::start_in(dir).await;
    // (Alice's access token is in the database: no login, which would write.)
    let (status, body) =
        server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5"), Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");

    // Space freed: writes work again.
    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server.send_text(&alice, &room, "after").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "writes did not resume: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(server);
    drop(disk);
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_cut() {
    let server = Server::start_with("request_header_timeout: 1s\nmax_upload_size: 32M\n").await;
    let alice = server.register("alice").await;
    let size = 16 * 1024 * 1024;
    let upload = reqwest::Client::new()
        .post(format!("{}/_matrix/media/v3/upload", server.base))
        .bearer_auth(&alice.token)
        .header("content-type", "application/octet-stream")
        .body(vec![5u8; size])
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    let uri: Value = upload.json().await.unwrap();
    let media_id = uri["content_uri"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    // A small receive buffer, and nothing read: the server's writes stall.
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /_matrix/client/v1/media/download/test/{media_id} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n",
        alice.token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Cut: what was sent before the stall, then the end; not the whole file.
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("the connection was neither cut nor finished"),
        }
    }
    assert!(received < size, "the whole answer arrived ({received} bytes): the stalled connection was not cut");
    // The server carries on.
    assert_eq!(server.get("/_matrix/client/versions", None).await.0, 200);
}
