//! Synapse's Python modules on the embedded interpreter: loading, return-value normalisation,
//! errors, the ModuleApi, and Twisted web resources (tests/python_modules/).

use serde_json::{Value, json};

use crate::harness::*;

fn py(label: &str, config: Value) -> String {
    let mut c = config;
    c["label"] = json!(label);
    format!("  - module: scripted.Scripted\n    config: {c}\n")
}

async fn with(entries: &[String]) -> Server {
    Server::start_with(&format!("modules:\n{}", entries.concat())).await
}

async fn py_calls(s: &Server, label: &str) -> Vec<Value> {
    let (st, b) = s.get(&format!("/_synapse/client/py/{label}/calls"), None).await;
    assert_eq!(st, 200, "{b}");
    b.as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn the_seed_example_runs_unchanged() {
    let s = Server::start_with("modules:\n  - module: seed_example.DemoModule\n    config: {}\n").await;
    let evil = s.register("evilguy").await;
    let good = s.register("goodguy").await;
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&evil.token), json!({})).await;
    assert_eq!((st, b), (403, json!({"errcode": "M_FORBIDDEN", "error": "You are not permitted to create rooms"})));
    s.create_room(&good, json!({})).await;
    // Its resource is served by Twisted, and fails exactly as on Synapse: the example passes
    // bytes to json.dumps (and would return a str), so Twisted answers 500 "Processing Failed".
    let resp = reqwest::get(s.url("/_synapse/client/demo/hello?name=bob")).await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(resp.text().await.unwrap().contains("Processing Failed"));
}

async fn invite_with(spec: &str) -> (u16, Value) {
    let s = with(&[py("i", json!({"returns": {"user_may_invite": spec}}))]).await;
    let alice = s.register("alice").await;
    s.register("bob").await;
    let room = s.create_room(&alice, json!({})).await;
    let r = s.invite(&alice, &room, "@bob:test").await;
    assert_eq!(s.get("/_matrix/client/versions", None).await.0, 200, "still serving");
    r
}

#[tokio::test]
async fn case_25_user_may_invite_return_forms() {
    let disabled = "Invites have been disabled on this server";
    assert_eq!(invite_with("True").await.0, 200);
    assert_eq!(invite_with("NOT_SPAM").await.0, 200);
    assert_eq!(invite_with("False").await, (403, json!({"errcode": "M_FORBIDDEN", "error": disabled})));
    assert_eq!(invite_with("None").await, (403, json!({"errcode": "M_FORBIDDEN", "error": disabled})));
    assert_eq!(
        invite_with("Codes.CONSENT_NOT_GIVEN").await,
        (403, json!({"errcode": "M_CONSENT_NOT_GIVEN", "error": disabled}))
    );
    assert_eq!(
        invite_with("(Codes.FORBIDDEN, {'k': 'v'})").await,
        (403, json!({"errcode": "M_FORBIDDEN", "error": disabled, "k": "v"}))
    );
    assert_eq!(invite_with("'M_FORBIDDEN'").await.0, 403, "a plain string is invalid here");
    assert_eq!(
        invite_with("raise SynapseError(418, 'teapot', 'M_TEAPOT')").await,
        (418, json!({"errcode": "M_TEAPOT", "error": "teapot"}))
    );
    assert_eq!(
        invite_with("raise RuntimeError('bug')").await,
        (500, json!({"errcode": "M_UNKNOWN", "error": "Internal server error"}))
    );
}

async fn send_with(spec: &str, sync: bool) -> (u16, Value) {
    let mut config = json!({"returns": {"check_event_for_spam": spec}});
    if sync {
        config["sync"] = json!(["check_event_for_spam"]);
    }
    let s = with(&[py("e", config)]).await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    s.send_text(&alice, &room, "hello").await
}

#[tokio::test]
async fn case_16_20_check_event_for_spam_return_forms() {
    let probable = "This message has been rejected as probable spam";
    assert_eq!(send_with("'NOT_SPAM'", false).await.0, 200);
    assert_eq!(send_with("''.join(['NOT_', 'SPAM'])", false).await.0, 200, "equality, not identity, here");
    assert_eq!(send_with("False", true).await.0, 200, "sync callbacks work too");
    assert_eq!(send_with("True", false).await, (403, json!({"errcode": "M_FORBIDDEN", "error": probable})));
    assert_eq!(
        send_with("Codes.LIMIT_EXCEEDED", false).await,
        (403, json!({"errcode": "M_LIMIT_EXCEEDED", "error": probable}))
    );
    assert_eq!(
        send_with("(Codes.SERVER_NOT_TRUSTED, {'additional_field': '12345'})", false).await,
        (403, json!({"errcode": "M_SERVER_NOT_TRUSTED", "error": probable, "additional_field": "12345"}))
    );
    assert_eq!(
        send_with("'custom message'", false).await,
        (403, json!({"errcode": "M_FORBIDDEN", "error": "custom message"}))
    );
    for invalid in ["None", "0", "(Codes.FORBIDDEN,)"] {
        assert_eq!(
            send_with(invalid, false).await,
            (403, json!({"errcode": "M_FORBIDDEN", "error": probable})),
            "{invalid}"
        );
    }
}

#[tokio::test]
async fn other_callbacks_arity_and_argument_shapes() {
    let s = with(&[py(
        "o",
        json!({"returns": {
            "user_may_join_room": "True", "user_may_create_room": "True", "user_may_create_room_alias": "NOT_SPAM",
            "user_may_publish_room": "False", "check_username_for_spam": "False", "check_login_for_spam": "NOT_SPAM",
            "user_may_send_state_event": "True", "check_registration_for_spam": "RegistrationBehaviour.ALLOW",
        }}),
    )])
    .await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat", "name": "x"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let (st, b) = s
        .put(
            &format!("/_matrix/client/v3/directory/list/room/{room}"),
            Some(&alice.token),
            json!({"visibility": "public"}),
        )
        .await;
    assert_eq!((st, b["error"].as_str()), (403, Some("This user is not permitted to publish rooms to the room list")));
    let (st, b) = s
        .put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"), Some(&alice.token), json!({"topic": "t"}))
        .await;
    assert_eq!(
        (st, b["error"].as_str()),
        (403, Some("You are not permitted to send the state event")),
        "True is invalid here"
    );
    assert_eq!(
        s.put("/_matrix/client/v3/directory/room/%23x:test", Some(&alice.token), json!({"room_id": room})).await.0,
        200
    );
    let (_, found) =
        s.post("/_matrix/client/v3/user_directory/search", Some(&alice.token), json!({"search_term": "bob"})).await;
    assert_eq!(found["results"].as_array().unwrap().len(), 1);
    s.login("alice").await;
    let calls = py_calls(&s, "o").await;
    let args =
        |name: &str| calls.iter().find(|c| c["callback"] == name).map(|c| c["args"].clone()).unwrap_or(Value::Null);
    assert_eq!(args("user_may_join_room"), json!(["@bob:test", room, false]));
    assert_eq!(args("user_may_create_room")[1]["name"], "x", "two parameters: the config is passed");
    assert_eq!(args("user_may_create_room_alias"), json!(["@alice:test", "#x:test"]), "a RoomAlias, str() as #x:test");
    assert_eq!(args("check_username_for_spam")[0]["user_id"], "@bob:test");
    assert_eq!(args("check_username_for_spam")[1], "@alice:test");
    assert_eq!(args("check_registration_for_spam")[1], "alice");
    assert_eq!(args("check_login_for_spam")[0], "@alice:test");
}

#[tokio::test]
async fn case_35_one_argument_forms_and_registration_results() {
    let s = with(&[py(
        "a",
        json!({"returns": {"user_may_create_room": "True", "check_registration_for_spam": "'allow'"},
               "one_arg": ["user_may_create_room"]}),
    )])
    .await;
    let (st, b) = s.try_register("alice").await;
    assert_eq!(
        (st, b["errcode"].as_str()),
        (500, Some("M_UNKNOWN")),
        "47: a plain string is not a RegistrationBehaviour"
    );
    let s = with(&[py(
        "b",
        json!({"returns": {"user_may_create_room": "True", "check_registration_for_spam": "RegistrationBehaviour.DENY"},
               "one_arg": ["user_may_create_room"]}),
    )])
    .await;
    let (st, b) = s.try_register("alice").await;
    assert_eq!((st, b), (429, json!({"errcode": "M_UNKNOWN", "error": "Rate limited"})));
    let s = with(&[py("c", json!({"returns": {"user_may_create_room": "True"}, "one_arg": ["user_may_create_room"]}))])
        .await;
    let alice = s.register("alice").await;
    s.create_room(&alice, json!({"name": "one"})).await;
    assert_eq!(py_calls(&s, "c").await[0]["args"], json!(["@alice:test"]), "one parameter: only the user");
}

#[tokio::test]
async fn case_07_08_none_config_and_config_order_with_native_modules() {
    let s = Server::start_with(&format!(
        "modules:\n  - module: scripted.NoneConfig\n    config: {{a: 1}}\n{}{}",
        py("first", json!({"returns": {"user_may_invite": "False"}})),
        py("second", json!({"returns": {"user_may_invite": "True"}}))
    ))
    .await;
    let alice = s.register("alice").await;
    s.register("bob").await;
    let room = s.create_room(&alice, json!({})).await;
    assert_eq!(s.invite(&alice, &room, "@bob:test").await.0, 403);
    assert_eq!(py_calls(&s, "first").await.len(), 1);
    assert_eq!(py_calls(&s, "second").await.len(), 0, "the first denial wins");
}

fn startup_fails(modules: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("homeserver.yaml");
    std::fs::write(&path, base_config(&format!("modules:\n{modules}"))).unwrap();
    let (code, _, stderr) = run_cli(dir.path(), &["-c", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("listening on"), "no port may be opened: {stderr}");
    stderr
}

#[test]
fn cases_01_06_python_loading_errors() {
    assert_eq!(
        startup_fails(
            "  - module: myelin.demo.DemoModule\n  - module: scripted.Scripted\n    config: {threshold: -1}\n"
        ),
        "\nError in configuration at 'modules.<item 1>.config.threshold':\n  Failed to parse config for module 'scripted.Scripted':\n    threshold must be positive\n"
    );
    assert_eq!(
        startup_fails("  - module: scripted.Scripted\n    config: {value_error: true}\n"),
        "\nError in configuration at 'modules.<item 0>.config':\n  Failed to parse config for module 'scripted.Scripted':\n    oops\n"
    );
    let missing = startup_fails("  - module: no_such_package.Module\n");
    assert!(
        missing.contains("Traceback") && missing.contains("ModuleNotFoundError: No module named 'no_such_package'"),
        "{missing}"
    );
    let attr = startup_fails("  - module: scripted.Nope\n");
    assert!(attr.contains("AttributeError: module 'scripted' has no attribute 'Nope'"), "{attr}");
    let ctor = startup_fails("  - module: scripted.Scripted\n    config: {constructor_raises: true}\n");
    assert!(ctor.contains("Error during startup:") && ctor.contains("RuntimeError: constructor says no"), "{ctor}");
    let bad = startup_fails("  - module: scripted.Scripted\n    config: {bad_callback: true}\n");
    assert!(
        bad.contains(
            "TypeError: ModuleApi.register_spam_checker_callbacks() got an unexpected keyword argument 'not_a_callback'"
        ),
        "{bad}"
    );
}

#[tokio::test]
async fn twisted_resources_behave_as_on_synapse() {
    let s = with(&[py("w", json!({"web": true}))]).await;
    let base = "/_synapse/client/py/w";
    let (st, b) = s.get(&format!("{base}/plain?x=1&x=2"), None).await;
    assert_eq!(st, 200);
    assert_eq!(b["args"], json!({"x": ["1", "2"]}));
    assert_eq!(b["client"], "127.0.0.1");
    let client = reqwest::Client::new();
    let resp = client.post(s.url(&format!("{base}/plain"))).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("PUT") && allow.contains("HEAD"), "{allow}");
    let resp = client.put(s.url(&format!("{base}/plain"))).body("payload").send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "put:payload");
    let resp = client.head(s.url(&format!("{base}/plain"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(s.get(&format!("{base}/plain/"), None).await.0, 404, "unknown child (trailing slash)");
    // Resource trees route below a resource as Twisted does: a leaf gets the rest of the path
    // in `postpath`, a resource's children answer their own paths, unknown children are 404.
    let text = |path: String| {
        let url = s.url(&path);
        async move {
            let resp = reqwest::get(url).await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert_eq!(text(format!("{base}/leaf")).await, (200, "leaf:".to_owned()));
    assert_eq!(text(format!("{base}/leaf/abc/def")).await, (200, "leaf:abc/def".to_owned()));
    assert_eq!(text(format!("{base}/tree")).await, (200, "tree".to_owned()));
    assert_eq!(text(format!("{base}/tree/kid")).await, (200, "kid".to_owned()));
    assert_eq!(text(format!("{base}/tree/other")).await.0, 404);
    assert_eq!(text(format!("{base}/plain/child")).await.0, 404, "a non-leaf without that child");
    let resp = reqwest::get(s.url(&format!("{base}/str"))).await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(resp.text().await.unwrap().contains("Request did not return bytes"));
    assert_eq!(reqwest::get(s.url(&format!("{base}/raises"))).await.unwrap().status(), 500);
    assert_eq!(reqwest::get(s.url(&format!("{base}/later"))).await.unwrap().text().await.unwrap(), "later");
    assert_eq!(reqwest::get(s.url(&format!("{base}/thread"))).await.unwrap().text().await.unwrap(), "from a thread");
    assert_eq!(s.get("/_matrix/client/versions", None).await.0, 200);
}

async fn api(s: &Server, body: Value) -> Value {
    let (st, b) = s.post("/_synapse/client/py/m/api", None, body).await;
    assert_eq!(st, 200, "{b}");
    b
}

#[tokio::test]
async fn the_python_module_api_reaches_myelin() {
    // The module calls back into this server on loopback, which it may only when allowed.
    let s = Server::start_with(&format!("ip_range_whitelist: ['127.0.0.0/8']\nmodules:\n{}", py("m", json!({})))).await;
    let alice = s.register("alice").await;
    assert_eq!(
        api(&s, json!({"op": "userinfo", "user_id": "@alice:test"})).await,
        json!({"user_id": "@alice:test", "is_admin": false})
    );
    assert_eq!(api(&s, json!({"op": "userinfo", "user_id": "@nobody:test"})).await, Value::Null);
    assert_eq!(api(&s, json!({"op": "exists", "user": "alice"})).await, json!({"exists": "@alice:test"}));
    assert_eq!(api(&s, json!({"op": "profile", "user": "alice"})).await, json!({"display_name": "alice"}));
    let created =
        api(&s, json!({"op": "create_room", "user_id": "@alice:test", "config": {"room_alias_name": "py"}})).await;
    assert_eq!(created["alias"], "#py:test");
    let room = created["room_id"].as_str().unwrap().to_owned();
    let sent = api(&s, json!({"op": "send", "event": {"type": "m.room.message", "room_id": room, "sender": "@alice:test", "content": {"body": "from python"}}})).await;
    let id = sent["event_id"].as_str().unwrap();
    assert_eq!(
        s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{id}"), Some(&alice.token)).await.1["content"]["body"],
        "from python"
    );
    let ok = api(&s, json!({"op": "get_json", "url": s.url("/_matrix/client/versions")})).await;
    assert!(ok["ok"]["versions"].is_array());
    assert_eq!(
        api(&s, json!({"op": "get_json", "url": s.url("/_matrix/client/v3/nope")})).await,
        json!({"error": "HttpResponseException", "code": 404})
    );
    assert_eq!(api(&s, json!({"op": "sleep"})).await, json!({"slept": true}));
    assert_eq!(
        api(&s, json!({"op": "state_events", "room_id": room})).await,
        json!(["m.room.create|", "m.room.member|@alice:test"])
    );
    let missing = api(&s, json!({"op": "missing"})).await;
    assert!(missing["error"].as_str().unwrap().contains("does not provide 'run_db_interaction'"));
}

#[tokio::test]
async fn cases_46_56_legacy_spam_checkers() {
    let s = Server::start_with("spam_checker:\n  module: legacy.LegacyChecker\n  config: {x: 1}\n").await;
    let alice = s.register("alice").await;
    s.register("bob").await;
    let room = s.create_room(&alice, json!({})).await;
    let (st, b) = s.invite(&alice, &room, "@bob:test").await;
    assert_eq!((st, b), (403, json!({"errcode": "M_FORBIDDEN", "error": "Invites have been disabled on this server"})));
    assert_eq!(
        s.send_text(&alice, &room, "forbidden words").await,
        (403, json!({"errcode": "M_FORBIDDEN", "error": "legacy says no"}))
    );
    assert_eq!(s.send_text(&alice, &room, "fine words").await.0, 200);
    // 46: a legacy three-parameter check_registration_for_spam is called and its DENY is a 429.
    let (st, b) = s.try_register("legacydeny").await;
    assert_eq!((st, b), (429, json!({"errcode": "M_UNKNOWN", "error": "Rate limited"})));
    assert!(s.log_text().contains("'spam_checker' config option is deprecated"));
    // A list form, with modules: first and a legacy checker with no methods (42).
    let s = Server::start_with(&format!(
        "spam_checker:\n  - module: legacy.Empty\n{}",
        "modules:\n  - module: myelin.demo.DemoModule\n"
    ))
    .await;
    let alice = s.register("alice").await;
    s.register("zed").await;
    s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let (st, _) =
        s.post("/_matrix/client/v3/user_directory/search", Some(&alice.token), json!({"search_term": "zed"})).await;
    assert_eq!(st, 200);
}

#[test]
fn case_57_legacy_spam_checker_syntax_errors() {
    assert_eq!(
        startup_fails_raw("spam_checker: 5\n"),
        "\nError in configuration:\n  spam_checker syntax is incorrect\n"
    );
    assert_eq!(
        startup_fails_raw("spam_checker:\n  - 5\n"),
        "\nError in configuration at 'spam_checker.<item 0>':\n  expected a mapping\n"
    );
    let bad = startup_fails_raw("spam_checker:\n  module: legacy.BadRegistration\n");
    assert!(bad.contains("RuntimeError: Bad signature for callback check_registration_for_spam"), "{bad}");
}

fn startup_fails_raw(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("homeserver.yaml");
    std::fs::write(&path, base_config(yaml)).unwrap();
    let (code, _, stderr) = run_cli(dir.path(), &["-c", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    stderr
}

#[tokio::test]
async fn third_party_rules_and_account_validity() {
    let s = Server::start_with("modules:\n  - module: rules.Rules\n").await;
    let alice = s.register("alice").await;
    let expired = s.register("expired").await;
    // on_create_room may amend the request, or refuse it.
    let room = s.create_room(&alice, json!({"name": "fine"})).await;
    let (_, topic) = s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"), Some(&alice.token)).await;
    assert_eq!(topic, json!({"topic": "set by module"}));
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"name": "forbidden"})).await;
    assert_eq!(
        (st, b),
        (403, json!({"errcode": "M_FORBIDDEN", "error": "Room creation forbidden with these parameters"}))
    );
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"name": "teapot"})).await;
    assert_eq!((st, b), (418, json!({"errcode": "M_TEAPOT", "error": "short and stout"})));
    // check_event_allowed refuses, or replaces the content, of local events.
    let (st, b) = s.send_text(&alice, &room, "blocked").await;
    assert_eq!((st, b), (403, json!({"errcode": "M_FORBIDDEN", "error": "This event is not allowed in this context"})));
    let (st, b) = s.send_text(&alice, &room, "censor me").await;
    assert_eq!(st, 200);
    let id = b["event_id"].as_str().unwrap();
    let (_, ev) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{id}"), Some(&alice.token)).await;
    assert_eq!(ev["content"]["body"], "***");
    assert_eq!(s.send_text(&alice, &room, "hello").await.0, 200);
    // on_new_event saw the stored events; the state map reached check_event_allowed.
    let mut seen = Value::Null;
    for _ in 0..50 {
        seen = s.get("/_synapse/client/rules/seen", None).await.1;
        if seen["new_events"].as_array().is_some_and(|e| e.iter().any(|x| x.as_str() == Some(id))) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(seen["new_events"].as_array().unwrap().iter().any(|x| x.as_str() == Some(id)), "{seen}");
    assert!(seen["state_types"].as_array().unwrap().iter().any(|t| t == "m.room.power_levels"), "{seen}");
    assert_eq!(seen["registered"], json!(["@alice:test", "@expired:test"]));
    // An expired account is refused everywhere but logout.
    let (st, b) = s.get("/_matrix/client/v3/account/whoami", Some(&expired.token)).await;
    assert_eq!((st, b), (403, json!({"errcode": "ORG_MATRIX_EXPIRED_ACCOUNT", "error": "User account has expired"})));
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200);
    assert_eq!(s.post("/_matrix/client/v3/logout", Some(&expired.token), json!({})).await.0, 200);
}

/// The third-party rules and account validity callbacks around profiles, deactivation, room
/// directory visibility and login: called where Synapse calls them, with its arguments.
#[tokio::test]
async fn profile_deactivation_visibility_and_login_callbacks() {
    let s = Server::start_with("modules:\n  - module: rules.Rules\n").await;
    let alice = s.register("alice").await;
    let seen = || async { s.get("/_synapse/client/rules/seen", None).await.1 };
    // on_profile_update: after the change, with the whole profile; a module error is logged only.
    let name = format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id);
    assert_eq!(s.put(&name, Some(&alice.token), json!({"displayname": "Alice"})).await.0, 200);
    assert_eq!(s.put(&name, Some(&alice.token), json!({"displayname": "raise"})).await.0, 200);
    assert_eq!(
        seen().await["profiles"],
        json!([["@alice:test", "Alice", null, false, false], ["@alice:test", "raise", null, false, false]])
    );
    // on_user_login: after a successful login only.
    s.login("alice").await;
    let (st, _) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wrong"}),
        )
        .await;
    assert_eq!(st, 403);
    assert_eq!(seen().await["logins"], json!([["@alice:test", "m.login.password", null]]));
    // check_visibility_can_be_modified: at createRoom (no state yet) and when publishing.
    let room = s.create_room(&alice, json!({"name": "secret"})).await;
    let list = format!("/_matrix/client/v3/directory/list/room/{room}");
    let (st, b) = s.put(&list, Some(&alice.token), json!({"visibility": "public"})).await;
    assert_eq!((st, b["error"].as_str()), (403, Some("Not allowed to publish room")), "{b}");
    assert_eq!(s.get(&list, None).await.1["visibility"], "private");
    assert_eq!(s.put(&list, Some(&alice.token), json!({"visibility": "private"})).await.0, 200, "not asked");
    let visibility = seen().await["visibility"].clone();
    assert_eq!(visibility[0], json!(["private", 0]), "createRoom asks before the room has state: {visibility}");
    assert_eq!(visibility.as_array().unwrap().len(), 2, "{visibility}");
    // check_can_deactivate_user refuses; on_user_deactivation_status_changed follows a deactivation.
    let s = &s;
    let deactivate = |user: User| async move {
        let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user.user_id}, "password": "password"});
        s.post("/_matrix/client/v3/account/deactivate", Some(&user.token), json!({"auth": auth})).await
    };
    let keeper = s.register("keeper").await;
    let (st, b) = deactivate(keeper.clone()).await;
    assert_eq!((st, b), (403, json!({"errcode": "M_FORBIDDEN", "error": "Deactivation of this user is forbidden"})));
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&keeper.token)).await.0, 200, "still active");
    let bob = s.register("bob").await;
    assert_eq!(deactivate(bob).await.0, 200);
    assert_eq!(seen().await["deactivated"], json!([["@bob:test", true, false]]));
}

/// Account data and media repository callbacks: `on_account_data_updated` after each write
/// (global and per room), a per-user `/media/config`, and uploads refused by size with 413.
#[tokio::test]
async fn account_data_and_media_repository_callbacks() {
    let s = Server::start_with("modules:\n  - module: repository.Repository\n").await;
    assert!(s.log_text().contains("never called"), "the background update controller is accepted");
    let alice = s.register("alice").await;
    let small = s.register("small").await;
    let global = format!("/_matrix/client/v3/user/{}/account_data/org.example.x", alice.user_id);
    assert_eq!(s.put(&global, Some(&alice.token), json!({"a": 1})).await.0, 200);
    let room = s.create_room(&alice, json!({})).await;
    let per_room = format!("/_matrix/client/v3/user/{}/rooms/{room}/account_data/org.example.y", alice.user_id);
    assert_eq!(s.put(&per_room, Some(&alice.token), json!({"b": 2})).await.0, 200);
    let seen = s.get("/_synapse/client/repository/seen", None).await.1;
    assert_eq!(
        seen["account_data"],
        json!([["@alice:test", null, "org.example.x", {"a": 1}], ["@alice:test", room, "org.example.y", {"b": 2}]])
    );
    // /media/config per user, on both paths.
    for path in ["/_matrix/client/v1/media/config", "/_matrix/media/v3/config"] {
        assert_eq!(s.get(path, Some(&small.token)).await.1, json!({"m.upload.size": 10}), "{path}");
        assert!(s.get(path, Some(&alice.token)).await.1["m.upload.size"].as_u64().unwrap() > 1000, "{path}");
    }
    // Uploads refused by size, for that user only, and nothing is kept.
    let upload = |user: &User, body: &'static [u8]| {
        let (url, token) = (s.url("/_matrix/media/v3/upload"), user.token.clone());
        async move {
            let resp = reqwest::Client::new().post(url).bearer_auth(token).body(body).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (st, b) = upload(&small, b"more than ten bytes").await;
    assert_eq!((st, b), (413, json!({"errcode": "M_TOO_LARGE", "error": "Upload request body is too large"})));
    assert_eq!(upload(&small, b"tiny").await.0, 200);
    assert_eq!(upload(&alice, b"more than ten bytes").await.0, 200);
    let tmp = s.dir.path().join("data/media/tmp");
    let left = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "no temporary file is left behind");
}

/// More of `ModuleApi`: `get_canonical_room_alias`, `check_username` (Synapse's errors),
/// `invalidate_access_token` (the session ends, `on_logged_out`-style), `defer_to_threadpool`,
/// `@cached` with `register_cached_function` and `invalidate_cache`.
#[tokio::test]
async fn more_of_the_module_api() {
    let s = with(&[py("m", json!({}))]).await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"room_alias_name": "canon"})).await;
    assert_eq!(api(&s, json!({"op": "canonical_alias", "room_id": room})).await, json!({"alias": "#canon:test"}));
    let bare = s.create_room(&alice, json!({})).await;
    assert_eq!(api(&s, json!({"op": "canonical_alias", "room_id": bare})).await, json!({"alias": null}));
    assert_eq!(api(&s, json!({"op": "check_username", "username": "fresh"})).await, json!({"ok": true}));
    assert_eq!(
        api(&s, json!({"op": "check_username", "username": "alice"})).await,
        json!({"error": [400, "M_USER_IN_USE", "User ID already taken."]})
    );
    assert_eq!(
        api(&s, json!({"op": "check_username", "username": "Bad Name"})).await["error"][1],
        "M_INVALID_USERNAME"
    );
    assert_eq!(
        api(&s, json!({"op": "check_username", "username": "_hidden"})).await["error"][2],
        "User ID may not begin with _"
    );
    let other = s.login("alice").await;
    assert_eq!(api(&s, json!({"op": "invalidate_token", "token": other.token})).await, json!({"done": true}));
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&other.token)).await.0, 401, "that session ended");
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200, "others stay");
    assert_eq!(api(&s, json!({"op": "invalidate_token", "token": "unknown"})).await, json!({"done": true}));
    assert_eq!(api(&s, json!({"op": "helpers"})).await, json!({"doubled": 42, "cached": [1, 1, 2]}));
    // set_push_rule_action: the rule's actions change for that user; unknown rules and invalid
    // actions raise Synapse's exceptions.
    assert_eq!(
        api(&s, json!({"op": "push_rule_action", "user_id": alice.user_id})).await,
        json!(["ok", "RuleNotFoundException", "InvalidRuleException"])
    );
    let (st, rule) = s.get("/_matrix/client/v3/pushrules/global/override/.m.rule.master", Some(&alice.token)).await;
    assert_eq!((st, &rule["actions"]), (200, &json!(["notify"])), "{rule}");
    // set_presence_for_users: the state and message are set; an unknown state is refused (400).
    assert_eq!(api(&s, json!({"op": "set_presence", "user_id": alice.user_id})).await, json!({"refused": 400}));
    let (st, presence) =
        s.get(&format!("/_matrix/client/v3/presence/{}/status", alice.user_id), Some(&alice.token)).await;
    assert_eq!(
        (st, &presence["presence"], &presence["status_msg"]),
        (200, &json!("unavailable"), &json!("set by a module")),
        "{presence}"
    );
    // get_user_ip_and_agents: where and with what a session was seen (written in the background).
    let seen = reqwest::Client::new()
        .get(s.url("/_matrix/client/v3/account/whoami"))
        .bearer_auth(&alice.token)
        .header("user-agent", "TestAgent/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status(), 200);
    let mut ips = Value::Null;
    for _ in 0..100 {
        ips = api(&s, json!({"op": "ips", "user_id": alice.user_id})).await;
        if ips.to_string().contains("TestAgent/1.0") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ips.as_array().unwrap().iter().any(|r| r == &json!(["127.0.0.1", "TestAgent/1.0", true])), "{ips}");
    let later = api(&s, json!({"op": "ips", "user_id": alice.user_id, "since_ts": 99_999_999_999_999i64})).await;
    assert_eq!(later, json!([]));
    assert_eq!(api(&s, json!({"op": "ips", "user_id": "@nobody:elsewhere"})).await, json!([]));
}

/// `get_ratelimit_override_for_user`: a module's setting for one user on one limiter replaces
/// the server's (here `rc_message` with a burst of 2), a rate of 0 lifts the limit, and
/// everybody else keeps the server's.
#[tokio::test]
async fn ratelimit_callbacks_set_per_user_limits() {
    let s = Server::start_with(
        "rc_message: {per_second: 0.001, burst_count: 5}\nmodules:\n  - module: repository.Repository\n",
    )
    .await;
    let slow = s.register("slow").await;
    let free = s.register("free").await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    for u in [&slow, &free] {
        assert_eq!(s.join(u, &room).await.0, 200);
    }
    let sends = |user: User, n: usize| {
        let (s, room) = (&s, room.clone());
        async move {
            let mut codes = Vec::new();
            for i in 0..n {
                codes.push(s.send_text(&user, &room, &format!("m{i}")).await.0);
            }
            codes
        }
    };
    assert_eq!(sends(slow.clone(), 3).await, vec![200, 200, 429], "the module's burst of 2");
    assert_eq!(sends(free.clone(), 8).await, vec![200; 8], "lifted by the module");
    // alice made the room (one action); the server's burst of 5 leaves her four more.
    assert_eq!(sends(alice.clone(), 5).await, vec![200, 200, 200, 200, 429], "the server's setting");
    let seen = s.get("/_synapse/client/repository/seen", None).await.1;
    let limiters = seen["limiters"].as_array().unwrap();
    for name in ["rc_message", "rc_joins.local", "rc_room_creation"] {
        assert!(limiters.iter().any(|l| l == name), "{name} in {limiters:?}");
    }
}

#[tokio::test]
async fn python_media_checks_read_the_file() {
    let s = Server::start_with("modules:\n  - module: media_check.MediaCheck\n").await;
    let u = s.register("alice").await;
    let up = |body: &'static [u8]| {
        let url = s.url("/_matrix/media/v3/upload");
        let token = u.token.clone();
        async move {
            let r = reqwest::Client::new().post(url).bearer_auth(token).body(body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(up(b"innocent").await.0, 200);
    assert_eq!(up(b"an evil file").await, (400, json!({"errcode": "M_UNKNOWN", "error": "Bad content"})));
}

#[tokio::test]
async fn a_module_blocking_its_thread_does_not_delay_other_requests() {
    let s = std::sync::Arc::new(with(&[py("b", json!({"web": true}))]).await);
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let s2 = s.clone();
    let blocked =
        tokio::spawn(
            async move { reqwest::get(s2.url("/_synapse/client/py/b/block")).await.unwrap().status().as_u16() },
        );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    for i in 0..5 {
        assert_eq!(s.send_text(&alice, &room, &format!("while blocked {i}")).await.0, 200);
        assert_eq!(s.get("/_matrix/client/versions", None).await.0, 200);
    }
    assert!(started.elapsed() < std::time::Duration::from_millis(1200), "waited {:?}", started.elapsed());
    assert_eq!(blocked.await.unwrap(), 200);
}

/// `get_username_for_registration` and `get_displayname_for_registration`: asked once the
/// registration's user-interactive auth is complete; their answers name the new account.
#[tokio::test]
async fn password_providers_choose_the_username_and_display_name_at_registration() {
    let s = Server::start_with("enable_registration: true\nenable_registration_without_verification: true\nmodules:\n  - module: password_provider.Provider\n").await;
    let register = |username: &'static str| {
        let s = &s;
        async move {
            let body = json!({"username": username, "password": "pw-12345678", "auth": {"type": "m.login.dummy"}});
            s.post("/_matrix/client/v3/register", None, body).await
        }
    };
    let (st, b) = register("pickme").await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["user_id"], "@chosen:test");
    let token = b["access_token"].as_str().unwrap().to_owned();
    let (_, name) = s.get("/_matrix/client/v3/profile/@chosen:test/displayname", Some(&token)).await;
    assert_eq!(name["displayname"], "Named by module");
    // No answer (or a raising hook) leaves the requested username and the default display name.
    let (st, b) = register("broken").await;
    assert_eq!((st, b["user_id"].as_str()), (200, Some("@broken:test")), "{b}");
    let (_, name) = s.get("/_matrix/client/v3/profile/@broken:test/displayname", Some(&token)).await;
    assert_eq!(name["displayname"], "broken");
    // The chosen name is taken now: the next "pickme" is refused as in use.
    let (st, b) = register("pickme").await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_USER_IN_USE")), "{b}");
}

#[tokio::test]
async fn password_auth_providers() {
    let s = Server::start_with("modules:\n  - module: password_provider.Provider\n").await;
    s.register("alice").await;
    let login = |body: Value| {
        let s = &s;
        async move { s.post("/_matrix/client/v3/login", None, body).await }
    };
    let (_, flows) = s.get("/_matrix/client/v3/login", None).await;
    assert_eq!(
        flows["flows"],
        json!([{"type": "m.login.password"}, {"type": "org.example.token"}, {"type": "m.login.application_service"}])
    );
    // A custom login type.
    let (st, b) = login(json!({"type": "org.example.token", "identifier": {"type": "m.id.user", "user": "alice"}, "token": "open-sesame"})).await;
    assert_eq!((st, b["user_id"].as_str()), (200, Some("@alice:test")), "{b}");
    assert_eq!(login(json!({"type": "org.example.token", "user": "alice", "token": "wrong"})).await.0, 403);
    // m.login.password: the provider first, then the local password.
    assert_eq!(login(json!({"type": "m.login.password", "user": "alice", "password": "ldap-password"})).await.0, 200);
    assert_eq!(login(json!({"type": "m.login.password", "user": "alice", "password": "password"})).await.0, 200);
    assert_eq!(
        login(json!({"type": "m.login.password", "user": "alice", "password": "boom"})).await.0,
        403,
        "a raising provider counts as no"
    );
    // A third-party identifier.
    let (st, b) = login(json!({"type": "m.login.password", "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "alice@example.com"}, "password": "mail-password"})).await;
    assert_eq!((st, b["user_id"].as_str()), (200, Some("@alice:test")));
    let token = b["access_token"].as_str().unwrap().to_owned();
    assert_eq!(login(json!({"type": "m.login.password", "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": "x@y"}, "password": "p"})).await.0, 403);
    assert_eq!(login(json!({"type": "m.login.unknown"})).await.0, 400);
    assert_eq!(s.post("/_matrix/client/v3/logout", Some(&token), json!({})).await.0, 200);
}

#[tokio::test]
async fn room_state_account_data_and_get_user_by_req_from_python() {
    let s = with(&[py("m", json!({}))]).await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"name": "state"})).await;
    let state = api(&s, json!({"op": "room_state", "room_id": room})).await;
    let keys: Vec<&str> = state.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(keys.contains(&"m.room.name|") && keys.contains(&"m.room.member|@alice:test"), "{keys:?}");
    let data = api(&s, json!({"op": "account_data", "user_id": "@alice:test"})).await;
    assert_eq!(data, json!({"got": {"set": "by module"}, "errors": ["ValueError", "TypeError"]}));
    let (_, mine) =
        s.get("/_matrix/client/v3/user/@alice:test/account_data/org.example.module", Some(&alice.token)).await;
    assert_eq!(mine, json!({"set": "by module"}));
    // A module resource authenticating its caller.
    assert_eq!(
        s.get("/_synapse/client/py/m/whoami", Some(&alice.token)).await,
        (200, json!({"user_id": "@alice:test"}))
    );
    let (st, b) = s.get("/_synapse/client/py/m/whoami", None).await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")));
    let (st, b) = s.get("/_synapse/client/py/m/whoami", Some("bogus")).await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
}

/// The test venv's site-packages (Twisted lives there).
fn test_site_packages() -> std::path::PathBuf {
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/.venv/lib");
    let version =
        std::fs::read_dir(&lib).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("python"));
    version.expect("a pythonX.Y directory in the test venv").path().join("site-packages")
}

#[tokio::test]
async fn modules_come_from_the_configured_virtualenv_and_path() {
    // A virtualenv as pip leaves it: the module in site-packages, and a .pth file (here pointing
    // at the test venv, for Twisted), which only site.addsitedir honours.
    let dir = tempfile::tempdir().unwrap();
    let site = test_site_packages();
    let venv = dir.path().join("venv");
    let venv_site = venv.join(site.strip_prefix(site.parent().unwrap().parent().unwrap().parent().unwrap()).unwrap());
    std::fs::create_dir_all(&venv_site).unwrap();
    std::fs::write(venv_site.join("deps.pth"), format!("{}\n", site.display())).unwrap();
    std::fs::write(
        venv_site.join("venv_only.py"),
        "class Deny:\n    def __init__(self, config, api):\n        api.register_spam_checker_callbacks(user_may_create_room=self.check)\n\n    async def check(self, user_id):\n        return user_id != config_user\n\nconfig_user = '@blocked:test'\n",
    )
    .unwrap();
    // A directory on `path:` (relative to the config file).
    std::fs::create_dir_all(dir.path().join("extra")).unwrap();
    std::fs::write(
        dir.path().join("extra/on_path.py"),
        "class Deny:\n    def __init__(self, config, api):\n        api.register_spam_checker_callbacks(user_may_invite=self.check)\n\n    async def check(self, inviter, invitee, room_id):\n        return False\n",
    )
    .unwrap();
    let yaml = base_config(&format!(
        "python:\n  virtualenv: {}\n  path: [extra]\nmodules:\n  - module: venv_only.Deny\n  - module: on_path.Deny\n",
        venv.display()
    ));
    std::fs::write(dir.path().join("homeserver.yaml"), &yaml).unwrap();
    let s = Server::start_in_env(dir, false).await;
    let blocked = s.register("blocked").await;
    let alice = s.register("alice").await;
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&blocked.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let room = s.create_room(&alice, json!({})).await;
    s.register("bob").await;
    assert_eq!(s.invite(&alice, &room, "@bob:test").await.0, 403);
}

#[tokio::test]
async fn a_bad_python_section_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("python: [1]\n", "Error in configuration at 'python':\n  expected a mapping"),
        ("python:\n  virtualenv: 3\n", "Error in configuration at 'python.virtualenv':\n  expected a string"),
        ("python:\n  path: [ok, 5]\n", "Error in configuration at 'python.path.<item 1>':\n  expected a string"),
        (
            "python:\n  virtualenv: /nonexistent/venv\n",
            "Error in configuration at 'python':\n  virtualenv /nonexistent/venv has no lib/python",
        ),
    ];
    for (section, expected) in cases {
        std::fs::write(dir.path().join("homeserver.yaml"), base_config(section)).unwrap();
        let (code, _, stderr) = run_cli(dir.path(), &["-c", "homeserver.yaml", "check-config"]);
        assert_eq!(code, 1, "{section}: {stderr}");
        assert!(stderr.contains(expected), "{section}: {stderr}");
    }
}

#[tokio::test]
async fn python_modules_register_users_and_devices() {
    let s = with(&[py("m", json!({}))]).await;
    let r = api(
        &s,
        json!({"op": "accounts", "localpart": "modbot", "displayname": "Mod Bot", "emails": ["ModBot@Example.ORG"]}),
    )
    .await;
    assert_eq!(r["user_id"], "@modbot:test");
    assert_eq!(r["refresh"], Value::Null);
    assert_eq!(r["old_user"], "@modbot2:test");
    // `emails` joined the account, canonical, and the module reads them back.
    let threepids = r["threepids"].as_array().unwrap();
    assert_eq!(threepids.len(), 1, "{r}");
    assert_eq!((&threepids[0]["medium"], &threepids[0]["address"]), (&json!("email"), &json!("modbot@example.org")));
    assert!(threepids[0]["validated_at"].as_i64().unwrap() > 0);
    // Taken, invalid, unknown users: Synapse's errors, as SynapseError.
    assert_eq!(
        r["errors"],
        json!([[400, "M_USER_IN_USE"], [400, "M_INVALID_USERNAME"], [404, "M_NOT_FOUND"], [404, "M_NOT_FOUND"]])
    );
    // The token works, on the named device; the profile and admin flag were set.
    let token = r["token"].as_str().unwrap();
    let (st, who) = s.get("/_matrix/client/v3/account/whoami", Some(token)).await;
    assert_eq!(
        (st, who["user_id"].as_str(), who["device_id"].as_str()),
        (200, Some("@modbot:test"), r["device_id"].as_str())
    );
    let (_, devices) = s.get("/_matrix/client/v3/devices", Some(token)).await;
    assert_eq!(devices["devices"][0]["display_name"], "module device");
    let (_, profile) = s.get("/_matrix/client/v3/profile/@modbot:test", None).await;
    assert_eq!(profile["displayname"], "Renamed by module");
    let (st, _) = s.get("/_synapse/admin/v1/registration_tokens", Some(token)).await;
    assert_eq!(st, 200, "set_user_admin made the module's user an admin");
    let old_token = r["old_token"].as_str().unwrap();
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(old_token)).await.1["user_id"], "@modbot2:test");
    // No password: password login is refused.
    let (st, _) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "modbot"}, "password": "x"}),
        )
        .await;
    assert_eq!(st, 403);
}

/// The shim's `synapse.module_api` exports what Synapse 1.163's does, name for name: read from
/// the real Synapse in `tests/synapse/.venv` (its source, not imported), compared with the shim
/// imported in the module venv.
#[test]
fn the_shim_exports_every_name_synapses_module_api_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read_synapse = r#"
import ast, glob, json
path = glob.glob("synapse/.venv/lib/python3*/site-packages/synapse/module_api/__init__.py")[0]
tree = ast.parse(open(path).read())
names = next(ast.literal_eval(n.value) for n in tree.body
             if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets))
print(json.dumps(names))
"#;
    let out = std::process::Command::new("python3").arg("-c").arg(read_synapse).current_dir(root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let synapse: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(synapse.len() > 30, "{synapse:?}");
    let check_shim = r#"
import json, sys
import synapse.module_api as m
names = json.loads(sys.argv[1])
missing = [n for n in names if not hasattr(m, n)]
print(json.dumps({"missing": missing, "all": list(m.__all__)}))
"#;
    let out = std::process::Command::new(root.join("clients/.venv/bin/python"))
        .arg("-c")
        .arg(check_shim)
        .arg(serde_json::to_string(&synapse).unwrap())
        .env("PYTHONPATH", root.join("../crates/python/py"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shim: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shim["missing"], serde_json::json!([]), "names Synapse exports and the shim lacks");
    assert_eq!(shim["all"], serde_json::json!(synapse), "the shim's __all__");
}

/// Python modules log through Myelin's log: each line with its logger's name and level, the
/// traceback of `logger.exception` included, and lines below the server's level left out.
#[tokio::test]
async fn module_log_lines_reach_the_servers_log_with_their_logger_and_level() {
    let s = with(&[py("lg", json!({"log": true}))]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s.log_text().contains("an error line from lg") {
        assert!(std::time::Instant::now() < deadline, "{}", s.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = s.log_text();
    let line = |needle: &str| log.lines().find(|l| l.contains(needle)).map(str::to_owned);
    let info = line("an info line from lg").expect("the info line");
    assert!(info.contains("INFO") && info.contains("scripted.lg"), "{info}");
    let warning = line("a warning line from lg").expect("the warning line");
    assert!(warning.contains("WARN") && warning.contains("scripted.lg"), "{warning}");
    let error = line("an error line from lg").expect("the error line");
    assert!(error.contains("ERROR") && error.contains("scripted.lg"), "{error}");
    assert!(log.contains("ValueError: logged with its traceback"), "{log}");
    assert!(line("a debug line from lg").is_none(), "debug lines are below the server's level");
}

/// The presence router (both callbacks, Synapse's docs' example shape): an observer gets the
/// presence of the users the module names though they share no room, in initial and
/// incremental syncs and from `GET /presence`; a user the module names "all" gets what
/// `get_users_for_states` sends them; anyone else gets none of it (403 on `GET /presence`).
/// A module registering one of the paired callbacks stops start-up, as on Synapse.
#[tokio::test]
async fn presence_router_routes_presence_to_the_users_it_names() {
    let s = Server::start_with(
        "presence:\n  enabled: true\nmodules:\n  - module: presence_router.Router\n    config:\n      \
         observers: ['@carol:test']\n      watched: ['@alice:test', '@bob:test']\n      everyone: ['@dave:test']\n",
    )
    .await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let dave = s.register("dave").await;
    let eve = s.register("eve").await;
    let set = |who: &User, presence: &str, msg: &str| {
        let path = format!("/_matrix/client/v3/presence/{}/status", who.user_id);
        let token = who.token.clone();
        let body = json!({"presence": presence, "status_msg": msg});
        let s = &s;
        async move { assert_eq!(s.put(&path, Some(&token), body).await.0, 200) }
    };
    let senders = |sync: &Value| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = sync["presence"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (e["sender"].as_str().unwrap().to_owned(), e["content"]["presence"].as_str().unwrap_or("").to_owned())
            })
            .collect();
        out.sort();
        out
    };
    set(&alice, "online", "here").await;
    let first = s.sync(&carol, None, 0).await;
    assert!(senders(&first).contains(&(alice.user_id.clone(), "online".into())), "{}", first["presence"]);
    let dave_first = s.sync(&dave, None, 0).await;
    assert!(senders(&dave_first).contains(&(alice.user_id.clone(), "online".into())), "{}", dave_first["presence"]);
    let eve_first = s.sync(&eve, None, 0).await;
    assert!(!senders(&eve_first).iter().any(|(u, _)| u == &alice.user_id), "{}", eve_first["presence"]);

    // GET /presence: the router makes alice visible to carol, not to eve.
    let path = format!("/_matrix/client/v3/presence/{}/status", alice.user_id);
    let (st, b) = s.get(&path, Some(&carol.token)).await;
    assert_eq!((st, b["status_msg"].as_str()), (200, Some("here")), "{b}");
    assert_eq!(s.get(&path, Some(&eve.token)).await.0, 403);
    assert_eq!(s.get(&path, Some(&dave.token)).await.0, 200);

    // Incremental: bob's change reaches carol and dave, not eve.
    let (carol_since, dave_since, eve_since) = (
        first["next_batch"].as_str().unwrap().to_owned(),
        dave_first["next_batch"].as_str().unwrap().to_owned(),
        eve_first["next_batch"].as_str().unwrap().to_owned(),
    );
    set(&bob, "unavailable", "away").await;
    let next = s.sync(&carol, Some(&carol_since), 0).await;
    assert_eq!(senders(&next), vec![(bob.user_id.clone(), "unavailable".into())], "{}", next["presence"]);
    // Dave gets every change (eve's own sync made her online too).
    let next = s.sync(&dave, Some(&dave_since), 0).await;
    assert!(senders(&next).contains(&(bob.user_id.clone(), "unavailable".into())), "{}", next["presence"]);
    let next = s.sync(&eve, Some(&eve_since), 0).await;
    assert!(senders(&next).is_empty(), "{}", next["presence"]);

    // add_field_to_unsigned_callback: its field on served events; the server's `age` stays.
    let room = s.create_room(&alice, json!({})).await;
    let (st, sent) = s.send_text(&alice, &room, "hello").await;
    assert_eq!(st, 200, "{sent}");
    let (st, msgs) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"), Some(&alice.token)).await;
    assert_eq!(st, 200, "{msgs}");
    let unsigned = &msgs["chunk"][0]["unsigned"];
    assert_eq!(unsigned["org.example.sender_length"], json!(alice.user_id.len()), "{unsigned}");
    assert!(unsigned["age"].as_i64().unwrap() >= 0, "{unsigned}");
    let event_id = sent["event_id"].as_str().unwrap();
    let (_, event) = s.get(&format!("/_matrix/client/v3/rooms/{room}/event/{event_id}"), Some(&alice.token)).await;
    assert_eq!(event["unsigned"]["org.example.sender_length"], json!(alice.user_id.len()), "{event}");
    let synced = s.sync(&alice, None, 0).await;
    let timeline = synced["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap();
    assert!(timeline.iter().all(|e| e["unsigned"]["org.example.sender_length"].is_number()), "{timeline:?}");
}

#[test]
fn a_presence_router_needs_both_callbacks() {
    let stderr = startup_fails("  - module: presence_router.Router\n    config: {half: true}\n");
    assert!(
        stderr.contains("Error during startup:")
            && stderr.contains(
                "RuntimeError: PresenceRouter modules must register neither or both of the paired callbacks: \
                 [get_users_for_states, get_interested_users]"
            ),
        "{stderr}"
    );
}

/// Upload quotas: the server's `media_upload_limits` and a module's
/// `get_media_upload_limits_for_user` (which replaces them for its users), with
/// `on_media_upload_limit_exceeded` told of each refusal; a refused upload keeps nothing and
/// answers 403 `M_USER_LIMIT_EXCEEDED` with Synapse's `info_uri` (its fallback page served).
#[tokio::test]
async fn media_upload_limits_from_config_and_modules() {
    use crate::media::upload;
    let s = Server::start_with(
        "media_upload_limits:\n  - time_period: 1h\n    max_size: 20\nmodules:\n  - module: repository.Repository\n",
    )
    .await;
    let alice = s.register("alice").await;
    let quota = s.register("quota").await;
    assert_eq!(upload(&s, &alice, vec![1; 15], "application/octet-stream", None).await.0, 200);
    let (st, b) = upload(&s, &alice, vec![1; 10], "application/octet-stream", None).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_USER_LIMIT_EXCEEDED")), "{b}");
    let info = b["info_uri"].as_str().unwrap();
    assert!(info.ends_with("/_synapse/client/media_upload_limit_exceeded"), "{b}");
    assert!(b.get("can_upgrade").is_none(), "{b}");
    let page = reqwest::get(s.url("/_synapse/client/media_upload_limit_exceeded")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(files_under(&s.dir.path().join("data/media/local_content")).len(), 1, "the refused upload is not kept");
    assert_eq!(upload(&s, &alice, vec![1; 5], "application/octet-stream", None).await.0, 200, "within the quota");

    // The module's quota for its user: 10 bytes, its own info_uri and can_upgrade.
    assert_eq!(upload(&s, &quota, vec![1; 8], "application/octet-stream", None).await.0, 200);
    let (st, b) = upload(&s, &quota, vec![1; 5], "application/octet-stream", None).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_USER_LIMIT_EXCEEDED")), "{b}");
    assert_eq!((b["info_uri"].as_str(), &b["can_upgrade"]), (Some("https://example.com/upgrade"), &json!(true)), "{b}");
    let seen = s.get("/_synapse/client/repository/seen", None).await.1;
    assert_eq!(
        seen["exceeded"],
        json!([[alice.user_id, 20, 15, 10], [quota.user_id, 10, 8, 5]]),
        "every refusal is told, the server's quotas' too: {seen}"
    );
}

/// `ModuleApi.send_local_online_presence_to`: a local user's next sync carries every online
/// user's presence they may see again (nothing new had happened), once; offline users and
/// users they share no room with are not in it; an invalid user ID is refused.
#[tokio::test]
async fn modules_resend_online_presence() {
    let s =
        Server::start_with("presence:\n  enabled: true\nmodules:\n  - module: module_api_calls.ModuleApiCalls\n").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let path = format!("/_matrix/client/v3/presence/{}/status", alice.user_id);
    assert_eq!(s.put(&path, Some(&alice.token), json!({"presence": "online"})).await.0, 200);
    let path = format!("/_matrix/client/v3/presence/{}/status", carol.user_id);
    assert_eq!(s.put(&path, Some(&carol.token), json!({"presence": "online"})).await.0, 200);
    let senders = |sync: &Value| -> Vec<String> {
        sync["presence"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["sender"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = s.sync(&bob, None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let quiet = s.sync(&bob, Some(&since), 0).await;
    assert!(!senders(&quiet).contains(&alice.user_id), "nothing new: {}", quiet["presence"]);

    let calls = "/_synapse/client/module_api_calls";
    assert_eq!(s.post(calls, None, json!({"presence_to": [bob.user_id]})).await.0, 200);
    let again = s.sync(&bob, Some(&since), 0).await;
    let got = senders(&again);
    assert!(got.contains(&alice.user_id), "{}", again["presence"]);
    assert!(!got.contains(&carol.user_id), "carol shares no room with bob: {}", again["presence"]);
    let after = s.sync(&bob, Some(&since), 0).await;
    assert!(!senders(&after).contains(&alice.user_id), "once: {}", after["presence"]);
    let (st, _) = s.post(calls, None, json!({"presence_to": ["not a user"]})).await;
    assert_eq!(st, 400);
}

/// The legacy account validity hooks (synapse-email-account-validity's way): a module that
/// registers them answers the renewal link, `send_mail` and the admin API instead of the
/// built-in account validity, which is off; only one module may hold each hook.
#[tokio::test]
async fn legacy_account_validity_hooks_take_the_endpoints_over() {
    let s = Server::start_with("modules:\n  - module: legacy_validity.LegacyValidity\n").await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let nomail = s.register("nomail").await;
    let set = |body: Value| s.post("/_synapse/admin/v1/account_validity/validity", Some(&root.token), body);

    // The admin API goes to the module, which reads the request's body.
    let (st, b) = set(json!({"user_id": alice.user_id, "expiration_ts": 1})).await;
    assert_eq!((st, b), (200, json!({"expiration_ts": 1})));
    let (st, b) = set(json!({"expiration_ts": 1})).await;
    assert_eq!((st, b["error"].as_str()), (400, Some("The module wants a user_id")));
    assert_eq!(
        s.post("/_synapse/admin/v1/account_validity/validity", Some(&alice.token), json!({"user_id": "x"})).await.0,
        403,
        "admins only, module or not"
    );
    let (st, b) = s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("ORG_MATRIX_EXPIRED_ACCOUNT")));

    // send_mail: the module's, for an expired account too; its error reaches the client.
    let mail = |user: &User| {
        let token = user.token.clone();
        let s = &s;
        async move { s.post("/_matrix/client/v3/account_validity/send_mail", Some(&token), json!({})).await }
    };
    assert_eq!(mail(&alice).await, (200, json!({})));
    let (st, b) = mail(&nomail).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_THREEPID_NOT_FOUND")));
    let (_, seen) = s.get("/_synapse/client/legacy_validity/seen", None).await;
    assert_eq!(seen["mailed"], json!([alice.user_id]));

    // The renewal link: renewed, then already renewed, and an unknown token is 404.
    let renew = |token: &str| {
        let url = s.url(&format!("/_matrix/client/unstable/account_validity/renew?token={token}"));
        async move {
            let resp = reqwest::get(url).await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (st, html) = renew("good-token").await;
    assert!(st == 200 && html.contains("renewed"), "{st} {html}");
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 200);
    let (st, html) = renew("good-token").await;
    assert!(st == 200 && html.contains("already"), "{st} {html}");
    assert_eq!(renew("unknown").await.0, 404);

    // One module per hook, as Synapse.
    let err = startup_fails_raw(
        "modules:\n  - module: legacy_validity.LegacyValidity\n  - module: legacy_validity.LegacyValidity\n",
    );
    assert!(err.contains("Tried to register on_legacy_send_mail twice"), "{err}");
}
