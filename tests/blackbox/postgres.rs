//! `database: name: psycopg2`: Synapse's checks of the database, and what a bad setting gets.
//! (The whole black-box suite also runs on PostgreSQL: scripts/test.sh's second pass.)

use std::process::Command;

use crate::harness::*;

/// Creates a database on the test cluster with the given `createdb` options; returns the
/// `database:` section naming it, with `extra_db_keys` under `database:` itself.
fn database(name: &str, createdb_options: &[&str], extra_db_keys: &str) -> String {
    let pg = TestPostgres::get();
    let dbname = pg.create_database(name, createdb_options);
    // psycopg2's `database` key, and the port as a string, as Synapse configs often have them.
    format!(
        "database:\n  name: psycopg2\n{extra_db_keys}  args:\n    host: {}\n    port: '{}'\n    user: {}\n    \
         database: {dbname}\n    cp_min: 1\n    cp_max: 2\n",
        pg.host, pg.port, pg.user
    )
}

/// Runs `check-config`-free start-up: `serve` until it fails or listens; returns (exit code or
/// None if it is serving, stderr).
fn start_and_report(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), base_config(yaml)).unwrap();
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(dir.path().join("homeserver.yaml"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, String::new());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[tokio::test]
async fn a_database_without_c_collation_is_refused_unless_allowed() {
    let locale = ["-E", "UTF8", "--lc-collate=C.UTF-8", "--lc-ctype=C.UTF-8"];
    let (code, stderr) = start_and_report(&database("locale", &locale, ""));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Database has incorrect collation of 'C.UTF-8'. Should be 'C'"), "{stderr}");
    assert!(stderr.contains("allow_unsafe_locale"), "{stderr}");

    // Synapse's override, under `database:`.
    let server = Server::start_with(&database("unsafe", &locale, "  allow_unsafe_locale: true\n")).await;
    let alice = server.register("alice").await;
    assert_eq!(server.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200);
}

#[tokio::test]
async fn a_database_that_is_not_utf8_is_refused() {
    let (code, stderr) =
        start_and_report(&database("ascii", &["-E", "SQL_ASCII", "--lc-collate=C", "--lc-ctype=C"], ""));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Database has incorrect encoding: 'SQL_ASCII' instead of 'UTF8'"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_or_missing_database_fails_start_up_with_the_reason() {
    let (code, stderr) = start_and_report(
        "database: {name: psycopg2, args: {host: 127.0.0.1, port: 1, user: postgres, dbname: x, connect_timeout: 2}}\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Could not open the database"), "{stderr}");
    let port = TestPostgres::get().port;
    let (code, stderr) = start_and_report(&format!(
        "database: {{name: psycopg2, args: {{host: 127.0.0.1, port: {port}, user: postgres, dbname: no_such_db}}}}\n"
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no_such_db"), "the server's reason is shown: {stderr}");
}

#[tokio::test]
async fn data_survives_a_restart_on_postgresql() {
    let server = Server::start_with(&database("restart", &["-E", "UTF8", "--lc-collate=C", "--lc-ctype=C"], "")).await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, serde_json::json!({"name": "kept"})).await;
    let (status, sent) = server.send_text(&alice, &room, "still here after a restart").await;
    assert_eq!(status, 200);
    let server = Server::start_in(server.stop()).await;
    let (status, event) = server
        .get(
            &format!("/_matrix/client/v3/rooms/{room}/event/{}", sent["event_id"].as_str().unwrap()),
            Some(&alice.token),
        )
        .await;
    assert_eq!((status, event["content"]["body"].as_str()), (200, Some("still here after a restart")));
}
