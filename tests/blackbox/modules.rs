//! The module system, case by case from spec/synapse-modules.md section 6 (numbers in names).

use serde_json::{Value, json};

use crate::harness::*;

fn scripted(label: &str, callbacks: Value) -> String {
    format!("  - module: myelin.test.Scripted\n    config: {}\n", json!({"label": label, "callbacks": callbacks}))
}

async fn with_modules(entries: &[String]) -> Server {
    Server::start_with(&format!("modules:\n{}", entries.concat())).await
}

/// Runs `serve` on a config with these modules and expects exit 1 with exactly `stderr`.
fn assert_startup_error(modules_yaml: &str, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("homeserver.yaml");
    std::fs::write(&path, base_config(&format!("modules:\n{modules_yaml}"))).unwrap();
    for cmd in [&["check-config"][..], &[][..]] {
        let mut args = vec!["-c", path.to_str().unwrap()];
        args.extend_from_slice(cmd);
        let (code, _, stderr) = run_cli(dir.path(), &args);
        assert_eq!(code, 1, "{stderr}");
        assert_eq!(stderr, expected, "{cmd:?}");
        assert_eq!(files_under(dir.path()).len(), 1, "nothing written");
    }
}

#[test]
fn case_01_03_config_errors_have_synapses_paths() {
    assert_startup_error(
        "  - module: myelin.demo.DemoModule\n  - module: myelin.test.Scripted\n    config: {threshold: -1}\n",
        "\nError in configuration at 'modules.<item 1>.config.threshold':\n  Failed to parse config for module 'myelin.test.Scripted':\n    threshold must be positive\n",
    );
    assert_startup_error(
        "  - module: myelin.test.Scripted\n    config: {reject_whole_config: 1}\n",
        "\nError in configuration at 'modules.<item 0>.config':\n  Failed to parse config for module 'myelin.test.Scripted':\n    oops\n",
    );
    assert_startup_error(
        "  - just.a.String\n",
        "\nError in configuration at 'modules.<item 0>':\n  expected a mapping\n",
    );
    assert_startup_error(
        "  - config: {}\n",
        "\nError in configuration at 'modules.<item 0>.module':\n  expected a string\n",
    );
    assert_startup_error(
        "  - module: 5\n",
        "\nError in configuration at 'modules.<item 0>.module':\n  expected a string\n",
    );
    assert_startup_error(
        "  - module: myelin.demo.DemoModule\n    config: {denied_user: 3}\n",
        "\nError in configuration at 'modules.<item 0>.config.denied_user':\n  Failed to parse config for module 'myelin.demo.DemoModule':\n    denied_user must be a full user ID such as @evil:example.com\n",
    );
}

#[test]
fn case_04_unknown_modules_stop_start_up_with_a_traceback() {
    // Not native, so imported as a Python dotted path, which fails as on Synapse: a raw
    // traceback, not a formatted config error, and exit 1.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("homeserver.yaml");
    for (module, expected) in [
        ("no.such.Module", "ModuleNotFoundError: No module named 'no'"),
        ("nodots", "ValueError: not enough values to unpack (expected 2, got 1)"),
    ] {
        std::fs::write(&path, base_config(&format!("modules:\n  - module: {module}\n"))).unwrap();
        let (code, _, stderr) = run_cli(dir.path(), &["-c", path.to_str().unwrap()]);
        assert_eq!(code, 1);
        assert!(stderr.contains("Traceback (most recent call last)"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("Error in configuration"), "{stderr}");
    }
}

#[test]
fn case_05_a_failing_constructor_stops_start_up_before_any_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("homeserver.yaml");
    let yaml = "modules:\n  - module: myelin.test.Scripted\n    config: {fail_in_constructor: 'no database for me'}\n";
    std::fs::write(&path, base_config(yaml)).unwrap();
    let (code, _, stderr) = run_cli(dir.path(), &["-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("Error during startup:\nmodule 'myelin.test.Scripted' failed to start: no database for me"),
        "{stderr}"
    );
    assert!(stderr.contains("no database for me"));
    assert!(!stderr.contains("listening on"), "no port may be opened");
}

#[tokio::test]
async fn case_07_falsy_config_becomes_an_empty_mapping() {
    let s = Server::start_with("modules:\n  - module: myelin.test.Scripted\n    config: 0\n").await;
    assert_eq!(s.calls("scripted").await, Vec::<Value>::new());
}

#[tokio::test]
async fn case_08_24_callbacks_run_in_config_order_and_the_first_denial_wins() {
    let s = with_modules(&[
        scripted("a", json!({"user_may_invite": "allow"})),
        scripted("b", json!({"user_may_invite": "deny"})),
        scripted("c", json!({"user_may_invite": "allow"})),
    ])
    .await;
    let alice = s.register("alice").await;
    s.register("bob").await;
    let room = s.create_room(&alice, json!({})).await;
    let (st, _) = s.invite(&alice, &room, "@bob:test").await;
    assert_eq!(st, 403);
    assert_eq!(s.calls("a").await.len(), 1);
    assert_eq!(s.calls("b").await.len(), 1);
    assert_eq!(s.calls("c").await.len(), 0, "c must not be called after b denied");
}

#[tokio::test]
async fn case_09_12_15_web_resources_exact_paths_first_wins_shadowed_roots() {
    let s = with_modules(&[
        format!("  - module: myelin.test.Scripted\n    config: {}\n", json!({"label": "a", "web": [
            "/_synapse/client/x/hello", "/_matrix/client/v3/modfoo", "/_matrix/federation/modfoo", "/_matrix/key/v2/modfoo",
            "/_matrix/media/v3/modfoo", "/_synapse/admin/modfoo", "/health/modfoo", "/_matrix/modfoo", "/.well-known/modfoo", "/a/b/"]})),
        format!("  - module: myelin.test.Scripted\n    config: {}\n", json!({"label": "b", "web": ["/_synapse/client/x/hello", "/_synapse/client/b/only"]})),
        "  - module: myelin.demo.DemoModule\n".to_owned(),
    ])
    .await;
    let (st, b) = s.get("/_synapse/client/x/hello", None).await;
    assert_eq!((st, b["module"].as_str()), (200, Some("a")), "the first registration wins");
    let (st, b) = s.get("/_synapse/client/b/only", None).await;
    assert_eq!((st, b["module"].as_str()), (200, Some("b")), "b's other paths still work");
    let log = s.log_text();
    assert!(
        log.contains("tried to register a web resource for path /_synapse/client/x/hello but another module"),
        "{log}"
    );
    let unrecognized = json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"});
    for p in [
        "/_matrix/client/v3/modfoo",
        "/_matrix/federation/modfoo",
        "/_matrix/key/v2/modfoo",
        "/_matrix/media/v3/modfoo",
        "/_synapse/admin/modfoo",
    ] {
        assert_eq!(s.get(p, None).await, (404, unrecognized.clone()), "{p} must stay shadowed");
        assert!(log.contains(&format!("web resource at {p}, under the built-in API root")), "no warning for {p}");
    }
    assert_eq!(s.get("/health/modfoo", None).await.0, 404);
    for p in ["/_matrix/modfoo", "/.well-known/modfoo"] {
        assert_eq!(s.get(p, None).await.0, 200, "{p} is reachable");
    }
    assert_eq!(s.get("/a/b/", None).await.0, 200);
    assert_eq!(s.get("/a/b", None).await.0, 404, "no trailing-slash normalisation");
    // The seed's example, in Rust.
    assert_eq!(s.get("/_synapse/client/demo/hello?name=Alice%20B", None).await, (200, json!({"hello": "Alice B"})));
    // Built-ins are unaffected.
    assert_eq!(s.get("/_matrix/client/versions", None).await.0, 200);
}

#[tokio::test]
async fn case_13_a_module_at_exactly_a_root_replaces_that_api_with_a_warning() {
    let s = with_modules(&[format!(
        "  - module: myelin.test.Scripted\n    config: {}\n",
        json!({"label": "r", "web": ["/_matrix/client"]})
    )])
    .await;
    let (st, b) = s.get("/_matrix/client/versions", None).await;
    assert_eq!((st, b["module"].as_str()), (200, Some("r")));
    assert!(s.log_text().contains("replaces Myelin's whole /_matrix/client API"));
}

#[tokio::test]
async fn case_14_registering_after_start_up_fails() {
    let s = Server::start_with(
        "modules:\n  - module: myelin.test.Scripted\n    config: {label: late, register_late: true}\n",
    )
    .await;
    let mut calls = Vec::new();
    for _ in 0..50 {
        calls = s.calls("late").await;
        if !calls.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(calls[0]["error"], "Tried to register a web resource from a module after startup");
    assert_eq!(s.get("/_synapse/client/late", None).await.0, 404);
}

async fn spam_send(spec: Value, body: &str) -> (u16, Value) {
    let s = with_modules(&[scripted("s", json!({"check_event_for_spam": spec}))]).await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let result = s.send_text(&alice, &room, body).await;
    assert_eq!(s.get("/_matrix/client/versions", None).await.0, 200, "the server keeps serving");
    result
}

#[tokio::test]
async fn case_16_20_check_event_for_spam_return_forms() {
    assert_eq!(spam_send(json!("allow"), "hi").await.0, 200);
    let probable = "This message has been rejected as probable spam";
    assert_eq!(spam_send(json!("deny"), "hi").await, (403, json!({"errcode": "M_FORBIDDEN", "error": probable})));
    assert_eq!(
        spam_send(json!({"deny": "M_LIMIT_EXCEEDED"}), "hi").await,
        (403, json!({"errcode": "M_LIMIT_EXCEEDED", "error": probable}))
    );
    assert_eq!(
        spam_send(json!({"deny": "M_SERVER_NOT_TRUSTED", "fields": {"additional_field": "12345"}}), "hi").await,
        (403, json!({"errcode": "M_SERVER_NOT_TRUSTED", "error": probable, "additional_field": "12345"}))
    );
    assert_eq!(
        spam_send(json!({"message": "custom message"}), "hi").await,
        (403, json!({"errcode": "M_FORBIDDEN", "error": "custom message"}))
    );
    assert_eq!(
        spam_send(json!("raise"), "hi").await,
        (500, json!({"errcode": "M_UNKNOWN", "error": "Internal server error"}))
    );
    assert_eq!(
        spam_send(json!({"raise": {"status": 418, "errcode": "M_TEAPOT", "error": "teapot"}}), "hi").await,
        (418, json!({"errcode": "M_TEAPOT", "error": "teapot"}))
    );
    assert_eq!(
        spam_send(json!("panic"), "hi").await,
        (500, json!({"errcode": "M_UNKNOWN", "error": "Internal server error"}))
    );
    // Content-dependent: only the evil body is refused.
    assert_eq!(spam_send(json!({"deny_if": "evil", "then": "deny"}), "nice").await.0, 200);
    assert_eq!(spam_send(json!({"deny_if": "evil", "then": "deny"}), "evil plan").await.0, 403);
}

#[tokio::test]
async fn case_21_22_check_event_for_spam_skips_membership_and_creation_but_covers_state_and_modules() {
    let s = with_modules(&[scripted("s", json!({"check_event_for_spam": "deny"}))]).await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"name": "created fine", "invite": ["@bob:test"]})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    assert_eq!(s.calls("s").await.len(), 0, "not called for createRoom's events, invites or joins");
    let (st, b) = s
        .put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"), Some(&alice.token), json!({"topic": "t"}))
        .await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let calls = s.calls("s").await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["args"][0]["type"], "m.room.topic");
    // A module's own event goes through the check too.
    let (_, r) = s
        .post(
            "/_synapse/client/test/s/send",
            None,
            json!({"type": "m.room.message", "room_id": room, "sender": "@alice:test", "content": {"body": "x"}}),
        )
        .await;
    assert_eq!(r["status"], 403, "{r}");
    assert_eq!(r["errcode"], "M_FORBIDDEN");
}

#[tokio::test]
async fn module_sent_events_land_in_the_room() {
    let s = with_modules(&[scripted("s", json!({}))]).await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let (_, r) = s
        .post("/_synapse/client/test/s/send", None, json!({"type": "m.room.message", "room_id": room, "sender": "@alice:test", "content": {"body": "from a module"}}))
        .await;
    let id = r["event_id"].as_str().expect("event sent");
    let (st, ev) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{id}"), Some(&alice.token)).await;
    assert_eq!(st, 200);
    assert_eq!(ev["content"]["body"], "from a module");
    let (_, r) = s
        .post("/_synapse/client/test/s/send", None, json!({"type": "m.room.member", "room_id": room, "sender": "@alice:test", "state_key": "@alice:test", "content": {}}))
        .await;
    assert_eq!(r["status"], 500, "membership is refused on this path: {r}");
}

#[tokio::test]
async fn case_25_27_user_may_invite() {
    let s = with_modules(&[scripted(
        "i",
        json!({"user_may_invite": {"deny_if": "bob", "then": {"deny": "M_CONSENT_NOT_GIVEN", "fields": {"k": "v"}}}}),
    )])
    .await;
    let alice = s.register("alice").await;
    s.register("bob").await;
    s.register("carol").await;
    let room = s.create_room(&alice, json!({})).await;
    assert_eq!(s.invite(&alice, &room, "@carol:test").await.0, 200);
    let (st, b) = s.invite(&alice, &room, "@bob:test").await;
    assert_eq!(
        (st, b),
        (
            403,
            json!({"errcode": "M_CONSENT_NOT_GIVEN", "error": "Invites have been disabled on this server", "k": "v"})
        )
    );
    let calls = s.calls("i").await;
    assert_eq!(calls[0]["args"], json!(["@alice:test", "@carol:test", room]));
    // 27: denied inside createRoom, after the room exists.
    let (st, b) = s
        .post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"invite": ["@bob:test"], "name": "exists"}))
        .await;
    assert_eq!(st, 403);
    assert_eq!(b["error"], "Invites have been disabled on this server");
    let (_, rooms) = s.get("/_matrix/client/v3/joined_rooms", Some(&alice.token)).await;
    assert_eq!(rooms["joined_rooms"].as_array().unwrap().len(), 2, "the room was created anyway");
    // 26: admins are exempt and the callback is not called.
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let room2 = s.create_room(&root, json!({})).await;
    let before = s.calls("i").await.len();
    assert_eq!(s.invite(&root, &room2, "@bob:test").await.0, 200);
    assert_eq!(s.calls("i").await.len(), before);
}

#[tokio::test]
async fn case_31_33_user_may_join_room() {
    let s = with_modules(&[scripted("j", json!({"user_may_join_room": {"deny_if": "carol", "then": {"deny": "M_BAD_ALIAS", "fields": {"another_field": "12345"}}}}))]).await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let public = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.calls("j").await.len(), 0, "32: not called for the creator's own join");
    assert_eq!(s.join(&bob, &public).await.0, 200);
    let private = s.create_room(&alice, json!({"invite": ["@bob:test"]})).await;
    assert_eq!(s.join(&bob, &private).await.0, 200);
    let calls = s.calls("j").await;
    assert_eq!(calls[0]["args"], json!(["@bob:test", public, false]));
    assert_eq!(calls[1]["args"], json!(["@bob:test", private, true]));
    let (st, b) = s.join(&carol, &public).await;
    assert_eq!(
        (st, b),
        (403, json!({"errcode": "M_BAD_ALIAS", "error": "Not allowed to join this room", "another_field": "12345"}))
    );
    // 33: admins are exempt.
    let before = s.calls("j").await.len();
    s.make_admin_cli("carol_admin");
    let admin = s.login("carol_admin").await;
    assert_eq!(s.join(&admin, &public).await.0, 200);
    assert_eq!(s.calls("j").await.len(), before);
}

#[tokio::test]
async fn case_34_37_user_may_create_room_and_the_demo_module() {
    let s = with_modules(&[
        "  - module: myelin.demo.DemoModule\n    config: {denied_user: '@evilguy:test'}\n".to_owned(),
        scripted("c", json!({"user_may_create_room": {"deny_if": "mallory", "then": {"deny": "M_UNAUTHORIZED"}}})),
    ])
    .await;
    let alice = s.register("alice").await;
    let evil = s.register("evilguy").await;
    let mallory = s.register("mallory").await;
    s.create_room(&alice, json!({"foo": "baa"})).await;
    let calls = s.calls("c").await;
    assert_eq!(calls[0]["args"], json!(["@alice:test", {"foo": "baa"}]));
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&evil.token), json!({})).await;
    assert_eq!((st, b), (403, json!({"errcode": "M_FORBIDDEN", "error": "You are not permitted to create rooms"})));
    let (st, b) =
        s.post("/_matrix/client/v3/createRoom", Some(&mallory.token), json!({"preset": "private_chat"})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_UNAUTHORIZED")));
    let (_, rooms) = s.get("/_matrix/client/v3/joined_rooms", Some(&mallory.token)).await;
    assert_eq!(rooms["joined_rooms"], json!([]), "nothing was created");
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let before = s.calls("c").await.len();
    s.create_room(&root, json!({})).await;
    assert_eq!(s.calls("c").await.len(), before, "37: admins are exempt");
}

#[tokio::test]
async fn case_44_47_48_check_registration_for_spam() {
    let s = with_modules(&[scripted("r", json!({"check_registration_for_spam": {"deny_if": "reg0", "then": "deny"}}))])
        .await;
    let client = reqwest::Client::new();
    let url = s.url("/_matrix/client/v3/register");
    let first: Value = client
        .post(&url)
        .header("User-Agent", "ExpUA/1.0")
        .json(&json!({"username": "reg0", "password": "p"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = client
        .post(&url)
        .header("User-Agent", "ExpUA/1.0")
        .json(&json!({"username": "reg0", "password": "p", "auth": {"type": "m.login.dummy", "session": first["session"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_none());
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"errcode": "M_UNKNOWN", "error": "Rate limited"}));
    let calls = s.calls("r").await;
    assert_eq!(calls[0]["args"], json!([null, "reg0", [["ExpUA/1.0", "127.0.0.1"]], null]));
    let (st, _) = s.try_register("reg1").await;
    assert_eq!(st, 200);
    let (code, _) = s.try_register("reg0").await;
    assert_eq!(code, 429, "the name was never taken");
}

#[tokio::test]
async fn case_48_shadow_banned_users_get_fake_successes() {
    let s = with_modules(&[scripted(
        "r",
        json!({"check_registration_for_spam": {"deny_if": "shady", "then": "shadow_ban"}}),
    )])
    .await;
    let alice = s.register("alice").await;
    let shady = s.register("shady").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&shady, &room).await.0, 200, "joins work normally");
    let (st, b) = s.send_text(&shady, &room, "you won't see this").await;
    assert_eq!(st, 200);
    let fake = b["event_id"].as_str().unwrap();
    assert!(fake.starts_with('$') && fake.len() == 44, "{fake}");
    assert_eq!(s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{fake}"), Some(&alice.token)).await.0, 404);
    let (st, b) = s.invite(&shady, &room, "@alice:test").await;
    assert_eq!((st, b), (200, json!({})), "invites are silently dropped");
}

#[tokio::test]
async fn case_52_53_check_login_for_spam() {
    let s = with_modules(&[scripted("l", json!({"check_login_for_spam": {"deny_if": "bob", "then": {"deny": "M_LIMIT_EXCEEDED", "fields": {"extra": "value"}}}}))]).await;
    s.register("alice").await;
    s.register("bob").await;
    s.login("alice").await;
    let (st, b) = s.post("/_matrix/client/v3/login", None, json!({"type": "m.login.password", "user": "bob", "password": "password", "initial_device_display_name": "Phone"})).await;
    assert_eq!(
        (st, b),
        (403, json!({"errcode": "M_LIMIT_EXCEEDED", "error": "Login was blocked by the server", "extra": "value"}))
    );
    let calls = s.calls("l").await;
    assert_eq!(calls[1]["args"][0], "@bob:test");
    assert_eq!(calls[1]["args"][2], "Phone");
    assert_eq!(calls[1]["args"][3][0][1], "127.0.0.1");
}

#[tokio::test]
async fn case_54_55_user_may_send_state_event() {
    let s = with_modules(&[scripted("st", json!({"user_may_send_state_event": {"deny_if": "forbidden topic", "then": {"deny": "M_FORBIDDEN", "fields": {"a": 1}}}}))]).await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic");
    assert_eq!(s.put(&path, Some(&alice.token), json!({"topic": "fine"})).await.0, 200);
    let (st, b) = s.put(&path, Some(&alice.token), json!({"topic": "forbidden topic"})).await;
    assert_eq!(
        (st, b),
        (403, json!({"errcode": "M_FORBIDDEN", "error": "You are not permitted to send the state event"}))
    );
    let calls = s.calls("st").await;
    assert_eq!(calls[0]["args"], json!(["@alice:test", room, "m.room.topic", "", {"topic": "fine"}]));
}

#[tokio::test]
async fn callback_metrics_are_exported_per_module() {
    let s = with_modules(&[scripted("m", json!({"user_may_create_room": "allow"}))]).await;
    let alice = s.register("alice").await;
    s.create_room(&alice, json!({})).await;
    let text = reqwest::get(s.url("/_synapse/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        text.contains(
            "myelin_module_callback_calls_total{module=\"myelin.test.Scripted\",callback=\"user_may_create_room\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn case_36_upgrades_call_user_may_create_room_without_an_admin_exemption() {
    let s = with_modules(&[scripted("u", json!({"user_may_create_room": {"deny_if": "predecessor", "then": "deny"}}))])
        .await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let room = s.create_room(&root, json!({"topic": "old topic"})).await;
    let (st, b) = s
        .post(&format!("/_matrix/client/v3/rooms/{room}/upgrade"), Some(&root.token), json!({"new_version": "10"}))
        .await;
    assert_eq!((st, b), (403, json!({"errcode": "M_FORBIDDEN", "error": "You are not permitted to create rooms"})));
    let calls = s.calls("u").await;
    let config = &calls[0]["args"][1];
    assert_eq!(config["creation_content"]["predecessor"]["room_id"], json!(room));
    assert!(
        config["initial_state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.topic" && e["content"]["topic"] == "old topic")
    );
}

#[tokio::test]
async fn case_49_shadow_banned_creators_upgrades_and_profiles() {
    let s = with_modules(&[scripted(
        "r",
        json!({"check_registration_for_spam": {"deny_if": "shady", "then": "shadow_ban"}}),
    )])
    .await;
    let bob = s.register("bob").await;
    let shady = s.register("shady").await;
    // createRoom with invites: the room exists, the invite is dropped.
    let room = s.create_room(&shady, json!({"invite": ["@bob:test"], "preset": "public_chat"})).await;
    let sync = s.sync(&bob, None, 0).await;
    assert!(sync["rooms"]["invite"].as_object().unwrap().is_empty(), "no invite was sent");
    assert_eq!(s.join(&bob, &room).await.0, 200, "others can still join");
    // An upgrade answers with a made-up room.
    let (st, b) = s
        .post(&format!("/_matrix/client/v3/rooms/{room}/upgrade"), Some(&shady.token), json!({"new_version": "10"}))
        .await;
    assert_eq!(st, 200);
    let fake = b["replacement_room"].as_str().unwrap();
    assert_eq!(fake.len(), 18);
    assert!(fake.chars().all(|c| c.is_ascii_lowercase()));
    assert_eq!(
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.tombstone"), Some(&bob.token)).await.0,
        404
    );
    // A display-name change updates the profile but not the member event.
    s.put(
        "/_matrix/client/v3/profile/@shady:test/displayname",
        Some(&shady.token),
        json!({"displayname": "Totally Legit"}),
    )
    .await;
    assert_eq!(
        s.get("/_matrix/client/v3/profile/@shady:test/displayname", None).await.1["displayname"],
        "Totally Legit"
    );
    let (_, m) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@shady:test"), Some(&bob.token)).await;
    assert_eq!(m["displayname"], "shady");
}

async fn api(s: &Server, body: Value) -> Value {
    let (st, b) = s.post("/_synapse/client/test/m/api", None, body).await;
    assert_eq!(st, 200);
    b
}

#[tokio::test]
async fn case_59_63_the_module_api() {
    let s = with_modules(&[scripted("m", json!({}))]).await;
    let alice = s.register("alice").await;
    s.register("bob").await;
    s.put(
        "/_matrix/client/v3/profile/@bob:test/avatar_url",
        Some(&s.login("bob").await.token),
        json!({"avatar_url": "mxc://test/bobpic"}),
    )
    .await;
    assert_eq!(api(&s, json!({"op": "get_userinfo_by_id", "user_id": "@nobody:test"})).await["result"], Value::Null);
    let info = api(&s, json!({"op": "get_userinfo_by_id", "user_id": "@alice:test"})).await;
    assert_eq!(info["result"]["is_admin"], false);
    assert_eq!(
        api(&s, json!({"op": "get_profile_for_user", "user": "bob"})).await["result"],
        json!({"display_name": "bob", "avatar_url": "mxc://test/bobpic"})
    );
    assert_eq!(
        api(&s, json!({"op": "qualify", "user": "carol"})).await["result"],
        json!(["@carol:test", false, "test"])
    );
    assert_eq!(api(&s, json!({"op": "qualify", "user": "@x:test"})).await["result"][1], true);
    // 63: create_room with an alias; lookup_room_alias finds it.
    let created =
        api(&s, json!({"op": "create_room", "user_id": "@alice:test", "config": {"room_alias_name": "foo-bar"}})).await;
    let room = created["result"][0].as_str().unwrap().to_owned();
    assert_eq!(created["result"][1], "#foo-bar:test");
    assert_eq!(
        api(&s, json!({"op": "lookup_room_alias", "alias": "#foo-bar:test"})).await["result"],
        json!([room, ["test"]])
    );
    assert_eq!(
        api(&s, json!({"op": "create_room", "user_id": "@alice:test", "config": {}})).await["result"][1],
        Value::Null
    );
    // 61: update_room_membership fills the target's profile.
    let invite = api(&s, json!({"op": "update_room_membership", "sender": "@alice:test", "target": "@bob:test", "room_id": room, "membership": "invite"})).await;
    assert_eq!(invite["result"]["content"]["membership"], "invite");
    assert_eq!(invite["result"]["content"]["avatar_url"], "mxc://test/bobpic");
    let join = api(&s, json!({"op": "update_room_membership", "sender": "@bob:test", "target": "@bob:test", "room_id": room, "membership": "join"})).await;
    assert_eq!(join["result"]["content"]["membership"], "join");
    let remote = api(&s, json!({"op": "update_room_membership", "sender": "@x:elsewhere", "target": "@bob:test", "room_id": room, "membership": "invite"})).await;
    assert_eq!(remote["status"], 500, "a non-local sender is refused");
    // 62: the public room list manager round-trips, with no spam check.
    assert_eq!(api(&s, json!({"op": "publish", "room_id": room})).await["result"], json!([false, true, false]));
    let (_, joined) = s.get("/_matrix/client/v3/joined_rooms", Some(&alice.token)).await;
    assert_eq!(joined["joined_rooms"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn modules_reach_http_backends_through_the_api() {
    // By default (Synapse's ip_range_blacklist) a module cannot reach loopback, under any
    // spelling of it.
    let strict = with_modules(&[scripted("m", json!({}))]).await;
    for url in
        [strict.url("/_matrix/client/versions"), strict.url("/_matrix/client/versions").replace("127.0.0.1", "127.1")]
    {
        let blocked = api(&strict, json!({"op": "get_json", "url": url})).await;
        assert!(blocked["result"]["error"].as_str().unwrap().starts_with("request failed"), "{url}: {blocked}");
    }
    drop(strict);
    // A backend on loopback, allowed: Myelin's own /versions (plain HTTP) and a 404.
    let s = Server::start_with(&format!("ip_range_whitelist: ['127.0.0.0/8']\nmodules:\n{}", scripted("m", json!({}))))
        .await;
    let ok = api(&s, json!({"op": "get_json", "url": s.url("/_matrix/client/versions")})).await;
    assert!(ok["result"]["ok"]["versions"].is_array(), "{ok}");
    let missing = api(&s, json!({"op": "get_json", "url": s.url("/_matrix/client/v3/nope")})).await;
    assert_eq!(missing["result"], json!({"status": 404}));
    let down = api(&s, json!({"op": "get_json", "url": "http://127.0.0.1:9/"})).await;
    assert!(down["result"]["error"].as_str().unwrap().starts_with("request failed"));
}

/// Native modules register the ratelimit and media repository callbacks through the same
/// registry as Python ones: a per-user `rc_message` burst of 1, and uploads over 10 bytes
/// refused, for one user only.
#[tokio::test]
async fn native_ratelimit_and_media_repository_callbacks() {
    let s = Server::start_with(
        "modules:\n  - module: myelin.test.Scripted\n    config: {label: rl, limited_user: '@limited:test'}\n",
    )
    .await;
    let limited = s.register("limited").await;
    let other = s.register("other").await;
    let room = s.create_room(&other, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&limited, &room).await.0, 200);
    assert_eq!(s.send_text(&limited, &room, "one").await.0, 200);
    assert_eq!(s.send_text(&limited, &room, "two").await.0, 429);
    assert_eq!(s.send_text(&other, &room, "two").await.0, 200, "others keep the server's limit");
    let upload = |token: String, body: &'static [u8]| {
        let url = s.url("/_matrix/media/v3/upload");
        async move { reqwest::Client::new().post(url).bearer_auth(token).body(body).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(upload(limited.token.clone(), b"more than ten bytes").await, 413);
    assert_eq!(upload(limited.token.clone(), b"small").await, 200);
    assert_eq!(upload(other.token.clone(), b"more than ten bytes").await, 200);
}
