//! A real admin tool against Myelin's admin API: synadm (PyPI), Synapse's command-line admin
//! client, driving the everyday admin work (users, rooms, redactions, history purges, media,
//! registration tokens) through its own requests and parsing.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::*;

/// Runs `synadm --batch -o json <args>` with `config` (root's token, the server's URL);
/// answers its parsed output.
fn synadm(config: &Path, args: &[&str]) -> Value {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/.venv");
    let out = Command::new(venv.join("bin/synadm"))
        .arg("-c")
        .arg(config)
        .args(["--batch", "-o", "json"])
        .args(args)
        .env("HOME", config.parent().unwrap())
        .output()
        .expect("synadm is installed by the test command");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "synadm {args:?} failed:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("ERROR"), "synadm {args:?} reported an error:\n{stdout}\n{stderr}");
    // Some commands show what they act on before acting: the answer is the last document.
    let json_start = stdout.find(['{', '[']).unwrap_or(stdout.len());
    serde_json::Deserializer::from_str(&stdout[json_start..])
        .into_iter::<Value>()
        .map_while(Result::ok)
        .last()
        .unwrap_or_else(|| Value::String(stdout.into_owned()))
}

#[tokio::test]
async fn synadm_manages_users_rooms_media_and_tokens() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&bob, json!({"preset": "public_chat", "name": "Town square"})).await;
    assert_eq!(s.join(&alice, &room).await.0, 200);
    assert_eq!(s.send_text(&alice, &room, "hello").await.0, 200);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("synadm.yaml");
    std::fs::write(
        &config,
        format!(
            "user: root\ntoken: {}\nprotocol: http\nbase_url: {}\nadmin_path: /_synapse/admin\n\
             matrix_path: /_matrix\nformat: json\ntimeout: 30\nserver_discovery: well-known\n\
             homeserver: test\nssl_verify: false\n",
            root.token, s.base
        ),
    )
    .unwrap();

    assert!(synadm(&config, &["version"])["server_version"].as_str().unwrap().starts_with("Myelin"));

    // Users: list, details, whois, suspend and lift it, shadow-ban.
    let users = synadm(&config, &["user", "list"]);
    let names: Vec<&str> = users["users"].as_array().unwrap().iter().filter_map(|u| u["name"].as_str()).collect();
    assert!(names.contains(&"@alice:test") && names.contains(&"@bob:test"), "{users}");
    assert_eq!(synadm(&config, &["user", "details", "alice"])["name"], "@alice:test");
    assert_eq!(synadm(&config, &["user", "whois", "alice"])["user_id"], "@alice:test");
    assert_eq!(synadm(&config, &["user", "suspend", "alice"]), json!({"user_@alice:test_suspended": true}));
    assert_eq!(s.send_text(&alice, &room, "refused").await.0, 403);
    synadm(&config, &["user", "suspend", "--unsuspend", "alice"]);
    assert_eq!(s.send_text(&alice, &room, "allowed again").await.0, 200);
    synadm(&config, &["user", "modify", "alice", "--display-name", "Alice A."]);
    assert_eq!(synadm(&config, &["user", "details", "alice"])["displayname"], "Alice A.");

    // Rooms: list, details, members, make-admin, block.
    let rooms = synadm(&config, &["room", "list"]);
    assert!(rooms["rooms"].as_array().unwrap().iter().any(|r| r["room_id"] == room.as_str()), "{rooms}");
    assert_eq!(synadm(&config, &["room", "details", &room])["name"], "Town square");
    let members = synadm(&config, &["room", "members", &room]);
    assert_eq!(members["total"], 2, "{members}");
    synadm(&config, &["room", "make-admin", &room]);
    let (_, pl) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"), Some(&bob.token)).await;
    assert!(pl["users"]["@root:test"].as_i64().unwrap() >= 100, "{pl}");

    // Redacting a user's events, and the status.
    let redaction = synadm(&config, &["user", "redact", "alice", "--room", &room, "--reason", "spam"]);
    let id = redaction["redact_id"].as_str().unwrap().to_owned();
    let mut status = Value::Null;
    for _ in 0..100 {
        status = synadm(&config, &["user", "redact-status", &id]);
        if status["status"] == "complete" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status["status"], "complete", "{status}");

    // Media: quarantine an upload, which is then served to nobody.
    let (_, uploaded) = crate::media::upload(&s, &bob, crate::media::png(4, 4), "image/png", None).await;
    let media_id = uploaded["content_uri"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    synadm(&config, &["media", "quarantine", "--server-name", "test", "--media-id", &media_id]);
    let (st, _) = s.get(&format!("/_matrix/client/v1/media/download/test/{media_id}"), Some(&bob.token)).await;
    assert_eq!(st, 404);

    // Purging the room's history up to now.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis().to_string();
    let purge = synadm(&config, &["history", "purge", &room, "--before-ts", &now, "--delete-local"]);
    let purge_id = purge["purge_id"].as_str().unwrap().to_owned();
    let mut status = Value::Null;
    for _ in 0..100 {
        status = synadm(&config, &["history", "purge-status", &purge_id]);
        if status["status"] == "complete" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status["status"], "complete", "{status}");

    // Registration tokens.
    synadm(&config, &["regtok", "new", "--token", "welcome", "--uses-allowed", "3"]);
    let tokens = synadm(&config, &["regtok", "list"]);
    assert!(tokens["registration_tokens"].as_array().unwrap().iter().any(|t| t["token"] == "welcome"), "{tokens}");

    // Deactivation, and a room deletion (v2 with its status).
    synadm(&config, &["user", "deactivate", "alice"]);
    assert_eq!(synadm(&config, &["user", "details", "alice"])["deactivated"], true);
    let deletion = synadm(&config, &["room", "delete", &room]);
    let delete_id = deletion["delete_id"].as_str().unwrap().to_owned();
    let mut status = Value::Null;
    for _ in 0..100 {
        status = synadm(&config, &["room", "delete-status", "--delete-id", &delete_id]);
        if status["status"] == "complete" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status["status"], "complete", "{status}");
}
