//! Identity servers: binding a third-party identifier through the homeserver, unbinding it
//! (`/account/3pid/unbind`, `/account/3pid/delete`, deactivation), against an identity server
//! that is a separate HTTPS process (Python's standard library) recording what it was asked.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::federating::TestCa;
use crate::harness::{Server, User};

/// The identity server: `/bind` binds the session's address for a valid bearer token,
/// `/unbind` removes a binding, `/_test/state` shows the bindings and every request's
/// `Authorization` header.
const IDENTITY_SERVER: &str = r#"
import json, ssl, sys
from http.server import HTTPServer, BaseHTTPRequestHandler
cert, key, port_file = sys.argv[1:4]
bindings, requests = {}, []
SESSIONS = {"s1": ("email", "alice@example.com"), "s2": ("email", "other@example.com")}
class H(BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.reply(200, {"bindings": bindings, "requests": requests})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization", "")
        requests.append({"path": self.path, "auth": auth, "body": body})
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
    _ca: TestCa,
}

impl IdentityServer {
    async fn start() -> IdentityServer {
        let ca = TestCa::new();
        let port_file = ca.path("port");
        let child = Command::new("python3")
            .args(["-c", IDENTITY_SERVER])
            .arg(ca.path("cert.pem"))
            .arg(ca.path("key.pem"))
            .arg(&port_file)
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
        IdentityServer { child, name: format!("localhost:{port}"), _ca: ca }
    }

    /// Its bindings (`"medium address" -> mxid`) and the requests it received.
    async fn state(&self) -> (Value, Vec<Value>) {
        let client = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
        let state: Value =
            client.get(format!("https://{}/_test/state", self.name)).send().await.unwrap().json().await.unwrap();
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
    assert_eq!((s, body["error"].as_str()), (500, Some("Failed to contact identity server")), "{body}");
    assert!(is.state().await.1.is_empty(), "no request reached it");
    // And loopback is blocked unless allowed.
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let (s, _) = bind(&server, &alice, &is.name, "s1", "good-token").await;
    assert_eq!(s, 500);
    assert!(is.state().await.1.is_empty());
}
