//! The binary, its config, storage refusal, and the HTTP basics every endpoint shares.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn versions_well_known_and_health() {
    let s = Server::start().await;
    let (st, b) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(st, 200);
    assert!(b["versions"].as_array().unwrap().iter().any(|v| v == "v1.11"));
    let (st, b) = s.get("/.well-known/matrix/client", None).await;
    assert_eq!(st, 200);
    assert_eq!(b["m.homeserver"]["base_url"], "http://127.0.0.1/");
    let (st, b) = s.get("/.well-known/matrix/server", None).await;
    assert_eq!(st, 200);
    assert_eq!(b["m.server"], "test:443");
    let resp = reqwest::get(s.url("/health")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "OK");
}

#[tokio::test]
async fn errors_are_matrix_errors() {
    let s = Server::start().await;
    let unrecognized = json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"});
    assert_eq!(s.get("/_matrix/client/v3/nope", None).await, (404, unrecognized.clone()));
    assert_eq!(s.get("/somewhere/else", None).await, (404, unrecognized.clone()));
    assert_eq!(s.post("/_matrix/client/versions", None, json!({})).await, (405, unrecognized));
    let (st, b) = s.raw("POST", "/_matrix/client/v3/login", b"{not json".to_vec()).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_NOT_JSON")));
    let (st, b) = s.raw("POST", "/_matrix/client/v3/login", b"[1,2]".to_vec()).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_NOT_JSON")));
    let (st, b) = s.post("/_matrix/client/v3/login", None, json!({"type": 5})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    // max_upload_size is 1M in the test config.
    let big = format!("{{\"type\":\"m.login.password\",\"pad\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let (st, b) = s.raw("POST", "/_matrix/client/v3/login", big.into_bytes()).await;
    assert_eq!((st, b["errcode"].as_str()), (413, Some("M_TOO_LARGE")));
    let (st, b) = s.get("/_matrix/client/v3/account/whoami", None).await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")));
    let (st, b) = s.get("/_matrix/client/v3/account/whoami", Some("bogus")).await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
    // The server is still serving after all of that.
    assert_eq!(s.get("/_matrix/client/versions", None).await.0, 200);
}

#[tokio::test]
async fn cors_headers_as_the_spec_requires() {
    let s = Server::start().await;
    let client = reqwest::Client::new();
    let resp = client
        .request(reqwest::Method::OPTIONS, s.url("/_matrix/client/v3/login"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let methods = h["access-control-allow-methods"].to_str().unwrap().to_owned();
    for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = h["access-control-allow-headers"].to_str().unwrap().to_lowercase();
    for x in ["x-requested-with", "content-type", "authorization"] {
        assert!(headers.contains(x), "{headers}");
    }
    let resp =
        client.get(s.url("/_matrix/client/versions")).header("Origin", "https://app.example").send().await.unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn request_log_names_method_path_status_and_never_the_token() {
    let s = Server::start().await;
    let u = s.register("logger").await;
    s.get(&format!("/_matrix/client/v3/account/whoami?access_token={}", u.token), None).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = s.log_text();
    assert!(log.contains("GET /_matrix/client/v3/account/whoami 200"), "{log}");
    assert!(!log.contains(&u.token), "the log leaked a token");
    assert!(!log.contains("\"password\""), "the log leaked a password");
}

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("homeserver.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `check-config` and `serve` on `config`; both must exit 1 with exactly `expected` on
/// stderr and leave nothing behind but the config file.
fn assert_config_error(config: &str, expected: &str) {
    for command in [&["check-config"][..], &[][..]] {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), config);
        let mut args = vec!["-c", path.to_str().unwrap()];
        args.extend_from_slice(command);
        let (code, _, stderr) = run_cli(dir.path(), &args);
        assert_eq!(code, 1, "{command:?}: {stderr}");
        assert_eq!(stderr, expected, "{command:?}");
        assert_eq!(
            files_under(dir.path()),
            vec![std::path::PathBuf::from("homeserver.yaml")],
            "{command:?} wrote files"
        );
    }
}

#[test]
fn config_errors_use_synapses_format_exit_1_and_write_nothing() {
    assert_config_error(
        &base_config("").replace("port: 0", "port: 'eighty'"),
        "\nError in configuration at 'listeners.<item 0>.port':\n  expected an integer\n",
    );
    assert_config_error(
        &base_config("").replace("server_name: test\n", ""),
        "\nError in configuration at 'server_name':\n  Missing mandatory config key 'server_name'\n",
    );
    assert_config_error(
        &base_config("enable_registration: yes-please\n"),
        "\nError in configuration at 'enable_registration':\n  expected a boolean\n",
    );
    assert_config_error(
        &base_config("enable_registration: true\n"),
        "\nError in configuration:\n  You have enabled open registration without any verification. This is a known vector \
         for spam and abuse. If you would like to allow public registration, please consider adding email, captcha, or \
         token-based verification. Otherwise this check can be removed by setting the \
         `enable_registration_without_verification` config option to `true`.\n",
    );
    assert_config_error(
        &base_config("max_upload_size: lots\n"),
        "\nError in configuration at 'max_upload_size':\n  expected a size such as 50M\n",
    );
    // Federation's keys.
    assert_config_error(
        &base_config("")
            .replace("    bind_addresses: ['127.0.0.1']\n", "    tls: true\n    bind_addresses: ['127.0.0.1']\n"),
        "\nError in configuration:\n  A TLS listener needs both 'tls_certificate_path' and 'tls_private_key_path'\n",
    );
    assert_config_error(
        &base_config("ip_range_whitelist: ['127.0.0.0/8', 'nonsense']\n"),
        "\nError in configuration at 'ip_range_whitelist.<item 1>':\n  expected an IP range\n",
    );
    assert_config_error(
        &base_config("federation_custom_ca_list: [7]\n"),
        "\nError in configuration at 'federation_custom_ca_list.<item 0>':\n  expected a string\n",
    );
    assert_config_error(
        &base_config("federation_verify_certificates: sometimes\n"),
        "\nError in configuration at 'federation_verify_certificates':\n  expected a boolean\n",
    );
    // URL previews need their own IP blocklist, as on Synapse.
    assert_config_error(
        &base_config("url_preview_enabled: true\n"),
        "\nError in configuration at 'url_preview_enabled':\n  For security, you must specify an explicit target IP \
         address blacklist in url_preview_ip_range_blacklist for url previewing to work\n",
    );
    assert_config_error(
        &base_config("url_preview_enabled: true\nurl_preview_ip_range_blacklist: []\nurl_preview_url_blacklist: [7]\n"),
        "\nError in configuration at 'url_preview_url_blacklist.<item 0>':\n  expected a map of URL parts to patterns\n",
    );
}

#[test]
fn unreadable_tls_and_ca_files_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-cert.pem"), "hello").unwrap();
    for (extra, key) in [
        ("federation_custom_ca_list: [missing.pem]\n", "federation_custom_ca_list.<item 0>"),
        ("federation_custom_ca_list: [not-a-cert.pem]\n", "federation_custom_ca_list.<item 0>"),
        ("tls_certificate_path: missing.pem\ntls_private_key_path: missing.key\n", "tls_certificate_path"),
    ] {
        let path = write_config(dir.path(), &base_config(extra));
        let (code, _, stderr) = run_cli(dir.path(), &["-c", path.to_str().unwrap(), "check-config"]);
        assert_eq!(code, 1, "{extra}: {stderr}");
        assert!(stderr.starts_with(&format!("\nError in configuration at '{key}':\n  ")), "{extra}: {stderr}");
    }
}

#[test]
fn check_config_accepts_a_good_config_and_warns_about_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &base_config("some_synapse_only_option: 3\n"));
    let (code, stdout, stderr) = run_cli(dir.path(), &["-c", path.to_str().unwrap(), "check-config"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Config is valid"));
    assert!(stderr.contains("'some_synapse_only_option'"), "{stderr}");
    assert_eq!(files_under(dir.path()).len(), 1, "check-config must not touch the database");
}

#[test]
fn version_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = run_cli(dir.path(), &["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("myelin "), "{stdout}");
}

#[tokio::test]
async fn first_run_writes_a_config_and_key_then_serves() {
    let dir = tempfile::tempdir().unwrap();
    // The generated config listens on 8008; rewrite it to port 0 after generation, as the
    // README's command would otherwise collide with other tests.
    let (code, stdout, stderr) = run_cli(dir.path(), &["generate-config"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("homeserver.yaml"));
    let text = std::fs::read_to_string(dir.path().join("homeserver.yaml")).unwrap();
    assert!(text.contains("server_name: \"localhost\""));
    assert!(text.starts_with('#'), "the generated config is commented");
    let key = std::fs::read_to_string(dir.path().join("data/localhost.signing.key")).unwrap();
    assert!(key.starts_with("ed25519 a_"));
    // Generating again refuses to overwrite.
    let (code, _, _) = run_cli(dir.path(), &["generate-config"]);
    assert_eq!(code, 1);
    std::fs::write(dir.path().join("homeserver.yaml"), text.replace("port: 8008", "port: 0")).unwrap();
    let s = Server::start_in(dir).await;
    assert_eq!(s.get("/_matrix/client/versions", None).await.0, 200);
    assert!(s.dir.path().join("data/homeserver.db").exists());
}

#[tokio::test]
async fn serve_without_a_config_generates_one_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    // Occupy nothing: the default port may be in use here, so only check what is written.
    let mut child =
        std::process::Command::new(BIN).current_dir(dir.path()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    for _ in 0..100 {
        if dir.path().join("data/homeserver.db").exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(dir.path().join("homeserver.yaml").exists());
    assert!(dir.path().join("data/localhost.signing.key").exists());
    assert!(dir.path().join("data/homeserver.db").exists());
}

#[tokio::test]
async fn a_database_from_a_newer_myelin_is_refused() {
    let s = Server::start().await;
    let dir = s.stop();
    sql_in(dir.path(), "UPDATE schema_version SET version = 999");
    let (code, _, stderr) = run_cli(dir.path(), &["-c", dir.path().join("homeserver.yaml").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("schema is version 999, newer than this Myelin supports"), "{stderr}");
}

#[tokio::test]
async fn register_user_command_creates_a_user_who_can_log_in() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    assert_eq!(root.user_id, "@root:test");
    // Taken names are refused.
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(s.dir.path().join("homeserver.yaml"))
        .args(["register-user", "--user", "root", "--password", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already taken"));
}

#[tokio::test]
async fn data_survives_a_restart() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"name": "kept"})).await;
    s.send_text(&alice, &room, "before restart").await;
    let retried = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/across-restart");
    let (_, first) = s.put(&retried, Some(&alice.token), json!({"msgtype": "m.text", "body": "once"})).await;
    s.send_text(&alice, &room, "before restart").await;
    let dir = s.stop();
    let s = Server::start_in(dir).await;
    // A client retrying its transaction after the restart gets the event it already made.
    let (st, again) = s.put(&retried, Some(&alice.token), json!({"msgtype": "m.text", "body": "once"})).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["event_id"], first["event_id"]);
    let (st, b) = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5"), Some(&alice.token)).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["chunk"][0]["content"]["body"], "before restart");
    // And the room keeps working: the cached graph is rebuilt from storage.
    assert_eq!(s.send_text(&alice, &room, "after restart").await.0, 200);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests() {
    let mut s = Server::start().await;
    let u = s.register("patient").await;
    let first = s.sync(&u, None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let url = s.url(&format!("/_matrix/client/v3/sync?timeout=1500&since={since}"));
    let token = u.token.clone();
    let pending = tokio::spawn(async move {
        reqwest::Client::new().get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16())
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    unsafe { libc::kill(s.pid() as i32, libc::SIGTERM) };
    assert_eq!(pending.await.unwrap().unwrap(), 200, "the long-poll in flight was answered");
    let status = s.wait_exit();
    assert!(status.success(), "{status:?}; the server's log:\n{}", s.log_text());
}
