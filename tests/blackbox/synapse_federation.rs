//! Myelin and a real Synapse (1.163.2 from PyPI, in `tests/synapse/.venv`, which the test
//! command installs) federating on loopback over TLS with the test CA, in both directions.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::federating::{Peer, TestCa, free_port, try_wait_for_event, wait_for_event};
use crate::harness::Server;

pub(crate) const SYNAPSE_PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/synapse/.venv/bin/python");

/// A Synapse on `localhost:<port>`: plain client listener and TLS federation listener.
pub(crate) struct SynapsePeer {
    pub(crate) server: Server,
    pub(crate) client_port: u16,
    /// Its server name, `localhost:<federation port>`.
    pub(crate) name: String,
}

impl SynapsePeer {
    pub(crate) async fn start(ca: &TestCa) -> SynapsePeer {
        let (client_port, fed_port) = (free_port(), free_port());
        let name = format!("localhost:{fed_port}");
        let mut overrides = open_test_settings();
        overrides.as_object_mut().unwrap().extend(
            json!({
                "listeners": [
                    {"port": client_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": false,
                     "resources": [{"names": ["client"], "compress": false}]},
                    {"port": fed_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": true,
                     "resources": [{"names": ["federation"], "compress": false}]},
                ],
                "tls_certificate_path": ca.path("cert.pem"),
                "tls_private_key_path": ca.path("key.pem"),
                "federation_custom_ca_list": [ca.path("ca.pem")],
                "federation_verify_certificates": true,
                "ip_range_whitelist": ["127.0.0.0/8"],
                "rc_federation": {"concurrent": 100, "sleep_limit": 1000},
            })
            .as_object()
            .unwrap()
            .clone(),
        );
        let server = start_synapse(&name, client_port, overrides).await;
        SynapsePeer { server, client_port, name }
    }

    /// Starts Synapse on its directory and waits for its client API.
    pub(crate) async fn run(dir: tempfile::TempDir, client_port: u16) -> Server {
        let child = Command::new(SYNAPSE_PYTHON)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(dir.path().join("homeserver.yaml"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let server = Server::adopt(child, format!("http://127.0.0.1:{client_port}"), dir, log);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if reqwest::get(server.url("/health")).await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "Synapse did not start; log:\n{}", synapse_log(&server));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        server
    }
}

/// Synapse settings every test Synapse shares: registration open, no rate limits, no key
/// servers to ask, no presence, no stats.
pub(crate) fn open_test_settings() -> serde_json::Value {
    let unlimited = json!({"per_second": 100000, "burst_count": 100000});
    json!({
        "enable_registration": true,
        "enable_registration_without_verification": true,
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        "report_stats": false,
        "presence": {"enabled": false},
        "rc_message": unlimited, "rc_registration": unlimited, "rc_media_create": unlimited,
        "rc_joins": {"local": unlimited, "remote": unlimited}, "rc_joins_per_room": unlimited,
        "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
        "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
        "rc_room_creation": unlimited,
    })
}

/// A real Synapse named `name` in a new temp dir: its generated config with `overrides`' keys
/// replaced (and its database in that dir), serving its client API on `client_port`.
pub(crate) async fn start_synapse(name: &str, client_port: u16, mut overrides: serde_json::Value) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("homeserver.yaml");
    let generated = Command::new(SYNAPSE_PYTHON)
        .args(["-m", "synapse.app.homeserver", "--generate-config", "--server-name", name, "--config-path"])
        .arg(&config)
        .args(["--report-stats=no", "--data-directory"])
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .expect("run Synapse (the test command installs it in tests/synapse/.venv)");
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    if overrides.get("database").is_none() {
        overrides["database"] = json!({"name": "sqlite3", "args": {"database": dir.path().join("homeserver.db")}});
    }
    // Synapse's own YAML, with these keys replaced (its venv has PyYAML).
    let merged = Command::new(SYNAPSE_PYTHON)
        .arg("-c")
        .arg("import sys, json, yaml; p = sys.argv[1]; c = yaml.safe_load(open(p)); c.update(json.loads(sys.argv[2])); yaml.safe_dump(c, open(p, 'w'))")
        .arg(&config)
        .arg(overrides.to_string())
        .output()
        .unwrap();
    assert!(merged.status.success(), "{}", String::from_utf8_lossy(&merged.stderr));
    SynapsePeer::run(dir, client_port).await
}

/// Synapse's log file (its generated log config writes `<server name>.log` in its directory).
pub(crate) fn synapse_log(server: &Server) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(server.dir.path()).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    out
}

fn encode(s: &str) -> String {
    s.replace('!', "%21").replace(':', "%3A")
}

fn text_is(body: &str) -> impl Fn(&serde_json::Value) -> bool + '_ {
    move |e| e["type"] == "m.room.message" && e["content"]["body"] == body
}

/// A createRoom body with `preset`, of room `version` if given (else the server's default).
fn room_body(preset: &str, version: Option<&str>) -> serde_json::Value {
    let mut body = json!({"preset": preset});
    if let Some(v) = version {
        body["room_version"] = json!(v);
    }
    body
}

#[tokio::test]
async fn myelin_and_synapse_join_each_others_default_rooms_and_talk() {
    // Both default to room version 12 (Synapse since 1.16x, Myelin since this version).
    join_each_others_rooms_and_talk(None).await;
}

#[tokio::test]
async fn myelin_and_synapse_join_each_others_version_10_rooms_and_talk() {
    join_each_others_rooms_and_talk(Some("10")).await;
}

#[tokio::test]
async fn myelin_and_synapse_join_each_others_version_1_rooms_and_talk() {
    // `$id:server` event IDs, `[ID, hashes]` references, state resolution v1.
    join_each_others_rooms_and_talk(Some("1")).await;
}

async fn join_each_others_rooms_and_talk(version: Option<&str>) {
    let ca = TestCa::new();
    let synapse = SynapsePeer::start(&ca).await;
    let myelin = Peer::start(&ca).await;
    let sam = synapse.server.register("sam").await;
    let mia = myelin.server.register("mia").await;
    let logs = || format!("Myelin log:\n{}\nSynapse log:\n{}", myelin.server.log_text(), synapse_log(&synapse.server));

    // A Myelin user joins a room Synapse hosts, through Synapse.
    let room = synapse.server.create_room(&sam, room_body("public_chat", version)).await;
    assert_eq!(room.contains(':'), version.is_some(), "{room}");
    let (s, body) = myelin.server.join_via(&mia, &room, &synapse.name).await;
    assert_eq!(s, 200, "join Synapse's room: {body}\n{}", logs());
    let (s, _) = synapse.server.send_text(&sam, &room, "from Synapse").await;
    assert_eq!(s, 200);
    wait_for_event(&myelin.server, &mia, &room, text_is("from Synapse")).await;
    let (s, _) = myelin.server.send_text(&mia, &room, "from Myelin").await;
    assert_eq!(s, 200);
    wait_for_event(&synapse.server, &sam, &room, text_is("from Myelin")).await;

    // A Synapse user joins a room Myelin hosts.
    let room2 = myelin.server.create_room(&mia, room_body("public_chat", version)).await;
    let (s, body) = synapse
        .server
        .post(
            &format!("/_matrix/client/v3/join/{}?server_name={}", encode(&room2), myelin.name),
            Some(&sam.token),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "Synapse joins Myelin's room: {body}\n{}", logs());
    let (s, _) = myelin.server.send_text(&mia, &room2, "hosted by Myelin").await;
    assert_eq!(s, 200);
    wait_for_event(&synapse.server, &sam, &room2, text_is("hosted by Myelin")).await;
    let (s, _) = synapse.server.send_text(&sam, &room2, "Synapse in Myelin's room").await;
    assert_eq!(s, 200);
    wait_for_event(&myelin.server, &mia, &room2, text_is("Synapse in Myelin's room")).await;

    // State changes either way are seen on the other side: Sam is made a moderator in Myelin's
    // room and names it; Synapse's server sees the name it set arrive at Myelin.
    let path = format!("/_matrix/client/v3/rooms/{room2}/state/m.room.power_levels");
    let (_, mut pl) = myelin.server.get(&path, Some(&mia.token)).await;
    pl["users"][&sam.user_id] = json!(50);
    let (s, body) = myelin.server.put(&path, Some(&mia.token), pl).await;
    assert_eq!(s, 200, "{body}");
    crate::federating::eventually("Sam's power reaches Synapse", || async {
        let (s, b) = synapse.server.get(&path, Some(&sam.token)).await;
        s == 200 && b["users"][&sam.user_id] == 50
    })
    .await;
    let (s, body) = synapse
        .server
        .put(&format!("/_matrix/client/v3/rooms/{room2}/state/m.room.name"), Some(&sam.token), json!({"name": "Ours"}))
        .await;
    assert_eq!(s, 200, "{body}");
    crate::federating::eventually("Sam's room name reaches Myelin", || async {
        let (s, b) =
            myelin.server.get(&format!("/_matrix/client/v3/rooms/{room2}/state/m.room.name"), Some(&mia.token)).await;
        s == 200 && b["name"] == "Ours"
    })
    .await;
    // A renaming received over federation carries what it replaced, as a local one does.
    let (s, body) = synapse
        .server
        .put(
            &format!("/_matrix/client/v3/rooms/{room2}/state/m.room.name"),
            Some(&sam.token),
            json!({"name": "Ours too"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    crate::federating::eventually("Sam's renaming reaches Myelin with its prev_content", || async {
        let path = format!("/_matrix/client/v3/rooms/{room2}/messages?dir=b&limit=5");
        let (_, b) = myelin.server.get(&path, Some(&mia.token)).await;
        b["chunk"].as_array().into_iter().flatten().any(|e| {
            e["content"]["name"] == "Ours too"
                && e["unsigned"]["prev_content"] == json!({"name": "Ours"})
                && e["unsigned"]["prev_sender"] == sam.user_id
        })
    })
    .await;
    // ... and what the room's power levels refuse is refused for a remote sender too: Sam (50)
    // may not change the power levels (100) in Synapse's copy either.
    let (_, mut pl) = synapse.server.get(&path, Some(&sam.token)).await;
    pl["users"][&sam.user_id] = json!(100);
    let (s, _) = synapse.server.put(&path, Some(&sam.token), pl).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn invites_and_leaves_between_myelin_and_synapse_in_default_rooms() {
    invites_and_leaves(None).await;
}

#[tokio::test]
async fn invites_and_leaves_between_myelin_and_synapse_in_version_10_rooms() {
    invites_and_leaves(Some("10")).await;
}

#[tokio::test]
async fn invites_and_leaves_between_myelin_and_synapse_in_version_2_rooms() {
    invites_and_leaves(Some("2")).await;
}

async fn invites_and_leaves(version: Option<&str>) {
    let ca = TestCa::new();
    let synapse = SynapsePeer::start(&ca).await;
    let myelin = Peer::start(&ca).await;
    let sam = synapse.server.register("sam").await;
    let mia = myelin.server.register("mia").await;
    let logs = || format!("Myelin log:\n{}\nSynapse log:\n{}", myelin.server.log_text(), synapse_log(&synapse.server));

    // Synapse invites a Myelin user; she sees the invite, joins, talks, leaves.
    let mut body = room_body("private_chat", version);
    body["name"] = json!("From Synapse");
    let room = synapse.server.create_room(&sam, body).await;
    let (s, body) = synapse.server.invite(&sam, &room, &mia.user_id).await;
    assert_eq!(s, 200, "Synapse invites Myelin's user: {body}\n{}", logs());
    let sync = myelin.server.sync(&mia, None, 0).await;
    let invite = sync["rooms"]["invite"][&room]["invite_state"]["events"].as_array().cloned().unwrap_or_default();
    assert!(invite.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "From Synapse"), "{sync}");
    let (s, body) = myelin.server.join(&mia, &encode(&room)).await;
    assert_eq!(s, 200, "join after Synapse's invite: {body}\n{}", logs());
    myelin.server.send_text(&mia, &room, "thanks for the invite").await;
    wait_for_event(&synapse.server, &sam, &room, text_is("thanks for the invite")).await;
    let (s, _) =
        myelin.server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&mia.token), json!({})).await;
    assert_eq!(s, 200);
    crate::federating::eventually("Mia's leave reaches Synapse", || async {
        let (s, b) = synapse
            .server
            .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", mia.user_id), Some(&sam.token))
            .await;
        s == 200 && b["membership"] == "leave"
    })
    .await;

    // Myelin invites a Synapse user, who joins.
    let room2 = myelin.server.create_room(&mia, room_body("private_chat", version)).await;
    let (s, body) = myelin.server.invite(&mia, &room2, &sam.user_id).await;
    assert_eq!(s, 200, "Myelin invites Synapse's user: {body}\n{}", logs());
    let (s, body) = synapse.server.join(&sam, &encode(&room2)).await;
    assert_eq!(s, 200, "Synapse joins after Myelin's invite: {body}\n{}", logs());
    synapse.server.send_text(&sam, &room2, "joined via invite").await;
    wait_for_event(&myelin.server, &mia, &room2, text_is("joined via invite")).await;

    // A Synapse invite the Myelin user rejects.
    let room3 = synapse.server.create_room(&sam, room_body("private_chat", version)).await;
    let (s, _) = synapse.server.invite(&sam, &room3, &mia.user_id).await;
    assert_eq!(s, 200);
    let (s, body) =
        myelin.server.post(&format!("/_matrix/client/v3/rooms/{room3}/leave"), Some(&mia.token), json!({})).await;
    assert_eq!(s, 200, "reject Synapse's invite: {body}\n{}", logs());
    let (s, b) = synapse
        .server
        .get(&format!("/_matrix/client/v3/rooms/{room3}/state/m.room.member/{}", mia.user_id), Some(&sam.token))
        .await;
    assert_eq!((s, b["membership"].as_str()), (200, Some("leave")), "{b}");
}

#[tokio::test]
async fn rooms_upgraded_from_10_to_12_are_followed_on_both_sides() {
    let ca = TestCa::new();
    let synapse = SynapsePeer::start(&ca).await;
    let myelin = Peer::start(&ca).await;
    let sam = synapse.server.register("sam").await;
    let mia = myelin.server.register("mia").await;
    let logs = || format!("Myelin log:\n{}\nSynapse log:\n{}", myelin.server.log_text(), synapse_log(&synapse.server));
    let tombstone_of = |room: &str| format!("/_matrix/client/v3/rooms/{room}/state/m.room.tombstone");

    // Myelin hosts a version 10 room with Sam in it, and Mia upgrades it to 12: Synapse sees
    // the tombstone, Sam follows into the new room through Myelin, and they talk there.
    let old = myelin.server.create_room(&mia, room_body("public_chat", Some("10"))).await;
    let (s, body) = synapse.server.join_via(&sam, &old, &myelin.name).await;
    assert_eq!(s, 200, "{body}\n{}", logs());
    let (s, body) = myelin
        .server
        .post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), Some(&mia.token), json!({"new_version": "12"}))
        .await;
    assert_eq!(s, 200, "{body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    crate::federating::eventually("the tombstone reaches Synapse", || async {
        let (s, b) = synapse.server.get(&tombstone_of(&old), Some(&sam.token)).await;
        s == 200 && b["replacement_room"] == new.as_str()
    })
    .await;
    let (s, body) = synapse.server.join_via(&sam, &new, &myelin.name).await;
    assert_eq!(s, 200, "Synapse follows the upgrade: {body}\n{}", logs());
    let (s, create) =
        synapse.server.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.create"), Some(&sam.token)).await;
    assert_eq!((s, create["room_version"].as_str()), (200, Some("12")), "{create}");
    synapse.server.send_text(&sam, &new, "followed you").await;
    wait_for_event(&myelin.server, &mia, &new, text_is("followed you")).await;

    // Synapse hosts a version 10 room with Mia in it, and Sam upgrades it: Myelin follows.
    let old2 = synapse.server.create_room(&sam, room_body("public_chat", Some("10"))).await;
    let (s, body) = myelin.server.join_via(&mia, &old2, &synapse.name).await;
    assert_eq!(s, 200, "{body}\n{}", logs());
    let (s, body) = synapse
        .server
        .post(&format!("/_matrix/client/v3/rooms/{old2}/upgrade"), Some(&sam.token), json!({"new_version": "12"}))
        .await;
    assert_eq!(s, 200, "{body}");
    let new2 = body["replacement_room"].as_str().unwrap().to_owned();
    assert!(!new2.contains(':'), "{new2}");
    crate::federating::eventually("the tombstone reaches Myelin", || async {
        let (s, b) = myelin.server.get(&tombstone_of(&old2), Some(&mia.token)).await;
        s == 200 && b["replacement_room"] == new2.as_str()
    })
    .await;
    let (s, body) = myelin.server.join_via(&mia, &new2, &synapse.name).await;
    assert_eq!(s, 200, "Myelin follows the upgrade: {body}\n{}", logs());
    myelin.server.send_text(&mia, &new2, "followed you too").await;
    wait_for_event(&synapse.server, &sam, &new2, text_is("followed you too")).await;
    // In the new room Sam is its creator (unlimited power), and Mia, at the default level,
    // may not change its power levels: Myelin applies version 12's rules to Synapse's room.
    let path = format!("/_matrix/client/v3/rooms/{new2}/state/m.room.power_levels");
    let (_, mut pl) = myelin.server.get(&path, Some(&mia.token)).await;
    assert!(pl["users"].get(&sam.user_id).is_none(), "{pl}");
    pl["users"][&mia.user_id] = json!(100);
    let (s, _) = myelin.server.put(&path, Some(&mia.token), pl).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn profiles_media_and_keys_between_myelin_and_synapse() {
    let ca = TestCa::new();
    let synapse = SynapsePeer::start(&ca).await;
    let myelin = Peer::start(&ca).await;
    let sam = synapse.server.register("sam").await;
    let mia = myelin.server.register("mia").await;
    let logs = || format!("Myelin log:\n{}\nSynapse log:\n{}", myelin.server.log_text(), synapse_log(&synapse.server));
    for (server, user, name) in [(&synapse.server, &sam, "Sam S."), (&myelin.server, &mia, "Mia M.")] {
        let (s, _) = server
            .put(
                &format!("/_matrix/client/v3/profile/{}/displayname", user.user_id),
                Some(&user.token),
                json!({"displayname": name}),
            )
            .await;
        assert_eq!(s, 200);
    }
    // Profiles both ways.
    let (s, p) = myelin.server.get(&format!("/_matrix/client/v3/profile/{}", sam.user_id), Some(&mia.token)).await;
    assert_eq!((s, p["displayname"].as_str()), (200, Some("Sam S.")), "{p}\n{}", logs());
    let (s, p) = synapse.server.get(&format!("/_matrix/client/v3/profile/{}", mia.user_id), Some(&sam.token)).await;
    assert_eq!((s, p["displayname"].as_str()), (200, Some("Mia M.")), "{p}\n{}", logs());

    // Media both ways.
    let image = crate::media::png(40, 30);
    for (from, from_user, to, to_user) in
        [(&synapse.server, &sam, &myelin.server, &mia), (&myelin.server, &mia, &synapse.server, &sam)]
    {
        let (s, up) = crate::media::upload(from, from_user, image.clone(), "image/png", Some("x.png")).await;
        assert_eq!(s, 200, "{up}");
        let mxc = up["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
        let resp = reqwest::Client::new()
            .get(to.url(&format!("/_matrix/client/v1/media/download/{mxc}")))
            .bearer_auth(&to_user.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{mxc}\n{}", logs());
        assert_eq!(resp.bytes().await.unwrap().to_vec(), image);
    }

    // Device keys: Synapse queries and claims a Myelin user's keys, and the other way round.
    let device_keys = |u: &crate::harness::User, curve: &str| {
        json!({
            "user_id": u.user_id, "device_id": u.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {format!("curve25519:{}", u.device_id): curve, format!("ed25519:{}", u.device_id): format!("ed{curve}")},
            "signatures": {u.user_id.clone(): {format!("ed25519:{}", u.device_id): "sig"}},
        })
    };
    for (server, user, curve) in [(&synapse.server, &sam, "samcurve"), (&myelin.server, &mia, "miacurve")] {
        let otk = json!({"signed_curve25519:AAAAAQ": {"key": format!("otk-{curve}"), "signatures": {}}});
        let (s, b) = server
            .post(
                "/_matrix/client/v3/keys/upload",
                Some(&user.token),
                json!({"device_keys": device_keys(user, curve), "one_time_keys": otk}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    for (server, asker, target, curve) in
        [(&myelin.server, &mia, &sam, "samcurve"), (&synapse.server, &sam, &mia, "miacurve")]
    {
        let (s, keys) = server
            .post(
                "/_matrix/client/v3/keys/query",
                Some(&asker.token),
                json!({"device_keys": {target.user_id.clone(): []}}),
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(
            keys["device_keys"][&target.user_id][&target.device_id]["keys"][format!("curve25519:{}", target.device_id)],
            curve,
            "{keys}\n{}",
            logs()
        );
        let (s, claimed) = server
            .post(
                "/_matrix/client/v3/keys/claim",
                Some(&asker.token),
                json!({"one_time_keys": {target.user_id.clone(): {target.device_id.clone(): "signed_curve25519"}}}),
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(
            claimed["one_time_keys"][&target.user_id][&target.device_id]["signed_curve25519:AAAAAQ"]["key"],
            format!("otk-{curve}"),
            "{claimed}\n{}",
            logs()
        );
    }
}

#[tokio::test]
async fn myelin_catches_up_on_what_synapse_sent_while_it_was_down() {
    let ca = TestCa::new();
    let synapse = SynapsePeer::start(&ca).await;
    let myelin = Peer::start(&ca).await;
    let sam = synapse.server.register("sam").await;
    let mia = myelin.server.register("mia").await;
    let room = synapse.server.create_room(&sam, json!({"preset": "public_chat"})).await;
    let (s, body) = myelin.server.join_via(&mia, &room, &synapse.name).await;
    assert_eq!(s, 200, "{body}");
    synapse.server.send_text(&sam, &room, "before").await;
    wait_for_event(&myelin.server, &mia, &room, text_is("before")).await;

    // Myelin goes down; Synapse's user keeps talking.
    let crate::federating::Peer { server, name, port } = myelin;
    let dir = server.stop();
    for i in 0..5 {
        let (s, _) = synapse.server.send_text(&sam, &room, &format!("missed {i}")).await;
        assert_eq!(s, 200);
    }
    let myelin = crate::federating::Peer { server: Server::start_in(dir).await, name, port };
    let mia = myelin.server.login("mia").await;
    // Talking to Synapse again tells it Myelin is back; what it sends then may skip events
    // (Synapse's catch-up sends the newest), which Myelin fetches as missing events.
    myelin.server.send_text(&mia, &room, "back").await;
    wait_for_event(&synapse.server, &sam, &room, text_is("back")).await;
    crate::federating::eventually("every missed message reaches Myelin", || async {
        let (_, page) = myelin
            .server
            .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=30"), Some(&mia.token))
            .await;
        let bodies: Vec<String> = page["chunk"]
            .as_array()
            .map(|c| c.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        (0..5).all(|i| bodies.contains(&format!("missed {i}")))
    })
    .await;
}

#[tokio::test]
async fn synapse_gets_what_myelin_sent_while_it_was_down() {
    let ca = TestCa::new();
    let synapse = SynapsePeer::start(&ca).await;
    let myelin = Peer::start(&ca).await;
    let sam = synapse.server.register("sam").await;
    let mia = myelin.server.register("mia").await;
    let room = myelin.server.create_room(&mia, json!({"preset": "public_chat"})).await;
    let (s, body) = synapse
        .server
        .post(
            &format!("/_matrix/client/v3/join/{}?server_name={}", encode(&room), myelin.name),
            Some(&sam.token),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    // Synapse is killed (as in a crash); Myelin's user goes on talking.
    let dir = synapse.server.stop();
    for i in 0..5 {
        let (s, _) = myelin.server.send_text(&mia, &room, &format!("while Synapse was down {i}")).await;
        assert_eq!(s, 200);
    }
    let server = SynapsePeer::run(dir, synapse.client_port).await;
    let synapse = SynapsePeer { server, client_port: synapse.client_port, name: synapse.name };
    let sam = synapse.server.login("sam").await;
    crate::federating::eventually("everything sent meanwhile reaches Synapse", || async {
        let (_, page) = synapse
            .server
            .get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=30"), Some(&sam.token))
            .await;
        let bodies: Vec<String> = page["chunk"]
            .as_array()
            .map(|c| c.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        (0..5).all(|i| bodies.contains(&format!("while Synapse was down {i}")))
    })
    .await;
}

#[tokio::test]
async fn a_late_joiner_over_federation_reads_nothing_from_before_either_way() {
    let ca = TestCa::new();
    let synapse = SynapsePeer::start(&ca).await;
    let myelin = Peer::start(&ca).await;
    let sam = synapse.server.register("sam").await;
    let mia = myelin.server.register("mia").await;
    let leaked = |v: &serde_json::Value| v.to_string().contains("before you came");

    // Synapse's user joins Myelin's room late, then pages back through history (which Synapse
    // backfills from Myelin).
    let room = myelin.server.create_room(&mia, crate::harness::room_with_visibility("public_chat", "joined")).await;
    for i in 0..3 {
        myelin.server.send_text(&mia, &room, &format!("before you came {i}")).await;
    }
    let (s, body) = synapse
        .server
        .post(
            &format!("/_matrix/client/v3/join/{}?server_name={}", encode(&room), myelin.name),
            Some(&sam.token),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    myelin.server.send_text(&mia, &room, "after the join").await;
    wait_for_event(&synapse.server, &sam, &room, text_is("after the join")).await;
    let (s, page) =
        synapse.server.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&sam.token)).await;
    assert_eq!(s, 200, "{page}");
    assert!(!leaked(&page), "Synapse's user read earlier messages: {page}");
    // Synapse itself holds none of the earlier bodies, whatever it asked Myelin for.
    let db = rusqlite_free_dump(&synapse.server);
    assert!(!db.contains("before you came"), "Synapse stored the earlier messages' bodies");

    // And the other way: Myelin's user joins Synapse's room late.
    let room2 = synapse.server.create_room(&sam, crate::harness::room_with_visibility("public_chat", "joined")).await;
    for i in 0..3 {
        synapse.server.send_text(&sam, &room2, &format!("before you came {i}")).await;
    }
    let (s, body) = myelin.server.join_via(&mia, &room2, &synapse.name).await;
    assert_eq!(s, 200, "{body}");
    synapse.server.send_text(&sam, &room2, "after the join").await;
    wait_for_event(&myelin.server, &mia, &room2, text_is("after the join")).await;
    let (s, page) =
        myelin.server.get(&format!("/_matrix/client/v3/rooms/{room2}/messages?dir=b&limit=50"), Some(&mia.token)).await;
    assert_eq!(s, 200, "{page}");
    assert!(!leaked(&page), "Myelin's user read earlier messages: {page}");
    let sync = myelin.server.sync(&mia, None, 0).await;
    let section = &sync["rooms"]["join"][&room2];
    assert!(section.is_object(), "{sync}");
    assert!(!leaked(section), "{section}");
}

/// Synapse's SQLite database as text (its event JSON included), read with the system's python3.
fn rusqlite_free_dump(server: &Server) -> String {
    let db = server.dir.path().join("homeserver.db");
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print('\\n'.join(r[0] for r in c.execute('SELECT json FROM event_json')))")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Myelin of two processes on PostgreSQL: the main one (with the federation listener) and a
/// worker serving clients, reading the main one's signing key. `shared` is added to the
/// config both read.
async fn two_process_myelin(ca: &TestCa, shared: &str, worker_name: &str) -> (Peer, Server) {
    let main = Peer::start_with(ca, &format!("{}{shared}", crate::harness::postgres_database_section())).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(main.server.dir.path().join("homeserver.yaml"), dir.path().join("homeserver.yaml")).unwrap();
    let worker_yaml = dir.path().join("worker.yaml");
    std::fs::write(
        &worker_yaml,
        format!(
            "worker_name: {worker_name}\n\
             worker_listeners:\n  - port: 0\n    bind_addresses: ['127.0.0.1']\n    resources:\n      - names: [client]\n\
             signing_key_path: {key}\n\
             media_store_path: {media}\n",
            key = main.server.dir.path().join("data/signing.key").display(),
            media = main.server.dir.path().join("data/media").display(),
        ),
    )
    .unwrap();
    let worker = Server::start_in_with_configs(dir, &[worker_yaml]).await;
    (main, worker)
}

/// One Myelin deployment of two processes on PostgreSQL federating with a Synapse: an event
/// sent through the worker reaches Synapse (the worker tells the main process, which sends),
/// and with the worker killed, federation carries on through the main process.
#[tokio::test]
async fn a_two_process_myelin_federates_with_synapse_and_survives_losing_a_process() {
    let ca = TestCa::new();
    let synapse = SynapsePeer::start(&ca).await;
    let (main, worker) = two_process_myelin(&ca, "", "worker1").await;
    let sam = synapse.server.register("sam").await;
    let mia = worker.register("mia").await;
    let logs = || format!("Myelin log:\n{}\nSynapse log:\n{}", main.server.log_text(), synapse_log(&synapse.server));

    let room = synapse.server.create_room(&sam, room_body("public_chat", None)).await;
    let (s, body) = worker.join_via(&mia, &room, &synapse.name).await;
    assert_eq!(s, 200, "join Synapse's room through the worker: {body}\n{}", logs());
    let (s, _) = worker.send_text(&mia, &room, "sent through the worker").await;
    assert_eq!(s, 200);
    wait_for_event(&synapse.server, &sam, &room, text_is("sent through the worker")).await;

    drop(worker); // killed
    let (s, _) = synapse.server.send_text(&sam, &room, "while the worker is down").await;
    assert_eq!(s, 200);
    wait_for_event(&main.server, &mia, &room, text_is("while the worker is down")).await;
    let (s, _) = main.server.send_text(&mia, &room, "through the main process").await;
    assert_eq!(s, 200);
    wait_for_event(&synapse.server, &sam, &room, text_is("through the main process")).await;
}

/// With both processes in `federation_sender_instances`, killing the main process, which owns
/// Synapse's destination, hands it to the worker, which sends what comes next.
#[tokio::test]
async fn a_federation_sender_that_dies_hands_its_destinations_over() {
    let ca = TestCa::new();
    let synapse = SynapsePeer::start(&ca).await;
    // A worker name that makes the main process the first owner of Synapse's destination
    // (Myelin's rendezvous order: FNV-1a of destination, NUL, instance name; highest first).
    let weight = |instance: &str| {
        synapse
            .name
            .bytes()
            .chain([0])
            .chain(instance.bytes())
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    };
    let worker_name = (1..).map(|i| format!("worker{i}")).find(|w| weight(w) < weight("master")).unwrap();
    let shared = format!("federation_sender_instances: [master, {worker_name}]\n");
    let (main, worker) = two_process_myelin(&ca, &shared, &worker_name).await;
    let sam = synapse.server.register("sam").await;
    let mia = worker.register("mia").await;
    let room = synapse.server.create_room(&sam, room_body("public_chat", None)).await;
    let (s, body) = worker.join_via(&mia, &room, &synapse.name).await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = worker.send_text(&mia, &room, "before").await;
    assert_eq!(s, 200);
    wait_for_event(&synapse.server, &sam, &room, text_is("before")).await;

    let _main_dir = main.server.stop(); // killed; the worker still reads its signing key
    for text in ["right after the main process died", "a little later"] {
        let (s, _) = worker.send_text(&mia, &room, text).await;
        assert_eq!(s, 200);
        let found = try_wait_for_event(&synapse.server, &sam, &room, text_is(text), Duration::from_secs(30)).await;
        assert!(
            found.is_some(),
            "'{text}' did not reach Synapse within 30 s\nworker log:\n{}\nSynapse log (federation):\n{}",
            worker.log_text(),
            synapse_log(&synapse.server)
                .lines()
                .filter(|l| l.contains("federation") || l.contains("ERROR") || l.contains("WARN"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
