//! Identity servers: binding a third-party identifier through the homeserver, unbinding it
//! (`/account/3pid/unbind`, `/account/3pid/delete`, deactivation), and inviting by identifier
//! (bound: the user; unbound: a stored invite, exchanged for a member invite once bound),
//! against an identity server that is a separate HTTPS process (Python's standard library)
//! recording what it was asked.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use base64::Engine;

use crate::federating::TestCa;
use crate::federation_abuse::{Key, canonical};
use crate::harness::{Server, User};

/// A key's public half as identity servers publish it (unpadded base64).
fn public_key(key: &Key) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(key.pair.public_key())
}

/// The identity server: `/bind` binds the session's address for a valid bearer token,
/// `/unbind` removes a binding, `/_test/state` shows the bindings and every request's
/// `Authorization` header.
const IDENTITY_SERVER: &str = r#"
import base64, hashlib, json, ssl, sys, urllib.parse
from http.server import HTTPServer, BaseHTTPRequestHandler
cert, key, port_file, public_key = sys.argv[1:5]
bindings, requests, invites, revoked = {}, [], [], set()
SESSIONS = {"s1": ("email", "alice@example.com"), "s2": ("email", "other@example.com")}
PEPPER = "matrixrocks"
def hashed(medium, address):
    digest = hashlib.sha256(f"{address} {medium} {PEPPER}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
class H(BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        auth = self.headers.get("Authorization", "")
        if url.path == "/_test/state":
            return self.reply(200, {"bindings": bindings, "requests": requests, "invites": invites})
        requests.append({"path": url.path, "auth": auth})
        if url.path == "/_matrix/identity/v2/hash_details":
            if auth != "Bearer good-token":
                return self.reply(401, {"errcode": "M_UNAUTHORIZED", "error": "Unknown token"})
            return self.reply(200, {"algorithms": ["none", "sha256"], "lookup_pepper": PEPPER})
        if url.path == "/_matrix/identity/v2/pubkey/isvalid":
            key = query.get("public_key", [""])[0]
            return self.reply(200, {"valid": key == public_key and key not in revoked})
        self.reply(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization", "")
        requests.append({"path": self.path, "auth": auth, "body": body})
        if self.path == "/_test/bind":
            bindings[body["medium"] + " " + body["address"]] = body["mxid"]
            return self.reply(200, {})
        if self.path == "/_test/revoke":
            (revoked.add if body["revoked"] else revoked.discard)(public_key)
            return self.reply(200, {})
        if self.path == "/_matrix/identity/v2/3pid/bind":
            if auth != "Bearer good-token":
                return self.reply(401, {"errcode": "M_UNAUTHORIZED", "error": "Unknown token"})
            if body.get("sid") not in SESSIONS:
                return self.reply(400, {"errcode": "M_NO_VALID_SESSION", "error": "No valid session"})
            medium, address = SESSIONS[body["sid"]]
            bindings[medium + " " + address] = body["mxid"]
            return self.reply(200, {"medium": medium, "address": address, "mxid": body["mxid"], "signatures": {}})
        if self.path == "/_matrix/identity/v2/3pid/unbind":
            name = body["threepid"]["medium"] + " " + body["threepid"]["address"]
            if not auth.startswith("X-Matrix ") or bindings.get(name) != body["mxid"]:
                return self.reply(404, {"errcode": "M_NOT_FOUND", "error": "No such binding"})
            del bindings[name]
            return self.reply(200, {})
        if self.path == "/_matrix/identity/v2/lookup":
            if auth != "Bearer good-token" or body.get("pepper") != PEPPER or body.get("algorithm") != "sha256":
                return self.reply(400, {"errcode": "M_INVALID_PEPPER", "error": "Bad lookup"})
            known = {hashed(*name.split(" ", 1)): mxid for name, mxid in bindings.items()}
            return self.reply(200, {"mappings": {h: known[h] for h in body["addresses"] if h in known}})
        if self.path == "/_matrix/identity/v2/store-invite":
            if auth != "Bearer good-token":
                return self.reply(401, {"errcode": "M_UNAUTHORIZED", "error": "Unknown token"})
            invites.append(body)
            validity = "https://" + self.headers["Host"] + "/_matrix/identity/v2/pubkey/isvalid"
            return self.reply(200, {"token": "tok%d" % len(invites), "display_name": "d...@e...",
                                    "public_keys": [{"public_key": public_key, "key_validity_url": validity}]})
        self.reply(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
    def log_message(self, *args):
        pass
server = HTTPServer(("127.0.0.1", 0), H)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
open(port_file, "w").write(str(server.server_address[1]))
server.serve_forever()
"#;

struct IdentityServer {
    child: Child,
    /// `localhost:<port>`, as clients name it.
    name: String,
    /// The key it signs bound third-party invites with.
    key: Key,
    _ca: TestCa,
}

impl IdentityServer {
    async fn start() -> IdentityServer {
        let ca = TestCa::new();
        let port_file = ca.path("port");
        let key = Key::new();
        let child = Command::new("python3")
            .args(["-c", IDENTITY_SERVER])
            .arg(ca.path("cert.pem"))
            .arg(ca.path("key.pem"))
            .arg(&port_file)
            .arg(public_key(&key))
            .stdout(Stdio::null())
            .spawn()
            .expect("run python3");
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(&port_file)
                && !port.is_empty()
            {
                break port;
            }
            assert!(Instant::now() < deadline, "the identity server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        IdentityServer { child, name: format!("localhost:{port}"), key, _ca: ca }
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap()
    }

    /// A test-only call: `/_test/bind` (a binding made out of band) or `/_test/revoke`.
    async fn test_call(&self, what: &str, body: Value) {
        let url = format!("https://{}/_test/{what}", self.name);
        assert!(Self::client().post(url).json(&body).send().await.unwrap().status().is_success());
    }

    /// The invites stored with it.
    async fn invites(&self) -> Vec<Value> {
        let url = format!("https://{}/_test/state", self.name);
        let state: Value = Self::client().get(url).send().await.unwrap().json().await.unwrap();
        state["invites"].as_array().cloned().unwrap_or_default()
    }

    /// Its bindings (`"medium address" -> mxid`) and the requests it received.
    async fn state(&self) -> (Value, Vec<Value>) {
        let state: Value = Self::client()
            .get(format!("https://{}/_test/state", self.name))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (state["bindings"].clone(), state["requests"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for IdentityServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn bind(server: &Server, user: &User, id_server: &str, sid: &str, token: &str) -> (u16, Value) {
    let body = json!({"id_server": id_server, "id_access_token": token, "sid": sid, "client_secret": "secret"});
    server.post("/_matrix/client/v3/account/3pid/bind", Some(&user.token), body).await
}

/// Loopback is allowed for outbound requests; the identity server's certificate is from a CA
/// only the test knows, hence the insecure client (as sytest runs Synapse).
const CONFIG: &str = "ip_range_whitelist: ['127.0.0.0/8']\nuse_insecure_ssl_client_just_for_testing_do_not_use: true\n";

#[tokio::test]
async fn threepids_are_bound_and_unbound_through_identity_servers() {
    let is = IdentityServer::start().await;
    let server = Server::start_with(CONFIG).await;
    let alice = server.register("alice").await;
    let alice_email = json!({"email alice@example.com": alice.user_id});

    // The identity server's refusals reach the client as it gave them; nothing is bound.
    let (s, body) = bind(&server, &alice, &is.name, "s1", "bad-token").await;
    assert_eq!((s, body["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "{body}");
    let (s, body) = bind(&server, &alice, &is.name, "nope", "good-token").await;
    assert_eq!((s, body["errcode"].as_str()), (400, Some("M_NO_VALID_SESSION")), "{body}");
    assert_eq!(is.state().await.0, json!({}));
    // Bad requests never leave the homeserver.
    let (s, body) = bind(&server, &alice, "evil.test@127.0.0.1", "s1", "good-token").await;
    assert_eq!((s, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let (s, body) = server
        .post("/_matrix/client/v3/account/3pid/bind", Some(&alice.token), json!({"id_server": is.name, "sid": "s1"}))
        .await;
    assert_eq!((s, body["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{body}");
    let (s, _) = server.post("/_matrix/client/v3/account/3pid/bind", None, json!({})).await;
    assert_eq!(s, 401);

    // Bound with the user's identity-server token and Matrix ID.
    let (s, body) = bind(&server, &alice, &is.name, "s1", "good-token").await;
    assert_eq!((s, &body), (200, &json!({})));
    let (bindings, requests) = is.state().await;
    assert_eq!(bindings, alice_email);
    assert_eq!(requests.last().unwrap()["body"]["mxid"], alice.user_id.as_str());

    // Someone else cannot unbind Alice's address: the identity server is told who asks.
    let bob = server.register("bob").await;
    let (s, body) = server
        .post(
            "/_matrix/client/v3/account/3pid/unbind",
            Some(&bob.token),
            json!({"medium": "email", "address": "alice@example.com", "id_server": is.name}),
        )
        .await;
    assert_eq!((s, &body), (200, &json!({"id_server_unbind_result": "no-support"})));
    assert_eq!(is.state().await.0, alice_email);
    // Without a named server, Bob has nothing bound anywhere.
    let (s, body) = server
        .post(
            "/_matrix/client/v3/account/3pid/unbind",
            Some(&bob.token),
            json!({"medium": "email", "address": "alice@example.com"}),
        )
        .await;
    assert_eq!((s, &body), (200, &json!({"id_server_unbind_result": "no-support"})));

    // Alice's unbind goes to where she bound it, signed by the homeserver.
    let (s, body) = server
        .post(
            "/_matrix/client/v3/account/3pid/unbind",
            Some(&alice.token),
            json!({"medium": "email", "address": "alice@example.com"}),
        )
        .await;
    assert_eq!((s, &body), (200, &json!({"id_server_unbind_result": "success"})));
    let (bindings, requests) = is.state().await;
    assert_eq!(bindings, json!({}));
    let auth = requests.last().unwrap()["auth"].as_str().unwrap().to_owned();
    assert!(auth.starts_with("X-Matrix origin=\"test\""), "{auth}");
    assert!(auth.contains(&format!("destination=\"{}\"", is.name)), "{auth}");

    // Bound again, then deactivation unbinds it.
    assert_eq!(bind(&server, &alice, &is.name, "s1", "good-token").await.0, 200);
    let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "password"});
    let (s, body) =
        server.post("/_matrix/client/v3/account/deactivate", Some(&alice.token), json!({"auth": auth})).await;
    assert_eq!((s, &body), (200, &json!({"id_server_unbind_result": "success"})));
    assert_eq!(is.state().await.0, json!({}));
}

#[tokio::test]
async fn identity_servers_with_untrusted_certificates_are_refused() {
    let is = IdentityServer::start().await;
    // Certificates are checked by default: the test CA is nobody's root.
    let server = Server::start_with("ip_range_whitelist: ['127.0.0.0/8']\n").await;
    let alice = server.register("alice").await;
    let (s, body) = bind(&server, &alice, &is.name, "s1", "good-token").await;
    assert_eq!((s, body["error"].as_str()), (502, Some("Failed to contact identity server")), "{body}");
    assert!(is.state().await.1.is_empty(), "no request reached it");
    // And loopback is blocked unless allowed.
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let (s, _) = bind(&server, &alice, &is.name, "s1", "good-token").await;
    assert_eq!(s, 502);
    assert!(is.state().await.1.is_empty());
}

/// The identity server's call once `mxid` bound the address the invite `token` was for,
/// signed with `key`.
async fn onbind(
    server: &Server,
    is: &IdentityServer,
    key: &Key,
    room: &str,
    sender: &str,
    mxid: &str,
    token: &str,
) -> (u16, Value) {
    let mut signed = canonical(json!({"mxid": mxid, "token": token}));
    ruma::signatures::sign_json(&is.name, &key.pair, &mut signed).unwrap();
    let invite = json!({
        "medium": "email", "address": "dave@example.com", "mxid": mxid, "room_id": room,
        "sender": sender, "signed": signed,
    });
    let body = json!({"medium": "email", "address": "dave@example.com", "mxid": mxid, "invites": [invite]});
    server.post("/_matrix/federation/v1/3pid/onbind", None, body).await
}

async fn membership(server: &Server, user: &User, room: &str, member: &str) -> (u16, Value) {
    server.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{member}"), Some(&user.token)).await
}

#[tokio::test]
async fn third_party_invites_reach_bound_users_and_are_exchanged_when_bound() {
    let is = IdentityServer::start().await;
    let server = Server::start_with(CONFIG).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let room = server.create_room(&alice, json!({"preset": "private_chat"})).await;
    let invite = |address: &str, token: &str| json!({"id_server": is.name, "id_access_token": token, "medium": "email", "address": address});
    let invite_path = format!("/_matrix/client/v3/rooms/{room}/invite");

    // An address bound to a Matrix ID invites that user (looked up hashed with the pepper).
    is.test_call("bind", json!({"medium": "email", "address": "bob@example.com", "mxid": bob.user_id})).await;
    let (s, body) = server.post(&invite_path, Some(&alice.token), invite("bob@example.com", "good-token")).await;
    assert_eq!((s, &body), (200, &json!({})), "{body}");
    assert_eq!(membership(&server, &alice, &room, &bob.user_id).await.1["membership"], "invite");
    assert_eq!(server.join(&bob, &room).await.0, 200);

    // Refused: a non-member (before the identity server hears of it), a bad token, a missing one.
    let (s, body) = server.post(&invite_path, Some(&carol.token), invite("x@example.com", "good-token")).await;
    assert_eq!((s, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    // A token the identity server does not know: its refusal reaches the client (as Synapse,
    // whose lookup failure counts as no binding and whose store-invite then fails).
    let (s, body) = server.post(&invite_path, Some(&alice.token), invite("x@example.com", "bad-token")).await;
    assert_eq!((s, body["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "{body}");
    let mut missing = invite("x@example.com", "good-token");
    missing.as_object_mut().unwrap().remove("id_access_token");
    let (s, body) = server.post(&invite_path, Some(&alice.token), missing).await;
    assert_eq!((s, body["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{body}");
    assert!(is.invites().await.is_empty(), "nothing stored");

    // An unbound address: the invite is stored with the identity server and announced.
    let (s, body) = server.post(&invite_path, Some(&alice.token), invite("dave@example.com", "good-token")).await;
    assert_eq!(s, 200, "{body}");
    let stored = is.invites().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0]["sender"].as_str(), stored[0]["room_id"].as_str()),
        (Some(alice.user_id.as_str()), Some(room.as_str()))
    );
    assert_eq!(stored[0]["room_join_rules"], "invite");
    let (s, tpi) = server
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.third_party_invite/tok1"), Some(&bob.token))
        .await;
    assert_eq!(s, 200, "{tpi}");
    assert_eq!(
        (tpi["display_name"].as_str(), tpi["public_key"].as_str()),
        (Some("d...@e..."), Some(public_key(&is.key).as_str()))
    );

    // Bound later: a signature by another key, or by a revoked key, invites nobody.
    let (s, body) = onbind(&server, &is, &Key::new(), &room, &alice.user_id, &dave.user_id, "tok1").await;
    assert_eq!(s, 403, "{body}");
    is.test_call("revoke", json!({"revoked": true})).await;
    let (s, body) = onbind(&server, &is, &is.key, &room, &alice.user_id, &dave.user_id, "tok1").await;
    assert_eq!((s, body["error"].as_str()), (403, Some("Third party certificate was invalid")), "{body}");
    is.test_call("revoke", json!({"revoked": false})).await;
    // A token no invite has, and a sender who did not make the invite.
    assert_eq!(onbind(&server, &is, &is.key, &room, &alice.user_id, &dave.user_id, "tok9").await.0, 403);
    assert_eq!(onbind(&server, &is, &is.key, &room, &bob.user_id, &dave.user_id, "tok1").await.0, 403);
    assert_eq!(membership(&server, &alice, &room, &dave.user_id).await.0, 404);

    // The inviter has left; the properly signed call still invites Dave, as Alice.
    let (s, _) = server.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&alice.token), json!({})).await;
    assert_eq!(s, 200);
    let (s, body) = onbind(&server, &is, &is.key, &room, &alice.user_id, &dave.user_id, "tok1").await;
    assert_eq!((s, &body), (200, &json!({})), "{body}");
    let (s, member) = membership(&server, &bob, &room, &dave.user_id).await;
    assert_eq!((s, member["membership"].as_str()), (200, Some("invite")), "{member}");
    assert_eq!(member["third_party_invite"]["display_name"], "d...@e...");
    assert_eq!(server.join(&dave, &room).await.0, 200);

    // createRoom's invite_3pid takes the same path.
    let (s, created) = server
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&bob.token),
            json!({"invite_3pid": [invite("carol@example.com", "good-token")]}),
        )
        .await;
    assert_eq!(s, 200, "{created}");
    assert_eq!(is.invites().await.len(), 2);
}

#[tokio::test]
async fn modules_judge_third_party_invites_as_on_synapse() {
    let is = IdentityServer::start().await;
    let server = Server::start_with(&format!(
        "{CONFIG}modules:\n  - module: rules.Rules\n  - module: scripted.Scripted\n    config:\n      label: tp\n      returns:\n        user_may_send_3pid_invite: \"False if args[2].startswith('spam@') else NOT_SPAM\"\n"
    ))
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({"preset": "private_chat"})).await;
    let invite = |address: &str| json!({"id_server": is.name, "id_access_token": "good-token", "medium": "email", "address": address});
    let path = format!("/_matrix/client/v3/rooms/{room}/invite");

    // check_threepid_can_be_invited refuses before the identity server is asked.
    let (s, body) = server.post(&path, Some(&alice.token), invite("eve@blocked.example")).await;
    assert_eq!((s, body["error"].as_str()), (403, Some("Cannot invite this 3PID")), "{body}");
    // user_may_send_3pid_invite refuses an unbound address, with its arguments as Synapse's.
    let (s, body) = server.post(&path, Some(&alice.token), invite("spam@example.com")).await;
    assert_eq!((s, body["error"].as_str()), (403, Some("Cannot send threepid invite")), "{body}");
    assert!(is.invites().await.is_empty(), "nothing stored for the refused ones");
    // A module that raises does not object; an allowed address is invited.
    let (s, body) = server.post(&path, Some(&alice.token), invite("raise@example.com")).await;
    assert_eq!(s, 200, "{body}");
    // A bound address is a Matrix user's invite: user_may_send_3pid_invite is not asked.
    is.test_call("bind", json!({"medium": "email", "address": "spam@bound.example", "mxid": bob.user_id})).await;
    let (s, body) = server.post(&path, Some(&alice.token), invite("spam@bound.example")).await;
    assert_eq!(s, 200, "{body}");

    let (_, seen) = server.get("/_synapse/client/rules/seen", None).await;
    assert_eq!(seen["threepids"][0], json!(["email", "eve@blocked.example", true]), "{seen}");
    let (_, calls) = server.get("/_synapse/client/py/tp/calls", None).await;
    let asked: Vec<&Value> =
        calls.as_array().unwrap().iter().filter(|c| c["callback"] == "user_may_send_3pid_invite").collect();
    assert_eq!(asked.len(), 2, "{calls}");
    assert_eq!(asked[0]["args"], json!([alice.user_id, "email", "spam@example.com", room]), "{calls}");
}
