//! E-mail and third-party identifiers against a real SMTP server (aiosmtpd from PyPI, started
//! by each test): registration with a validated address, adding and removing addresses,
//! logging in and resetting a forgotten password by e-mail, STARTTLS and SMTP authentication,
//! custom templates, and what is refused (unvalidated sessions, addresses in use, bad input,
//! servers without e-mail).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::federating::{TestCa, free_port};
use crate::harness::*;

/// aiosmtpd on a free loopback port, writing each accepted mail to a directory as JSON.
struct SmtpSink {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    async fn start(extra_args: &[&str]) -> SmtpSink {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/.venv/bin/python");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/smtp_sink.py");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(dir.path())
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("aiosmtpd is installed in the clients venv by the test command");
        let stdout = child.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout).lines().next().and_then(Result::ok)
        });
        let line = tokio::time::timeout(Duration::from_secs(30), ready).await.expect("SMTP sink start").unwrap();
        assert_eq!(line.as_deref(), Some("ready"));
        SmtpSink { child, port, dir }
    }

    /// The mails received so far, oldest first.
    fn mails(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files.iter().map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()).collect()
    }

    /// Waits for the `n`th mail (1-based).
    async fn mail(&self, n: usize) -> Value {
        for _ in 0..200 {
            if let Some(m) = self.mails().get(n - 1) {
                return m.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no mail number {n}; got {:?}", self.mails());
    }

    /// The `email:` section sending through this sink.
    fn config(&self, extra: &str) -> String {
        format!(
            "email:\n  smtp_host: 127.0.0.1\n  smtp_port: {}\n  notif_from: \"Your %(app)s homeserver <noreply@test>\"\n  \
             app_name: Myelin Test\n{extra}",
            self.port
        )
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path and query of the link in a mail's text (its host is `public_baseurl`'s).
fn link_in(mail: &Value) -> String {
    let text = mail["text"].as_str().unwrap();
    let start = text.find("http://127.0.0.1/").expect("a link to public_baseurl") + "http://127.0.0.1".len();
    let end = text[start..].find(char::is_whitespace).map_or(text.len(), |e| start + e);
    text[start..end].to_owned()
}

/// A link's query parameter.
fn param(link: &str, key: &str) -> String {
    let query = link.split_once('?').unwrap().1;
    query.split('&').find_map(|kv| kv.strip_prefix(&format!("{key}="))).unwrap().to_owned()
}

/// Fetches an HTML page without following redirects: status, `Location`, body.
async fn page(s: &Server, method: &str, path: &str, form: Option<&str>) -> (u16, Option<String>, String) {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut req = client.request(method.parse().unwrap(), s.url(path));
    if let Some(form) = form {
        req = req.header("content-type", "application/x-www-form-urlencoded").body(form.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let location = resp.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
    (status, location, resp.text().await.unwrap())
}

/// Asks for a validation mail; answers status and body.
async fn request_token(s: &Server, kind: &str, email: &str, secret: &str, attempt: u64) -> (u16, Value) {
    let path = match kind {
        "register" => "/_matrix/client/v3/register/email/requestToken",
        "password" => "/_matrix/client/v3/account/password/email/requestToken",
        _ => "/_matrix/client/v3/account/3pid/email/requestToken",
    };
    s.post(path, None, json!({"client_secret": secret, "email": email, "send_attempt": attempt})).await
}

/// Registers `name` with a password and the validated session `(sid, secret)`.
async fn register_with_email(s: &Server, name: &str, sid: &str, secret: &str) -> (u16, Value) {
    let body = json!({"username": name, "password": "password"});
    let (status, challenge) = s.post("/_matrix/client/v3/register", None, body.clone()).await;
    assert_eq!(status, 401, "{challenge}");
    let mut body = body;
    body["auth"] = json!({
        "type": "m.login.email.identity",
        "session": challenge["session"],
        "threepid_creds": {"sid": sid, "client_secret": secret},
    });
    s.post("/_matrix/client/v3/register", None, body).await
}

/// Adds the validated session's address to `user`'s account (UIA with the password).
async fn add_threepid(s: &Server, user: &User, sid: &str, secret: &str) -> (u16, Value) {
    let body = json!({"client_secret": secret, "sid": sid});
    let (status, challenge) = s.post("/_matrix/client/v3/account/3pid/add", Some(&user.token), body.clone()).await;
    if status != 401 {
        return (status, challenge);
    }
    let mut body = body;
    body["auth"] = json!({"type": "m.login.password", "session": challenge["session"],
        "identifier": {"type": "m.id.user", "user": user.user_id}, "password": "password"});
    s.post("/_matrix/client/v3/account/3pid/add", Some(&user.token), body).await
}

async fn login_by_email(s: &Server, address: &str, password: &str) -> (u16, Value) {
    let body = json!({"type": "m.login.password", "password": password,
        "identifier": {"type": "m.id.thirdparty", "medium": "email", "address": address}});
    s.post("/_matrix/client/v3/login", None, body).await
}

#[tokio::test]
async fn registration_proves_an_address_through_the_mailed_link() {
    let sink = SmtpSink::start(&[]).await;
    let s = Server::start_with(&sink.config("")).await;

    // The flows offer e-mail beside the dummy stage.
    let (status, challenge) =
        s.post("/_matrix/client/v3/register", None, json!({"username": "x", "password": "password"})).await;
    assert_eq!(status, 401);
    let flows: Vec<Value> = challenge["flows"].as_array().unwrap().iter().map(|f| f["stages"].clone()).collect();
    assert_eq!(flows, vec![json!(["m.login.dummy"]), json!(["m.login.email.identity"])]);

    let (status, body) = request_token(&s, "register", " Alice@Example.ORG ", "secret1", 1).await;
    assert_eq!(status, 200, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let mail = sink.mail(1).await;
    assert_eq!(mail["rcpt_tos"], json!(["alice@example.org"]), "the canonical address is mailed");
    assert_eq!(mail["mail_from"], "noreply@test");
    assert_eq!(mail["headers"]["From"], "Your Myelin Test homeserver <noreply@test>");
    assert_eq!(mail["headers"]["Subject"], "[test] Validate your email");
    assert_eq!(mail["headers"]["Auto-Submitted"], "auto-generated");
    assert_eq!(mail["content_type"], "multipart/alternative");
    let link = link_in(&mail);
    assert!(link.starts_with("/_matrix/client/unstable/registration/email/submit_token?"), "{link}");
    assert_eq!(param(&link, "sid"), sid);
    assert!(mail["html"].as_str().unwrap().contains("Confirm my address"), "{mail}");

    // The same send attempt sends nothing more and keeps the session.
    let (status, again) = request_token(&s, "register", "alice@example.org", "secret1", 1).await;
    assert_eq!((status, again["sid"].as_str()), (200, Some(sid.as_str())));

    // Before the link is followed, the stage fails and the challenge comes back.
    let (status, body) = register_with_email(&s, "alice", &sid, "secret1").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");
    assert_eq!(body["error"], "Unable to get validated threepid");

    // Links that are not this one's are refused with a page saying why.
    let wrong_token = link.replace(&format!("token={}", param(&link, "token")), "token=nottheone");
    let (status, _, html) = page(&s, "GET", &wrong_token, None).await;
    assert_eq!(status, 400);
    assert!(html.contains("Validation token not found or has expired"), "{html}");
    let wrong_secret = link.replace("client_secret=secret1", "client_secret=other");
    let (status, _, html) = page(&s, "GET", &wrong_secret, None).await;
    assert_eq!(status, 400);
    assert!(html.contains("This client_secret does not match the provided session_id"), "{html}");
    let (status, _, html) = page(&s, "GET", &link.replace(&format!("sid={sid}"), "sid=nosuch"), None).await;
    assert_eq!(status, 400);
    assert!(html.contains("Unknown session_id"), "{html}");

    let (status, _, html) = page(&s, "GET", &link, None).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("confirmed"), "{html}");

    let (status, body) = register_with_email(&s, "alice", &sid, "secret1").await;
    assert_eq!(status, 200, "{body}");
    let alice = User {
        user_id: body["user_id"].as_str().unwrap().to_owned(),
        token: body["access_token"].as_str().unwrap().to_owned(),
        device_id: body["device_id"].as_str().unwrap().to_owned(),
    };
    let (status, threepids) = s.get("/_matrix/client/v3/account/3pid", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_schema("/_matrix/client/v3/account/3pid", "get", 200, &threepids);
    assert_eq!(threepids["threepids"].as_array().unwrap().len(), 1, "{threepids}");
    assert_eq!(threepids["threepids"][0]["medium"], "email");
    assert_eq!(threepids["threepids"][0]["address"], "alice@example.org");
    assert!(threepids["threepids"][0]["validated_at"].as_i64().unwrap() > 0);

    // The session was spent: it cannot register a second account.
    let (status, body) = register_with_email(&s, "mallory", &sid, "secret1").await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "{body}");
    // The address is taken now.
    let (status, body) = request_token(&s, "register", "ALICE@example.org", "secret2", 1).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_THREEPID_IN_USE")), "{body}");
    // Bob registers without an address through the dummy flow, and has none.
    let bob = s.register("bob").await;
    let (_, threepids) = s.get("/_matrix/client/v3/account/3pid", Some(&bob.token)).await;
    assert_eq!(threepids["threepids"], json!([]));
    // The address logs Alice in.
    let (status, body) = login_by_email(&s, "alice@EXAMPLE.org", "password").await;
    assert_eq!((status, body["user_id"].as_str()), (200, Some(alice.user_id.as_str())), "{body}");
    let (status, body) = login_by_email(&s, "alice@example.org", "wrong").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (status, body) = login_by_email(&s, "nobody@example.org", "password").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
}

#[tokio::test]
async fn request_token_refuses_bad_input() {
    let sink = SmtpSink::start(&[]).await;
    let s = Server::start_with(&sink.config("")).await;
    let register = "/_matrix/client/v3/register/email/requestToken";
    let add = "/_matrix/client/v3/account/3pid/email/requestToken";
    let cases = [
        (register, json!({"client_secret": "s", "email": "a@b.c"}), 400, "M_MISSING_PARAM"),
        (register, json!({"client_secret": "s", "email": "not-an-address", "send_attempt": 1}), 400, "M_UNKNOWN"),
        (
            register,
            json!({"client_secret": "bad secret!", "email": "a@b.c", "send_attempt": 1}),
            400,
            "M_INVALID_PARAM",
        ),
        (add, json!({"client_secret": "s", "email": "x@y@z", "send_attempt": 1}), 400, "M_INVALID_PARAM"),
        (add, json!({"client_secret": "s", "email": "a@b.c", "send_attempt": "1"}), 400, "M_BAD_JSON"),
        (add, json!({"client_secret": "s", "email": 5, "send_attempt": 1}), 400, "M_BAD_JSON"),
        (
            add,
            json!({"client_secret": "s", "email": "a@b.c", "send_attempt": 1, "next_link": "file:///etc/passwd"}),
            400,
            "M_INVALID_PARAM",
        ),
        (
            add,
            json!({"client_secret": "s", "email": "a@b.c", "send_attempt": 1, "id_server": "is.test"}),
            400,
            "M_INVALID_PARAM",
        ),
    ];
    for (path, body, status, errcode) in cases {
        let (got, answer) = s.post(path, None, body.clone()).await;
        assert_eq!((got, answer["errcode"].as_str()), (status, Some(errcode)), "{path} {body}: {answer}");
    }
    let (status, body) = s.raw("POST", register, b"{not json".to_vec()).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_NOT_JSON")), "{body}");
    // A password reset for an address nobody has.
    let (status, body) = request_token(&s, "password", "nobody@example.org", "s", 1).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_THREEPID_NOT_FOUND")), "{body}");
    // Phone numbers need an SMS provider.
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register/msisdn/requestToken",
            None,
            json!({"client_secret": "s", "country": "GB", "phone_number": "07700900000", "send_attempt": 1}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "Registration by phone number is not supported on this homeserver");
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/3pid/msisdn/requestToken",
            None,
            json!({"client_secret": "s", "country": "GB", "phone_number": "07700900000", "send_attempt": 1}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_THREEPID_MEDIUM_NOT_SUPPORTED")), "{body}");
    assert!(sink.mails().is_empty(), "nothing was mailed: {:?}", sink.mails());
    // The server is still serving.
    assert_eq!(s.get("/_matrix/client/versions", None).await.0, 200);
}

#[tokio::test]
async fn addresses_are_added_used_to_reset_a_password_and_removed() {
    let sink = SmtpSink::start(&[]).await;
    let s = Server::start_with(&sink.config("")).await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;

    // Adding: the mail, then the link (which redirects to the client's next_link), then UIA.
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/3pid/email/requestToken",
            None,
            json!({"client_secret": "addsecret", "email": "alice@example.org", "send_attempt": 1,
                   "next_link": "https://client.example/done?x=1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let link = link_in(&sink.mail(1).await);
    assert!(link.starts_with("/_matrix/client/unstable/add_threepid/email/submit_token?"), "{link}");
    // Not validated yet: refused, and nothing added.
    let (status, body) = add_threepid(&s, &alice, &sid, "addsecret").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_THREEPID_AUTH_FAILED")), "{body}");
    let (status, location, _) = page(&s, "GET", &link, None).await;
    assert_eq!(status, 302, "a redirect to next_link");
    assert_eq!(location.as_deref(), Some(format!("https://client.example/done?x=1&sid={sid}").as_str()));
    // UIA with a wrong password is refused.
    let body = json!({"client_secret": "addsecret", "sid": sid,
        "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": "nope"}});
    let (status, _) = s.post("/_matrix/client/v3/account/3pid/add", Some(&alice.token), body).await;
    assert_eq!(status, 401);
    let (status, body) = add_threepid(&s, &alice, &sid, "addsecret").await;
    assert_eq!(status, 200, "{body}");
    let (_, threepids) = s.get("/_matrix/client/v3/account/3pid", Some(&alice.token)).await;
    assert_eq!(threepids["threepids"][0]["address"], "alice@example.org");
    // Bob cannot take it: the address is in use, and no mail goes out for him.
    let (status, body) = request_token(&s, "add", "alice@example.org", "bobsecret", 1).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_THREEPID_IN_USE")), "{body}");
    assert_eq!(sink.mails().len(), 1);

    // A forgotten password: the mail, a confirmation page, its form, then the new password.
    let (status, body) = request_token(&s, "password", "Alice@example.org", "resetsecret", 1).await;
    assert_eq!(status, 200, "{body}");
    let reset_sid = body["sid"].as_str().unwrap().to_owned();
    let mail = sink.mail(2).await;
    assert_eq!(mail["headers"]["Subject"], "[test] Password reset");
    let link = link_in(&mail);
    assert!(link.starts_with("/_synapse/client/password_reset/email/submit_token?"), "{link}");
    // Without the link followed, the reset is refused.
    let reset = |session: Value| {
        json!({"new_password": "new password", "auth": {"type": "m.login.email.identity", "session": session,
            "threepid_creds": {"sid": reset_sid, "client_secret": "resetsecret"}}})
    };
    let (status, challenge) =
        s.post("/_matrix/client/v3/account/password", None, json!({"new_password": "new password"})).await;
    assert_eq!(status, 401, "{challenge}");
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.email.identity"]}]));
    let (status, body) = s.post("/_matrix/client/v3/account/password", None, reset(challenge["session"].clone())).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "{body}");
    // Following the link shows a confirmation page; a GET alone validates nothing.
    let (status, _, html) = page(&s, "GET", &link, None).await;
    assert_eq!(status, 200);
    assert!(html.contains("<form") && html.contains(&reset_sid), "{html}");
    let (status, body) = s.post("/_matrix/client/v3/account/password", None, reset(challenge["session"].clone())).await;
    assert_eq!(status, 401, "{body}");
    let form = link.split_once('?').unwrap().1;
    let (status, _, html) = page(&s, "POST", "/_synapse/client/password_reset/email/submit_token", Some(form)).await;
    assert_eq!(status, 200, "{html}");
    let (status, body) = s.post("/_matrix/client/v3/account/password", None, reset(challenge["session"].clone())).await;
    assert_eq!(status, 200, "{body}");
    // Every session was logged out; the old password no longer works, the new one does.
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, 401);
    assert_eq!(login_by_email(&s, "alice@example.org", "password").await.0, 403);
    let (status, body) = login_by_email(&s, "alice@example.org", "new password").await;
    assert_eq!(status, 200, "{body}");
    let alice = User {
        user_id: body["user_id"].as_str().unwrap().to_owned(),
        token: body["access_token"].as_str().unwrap().to_owned(),
        device_id: body["device_id"].as_str().unwrap().to_owned(),
    };
    // Bob's account was untouched.
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&bob.token)).await.0, 200);

    // Removing: bob cannot remove alice's address (nothing happens), alice can.
    let delete = json!({"medium": "email", "address": "alice@example.org"});
    let (status, body) = s.post("/_matrix/client/v3/account/3pid/delete", Some(&bob.token), delete.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (_, threepids) = s.get("/_matrix/client/v3/account/3pid", Some(&alice.token)).await;
    assert_eq!(threepids["threepids"].as_array().unwrap().len(), 1);
    let (status, body) = s.post("/_matrix/client/v3/account/3pid/delete", Some(&alice.token), delete).await;
    assert_eq!((status, body["id_server_unbind_result"].as_str()), (200, Some("no-support")), "{body}");
    let (_, threepids) = s.get("/_matrix/client/v3/account/3pid", Some(&alice.token)).await;
    assert_eq!(threepids["threepids"], json!([]));
    assert_eq!(login_by_email(&s, "alice@example.org", "new password").await.0, 403);
    let (status, body) = s
        .post("/_matrix/client/v3/account/3pid/delete", Some(&alice.token), json!({"medium": "fax", "address": "1"}))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
}

#[tokio::test]
async fn admins_set_and_find_addresses_and_deactivation_removes_them() {
    let sink = SmtpSink::start(&[]).await;
    let s = Server::start_with(&sink.config("")).await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let path = "/_synapse/admin/v2/users/@alice:test";
    let (status, body) = s
        .put(path, Some(&root.token), json!({"threepids": [{"medium": "email", "address": "alice@example.org"}]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["threepids"][0]["address"], "alice@example.org", "{body}");
    let lookup = "/_synapse/admin/v1/threepid/email/users/alice%40example.org";
    let (status, body) = s.get(lookup, Some(&root.token)).await;
    assert_eq!((status, body["user_id"].as_str()), (200, Some("@alice:test")), "{body}");
    // Not for non-admins.
    assert_eq!(s.get(lookup, Some(&alice.token)).await.0, 403);
    let (status, _) = s.put(path, Some(&alice.token), json!({"threepids": []})).await;
    assert_eq!(status, 403);
    // Bad bodies are refused and change nothing.
    let (status, body) = s.put(path, Some(&root.token), json!({"threepids": [{"medium": "email"}]})).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{body}");
    let (status, body) = s.put(path, Some(&root.token), json!({"threepids": "x"})).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let (_, body) = s.get(path, Some(&root.token)).await;
    assert_eq!(body["threepids"].as_array().unwrap().len(), 1);
    // A new account made with an address has it at once.
    let (status, body) = s
        .put(
            "/_synapse/admin/v2/users/@carol:test",
            Some(&root.token),
            json!({"password": "password", "threepids": [{"medium": "email", "address": "carol@example.org"}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(login_by_email(&s, "carol@example.org", "password").await.0, 200);
    // Deactivation removes the account's addresses.
    let (status, body) = s.post("/_synapse/admin/v1/deactivate/@alice:test", Some(&root.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get(lookup, Some(&root.token)).await.0, 404);
}

#[tokio::test]
async fn smtp_with_starttls_and_authentication() {
    let ca = TestCa::new();
    let (cert, key) = (ca.path("cert.pem"), ca.path("key.pem"));
    let sink =
        SmtpSink::start(&["--starttls", cert.to_str().unwrap(), key.to_str().unwrap(), "--auth", "mailer", "letmein"])
            .await;
    let s = Server::start_with(&format!(
        "{}use_insecure_ssl_client_just_for_testing_do_not_use: true\n",
        sink.config("  smtp_user: mailer\n  smtp_pass: letmein\n  require_transport_security: true\n")
    ))
    .await;
    let (status, body) = request_token(&s, "register", "alice@example.org", "s1", 1).await;
    assert_eq!(status, 200, "{body}");
    let mail = sink.mail(1).await;
    assert_eq!(mail["tls"], true, "sent after STARTTLS");
    assert_eq!(mail["auth"], "mailer", "authenticated");

    // Wrong credentials: the server refuses, the client is told, nothing is half-made.
    let bad = Server::start_with(&format!(
        "{}use_insecure_ssl_client_just_for_testing_do_not_use: true\n",
        sink.config("  smtp_user: mailer\n  smtp_pass: wrong\n")
    ))
    .await;
    let (status, body) = request_token(&bad, "register", "bob@example.org", "s1", 1).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "An error was encountered when sending the email");
    assert_eq!(sink.mails().len(), 1);
}

#[tokio::test]
async fn a_server_that_cannot_do_tls_is_refused_when_transport_security_is_required() {
    let sink = SmtpSink::start(&[]).await;
    let s = Server::start_with(&sink.config("  require_transport_security: true\n")).await;
    let (status, body) = request_token(&s, "register", "alice@example.org", "s1", 1).await;
    assert_eq!(status, 500, "{body}");
    assert!(sink.mails().is_empty());
    assert!(s.log_shows("require_transport_security").await);
}

#[tokio::test]
async fn custom_templates_replace_the_mails_and_pages() {
    let sink = SmtpSink::start(&[]).await;
    let templates = tempfile::tempdir().unwrap();
    std::fs::write(
        templates.path().join("registration.txt"),
        "Welcome to {{ app_name }} on {{ server_name }}! Confirm: {{ link }}\n",
    )
    .unwrap();
    std::fs::write(templates.path().join("registration_failure.html"), "<p>Nope: {{ failure_reason }}</p>").unwrap();
    let s = Server::start_with(&format!(
        "{}custom_template_directory: {}\n",
        sink.config("  subjects:\n    email_validation: \"Check %(app)s at %(server_name)s\"\n"),
        templates.path().display()
    ))
    .await;
    let (status, _) = request_token(&s, "register", "alice@example.org", "s1", 1).await;
    assert_eq!(status, 200);
    let mail = sink.mail(1).await;
    assert!(mail["text"].as_str().unwrap().starts_with("Welcome to Myelin Test on test! Confirm: http://127.0.0.1/"));
    assert_eq!(mail["headers"]["Subject"], "Check Myelin Test at test");
    // The HTML part is still Myelin's own.
    assert!(mail["html"].as_str().unwrap().contains("<a class=\"button\""));
    let link = link_in(&mail);
    let (status, _, html) = page(&s, "GET", &link.replace("client_secret=s1", "client_secret=zz"), None).await;
    assert_eq!(
        (status, html.as_str()),
        (400, "<p>Nope: This client_secret does not match the provided session_id</p>")
    );

    // A broken custom template stops the server at start-up, naming it.
    std::fs::write(templates.path().join("registration.html"), "{% if %}").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("homeserver.yaml");
    std::fs::write(
        &config,
        base_config(&format!("{}custom_template_directory: {}\n", sink.config(""), templates.path().display())),
    )
    .unwrap();
    let (code, _, stderr) = run_cli(dir.path(), &["-c", config.to_str().unwrap(), "check-config"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("registration.html"), "{stderr}");
}

#[tokio::test]
async fn without_email_the_endpoints_answer_as_synapse_does() {
    let s = Server::start().await;
    let alice = s.register("alice").await;
    let (status, challenge) =
        s.post("/_matrix/client/v3/register", None, json!({"username": "x", "password": "password"})).await;
    assert_eq!(status, 401);
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.dummy"]}]));
    let (status, body) = request_token(&s, "register", "a@example.org", "s", 1).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("Email-based registration has been disabled on this server"))
    );
    let (status, body) = request_token(&s, "password", "a@example.org", "s", 1).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("Email-based password resets have been disabled on this server"))
    );
    let (status, body) = request_token(&s, "add", "a@example.org", "s", 1).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_THREEPID_MEDIUM_NOT_SUPPORTED")));
    let (status, body) = s.get("/_matrix/client/v3/account/3pid", Some(&alice.token)).await;
    assert_eq!((status, body), (200, json!({"threepids": []})));
    let (status, caps) = s.get("/_matrix/client/v3/capabilities", Some(&alice.token)).await;
    assert_eq!((status, &caps["capabilities"]["m.3pid_changes"]), (200, &json!({"enabled": true})));
    assert_eq!(s.get("/_matrix/client/v3/account/3pid", None).await.0, 401);

    // 3PID changes switched off: refused with Synapse's words.
    let off = Server::start_with("enable_3pid_changes: false\n").await;
    let bob = off.register("bob").await;
    let (status, body) = off
        .post(
            "/_matrix/client/v3/account/3pid/delete",
            Some(&bob.token),
            json!({"medium": "email", "address": "b@c.d"}),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("3PID changes are disabled on this server")));
    let (_, caps) = off.get("/_matrix/client/v3/capabilities", Some(&bob.token)).await;
    assert_eq!(caps["capabilities"]["m.3pid_changes"], json!({"enabled": false}));

    // Configs that cannot work are refused at start-up.
    for (extra, expected) in [
        ("registrations_require_3pid: [email]\n", "email validation is not configured"),
        ("email:\n  smtp_host: localhost\n", "email.notif_from"),
        ("email:\n  notif_from: nobody\n", "Invalid notif_from address"),
        (
            "email:\n  notif_from: a@b.c\n  force_tls: true\n  enable_tls: false\n",
            "email.force_tls requires email.enable_tls",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("homeserver.yaml");
        std::fs::write(&config, base_config(extra)).unwrap();
        let (code, _, stderr) = run_cli(dir.path(), &["-c", config.to_str().unwrap(), "check-config"]);
        assert_eq!(code, 1, "{extra}: {stderr}");
        assert!(stderr.contains(expected), "{extra}: {stderr}");
    }
}

#[tokio::test]
async fn registration_can_require_an_address() {
    let sink = SmtpSink::start(&[]).await;
    let s = Server::start_with(&format!(
        "{}registrations_require_3pid: [email]\nallowed_local_3pids:\n  - medium: email\n    pattern: '.*@example\\.org'\n",
        sink.config("")
    ))
    .await;
    let (status, challenge) =
        s.post("/_matrix/client/v3/register", None, json!({"username": "x", "password": "password"})).await;
    assert_eq!(status, 401);
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.email.identity"]}]));
    // The dummy stage is not enough.
    let (status, body) = s.try_register("y").await;
    assert_eq!(status, 401, "{body}");
    // Addresses outside the allowed pattern get no mail.
    let (status, body) = request_token(&s, "register", "eve@elsewhere.net", "s", 1).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_THREEPID_DENIED")), "{body}");
    assert!(sink.mails().is_empty());
    let (status, body) = request_token(&s, "register", "ann@example.org", "s", 1).await;
    assert_eq!(status, 200, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    let link = link_in(&sink.mail(1).await);
    assert_eq!(page(&s, "GET", &link, None).await.0, 200);
    let (status, body) = register_with_email(&s, "ann", &sid, "s").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn modules_allow_addresses_and_hear_of_them_coming_and_going() {
    let sink = SmtpSink::start(&[]).await;
    let s =
        Server::start_with(&format!("{}modules:\n  - module: threepid_rules.ThreepidRules\n", sink.config(""))).await;
    let seen = || async { s.get("/_synapse/client/threepid_rules/seen", None).await.1 };
    // Refused by the module: no mail.
    let (status, body) = request_token(&s, "register", "eve@blocked.test", "s", 1).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_THREEPID_DENIED")), "{body}");
    let (status, body) = request_token(&s, "add", "eve@blocked.test", "s", 1).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_THREEPID_DENIED")), "{body}");
    // A module that raises refuses with 500, as on Synapse; the server keeps serving.
    let (status, _) = request_token(&s, "register", "x@boom.test", "s", 1).await;
    assert_eq!(status, 500);
    assert!(sink.mails().is_empty());
    assert_eq!(
        seen().await["allowed"],
        json!([
            ["email", "eve@blocked.test", true],
            ["email", "eve@blocked.test", false],
            ["email", "x@boom.test", true]
        ])
    );

    // Added at registration: both notifications, in Synapse's order.
    let (status, body) = request_token(&s, "register", "raise@example.org", "s", 1).await;
    assert_eq!(status, 200, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    assert_eq!(page(&s, "GET", &link_in(&sink.mail(1).await), None).await.0, 200);
    let (status, body) = register_with_email(&s, "ann", &sid, "s").await;
    assert_eq!(status, 200, "{body}");
    let ann_token = body["access_token"].as_str().unwrap().to_owned();
    let seen_now = seen().await;
    assert_eq!(seen_now["added"], json!([["@ann:test", "email", "raise@example.org"]]));
    assert_eq!(seen_now["bound"], json!([["@ann:test", "email", "raise@example.org"]]));
    let (_, threepids) = s.get("/_matrix/client/v3/account/3pid", Some(&ann_token)).await;
    assert_eq!(threepids["threepids"].as_array().unwrap().len(), 1, "a module's error did not undo it");
    // Removed.
    let (status, _) = s
        .post(
            "/_matrix/client/v3/account/3pid/delete",
            Some(&ann_token),
            json!({"medium": "email", "address": "raise@example.org"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(seen().await["removed"], json!([["@ann:test", "email", "raise@example.org"]]));
}

#[tokio::test]
async fn unread_notifications_are_mailed_and_the_mail_unsubscribes() {
    let sink = SmtpSink::start(&[]).await;
    let s = Server::start_with(
        &sink.config("  enable_notifs: true\n  notif_delay_before_mail: 2s\n  client_base_url: https://app.example/\n"),
    )
    .await;
    // Alice registers with her address: she gets an e-mail pusher for it.
    let (status, body) = request_token(&s, "register", "alice@example.org", "s", 1).await;
    assert_eq!(status, 200, "{body}");
    let sid = body["sid"].as_str().unwrap().to_owned();
    assert_eq!(page(&s, "GET", &link_in(&sink.mail(1).await), None).await.0, 200);
    let (status, body) = register_with_email(&s, "alice", &sid, "s").await;
    assert_eq!(status, 200, "{body}");
    let alice = User {
        user_id: body["user_id"].as_str().unwrap().to_owned(),
        token: body["access_token"].as_str().unwrap().to_owned(),
        device_id: body["device_id"].as_str().unwrap().to_owned(),
    };
    let (_, pushers) = s.get("/_matrix/client/v3/pushers", Some(&alice.token)).await;
    assert_eq!(pushers["pushers"].as_array().unwrap().len(), 1, "{pushers}");
    let pusher = &pushers["pushers"][0];
    assert_eq!((pusher["kind"].as_str(), pusher["app_id"].as_str()), (Some("email"), Some("m.email")));
    assert_eq!(pusher["pushkey"], "alice@example.org");
    assert!(pusher.get("myelin.unsubscribe_token").is_none(), "the link's secret stays private: {pusher}");

    // Bob cannot point a pusher at an address that is not his.
    let bob = s.register("bob").await;
    let email_pusher = json!({"kind": "email", "app_id": "m.email", "pushkey": "alice@example.org",
        "app_display_name": "Email", "device_display_name": "mail", "lang": "en", "data": {}});
    let (status, body) = s.post("/_matrix/client/v3/pushers/set", Some(&bob.token), email_pusher).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_THREEPID_NOT_FOUND")), "{body}");

    let lounge = s.create_room(&bob, json!({"preset": "public_chat", "name": "Lounge"})).await;
    let den = s.create_room(&bob, json!({"preset": "public_chat", "name": "Den"})).await;
    assert_eq!(s.join(&alice, &lounge).await.0, 200);
    assert_eq!(s.join(&alice, &den).await.0, 200);
    // What Alice reads in time is not mailed.
    let (_, sent) = s.send_text(&bob, &den, "already read").await;
    let read = sent["event_id"].as_str().unwrap();
    let receipt = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", path_segment(&den), path_segment(read));
    assert_eq!(s.post(&receipt, Some(&alice.token), json!({})).await.0, 200);
    assert_eq!(s.send_text(&bob, &lounge, "hello alice").await.0, 200);

    let mail = sink.mail(2).await;
    assert_eq!(mail["rcpt_tos"], json!(["alice@example.org"]));
    assert_eq!(
        mail["headers"]["Subject"],
        "[Myelin Test] You have a message on Myelin Test from bob in the Lounge room..."
    );
    let text = mail["text"].as_str().unwrap();
    assert!(text.contains("hello alice") && !text.contains("already read"), "{text}");
    assert!(text.contains(&format!("https://app.example/#/room/{lounge}/")), "{text}");
    assert!(mail["html"].as_str().unwrap().contains("hello alice"));
    let unsubscribe = mail["headers"]["List-Unsubscribe"].as_str().unwrap().trim_matches(['<', '>']).to_owned();
    assert!(text.contains(&unsubscribe), "{text}");
    assert_eq!(mail["headers"]["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click");
    // One mail, not one per message.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.mails().len(), 2);

    // The unsubscribe link removes the pusher; a forged one removes nothing.
    let path = unsubscribe.strip_prefix("http://127.0.0.1").unwrap().to_owned();
    let forged = path.replace(&param(&path, "access_token"), "forged");
    assert_eq!(page(&s, "GET", &forged, None).await.0, 403);
    let (_, pushers) = s.get("/_matrix/client/v3/pushers", Some(&alice.token)).await;
    assert_eq!(pushers["pushers"].as_array().unwrap().len(), 1);
    let (status, _, html) = page(&s, "GET", &path, None).await;
    assert_eq!(status, 200);
    assert!(html.contains("unsubscribed"), "{html}");
    let (_, pushers) = s.get("/_matrix/client/v3/pushers", Some(&alice.token)).await;
    assert_eq!(pushers["pushers"], json!([]));
}

/// Notifications waiting for their mail are written down: a restart before the mail was due
/// mails them afterwards, once.
#[tokio::test]
async fn notification_mails_pending_at_a_restart_are_sent_after_it() {
    let sink = SmtpSink::start(&[]).await;
    let patient = sink.config("  enable_notifs: true\n  notif_delay_before_mail: 1h\n");
    let s = Server::start_with(&patient).await;
    s.make_admin_cli("root");
    let root = s.login("root").await;
    let alice = s.register("alice").await;
    let path = format!("/_synapse/admin/v2/users/{}", path_segment(&alice.user_id));
    let body = json!({"threepids": [{"medium": "email", "address": "alice@example.org"}]});
    assert_eq!(s.put(&path, Some(&root.token), body).await.0, 200);
    let email_pusher = json!({"kind": "email", "app_id": "m.email", "pushkey": "alice@example.org",
        "app_display_name": "Email", "device_display_name": "mail", "lang": "en", "data": {}});
    let (status, body) = s.post("/_matrix/client/v3/pushers/set", Some(&alice.token), email_pusher).await;
    assert_eq!(status, 200, "{body}");
    let bob = s.register("bob").await;
    let room = s.create_room(&bob, json!({"preset": "public_chat", "name": "Lounge"})).await;
    assert_eq!(s.join(&alice, &room).await.0, 200);
    assert_eq!(s.send_text(&bob, &room, "are you there?").await.0, 200);
    // Queued (written down) within moments; not due for an hour.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sink.mails().is_empty());

    // Restarted with a shorter delay: the notification from before is due at once.
    let dir = s.stop();
    let config = std::fs::read_to_string(dir.path().join("homeserver.yaml")).unwrap();
    std::fs::write(
        dir.path().join("homeserver.yaml"),
        config.replace("notif_delay_before_mail: 1h", "notif_delay_before_mail: 2s"),
    )
    .unwrap();
    let s = Server::start_in(dir).await;
    let mail = sink.mail(1).await;
    assert_eq!(mail["rcpt_tos"], json!(["alice@example.org"]));
    assert!(mail["text"].as_str().unwrap().contains("are you there?"), "{mail}");

    // Once mailed it is forgotten (right after the mail: a crash in between would send it
    // again, never lose it): another restart sends nothing more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dir = s.stop();
    let _s = Server::start_in(dir).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sink.mails().len(), 1);
}

#[tokio::test]
async fn modules_read_templates_and_send_mail() {
    let sink = SmtpSink::start(&[]).await;
    let templates = tempfile::tempdir().unwrap();
    std::fs::write(templates.path().join("greeting.txt"), "Hello {{ name }}!").unwrap();
    let module = "modules:\n  - module: scripted.Scripted\n    config: {label: m}\n";
    let s = Server::start_with(&format!("{}{module}", sink.config(""))).await;
    let call = json!({"op": "mail", "template": "greeting.txt", "dir": templates.path(), "name": "Ann",
                      "to": "ann@example.org"});
    let (st, b) = s.post("/_synapse/client/py/m/api", None, call.clone()).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b, json!({"app": "Myelin Test", "base": "http://127.0.0.1/", "text": "Hello Ann!", "error": null}));
    let mail = sink.mail(1).await;
    assert_eq!(mail["rcpt_tos"], json!(["ann@example.org"]));
    assert_eq!(mail["headers"]["Subject"], "Hello from a module");
    assert_eq!(mail["headers"]["From"], "Your Myelin Test homeserver <noreply@test>");
    assert_eq!((mail["text"].as_str(), mail["html"].as_str()), (Some("Hello Ann!"), Some("<p>Hello Ann!</p>")));

    // Without an `email:` section the module is told, and the server keeps serving.
    let bare = Server::start_with(module).await;
    let (st, b) = bare.post("/_synapse/client/py/m/api", None, call).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["app"], "Matrix");
    assert!(b["error"].as_str().is_some_and(|e| e.contains("Email is not configured")), "{b}");
    assert_eq!(bare.get("/_matrix/client/versions", None).await.0, 200);
}

/// Synapse's built-in account validity: accounts expire `period` after registration; an
/// expired account is refused everywhere but logout and `send_mail`; a mailed link renews it
/// (once: a second click says so), as does the admin API; accounts near their date are mailed
/// at start-up and every 30 minutes, unless an admin turned their mails off; accounts from
/// before validity was enabled get a date.
#[tokio::test]
async fn accounts_expire_and_are_renewed_by_a_mailed_link_or_an_admin() {
    let smtp = SmtpSink::start(&[]).await;
    let validity = "account_validity:\n  enabled: true\n  period: 6w\n  renew_at: 1w\n";
    let yaml = format!("{}{validity}", smtp.config(""));
    let server = Server::start_with(&yaml).await;
    server.make_admin_cli("root");
    let root = server.login("root").await;
    let alice = server.register("alice").await;
    let dir = server.stop();
    // Dave registers while validity is off.
    let config = std::fs::read_to_string(dir.path().join("homeserver.yaml")).unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), config.replace(validity, "")).unwrap();
    let server = Server::start_in(dir).await;
    let dave = server.register("dave").await;
    let dir = server.stop();
    std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
    let server = Server::start_in(dir).await;
    assert_eq!(whoami(&server, &alice).await.0, 200, "a new account is valid for a period");

    // The admin API sets a date in the past: the account has expired.
    let set = |body: Value| server.post("/_synapse/admin/v1/account_validity/validity", Some(&root.token), body);
    let past = now_ms() - 1000;
    let (s, body) = set(json!({"user_id": alice.user_id, "expiration_ts": past})).await;
    assert_eq!((s, body["expiration_ts"].as_i64()), (200, Some(past)), "{body}");
    let (s, body) = whoami(&server, &alice).await;
    assert_eq!(
        (s, body["errcode"].as_str(), body["error"].as_str()),
        (403, Some("ORG_MATRIX_EXPIRED_ACCOUNT"), Some("User account has expired"))
    );
    assert_eq!(whoami(&server, &root).await.0, 200, "others are not affected");

    // Without an address, asking for a mail sends nothing; with one, a link comes.
    assert_eq!(send_mail(&server, &alice).await, (200, json!({})));
    let (s, body) = server
        .put(
            &format!("/_synapse/admin/v2/users/{}", path_segment(&alice.user_id)),
            Some(&root.token),
            json!({"threepids": [{"medium": "email", "address": "alice@example.org"}]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(send_mail(&server, &alice).await.0, 200, "an expired account may ask for a link");
    let mail = smtp.mail(1).await;
    assert_eq!(mail["rcpt_tos"], json!(["alice@example.org"]), "{mail}");
    assert_eq!(mail["headers"]["Subject"], "Renew your Myelin Test account");
    let link = link_in(&mail);
    assert!(link.starts_with("/_matrix/client/unstable/account_validity/renew?token="), "{link}");
    assert_eq!(smtp.mails().len(), 1, "the first ask sent nothing");

    // The link renews the account by a period, once.
    let (status, _, html) = page(&server, "GET", &link, None).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("renewed"), "{html}");
    assert_eq!(whoami(&server, &alice).await.0, 200);
    let (status, _, html) = page(&server, "GET", &link, None).await;
    assert_eq!(status, 200);
    assert!(html.contains("already"), "{html}");
    let (status, _, html) =
        page(&server, "GET", "/_matrix/client/v3/account_validity/renew?token=nonsense", None).await;
    assert_eq!(status, 404, "{html}");
    let (s, body) = server.get("/_matrix/client/v3/account_validity/renew", None).await;
    assert_eq!((s, body["errcode"].as_str()), (400, Some("M_MISSING_PARAM")));

    // Dave, from before, was given a date at start-up: a mail can be sent for it.
    let (s, _) = server
        .put(
            &format!("/_synapse/admin/v2/users/{}", path_segment(&dave.user_id)),
            Some(&root.token),
            json!({"threepids": [{"medium": "email", "address": "dave@example.org"}]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(send_mail(&server, &dave).await.0, 200);
    assert_eq!(smtp.mail(2).await["rcpt_tos"], json!(["dave@example.org"]));

    // Near their date: Bob is mailed at the next start; Carol's mails are off.
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    for (user, address) in [(&bob, "bob@example.org"), (&carol, "carol@example.org")] {
        let path = format!("/_synapse/admin/v2/users/{}", path_segment(&user.user_id));
        let body = json!({"threepids": [{"medium": "email", "address": address}]});
        assert_eq!(server.put(&path, Some(&root.token), body).await.0, 200);
    }
    let soon = now_ms() + 86_400_000;
    assert_eq!(set(json!({"user_id": bob.user_id, "expiration_ts": soon})).await.0, 200);
    let (s, _) = set(json!({"user_id": carol.user_id, "expiration_ts": soon, "enable_renewal_emails": false})).await;
    assert_eq!(s, 200);
    // Without a date, the admin API renews by a period from now.
    let (s, body) = set(json!({"user_id": dave.user_id})).await;
    let six_weeks = 6 * 7 * 86_400_000;
    assert!(s == 200 && (body["expiration_ts"].as_i64().unwrap() - now_ms() - six_weeks).abs() < 60_000, "{body}");

    // Refused: non-admins, a missing or unknown user, bad types.
    assert_eq!(
        server
            .post("/_synapse/admin/v1/account_validity/validity", Some(&bob.token), json!({"user_id": bob.user_id}))
            .await
            .0,
        403
    );
    let (s, body) = set(json!({"expiration_ts": soon})).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("Missing property 'user_id' in the request body")));
    assert_eq!(set(json!({"user_id": "@nobody:test"})).await.0, 404);
    assert_eq!(set(json!({"user_id": bob.user_id, "expiration_ts": "soon"})).await.0, 400);

    let dir = server.stop();
    let server = Server::start_in(dir).await;
    let mail = smtp.mail(3).await;
    assert_eq!(mail["rcpt_tos"], json!(["bob@example.org"]), "{mail}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.mails().len(), 3, "nothing for Carol, nor for accounts far from their date");
    drop(server);

    // Without renew_at there are no renewal mails; `period` is required.
    let server =
        Server::start_with(&format!("{}account_validity:\n  enabled: true\n  period: 1d\n", smtp.config(""))).await;
    let erin = server.register("erin").await;
    let (s, body) = server.post("/_matrix/client/v3/account_validity/send_mail", Some(&erin.token), json!({})).await;
    assert_eq!((s, body["error"].as_str()), (403, Some("Account renewal via email is disabled on this server.")));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("homeserver.yaml"), base_config("account_validity:\n  enabled: true\n")).unwrap();
    let (code, _, stderr) = run_cli(dir.path(), &["-c", "homeserver.yaml", "check-config"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("'period' is required when using account validity"), "{stderr}");
}

async fn whoami(server: &Server, user: &User) -> (u16, Value) {
    server.get("/_matrix/client/v3/account/whoami", Some(&user.token)).await
}

async fn send_mail(server: &Server, user: &User) -> (u16, Value) {
    server.post("/_matrix/client/v3/account_validity/send_mail", Some(&user.token), json!({})).await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
