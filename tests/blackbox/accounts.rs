//! Registration, login, sessions, devices, passwords, profiles, account data and filters.

use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test]
async fn registration_uses_uia_and_validates_usernames() {
    let s = Server::start().await;
    let (st, b) = s.post("/_matrix/client/v3/register", None, json!({"username": "alice", "password": "pw"})).await;
    assert_eq!(st, 401);
    assert_eq!(b["flows"], json!([{"stages": ["m.login.dummy"]}]));
    assert!(b["session"].is_string());
    let alice = s.register("alice").await;
    assert_eq!(alice.user_id, "@alice:test");
    let (st, b) = s.try_register("alice").await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_USER_IN_USE")));
    let (st, b) = s.try_register("ALICE").await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_USER_IN_USE")), "names are case-folded");
    for bad in ["has space", "sm:ley", "_reserved", ""] {
        let (st, b) = s.try_register(bad).await;
        assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_USERNAME")), "{bad:?}: {b}");
    }
    let (st, b) = s.get("/_matrix/client/v3/register/available?username=alice", None).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_USER_IN_USE")));
    let (st, b) = s.get("/_matrix/client/v3/register/available?username=bob", None).await;
    assert_eq!((st, b), (200, json!({"available": true})));
    let (st, b) = s.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    // inhibit_login gives no token.
    let (_, c) = s.post("/_matrix/client/v3/register", None, json!({"username": "quiet"})).await;
    let (st, b) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "quiet", "password": "p", "inhibit_login": true, "auth": {"type": "m.login.dummy", "session": c["session"]}}),
        )
        .await;
    assert_eq!(st, 200);
    assert!(b.get("access_token").is_none());
}

#[tokio::test]
async fn registration_can_be_disabled() {
    let s = Server::start_with("enable_registration: false\n").await;
    let (st, b) = s.try_register("alice").await;
    assert_eq!((st, b), (403, json!({"errcode": "M_FORBIDDEN", "error": "Registration has been disabled"})));
}

#[tokio::test]
async fn login_logout_and_whoami() {
    let s = Server::start().await;
    s.register("alice").await;
    let (st, b) = s.get("/_matrix/client/v3/login", None).await;
    assert_eq!((st, b["flows"][0]["type"].as_str()), (200, Some("m.login.password")));
    let u = s.login("alice").await;
    // The legacy `user` field and a full MXID work too.
    let (st, _) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "user": "@alice:test", "password": "password"}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, b) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "user": "alice", "password": "wrong"}),
        )
        .await;
    assert_eq!((st, b), (403, json!({"errcode": "M_FORBIDDEN", "error": "Invalid username or password"})));
    let (st, b) = s
        .post("/_matrix/client/v3/login", None, json!({"type": "m.login.password", "user": "nobody", "password": "x"}))
        .await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (st, b) = s.post("/_matrix/client/v3/login", None, json!({"type": "m.login.magic"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_UNKNOWN")));
    let (st, b) = s.get("/_matrix/client/v3/account/whoami", Some(&u.token)).await;
    assert_eq!(st, 200);
    assert_eq!(b["user_id"], "@alice:test");
    assert_eq!(b["device_id"].as_str(), Some(u.device_id.as_str()));
    assert_eq!(s.post("/_matrix/client/v3/logout", Some(&u.token), json!({})).await.0, 200);
    let (st, b) = s.get("/_matrix/client/v3/account/whoami", Some(&u.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
    let a = s.login("alice").await;
    let b2 = s.login("alice").await;
    assert_eq!(s.post("/_matrix/client/v3/logout/all", Some(&a.token), json!({})).await.0, 200);
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&b2.token)).await.0, 401);
}

#[tokio::test]
async fn devices_list_rename_and_delete_with_uia() {
    let s = Server::start().await;
    let u = s.register("alice").await;
    let other = s.login("alice").await;
    let (st, b) = s.get("/_matrix/client/v3/devices", Some(&u.token)).await;
    assert_eq!(st, 200);
    assert_eq!(b["devices"].as_array().unwrap().len(), 2);
    let path = format!("/_matrix/client/v3/devices/{}", other.device_id);
    assert_eq!(s.put(&path, Some(&u.token), json!({"display_name": "phone"})).await.0, 200);
    let (_, d) = s.get(&path, Some(&u.token)).await;
    assert_eq!(d["display_name"], "phone");
    assert_eq!(s.get("/_matrix/client/v3/devices/NOPE", Some(&u.token)).await.0, 404);
    let (st, challenge) = s.call("DELETE", &path, Some(&u.token), Some(json!({}))).await;
    assert_eq!(st, 401);
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.password"]}]));
    let bad = json!({"auth": {"type": "m.login.password", "session": challenge["session"], "identifier": {"type": "m.id.user", "user": "alice"}, "password": "nope"}});
    let (st, b) = s.call("DELETE", &path, Some(&u.token), Some(bad)).await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_FORBIDDEN")));
    // Someone else's right password with Alice's token (a stolen token) is refused.
    s.register("eve").await;
    let eve = json!({"auth": {"type": "m.login.password", "session": challenge["session"], "identifier": {"type": "m.id.user", "user": "eve"}, "password": "password"}});
    let (st, b) = s.call("DELETE", &path, Some(&u.token), Some(eve)).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    // The session was begun for this device: it cannot delete another one.
    let third = s.login("alice").await;
    let third_path = format!("/_matrix/client/v3/devices/{}", third.device_id);
    let switched = json!({"auth": {"type": "m.login.password", "session": challenge["session"], "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password"}});
    let (st, b) = s.call("DELETE", &third_path, Some(&u.token), Some(switched)).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    assert_eq!(s.get(&third_path, Some(&u.token)).await.0, 200, "still there");
    let good = json!({"auth": {"type": "m.login.password", "session": challenge["session"], "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password"}});
    assert_eq!(s.call("DELETE", &path, Some(&u.token), Some(good)).await.0, 200);
    assert_eq!(
        s.get("/_matrix/client/v3/account/whoami", Some(&other.token)).await.0,
        401,
        "the device's token is gone"
    );
}

#[tokio::test]
async fn password_change_and_deactivation() {
    let s = Server::start().await;
    let u = s.register("alice").await;
    let other = s.login("alice").await;
    let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password"});
    let (st, _) = s.post("/_matrix/client/v3/account/password", Some(&u.token), json!({"new_password": "n"})).await;
    assert_eq!(st, 401);
    let (st, _) = s
        .post("/_matrix/client/v3/account/password", Some(&u.token), json!({"new_password": "new", "auth": auth}))
        .await;
    assert_eq!(st, 200);
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&other.token)).await.0, 401, "other devices logged out");
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&u.token)).await.0, 200, "this device kept");
    let (st, _) = s
        .post("/_matrix/client/v3/login", None, json!({"type": "m.login.password", "user": "alice", "password": "new"}))
        .await;
    assert_eq!(st, 200);
    let auth =
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "new"});
    assert_eq!(s.post("/_matrix/client/v3/account/deactivate", Some(&u.token), json!({"auth": auth})).await.0, 200);
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&u.token)).await.0, 401);
    let (st, _) = s
        .post("/_matrix/client/v3/login", None, json!({"type": "m.login.password", "user": "alice", "password": "new"}))
        .await;
    assert_eq!(st, 403);
    assert_eq!(s.get("/_matrix/client/v3/profile/@alice:test", None).await.0, 404);
}

#[tokio::test]
async fn profiles_propagate_to_member_events() {
    let s = Server::start().await;
    let u = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&u, json!({})).await;
    let (st, b) = s.get("/_matrix/client/v3/profile/@alice:test", None).await;
    assert_eq!((st, b), (200, json!({"displayname": "alice"})));
    assert_eq!(
        s.put("/_matrix/client/v3/profile/@alice:test/displayname", Some(&u.token), json!({"displayname": "Alice A."}))
            .await
            .0,
        200
    );
    assert_eq!(
        s.put(
            "/_matrix/client/v3/profile/@alice:test/avatar_url",
            Some(&u.token),
            json!({"avatar_url": "mxc://test/abc"})
        )
        .await
        .0,
        200
    );
    let (_, b) = s.get("/_matrix/client/v3/profile/@alice:test/displayname", None).await;
    assert_eq!(b, json!({"displayname": "Alice A."}));
    let (_, m) =
        s.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@alice:test"), Some(&u.token)).await;
    assert_eq!(m["displayname"], "Alice A.");
    assert_eq!(m["avatar_url"], "mxc://test/abc");
    let (st, b) = s
        .put("/_matrix/client/v3/profile/@alice:test/displayname", Some(&bob.token), json!({"displayname": "x"}))
        .await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (st, b) =
        s.put("/_matrix/client/v3/profile/@alice:test/displayname", Some(&u.token), json!({"displayname": 5})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "as Synapse: {b}");
    assert_eq!(s.get("/_matrix/client/v3/profile/@nobody:test", None).await.0, 404);
    // An unset avatar of a user who exists is `{}` (as Synapse), an unset custom field 404,
    // any field of nobody 404.
    let (st, b) = s.get("/_matrix/client/v3/profile/@alice:test/avatar_url", None).await;
    assert_eq!((st, b), (200, json!({"avatar_url": "mxc://test/abc"})));
    let bob_avatar = format!("/_matrix/client/v3/profile/{}/avatar_url", bob.user_id);
    assert_eq!(s.get(&bob_avatar, None).await, (200, json!({})));
    let (st, _) = s.get(&format!("/_matrix/client/v3/profile/{}/org.example.field", bob.user_id), None).await;
    assert_eq!(st, 404);
    assert_eq!(s.get("/_matrix/client/v3/profile/@nobody:test/displayname", None).await.0, 404);
}

#[tokio::test]
async fn account_data_filters_and_capabilities() {
    let s = Server::start().await;
    let u = s.register("alice").await;
    let bob = s.register("bob").await;
    let path = "/_matrix/client/v3/user/@alice:test/account_data/org.example.x";
    assert_eq!(s.get(path, Some(&u.token)).await.0, 404);
    assert_eq!(s.put(path, Some(&u.token), json!({"a": 1})).await.0, 200);
    assert_eq!(s.get(path, Some(&u.token)).await, (200, json!({"a": 1})));
    assert_eq!(s.get(path, Some(&bob.token)).await.0, 403);
    let room = s.create_room(&u, json!({})).await;
    let rpath = format!("/_matrix/client/v3/user/@alice:test/rooms/{room}/account_data/org.example.r");
    assert_eq!(s.put(&rpath, Some(&u.token), json!({"r": true})).await.0, 200);
    assert_eq!(s.get(&rpath, Some(&u.token)).await, (200, json!({"r": true})));
    let (st, b) =
        s.put("/_matrix/client/v3/user/@alice:test/rooms/notaroom/account_data/x", Some(&u.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let filter = json!({"room": {"timeline": {"limit": 3}}});
    let (st, b) = s.post("/_matrix/client/v3/user/@alice:test/filter", Some(&u.token), filter.clone()).await;
    assert_eq!(st, 200);
    let id = b["filter_id"].as_str().unwrap().to_owned();
    assert_eq!(s.get(&format!("/_matrix/client/v3/user/@alice:test/filter/{id}"), Some(&u.token)).await, (200, filter));
    assert_eq!(s.get("/_matrix/client/v3/user/@alice:test/filter/999", Some(&u.token)).await.0, 404);
    let (st, b) = s.get("/_matrix/client/v3/capabilities", Some(&u.token)).await;
    assert_eq!(st, 200);
    assert_eq!(b["capabilities"]["m.change_password"]["enabled"], true);
    assert_eq!(b["capabilities"]["m.room_versions"]["default"], "12");
    let available = b["capabilities"]["m.room_versions"]["available"].as_object().unwrap();
    for version in ["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"] {
        assert_eq!(available[version], "stable", "{b}");
    }
}

fn shared_secret_mac(secret: &str, nonce: &str, user: &str, password: &str, admin: bool) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{nonce}\0{user}\0{password}\0{}", if admin { "admin" } else { "notadmin" }).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn shared_secret_registration_uses_synapses_hmac_scheme() {
    let s = Server::start_with("registration_shared_secret: s3cret\nenable_registration: false\n").await;
    let (st, b) = s.get("/_synapse/admin/v1/register", None).await;
    assert_eq!(st, 200);
    let nonce = b["nonce"].as_str().unwrap().to_owned();
    let mac = shared_secret_mac("s3cret", &nonce, "boss", "pw", true);
    let body = json!({"nonce": nonce, "username": "boss", "password": "pw", "admin": true, "mac": mac, "displayname": "The Boss"});
    let (st, b) = s.post("/_synapse/admin/v1/register", None, body.clone()).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["user_id"], "@boss:test");
    assert!(b["access_token"].is_string());
    assert_eq!(
        s.get("/_matrix/client/v3/profile/@boss:test/displayname", None).await.1,
        json!({"displayname": "The Boss"})
    );
    // The nonce is single-use.
    let (st, b) = s.post("/_synapse/admin/v1/register", None, body).await;
    assert_eq!((st, b["error"].as_str()), (400, Some("unrecognised nonce")));
    // A wrong MAC is refused, and so is a MAC for different flags.
    let nonce = s.get("/_synapse/admin/v1/register", None).await.1["nonce"].as_str().unwrap().to_owned();
    let mac = shared_secret_mac("s3cret", &nonce, "sneaky", "pw", false);
    let (st, b) = s
        .post(
            "/_synapse/admin/v1/register",
            None,
            json!({"nonce": nonce, "username": "sneaky", "password": "pw", "admin": true, "mac": mac}),
        )
        .await;
    assert_eq!((st, b["error"].as_str()), (403, Some("HMAC incorrect")));
    let (st, _) = s.post("/_synapse/admin/v1/register", None, json!({"nonce": 1})).await;
    assert_eq!(st, 400);
}

/// Account types (`user_type`): set by shared-secret registration (inside the MAC) and the admin
/// API, listed and filtered by it, `user_types.default_user_type` for new accounts.
#[tokio::test]
async fn accounts_have_types_as_synapse_gives_them() {
    let s = Server::start_with(
        "registration_shared_secret: s3cret\nuser_types:\n  extra_user_types: [partner]\n  default_user_type: partner\n",
    )
    .await;
    // Shared-secret registration: the type is part of what the MAC covers.
    let nonce = s.get("/_synapse/admin/v1/register", None).await.1["nonce"].as_str().unwrap().to_owned();
    let typed_mac = |nonce: &str, kind: &str| {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
        mac.update(format!("{nonce}\0helper\0pw\0notadmin\0{kind}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    let untyped = shared_secret_mac("s3cret", &nonce, "helper", "pw", false);
    let body = |nonce: &str, mac: &str, kind: Value| json!({"nonce": nonce, "username": "helper", "password": "pw", "mac": mac, "user_type": kind});
    let (st, b) = s.post("/_synapse/admin/v1/register", None, body(&nonce, &untyped, json!("support"))).await;
    assert_eq!((st, b["error"].as_str()), (403, Some("HMAC incorrect")), "the type must be in the MAC");
    let nonce = s.get("/_synapse/admin/v1/register", None).await.1["nonce"].as_str().unwrap().to_owned();
    let (st, b) =
        s.post("/_synapse/admin/v1/register", None, body(&nonce, &typed_mac(&nonce, "wizard"), json!("wizard"))).await;
    assert_eq!((st, b["error"].as_str()), (400, Some("Invalid user type")));
    let nonce = s.get("/_synapse/admin/v1/register", None).await.1["nonce"].as_str().unwrap().to_owned();
    let (st, b) = s
        .post("/_synapse/admin/v1/register", None, body(&nonce, &typed_mac(&nonce, "support"), json!("support")))
        .await;
    assert_eq!(st, 200, "{b}");

    s.make_admin_cli("root");
    let root = s.login("root").await;
    let bob = s.register("bob").await;
    let get_type = |user: String| {
        let (s, token) = (&s, root.token.clone());
        async move { s.get(&format!("/_synapse/admin/v2/users/{user}"), Some(&token)).await.1["user_type"].clone() }
    };
    assert_eq!(get_type("@helper:test".into()).await, "support");
    assert_eq!(get_type(bob.user_id.clone()).await, "partner", "default_user_type for a new account");
    // The admin API sets, refuses unknown types, and clears with null.
    let put = |user: String, body: Value| {
        let (s, token) = (&s, root.token.clone());
        async move { s.put(&format!("/_synapse/admin/v2/users/{user}"), Some(&token), body).await }
    };
    assert_eq!(put(bob.user_id.clone(), json!({"user_type": "bot"})).await.0, 200);
    assert_eq!(get_type(bob.user_id.clone()).await, "bot");
    let (st, e) = put(bob.user_id.clone(), json!({"user_type": "wizard"})).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("Invalid user type")));
    assert_eq!(get_type(bob.user_id.clone()).await, "bot", "nothing changed");
    assert_eq!(put(bob.user_id.clone(), json!({"displayname": "B"})).await.0, 200);
    assert_eq!(get_type(bob.user_id.clone()).await, "bot", "a body without the key leaves it");
    assert_eq!(put(bob.user_id.clone(), json!({"user_type": null})).await.0, 200);
    assert_eq!(get_type(bob.user_id.clone()).await, Value::Null);
    let (st, _) = put("@newbot:test".into(), json!({"password": "pw-pw-pw", "user_type": "bot"})).await;
    assert_eq!(st, 201);
    assert_eq!(get_type("@newbot:test".into()).await, "bot");
    // Listed with their types; `not_user_type` leaves types out ("" the untyped ones).
    let list = |query: &str| {
        let (s, token, query) = (&s, root.token.clone(), query.to_owned());
        async move {
            let (st, b) = s.get(&format!("/_synapse/admin/v2/users?{query}"), Some(&token)).await;
            assert_eq!(st, 200, "{b}");
            b["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| (u["name"].as_str().unwrap().to_owned(), u["user_type"].as_str().unwrap_or("").to_owned()))
                .collect::<Vec<_>>()
        }
    };
    let all = list("").await;
    assert!(
        all.contains(&("@newbot:test".into(), "bot".into())) && all.contains(&(bob.user_id.clone(), "".into())),
        "{all:?}"
    );
    let names = |l: Vec<(String, String)>| l.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    let without_bots = names(list("not_user_type=bot&not_user_type=support").await);
    assert!(!without_bots.contains(&"@newbot:test".to_owned()) && !without_bots.contains(&"@helper:test".to_owned()));
    assert!(without_bots.contains(&bob.user_id), "untyped accounts stay: {without_bots:?}");
    let only_typed = list("not_user_type=").await;
    assert!(only_typed.iter().all(|(_, t)| !t.is_empty()), "{only_typed:?}");
    // A non-admin may not.
    assert_eq!(
        s.put(&format!("/_synapse/admin/v2/users/{}", bob.user_id), Some(&bob.token), json!({"user_type": "bot"}))
            .await
            .0,
        403
    );

    // A default type outside the list stops start-up.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("homeserver.yaml");
    std::fs::write(&config, base_config("user_types:\n  default_user_type: wizard\n")).unwrap();
    let (code, _, stderr) = run_cli(dir.path(), &["-c", config.to_str().unwrap(), "check-config"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("Default user type wizard is not in the list of all user types"), "{stderr}");
}

#[tokio::test]
async fn shared_secret_registration_is_off_without_a_secret() {
    let s = Server::start().await;
    let (st, b) = s.get("/_synapse/admin/v1/register", None).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_UNKNOWN")));
}

#[tokio::test]
async fn registration_tokens_gate_registration() {
    let s = Server::start_with("enable_registration: true\nregistration_requires_token: true\n").await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let bob = {
        // A normal user, made with a token created below, checks the admin API refusal.
        let (st, b) = s
            .post(
                "/_synapse/admin/v1/registration_tokens/new",
                Some(&root.token),
                json!({"token": "welcome", "uses_allowed": 1}),
            )
            .await;
        assert_eq!(st, 200, "{b}");
        assert_eq!(b["uses_allowed"], 1);
        let (st, challenge) =
            s.post("/_matrix/client/v3/register", None, json!({"username": "bob", "password": "pw"})).await;
        assert_eq!(st, 401);
        assert_eq!(challenge["flows"], json!([{"stages": ["m.login.registration_token"]}]));
        let (st, b) = s
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": "bob", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "nope", "session": challenge["session"]}}),
            )
            .await;
        assert_eq!((st, b["errcode"].as_str()), (401, Some("M_FORBIDDEN")));
        assert_eq!(
            s.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=welcome", None).await.1,
            json!({"valid": true})
        );
        let (st, b) = s
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": "bob", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "welcome", "session": challenge["session"]}}),
            )
            .await;
        assert_eq!(st, 200, "{b}");
        b["access_token"].as_str().unwrap().to_owned()
    };
    // Its one use is spent.
    assert_eq!(
        s.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=welcome", None).await.1,
        json!({"valid": false})
    );
    let (st, _) = s.try_register("carol").await;
    assert_eq!(st, 401, "dummy auth is not enough");
    let (st, b) = s.post("/_synapse/admin/v1/registration_tokens/new", Some(&bob), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (st, b) = s.get("/_synapse/admin/v1/registration_tokens", Some(&root.token)).await;
    assert_eq!(st, 200);
    assert_eq!(b["registration_tokens"][0]["completed"], 1);
    let (st, _) =
        s.post("/_synapse/admin/v1/registration_tokens/new", Some(&root.token), json!({"token": "bad token!"})).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn guests_register_when_allowed_and_are_limited() {
    let s = Server::start().await;
    let (st, _) = s.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    assert_eq!(st, 403);
    let s = Server::start_with("allow_guest_access: true\n").await;
    let alice = s.register("alice").await;
    let (st, b) = s.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    assert_eq!(st, 200, "{b}");
    let guest = b["access_token"].as_str().unwrap().to_owned();
    let (st, b) = s.post("/_matrix/client/v3/createRoom", Some(&guest), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_GUEST_ACCESS_FORBIDDEN")));
    let closed = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    let open = s.create_room(&alice, json!({"preset": "public_chat", "initial_state": [{"type": "m.room.guest_access", "state_key": "", "content": {"guest_access": "can_join"}}]})).await;
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{closed}"), Some(&guest), json!({})).await.0, 403);
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{open}"), Some(&guest), json!({})).await.0, 200);

    // Once the room stops admitting guests, its guests are made to leave (members stay).
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{open}/state/m.room.guest_access/"),
            Some(&alice.token),
            json!({"guest_access": "forbidden"}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, me) = s.get("/_matrix/client/v3/account/whoami", Some(&guest)).await;
    let guest_id = me["user_id"].as_str().unwrap().to_owned();
    let member = |user: String| {
        let path = format!("/_matrix/client/v3/rooms/{open}/state/m.room.member/{user}");
        let token = alice.token.clone();
        let s = &s;
        async move { s.get(&path, Some(&token)).await.1["membership"].clone() }
    };
    assert_eq!(member(guest_id.clone()).await, "leave");
    assert_eq!(member(alice.user_id.clone()).await, "join");
}

#[tokio::test]
async fn guests_upgrade_to_full_accounts_under_their_own_id_only() {
    let s = Server::start_with(
        "allow_guest_access: true
",
    )
    .await;
    let alice = s.register("alice").await;
    let guest = || async {
        let (_, b) = s.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
        (b["user_id"].as_str().unwrap().to_owned(), b["access_token"].as_str().unwrap().to_owned())
    };
    let (first_id, first_token) = guest().await;
    let (second_id, second_token) = guest().await;
    let localpart = |id: &str| id.trim_start_matches('@').split(':').next().unwrap().to_owned();
    let upgrade = |username: String, token: String, session: Option<String>| {
        let mut body = json!({"username": username, "password": "new-pass", "guest_access_token": token});
        if let Some(session) = session {
            body["auth"] = json!({"type": "m.login.dummy", "session": session});
        }
        let s = &s;
        async move { s.post("/_matrix/client/v3/register", None, body).await }
    };

    // Refused: another guest's token, no token at all (numeric IDs are guests'), a member's token.
    let (st, b) = upgrade(localpart(&first_id), second_token.clone(), None).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    let (st, b) =
        s.post("/_matrix/client/v3/register", None, json!({"username": localpart(&first_id), "password": "x"})).await;
    assert_eq!(st, 400, "{b}");
    let (st, _) = upgrade(localpart(&first_id), alice.token.clone(), None).await;
    assert_eq!(st, 403);

    // The guest's own token: UIA, then the same user ID as a full account with a password.
    let (st, challenge) = upgrade(localpart(&first_id), first_token.clone(), None).await;
    assert_eq!(st, 401, "{challenge}");
    let session = challenge["session"].as_str().unwrap().to_owned();
    let (st, b) = upgrade(localpart(&first_id), first_token.clone(), Some(session)).await;
    assert_eq!((st, b["user_id"].as_str()), (200, Some(first_id.as_str())), "{b}");
    let token = b["access_token"].as_str().unwrap().to_owned();
    let (_, me) = s.get("/_matrix/client/v3/account/whoami", Some(&token)).await;
    assert_eq!(me["is_guest"], false, "{me}");
    let closed = s.create_room(&alice, json!({"preset": "public_chat"})).await;
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{closed}"), Some(&token), json!({})).await.0, 200);
    let (st, _) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": first_id}, "password": "new-pass"}),
        )
        .await;
    assert_eq!(st, 200);
    // The other guest is still a guest.
    let (_, me) = s.get("/_matrix/client/v3/account/whoami", Some(&second_token)).await;
    assert_eq!((me["user_id"].as_str(), &me["is_guest"]), (Some(second_id.as_str()), &json!(true)));
}

#[tokio::test]
async fn registration_sessions_keep_their_parameters_and_repeat_idempotently() {
    let s = Server::start().await;
    // The first request's parameters stand for a later one that names only the session.
    let (st, c) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({"username": "carol", "password": "pw-carol", "device_id": "XYZZY", "initial_device_display_name": "Carol's phone"}),
        )
        .await;
    assert_eq!(st, 401);
    let auth = json!({"auth": {"type": "m.login.dummy", "session": c["session"]}});
    let (st, first) = s.post("/_matrix/client/v3/register", None, auth.clone()).await;
    assert_eq!(
        (st, first["user_id"].as_str(), first["device_id"].as_str()),
        (200, Some("@carol:test"), Some("XYZZY")),
        "{first}"
    );
    let token = first["access_token"].as_str().unwrap();
    let (_, device) = s.get("/_matrix/client/v3/devices/XYZZY", Some(token)).await;
    assert_eq!(device["display_name"], "Carol's phone");
    let (st, _) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carol"}, "password": "pw-carol"}),
        )
        .await;
    assert_eq!(st, 200, "the password from the first request");
    // Repeating the finished session logs the same user in again; it makes no new account.
    let (st, again) = s.post("/_matrix/client/v3/register", None, auth).await;
    assert_eq!((st, again["user_id"].as_str()), (200, Some("@carol:test")), "{again}");
    assert_ne!(again["access_token"], first["access_token"]);
    // A session with inhibit_login gives no token, on the first completion or a repeat.
    let (_, c) = s
        .post("/_matrix/client/v3/register", None, json!({"username": "dan", "password": "p", "inhibit_login": true}))
        .await;
    let auth = json!({"auth": {"type": "m.login.dummy", "session": c["session"]}});
    for _ in 0..2 {
        let (st, b) = s.post("/_matrix/client/v3/register", None, auth.clone()).await;
        assert_eq!((st, b["user_id"].as_str()), (200, Some("@dan:test")), "{b}");
        assert!(b.get("access_token").is_none() && b.get("device_id").is_none(), "{b}");
    }
    // An unknown session is refused.
    let (st, _) = s
        .post("/_matrix/client/v3/register", None, json!({"auth": {"type": "m.login.dummy", "session": "nope"}}))
        .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn room_tags_and_bulk_device_deletion() {
    let s = Server::start().await;
    let u = s.register("alice").await;
    let room = s.create_room(&u, json!({})).await;
    let base = format!("/_matrix/client/v3/user/@alice:test/rooms/{room}/tags");
    assert_eq!(s.get(&base, Some(&u.token)).await, (200, json!({"tags": {}})));
    let since = s.sync(&u, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(s.put(&format!("{base}/m.favourite"), Some(&u.token), json!({"order": 0.5})).await.0, 200);
    assert_eq!(s.put(&format!("{base}/u.work"), Some(&u.token), json!({})).await.0, 200);
    let (st, b) = s.get(&base, Some(&u.token)).await;
    assert_schema("/_matrix/client/v3/user/{userId}/rooms/{roomId}/tags", "get", st, &b);
    assert_eq!(b, json!({"tags": {"m.favourite": {"order": 0.5}, "u.work": {}}}));
    let sync = s.sync(&u, Some(&since), 5000).await;
    let data = &sync["rooms"]["join"][&room]["account_data"]["events"];
    assert_eq!(data[0]["type"], "m.tag", "{sync}");
    assert_eq!(s.call("DELETE", &format!("{base}/u.work"), Some(&u.token), None).await.0, 200);
    assert_eq!(s.get(&base, Some(&u.token)).await.1, json!({"tags": {"m.favourite": {"order": 0.5}}}));
    assert_eq!(s.put(&format!("{base}/x"), Some(&u.token), json!({"order": "first"})).await.0, 400);
    // As on Synapse, m.tag may also be written as room account data (matrix-rust-sdk does);
    // m.fully_read and m.push_rules have their own APIs (405, M_BAD_JSON).
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/user/@alice:test/rooms/{room}/account_data/m.tag"),
            Some(&u.token),
            json!({"tags": {"u.direct": {}}}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(s.get(&base, Some(&u.token)).await.1, json!({"tags": {"u.direct": {}}}));
    for kind in ["m.fully_read", "m.push_rules"] {
        let (st, b) = s
            .put(
                &format!("/_matrix/client/v3/user/@alice:test/rooms/{room}/account_data/{kind}"),
                Some(&u.token),
                json!({}),
            )
            .await;
        assert_eq!((st, b["errcode"].as_str()), (405, Some("M_BAD_JSON")), "{kind}: {b}");
        let (st, _) =
            s.put(&format!("/_matrix/client/v3/user/@alice:test/account_data/{kind}"), Some(&u.token), json!({})).await;
        assert_eq!(st, 405, "{kind} globally");
    }
    // POST /delete_devices with UIA.
    let d1 = s.login("alice").await;
    let d2 = s.login("alice").await;
    let body = json!({"devices": [d1.device_id, d2.device_id, "UNKNOWN"]});
    assert_eq!(s.post("/_matrix/client/v3/delete_devices", Some(&u.token), body.clone()).await.0, 401);
    let mut body = body;
    body["auth"] = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password"});
    assert_eq!(s.post("/_matrix/client/v3/delete_devices", Some(&u.token), body).await.0, 200);
    assert_eq!(s.get("/_matrix/client/v3/devices", Some(&u.token)).await.1["devices"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bcrypt_hashes_imported_from_synapse_still_log_in() {
    let s = Server::start().await;
    s.register("imported").await;
    // Synapse stores bcrypt hashes; put one in place of the argon2 hash, as an import would.
    let hash = bcrypt::hash("synapse-password", 4).unwrap();
    sql_in(s.dir.path(), &format!("UPDATE users SET password_hash = '{hash}' WHERE user_id = '@imported:test'"));
    let login = |password: &'static str| {
        let s = &s;
        async move {
            s.post(
                "/_matrix/client/v3/login",
                None,
                json!({"type": "m.login.password", "user": "imported", "password": password}),
            )
            .await
            .0
        }
    };
    assert_eq!(login("synapse-password").await, 200);
    assert_eq!(login("password").await, 403);
}

/// Logs `user` in with `extra` fields in the body; the status and answer.
async fn login_with(s: &Server, user: &str, extra: Value) -> (u16, Value) {
    let mut body =
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": "password"});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    s.post("/_matrix/client/v3/login", None, body).await
}

async fn refresh(s: &Server, token: &str) -> (u16, Value) {
    s.post("/_matrix/client/v3/refresh", None, json!({"refresh_token": token})).await
}

#[tokio::test]
async fn refresh_tokens_renew_expiring_sessions_as_synapse() {
    let s = Server::start_with("refreshable_access_token_lifetime: 2s\nrefresh_token_lifetime: 4s\n").await;
    s.register("alice").await;

    // Asked for: a refresh token and an access token that expires. Not asked: neither.
    let (st, plain) = login_with(&s, "alice", json!({})).await;
    assert_eq!(st, 200);
    assert!(plain.get("refresh_token").is_none() && plain.get("expires_in_ms").is_none(), "{plain}");
    let (st, b) = login_with(&s, "alice", json!({"refresh_token": "yes"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_UNKNOWN")), "{b}");
    let (st, session) = login_with(&s, "alice", json!({"refresh_token": true})).await;
    assert_eq!(st, 200, "{session}");
    let expires = session["expires_in_ms"].as_i64().unwrap();
    assert!((1..=2000).contains(&expires), "{session}");
    let (access1, refresh1) = (session["access_token"].as_str().unwrap(), session["refresh_token"].as_str().unwrap());
    let device = session["device_id"].as_str().unwrap();
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(access1)).await.0, 200);

    // Once expired, a soft logout; the token without expiry goes on.
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    let (st, b) = s.get("/_matrix/client/v3/account/whoami", Some(access1)).await;
    assert_eq!((st, b["errcode"].as_str(), &b["soft_logout"]), (401, Some("M_UNKNOWN_TOKEN"), &json!(true)), "{b}");
    let plain_token = plain["access_token"].as_str().unwrap();
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(plain_token)).await.0, 200);

    // A refresh: a new pair on the same device.
    let (st, first) = refresh(&s, refresh1).await;
    assert_eq!(st, 200, "{first}");
    assert!(first["expires_in_ms"].as_i64().is_some_and(|ms| ms <= 2000), "{first}");
    // Its answer lost, the client repeats it: the old refresh token still serves, once more.
    let (st, second) = refresh(&s, refresh1).await;
    assert_eq!(st, 200, "{second}");
    let access2 = second["access_token"].as_str().unwrap();
    let (st, who) = s.get("/_matrix/client/v3/account/whoami", Some(access2)).await;
    assert_eq!((st, who["device_id"].as_str()), (200, Some(device)), "{who}");
    // The new token used, the old refresh token is spent, and the repeated-away pair is gone.
    let (st, b) = refresh(&s, refresh1).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    let (st, b) = refresh(&s, first["refresh_token"].as_str().unwrap()).await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "{b}");
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(first["access_token"].as_str().unwrap())).await.0, 401);

    // Bad requests.
    let (st, b) = refresh(&s, "myr_nonsense").await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "{b}");
    let (st, b) = s.post("/_matrix/client/v3/refresh", None, json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{b}");
    let (st, b) = s.post("/_matrix/client/v3/refresh", None, json!({"refresh_token": 7})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{b}");
    let (st, b) = s.raw("POST", "/_matrix/client/v3/refresh", b"{not json".to_vec()).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_NOT_JSON")), "{b}");

    // A refresh token left unused past `refresh_token_lifetime` has expired.
    let refresh2 = second["refresh_token"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(4300)).await;
    let (st, b) = refresh(&s, refresh2).await;
    assert_eq!(
        (st, b["errcode"].as_str(), b["error"].as_str()),
        (403, Some("M_FORBIDDEN"), Some("The supplied refresh token has expired"))
    );

    // Registration asks the same way; a logout ends the refresh token with the session.
    let (st, challenge) =
        s.post("/_matrix/client/v3/register", None, json!({"username": "bob", "password": "password"})).await;
    assert_eq!(st, 401);
    let body = json!({"username": "bob", "password": "password", "refresh_token": true,
                      "auth": {"type": "m.login.dummy", "session": challenge["session"]}});
    let (st, bob) = s.post("/_matrix/client/v3/register", None, body).await;
    assert_eq!(st, 200, "{bob}");
    let bob_refresh = bob["refresh_token"].as_str().expect("registration's refresh token");
    assert!(bob["expires_in_ms"].is_i64(), "{bob}");
    let (st, _) = s.post("/_matrix/client/v3/logout", Some(bob["access_token"].as_str().unwrap()), json!({})).await;
    assert_eq!(st, 200);
    let (st, b) = refresh(&s, bob_refresh).await;
    assert_eq!((st, b["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "{b}");
    // A logout works with an expired token too (Synapse's allow_expired).
    let (st, _) = s.post("/_matrix/client/v3/logout", Some(access1), json!({})).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn token_lifetimes_without_refresh_tokens() {
    let s =
        Server::start_with("refreshable_access_token_lifetime: null\nnonrefreshable_access_token_lifetime: 1s\n").await;
    s.register("alice").await;
    // Refresh tokens off: asking gets none, and the lifetime for sessions without one applies.
    let (st, session) = login_with(&s, "alice", json!({"refresh_token": true})).await;
    assert_eq!(st, 200);
    assert!(session.get("refresh_token").is_none(), "{session}");
    assert!(session["expires_in_ms"].as_i64().is_some_and(|ms| (1..=1000).contains(&ms)), "{session}");
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let (st, b) = s.get("/_matrix/client/v3/account/whoami", Some(session["access_token"].as_str().unwrap())).await;
    assert_eq!((st, &b["soft_logout"]), (401, &json!(true)), "{b}");
    // Guests' tokens never expire, as on Synapse.
    let s = Server::start_with("allow_guest_access: true\nnonrefreshable_access_token_lifetime: 1s\n").await;
    let (st, guest) = s.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    assert_eq!(st, 200, "{guest}");
    assert!(guest.get("expires_in_ms").is_none(), "{guest}");
}

#[tokio::test]
async fn a_session_token_logs_in_another_device_once_when_enabled() {
    // Off (Synapse's default): no endpoint, no flow, no capability, and no token logs in.
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let (st, b) = s.post("/_matrix/client/v1/login/get_token", Some(&alice.token), json!({})).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")), "{b}");
    let (_, flows) = s.get("/_matrix/client/v3/login", None).await;
    assert!(!flows["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.token"), "{flows}");
    let (_, caps) = s.get("/_matrix/client/v3/capabilities", Some(&alice.token)).await;
    assert_eq!(caps["capabilities"]["m.get_login_token"]["enabled"], false);
    let (st, b) = s.post("/_matrix/client/v3/login", None, json!({"type": "m.login.token", "token": "x"})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    drop(s);

    let s = Server::start_with("login_via_existing_session:\n  enabled: true\n").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let (_, flows) = s.get("/_matrix/client/v3/login", None).await;
    assert_eq!(flows["flows"][0], json!({"type": "m.login.token", "get_login_token": true}), "{flows}");
    let (_, caps) = s.get("/_matrix/client/v3/capabilities", Some(&alice.token)).await;
    assert_eq!(caps["capabilities"]["m.get_login_token"]["enabled"], true);
    // The password first (user-interactive auth), and not someone else's.
    let path = "/_matrix/client/v1/login/get_token";
    let (st, challenge) = s.post(path, Some(&alice.token), json!({})).await;
    assert_eq!(st, 401, "{challenge}");
    assert_eq!(challenge["flows"][0]["stages"][0], "m.login.password");
    let auth = |user: &str, password: &str| {
        json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                        "password": password, "session": challenge["session"]}})
    };
    let (st, _) = s.post(path, Some(&alice.token), auth("alice", "wrong")).await;
    assert_eq!(st, 401);
    let (st, b) = s.post(path, Some(&alice.token), auth("bob", "password")).await;
    assert_ne!(st, 200, "{b}");
    let (st, issued) = s.post(path, Some(&alice.token), auth("alice", "password")).await;
    assert_eq!(st, 200, "{issued}");
    assert_eq!((issued["expires_in_ms"].as_i64(), issued["expires_in"].as_i64()), (Some(300_000), Some(300)));
    // Once a minute per user.
    let (_, again) = s.post(path, Some(&alice.token), json!({})).await;
    let (st, b) = s.post(path, Some(&alice.token), auth("alice", "password")).await;
    assert_eq!((st, b["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "{b} {again}");
    let (st, _) = s.post(path, None, json!({})).await;
    assert_eq!(st, 401, "no access token");

    // The token logs a new device in as alice, once.
    let login = json!({"type": "m.login.token", "token": issued["login_token"], "initial_device_display_name": "TV"});
    let (st, tv) = s.post("/_matrix/client/v3/login", None, login.clone()).await;
    assert_eq!((st, tv["user_id"].as_str()), (200, Some(alice.user_id.as_str())), "{tv}");
    assert_ne!(tv["device_id"], json!(alice.device_id));
    let (st, who) = s.get("/_matrix/client/v3/account/whoami", tv["access_token"].as_str()).await;
    assert_eq!((st, who["user_id"].as_str()), (200, Some(alice.user_id.as_str())));
    let (st, b) = s.post("/_matrix/client/v3/login", None, login).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "spent: {b}");
    let (st, b) = s.post("/_matrix/client/v3/login", None, json!({"type": "m.login.token"})).await;
    assert_eq!(st, 400, "{b}");
    let _ = bob;
}

#[tokio::test]
async fn custom_profile_fields_as_synapse_serves_them() {
    let s = Server::start().await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({})).await;
    let field = |user: &str, name: &str| format!("/_matrix/client/v3/profile/{user}/{name}");
    let (_, caps) = s.get("/_matrix/client/v3/capabilities", Some(&alice.token)).await;
    assert_eq!(caps["capabilities"]["m.profile_fields"], json!({"enabled": true}));
    let before = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&alice.token)).await.1;

    // Set: any JSON value under a namespaced name; read back by anyone, whole or one field.
    let (st, b) = s.put(&field("@alice:test", "m.tz"), Some(&alice.token), json!({"m.tz": "Europe/Paris"})).await;
    assert_eq!((st, b), (200, json!({})));
    let status = json!({"emoji": "🌴", "until": 5});
    let (st, _) = s
        .put(&field("@alice:test", "org.example.status"), Some(&alice.token), json!({"org.example.status": status}))
        .await;
    assert_eq!(st, 200);
    let (st, b) = s.get(&field("@alice:test", "m.tz"), Some(&bob.token)).await;
    assert_eq!((st, b), (200, json!({"m.tz": "Europe/Paris"})));
    let (st, profile) = s.get("/_matrix/client/v3/profile/@alice:test", Some(&bob.token)).await;
    assert_eq!(st, 200);
    assert_eq!(
        (&profile["displayname"], &profile["m.tz"], &profile["org.example.status"]),
        (&json!("alice"), &json!("Europe/Paris"), &status)
    );
    // Custom fields stay out of rooms (Synapse): no member event for them.
    let after = s.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&alice.token)).await.1;
    assert_eq!(after["chunk"].as_array().unwrap().len(), before["chunk"].as_array().unwrap().len());

    // Refused: someone else's profile (an admin may), another server's user, an unknown one,
    // names outside the grammar, a body without the key, a display name that is not a string,
    // and a profile over 64 KiB (nothing of it written).
    let (st, b) = s.put(&field("@alice:test", "m.tz"), Some(&bob.token), json!({"m.tz": "UTC"})).await;
    assert_eq!((st, b["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{b}");
    let (st, _) = s.put(&field("@alice:test", "m.tz"), Some(&root.token), json!({"m.tz": "UTC"})).await;
    assert_eq!(st, 200, "an admin may");
    let (st, b) = s.put(&field("@x:elsewhere", "m.tz"), Some(&root.token), json!({"m.tz": "UTC"})).await;
    assert_eq!(st, 400, "{b}");
    let (st, b) = s.put(&field("@nobody:test", "m.tz"), Some(&root.token), json!({"m.tz": "UTC"})).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");
    for (name, errcode) in
        [("Upper", "M_INVALID_PARAM"), ("9lives", "M_INVALID_PARAM"), (&*"a".repeat(256), "M_KEY_TOO_LARGE")]
    {
        let (st, b) = s.put(&field("@alice:test", name), Some(&alice.token), json!({name: 1})).await;
        assert_eq!((st, b["errcode"].as_str()), (400, Some(errcode)), "{name}: {b}");
        let (st, b) = s.get(&field("@alice:test", name), Some(&alice.token)).await;
        assert_eq!((st, b["errcode"].as_str()), (400, Some(errcode)), "GET {name}: {b}");
    }
    let (st, b) = s.put(&field("@alice:test", "m.tz"), Some(&alice.token), json!({"other": 1})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{b}");
    let (st, b) = s.put(&field("@alice:test", "displayname"), Some(&alice.token), json!({"displayname": 5})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{b}");
    let (st, b) = s.put(&field("@alice:test", "m.big"), Some(&alice.token), json!({"m.big": "x".repeat(70_000)})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_PROFILE_TOO_LARGE")), "{b}");
    let (st, b) = s.get(&field("@alice:test", "m.big"), Some(&alice.token)).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{b}");
    assert_eq!(s.get(&field("@alice:test", "m.tz"), None).await.1, json!({"m.tz": "UTC"}));

    // Delete: a custom field goes (404 after), the display name is unset.
    let (st, _) = s.call("DELETE", &field("@alice:test", "m.tz"), Some(&bob.token), None).await;
    assert_eq!(st, 403);
    let (st, _) = s.call("DELETE", &field("@alice:test", "m.tz"), Some(&alice.token), None).await;
    assert_eq!(st, 200);
    assert_eq!(s.get(&field("@alice:test", "m.tz"), None).await.0, 404);
    let (st, _) = s.call("DELETE", &field("@alice:test", "displayname"), Some(&alice.token), None).await;
    assert_eq!(st, 200);
    let (_, profile) = s.get("/_matrix/client/v3/profile/@alice:test", None).await;
    assert_eq!(profile, json!({"org.example.status": status}), "{profile}");
}
