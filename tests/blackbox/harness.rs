//! The shared harness: start `myelin-test-server` on 127.0.0.1:0 in a temp dir, find its port
//! from its log, and speak HTTP to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_myelin-test-server");

/// The environment every server and CLI run gets: the test venv (Twisted, matrix-nio) and the
/// Python test modules. Python only starts when a Python module is configured.
pub fn python_env(cmd: &mut Command) -> &mut Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    cmd.env("VIRTUAL_ENV", root.join("clients/.venv")).env("PYTHONPATH", root.join("python_modules"))
}

/// A running server; killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub log: Arc<Mutex<String>>,
    http: reqwest::Client,
}

/// A registered user.
#[derive(Clone, Debug)]
pub struct User {
    pub user_id: String,
    pub token: String,
    pub device_id: String,
}

/// Rate limits high enough that no functional test meets them (as sytest's and Synapse's
/// own test configs do).
pub const LIFTED_RATE_LIMITS: &str = "\
rc_message: {per_second: 10000, burst_count: 10000}
rc_registration: {per_second: 10000, burst_count: 10000}
rc_registration_token_validity: {per_second: 10000, burst_count: 10000}
rc_login:
  address: {per_second: 10000, burst_count: 10000}
  account: {per_second: 10000, burst_count: 10000}
  failed_attempts: {per_second: 10000, burst_count: 10000}
rc_joins:
  local: {per_second: 10000, burst_count: 10000}
  remote: {per_second: 10000, burst_count: 10000}
rc_joins_per_room: {per_second: 10000, burst_count: 10000}
rc_invites:
  per_room: {per_second: 10000, burst_count: 10000}
  per_user: {per_second: 10000, burst_count: 10000}
  per_issuer: {per_second: 10000, burst_count: 10000}
rc_media_create: {per_second: 10000, burst_count: 10000}
rc_reports: {per_second: 10000, burst_count: 10000}
rc_presence:
  per_user: {per_second: 10000, burst_count: 10000}
rc_room_creation: {per_second: 10000, burst_count: 10000}
rc_federation: {window_size: 1000, sleep_limit: 10000, sleep_delay: 500, reject_limit: 10000, concurrent: 100}
";

/// A `createRoom` body: `preset` with `m.room.history_visibility` set to `visibility`.
pub fn room_with_visibility(preset: &str, visibility: &str) -> Value {
    json!({"preset": preset, "initial_state": [
        {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": visibility}}
    ]})
}

/// The `database:` section of a test server: SQLite in its directory, or, when the suite runs
/// with `MYELIN_TEST_BACKEND=postgres` (scripts/test.sh's second pass), a new database of its
/// own on the test PostgreSQL cluster (`MYELIN_TEST_PG`, or the one `scripts/test-postgres.sh`
/// starts).
pub fn database_section() -> String {
    if std::env::var("MYELIN_TEST_BACKEND").as_deref() != Ok("postgres") {
        return "database:\n  name: sqlite3\n  args:\n    database: data/homeserver.db\n".into();
    }
    postgres_database_section()
}

/// A `database:` section naming a new database of its own on the test PostgreSQL cluster.
pub fn postgres_database_section() -> String {
    let pg = TestPostgres::get();
    let name = pg.create_database("blackbox", &["-E", "UTF8", "--lc-collate=C", "--lc-ctype=C"]);
    format!(
        "database:\n  name: psycopg2\n  args:\n    host: {}\n    port: {}\n    user: {}\n    \
         dbname: {name}\n    cp_min: 1\n    cp_max: 4\n",
        pg.host, pg.port, pg.user
    )
}

/// The test PostgreSQL cluster ([`test_postgres_settings`]), as `createdb` and `psql` take it.
pub struct TestPostgres {
    pub host: String,
    pub port: String,
    pub user: String,
}

impl TestPostgres {
    pub fn get() -> TestPostgres {
        let settings = test_postgres_settings();
        let value = |key: &str, default: &str| {
            settings
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .unwrap_or(default)
                .to_owned()
        };
        TestPostgres { host: value("host", "127.0.0.1"), port: value("port", "5432"), user: value("user", "postgres") }
    }

    /// The connection options of `createdb`, `dropdb` and `psql`.
    pub fn connection_args(&self) -> [&str; 6] {
        ["-h", &self.host, "-p", &self.port, "-U", &self.user]
    }

    /// Creates a database of its own (named from `prefix`, this process and a counter) with
    /// `createdb`'s `options`; returns its name.
    pub fn create_database(&self, prefix: &str, options: &[&str]) -> String {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!(
            "{prefix}_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let out = Command::new("createdb")
            .args(self.connection_args())
            .args(["-T", "template0"])
            .args(options)
            .arg(&name)
            .output()
            .expect("run createdb (Debian's postgresql-client)");
        assert!(out.status.success(), "createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
        name
    }
}

/// Runs SQL on the database of the server whose directory is `dir` (SQLite or PostgreSQL, as
/// its homeserver.yaml says), for tests that must reach under the API (an import, a schema
/// from the future, a graph check); returns the rows, each column as text (NULL as "").
pub fn sql_in(dir: &Path, sql: &str) -> Vec<Vec<String>> {
    let yaml = std::fs::read_to_string(dir.join("homeserver.yaml")).unwrap();
    let out = if let Some(name) = yaml.lines().find_map(|l| l.trim().strip_prefix("dbname: ")) {
        Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-F", "\u{1f}", "-R", "\u{1e}"])
            .args(TestPostgres::get().connection_args())
            .args(["-d", name.trim(), "-c", sql])
            .output()
            .expect("run psql")
    } else {
        let script = "import sqlite3, sys\n\
                      c = sqlite3.connect(sys.argv[1])\n\
                      rows = c.execute(sys.argv[2]).fetchall()\n\
                      c.commit()\n\
                      sys.stdout.write('\\x1e'.join('\\x1f'.join('' if v is None else str(v) for v in r) for r in rows))\n";
        Command::new("python3")
            .args(["-c", script])
            .arg(dir.join("data/homeserver.db"))
            .arg(sql)
            .output()
            .expect("run python3")
    };
    assert!(out.status.success(), "SQL failed: {sql}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let text = text.trim_end_matches('\n');
    if text.is_empty() {
        return Vec::new();
    }
    text.split('\u{1e}').map(|row| row.split('\u{1f}').map(str::to_owned).collect()).collect()
}

/// Checks the stored graph of `room` (server directory `dir`): parents stored before their
/// children, depth above every parent's, at most 10 parents, one event without parents (the
/// create), and exactly one forward extremity, the last event, which every other event is a
/// parent of. Returns the room's event IDs in stream order.
pub fn assert_sound_room_graph(dir: &Path, room: &str) -> Vec<String> {
    let rows =
        sql_in(dir, &format!("SELECT event_id, json FROM events WHERE room_id = '{room}' ORDER BY stream_ordering"));
    let mut depth = std::collections::HashMap::new();
    let mut children = std::collections::HashSet::new();
    for (i, row) in rows.iter().enumerate() {
        let (id, ev): (&str, Value) = (&row[0], serde_json::from_str(&row[1]).unwrap());
        let prevs: Vec<&str> = ev["prev_events"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        assert_eq!(prevs.is_empty(), i == 0, "{i} {id} {prevs:?}");
        assert!(prevs.len() <= 10, "{prevs:?}");
        let d = ev["depth"].as_i64().unwrap();
        for p in prevs {
            let parent = *depth.get(p).unwrap_or_else(|| panic!("parent {p} of {id} stored later or missing"));
            assert!(d > parent, "{id} at depth {d}, parent {p} at {parent}");
            children.insert(p.to_owned());
        }
        depth.insert(id.to_owned(), d);
    }
    let ids: Vec<String> = rows.into_iter().map(|mut r| r.swap_remove(0)).collect();
    let last = ids.last().unwrap().clone();
    let childless: Vec<&String> = ids.iter().filter(|id| !children.contains(*id)).collect();
    assert_eq!(childless, vec![&last], "every event but the last has a child");
    let extremities = sql_in(dir, &format!("SELECT event_id FROM forward_extremities WHERE room_id = '{room}'"));
    assert_eq!(extremities, vec![vec![last]]);
    ids
}

/// The test cluster's connection settings (`host=... port=... user=...`).
pub fn test_postgres_settings() -> String {
    if let Ok(settings) = std::env::var("MYELIN_TEST_PG") {
        return settings;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-postgres.sh");
    let out = Command::new(&script).output().expect("run scripts/test-postgres.sh");
    assert!(out.status.success(), "scripts/test-postgres.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Percent-encodes one path segment (room, event and user IDs, aliases): all but the
/// unreserved characters.
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The config every test server starts from; `extra` is appended (later keys win in YAML? no:
/// duplicate keys are an error, so callers pass only keys not set here).
pub fn base_config(extra: &str) -> String {
    let mut cfg = String::from(
        "server_name: test\n\
         public_baseurl: http://127.0.0.1/\n\
         listeners:\n  - port: 0\n    bind_addresses: ['127.0.0.1']\n    resources:\n      - names: [client, federation, metrics]\n\
         signing_key_path: data/test.signing.key\n\
         media_store_path: data/media\n\
         log_level: info\n",
    );
    if !extra.contains("\ndatabase:") && !extra.starts_with("database:") {
        cfg.push_str(&database_section());
    }
    if !extra.contains("enable_registration") {
        cfg.push_str("enable_registration: true\nenable_registration_without_verification: true\n");
    }
    if !extra.contains("max_upload_size") {
        cfg.push_str("max_upload_size: 1M\n");
    }
    // Tests register, log in and send far faster than Synapse's default limits allow; the
    // rate-limit tests set their own.
    if !extra.contains("rc_") {
        cfg.push_str(LIFTED_RATE_LIMITS);
    }
    cfg.push_str(extra);
    cfg
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with("").await
    }

    /// Starts with `extra` YAML added to the base config.
    pub async fn start_with(extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("homeserver.yaml"), base_config(extra)).unwrap();
        Self::start_in(dir).await
    }

    /// Starts on an existing directory holding `homeserver.yaml` (restarts keep data).
    pub async fn start_in(dir: tempfile::TempDir) -> Server {
        Self::start_in_env(dir, true).await
    }

    /// As [`Server::start_in`]; `python_env: false` starts it without `VIRTUAL_ENV` and
    /// `PYTHONPATH`, so only the config's `python:` section says where modules come from.
    pub async fn start_in_env(dir: tempfile::TempDir, with_python_env: bool) -> Server {
        Self::start_in_with_env(dir, with_python_env, &[]).await
    }

    /// As [`Server::start_in_env`], with extra environment variables.
    pub async fn start_in_with_env(dir: tempfile::TempDir, with_python_env: bool, env: &[(&str, &str)]) -> Server {
        Self::start_process(dir, with_python_env, env, &[], None).await
    }

    /// Starts with `extra` YAML and an open-files limit (soft and hard) of `limit`.
    pub async fn start_with_open_files_limit(extra: &str, limit: u64) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("homeserver.yaml"), base_config(extra)).unwrap();
        Self::start_process(dir, true, &[], &[], Some(limit)).await
    }

    /// Starts on `dir`'s homeserver.yaml plus more config files read after it (`-c` again, as
    /// a worker process is started: `-c homeserver.yaml -c worker.yaml`).
    pub async fn start_in_with_configs(dir: tempfile::TempDir, more_configs: &[PathBuf]) -> Server {
        Self::start_process(dir, true, &[], more_configs, None).await
    }

    async fn start_process(
        dir: tempfile::TempDir,
        with_python_env: bool,
        env: &[(&str, &str)],
        more_configs: &[PathBuf],
        open_files_limit: Option<u64>,
    ) -> Server {
        let mut cmd = Command::new(BIN);
        if let Some(limit) = open_files_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit runs between fork and exec (async-signal-safe).
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.envs(env.iter().copied());
        if with_python_env {
            python_env(&mut cmd);
        } else {
            cmd.env_remove("VIRTUAL_ENV").env_remove("PYTHONPATH");
        }
        cmd.arg("-c").arg(dir.path().join("homeserver.yaml"));
        for config in more_configs {
            cmd.arg("-c").arg(config);
        }
        let mut child = cmd
            .env("MYELIN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start myelin-test-server");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("myelin: listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.to_owned());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", log.lock().unwrap());
            }
        };
        Server { child, base, dir, log, http: reqwest::Client::new() }
    }

    /// Wraps another server process (a real Synapse) so the same helpers speak to it.
    pub fn adopt(child: Child, base: String, dir: tempfile::TempDir, log: Arc<Mutex<String>>) -> Server {
        Server { child, base, dir, log, http: reqwest::Client::new() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server and hands its directory back (for restarts).
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// The exit status, if the process has ended.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Every listener's base URL, in config order (from the start-up log).
    pub fn listener_urls(&self) -> Vec<String> {
        self.log_text().lines().filter_map(|l| l.strip_prefix("myelin: listening on ")).map(str::to_owned).collect()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the server's log shows `text` within a few seconds (the log is read from the
    /// process's pipe, which lags behind the answers under load).
    pub async fn log_shows(&self, text: &str) -> bool {
        for _ in 0..100 {
            if self.log_text().contains(text) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request; returns status and JSON body (`Null` if the body is not JSON).
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn raw(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call("GET", path, token, None).await
    }
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call("POST", path, token, Some(body)).await
    }
    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call("PUT", path, token, Some(body)).await
    }

    /// Registers `name` with password "password" through UIA (`m.login.dummy`).
    pub async fn try_register(&self, name: &str) -> (u16, Value) {
        let body = json!({"username": name, "password": "password"});
        let (status, challenge) = self.post("/_matrix/client/v3/register", None, body.clone()).await;
        if status != 401 {
            return (status, challenge);
        }
        let mut body = body;
        body["auth"] = json!({"type": "m.login.dummy", "session": challenge["session"]});
        self.post("/_matrix/client/v3/register", None, body).await
    }

    pub async fn register(&self, name: &str) -> User {
        let (status, body) = self.try_register(name).await;
        assert_eq!(status, 200, "register {name}: {body}");
        User {
            user_id: body["user_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
            device_id: body["device_id"].as_str().unwrap().to_owned(),
        }
    }

    /// Creates a room as `user` with `body`; panics unless 200.
    pub async fn create_room(&self, user: &User, body: Value) -> String {
        let (s, b) = self.post("/_matrix/client/v3/createRoom", Some(&user.token), body).await;
        assert_eq!(s, 200, "createRoom: {b}");
        b["room_id"].as_str().unwrap().to_owned()
    }

    pub async fn send_text(&self, user: &User, room: &str, text: &str) -> (u16, Value) {
        let txn = format!("t{}", rand_suffix());
        self.put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(&user.token),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await
    }

    pub async fn join(&self, user: &User, room: &str) -> (u16, Value) {
        self.post(&format!("/_matrix/client/v3/join/{room}"), Some(&user.token), json!({})).await
    }

    /// Joins a room through `server` (`?server_name=`): a room ID of room version 12 names no
    /// server to ask.
    pub async fn join_via(&self, user: &User, room: &str, server: &str) -> (u16, Value) {
        let room = room.replace('!', "%21").replace(':', "%3A");
        let path = format!("/_matrix/client/v3/join/{room}?server_name={}", server.replace(':', "%3A"));
        self.post(&path, Some(&user.token), json!({})).await
    }

    pub async fn invite(&self, user: &User, room: &str, target: &str) -> (u16, Value) {
        self.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), Some(&user.token), json!({"user_id": target}))
            .await
    }

    pub async fn sync(&self, user: &User, since: Option<&str>, timeout_ms: u64) -> Value {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(s) = since {
            path.push_str(&format!("&since={s}"));
        }
        let (s, b) = self.get(&path, Some(&user.token)).await;
        assert_eq!(s, 200, "sync: {b}");
        b
    }

    /// The scripted module `label`'s recorded calls.
    pub async fn calls(&self, label: &str) -> Vec<Value> {
        let (s, b) = self.get(&format!("/_synapse/client/test/{label}/calls"), None).await;
        assert_eq!(s, 200);
        b.as_array().cloned().unwrap_or_default()
    }

    /// Makes `user` a server admin via the command line (the server must be stopped? No:
    /// SQLite allows a second writer with WAL and a busy timeout).
    pub fn make_admin_cli(&self, localpart: &str) {
        let out = python_env(&mut Command::new(BIN))
            .args(["-c"])
            .arg(self.dir.path().join("homeserver.yaml"))
            .args(["register-user", "--user", localpart, "--password", "password", "--admin"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    pub async fn login(&self, localpart: &str) -> User {
        let (s, b) = self
            .post(
                "/_matrix/client/v3/login",
                None,
                json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart}, "password": "password"}),
            )
            .await;
        assert_eq!(s, 200, "login: {b}");
        User {
            user_id: b["user_id"].as_str().unwrap().to_owned(),
            token: b["access_token"].as_str().unwrap().to_owned(),
            device_id: b["device_id"].as_str().unwrap().to_owned(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    t ^ N.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E3779B97F4A7C15)
}

/// Runs the binary with `args` in `dir`; returns (exit code, stdout, stderr).
pub fn run_cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = python_env(&mut Command::new(BIN)).current_dir(dir).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Lists every file under `dir`, relative.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// The Matrix spec's Client-Server API definitions (shared/spec/openapi), parsed once.
pub fn spec() -> &'static Value {
    static SPEC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| load_spec("client-server.json"))
}

fn federation_spec() -> &'static Value {
    static SPEC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| load_spec("server-server.json"))
}

fn load_spec(file: &str) -> Value {
    let dir = std::env::var("MYELIN_OPENAPI")
        .map(|p| PathBuf::from(p).parent().map(Path::to_path_buf).unwrap_or_default())
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/openapi"));
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// [`assert_schema`] against the Server-Server API's definitions.
pub fn assert_federation_schema(path: &str, method: &str, status: u16, body: &Value) {
    check_schema(federation_spec(), path, method, status, body)
}

/// Asserts that `body` matches the spec's schema for `path` (the spec's template, e.g.
/// `/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`), `method` and `status`.
pub fn assert_schema(path: &str, method: &str, status: u16, body: &Value) {
    check_schema(spec(), path, method, status, body)
}

fn check_schema(spec: &Value, path: &str, method: &str, status: u16, body: &Value) {
    let op = &spec["paths"][path][method];
    assert!(op.is_object(), "no {method} {path} in the spec");
    let schema = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "no schema for {status} of {method} {path}");
    let validator = jsonschema::validator_for(schema).unwrap_or_else(|e| panic!("bad schema for {path}: {e}"));
    let errors: Vec<String> = validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match the spec:\n{}\nbody: {body}",
        errors.join("\n")
    );
}
