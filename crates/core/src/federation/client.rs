//! The outbound federation client: server discovery, TLS, the IP-range blocklist, and
//! `X-Matrix`-signed requests.
//!
//! Discovery follows the spec's "Resolving server names": an IP literal or a hostname with an
//! explicit port is reached directly; otherwise `/.well-known/matrix/server` may delegate to
//! another host (and port); a hostname without a port is then looked up as SRV
//! `_matrix-fed._tcp.<name>` (then the deprecated `_matrix._tcp.<name>`), whose target and
//! port are connected to; else port 8448. The request's TLS name (SNI, certificate) and `Host`
//! stay the server name (or the delegated one), as the spec asks. SRV lookups use the system's
//! resolver configuration, or the nameserver `MYELIN_DNS_SERVER` names (`ip:port`).
//!
//! Every address a request would connect to is checked against `ip_range_blacklist` (with
//! `ip_range_whitelist` exceptions) after resolution, so a server name cannot aim requests at
//! the local network; this server's own listeners are reached only if allowed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::FederationSettings;
use crate::events::SigningKey;
use crate::outbound::{HostOverrides, IpFilter, error_chain};
use crate::{Error, ErrorKind, Result};

/// Where a server name leads: the `host:port` requests go to (and name in `Host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Destination {
    /// For the URL: a hostname, an IPv4 address or a bracketed IPv6 address.
    pub host: String,
    /// The port.
    pub port: u16,
}

/// One SRV answer: `(priority, weight, port, target)`.
type SrvRecord = (u16, u16, u16, String);

/// The SRV record to use: the lowest priority, then the heaviest weight; none when the only
/// answer is `.` ("no service here").
fn pick_srv(mut records: Vec<SrvRecord>) -> Option<(String, u16)> {
    records.retain(|(_, _, _, target)| !target.is_empty() && target != ".");
    records.sort_by_key(|(priority, weight, _, _)| (*priority, std::cmp::Reverse(*weight)));
    records.into_iter().next().map(|(_, _, port, target)| (target.trim_end_matches('.').to_owned(), port))
}

/// The DNS client for SRV lookups.
fn srv_resolver() -> Option<hickory_resolver::TokioResolver> {
    use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
    use hickory_resolver::name_server::TokioConnectionProvider;
    let provider = TokioConnectionProvider::default();
    let mut builder = match std::env::var("MYELIN_DNS_SERVER").ok().and_then(|s| s.parse::<SocketAddr>().ok()) {
        Some(addr) => {
            let servers = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            hickory_resolver::TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                provider,
            )
        }
        None => match hickory_resolver::TokioResolver::builder_tokio() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no DNS configuration for SRV lookups");
                return None;
            }
        },
    };
    builder.options_mut().timeout = Duration::from_secs(3);
    builder.options_mut().attempts = 1;
    Some(builder.build())
}

impl Destination {
    fn base_url(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }
}

/// How long a discovery answer is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

/// The most bytes read from a remote answer (a `send_join` answer of a big room is large).
const MAX_RESPONSE_BYTES: usize = 100 * 1024 * 1024;

/// Accepts any certificate (`federation_verify_certificates: false`, for test setups).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(settings: &FederationSettings) -> std::result::Result<rustls::ClientConfig, String> {
    tls_config_trusting(settings.verify_certificates, &settings.custom_ca_list)
}

/// TLS for the other outbound HTTPS (push gateways, identity servers, modules' HTTP client):
/// the public roots, or no check at all with `use_insecure_ssl_client_just_for_testing_do_not_use`.
pub(crate) fn web_tls_config(insecure: bool) -> std::result::Result<rustls::ClientConfig, String> {
    tls_config_trusting(!insecure, &[])
}

/// Certificates checked against `custom_ca_list` (the public roots when it is empty), or not
/// at all.
fn tls_config_trusting(
    verify_certificates: bool,
    custom_ca_list: &[std::path::PathBuf],
) -> std::result::Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if !verify_certificates {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    if custom_ca_list.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        // As on Synapse, the custom list replaces the usual roots.
        use rustls_pki_types::pem::PemObject;
        for path in custom_ca_list {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|c| c.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| format!("federation_custom_ca_list: {}: {e}", path.display()))?;
            for cert in certs {
                roots.add(cert).map_err(|e| format!("federation_custom_ca_list: {}: {e}", path.display()))?;
            }
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// A remote server's error answer, kept so callers can pass Matrix errors on.
#[derive(Debug)]
pub(crate) struct RemoteError {
    pub status: u16,
    pub body: Value,
}

/// The federation HTTP client: one connection pool for every destination.
pub(crate) struct FederationClient {
    http: reqwest::Client,
    /// Checked before every request (IP literals); the client's resolver checks hostnames.
    filter: IpFilter,
    discovered: Mutex<HashMap<String, (Destination, Instant)>>,
    srv_targets: HostOverrides,
    dns: Option<hickory_resolver::TokioResolver>,
}

impl FederationClient {
    pub(crate) fn new(settings: &FederationSettings) -> std::result::Result<Self, String> {
        let filter = settings.federation_ip_filter.clone().unwrap_or_else(|| settings.ip_filter.clone());
        let srv_targets = HostOverrides::default();
        let http = filter
            .client_builder(srv_targets.clone())
            .use_preconfigured_tls(tls_config(settings)?)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(FederationClient { http, filter, discovered: Mutex::new(HashMap::new()), srv_targets, dns: srv_resolver() })
    }

    /// Where requests for `server_name` go (cached for an hour).
    pub(crate) async fn discover(&self, server_name: &str) -> Result<Destination> {
        if let Some((d, at)) = self.discovered.lock().unwrap_or_else(|p| p.into_inner()).get(server_name)
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(d.clone());
        }
        let destination = match literal_destination(server_name)? {
            Some(d) => d,
            None => {
                let name = match self.well_known(server_name).await {
                    Some(delegated) => match literal_destination(&delegated)? {
                        Some(d) => return Ok(self.remember(server_name, d)),
                        None => delegated.to_ascii_lowercase(),
                    },
                    None => server_name.to_ascii_lowercase(),
                };
                match self.srv(&name).await {
                    Some((target, port)) => {
                        self.srv_targets.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), target);
                        Destination { host: name, port }
                    }
                    None => Destination { host: name, port: 8448 },
                }
            }
        };
        Ok(self.remember(server_name, destination))
    }

    fn remember(&self, server_name: &str, destination: Destination) -> Destination {
        self.discovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(server_name.to_owned(), (destination.clone(), Instant::now()));
        destination
    }

    /// The SRV target and port of a hostname: `_matrix-fed._tcp`, then `_matrix._tcp`.
    async fn srv(&self, name: &str) -> Option<(String, u16)> {
        let dns = self.dns.as_ref()?;
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let Ok(found) = dns.srv_lookup(format!("{service}.{name}.")).await else { continue };
            let records =
                found.iter().map(|r| (r.priority(), r.weight(), r.port(), r.target().to_utf8())).collect::<Vec<_>>();
            if let Some(picked) = pick_srv(records) {
                return Some(picked);
            }
        }
        None
    }

    /// `m.server` of `https://{name}/.well-known/matrix/server`, if it answers with one.
    async fn well_known(&self, name: &str) -> Option<String> {
        let url = format!("https://{name}/.well-known/matrix/server");
        let response = self.send(self.http.get(&url).timeout(Duration::from_secs(10))).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body: Value = serde_json::from_slice(&response.bytes().await.ok()?).ok()?;
        let delegated = body.get("m.server")?.as_str()?.to_owned();
        ruma::ServerName::parse(&delegated).ok()?;
        Some(delegated)
    }

    /// Sends a request once its address passes the IP filter.
    async fn send(&self, request: reqwest::RequestBuilder) -> std::result::Result<reqwest::Response, String> {
        self.filter.send(&self.http, request).await
    }

    /// An unauthenticated GET (server keys).
    pub(crate) async fn get_unsigned(&self, server_name: &str, path: &str) -> std::result::Result<Value, String> {
        let destination = self.discover(server_name).await.map_err(|e| e.message)?;
        let response = self
            .send(self.http.get(format!("{}{path}", destination.base_url())))
            .await
            .map_err(|e| format!("{server_name}: {e}"))?;
        let status = response.status().as_u16();
        let body = read_json(response).await?;
        if status != 200 {
            return Err(format!("{server_name} answered {status}: {body}"));
        }
        Ok(body)
    }

    /// A signed request to `server_name`; `path` is the path and query as signed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn request(
        &self,
        key: &SigningKey,
        origin: &str,
        server_name: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> std::result::Result<Value, FederationFailure> {
        let destination = self.discover(server_name).await.map_err(|e| FederationFailure::Unreachable(e.message))?;
        let auth = super::sign_request(key, origin, server_name, method, path, body)
            .map_err(|e| FederationFailure::Unreachable(e.message))?;
        let method_value = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| FederationFailure::Unreachable(e.to_string()))?;
        let mut request = self
            .http
            .request(method_value, format!("{}{path}", destination.base_url()))
            .header(reqwest::header::AUTHORIZATION, auth)
            .timeout(timeout);
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string());
        }
        let response =
            self.send(request).await.map_err(|e| FederationFailure::Unreachable(format!("{server_name}: {e}")))?;
        let status = response.status().as_u16();
        if status != 200 {
            // An error answer need not be JSON (a server without the endpoint may answer an
            // empty 404): it is still an answer.
            let body = read_json(response).await.unwrap_or(Value::Null);
            return Err(FederationFailure::Refused(RemoteError { status, body }));
        }
        read_json(response).await.map_err(FederationFailure::Unreachable)
    }
}

impl FederationClient {
    /// A request whose answer is bytes (media): `(content type, body)`, at most `limit`
    /// bytes. Signed when `key` is given.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn request_bytes(
        &self,
        key: Option<&SigningKey>,
        origin: &str,
        server_name: &str,
        path: &str,
        limit: u64,
        timeout: Duration,
    ) -> std::result::Result<(String, bytes::Bytes), FederationFailure> {
        let destination = self.discover(server_name).await.map_err(|e| FederationFailure::Unreachable(e.message))?;
        let mut request = self.http.get(format!("{}{path}", destination.base_url())).timeout(timeout);
        if let Some(key) = key {
            let auth = super::sign_request(key, origin, server_name, "GET", path, None)
                .map_err(|e| FederationFailure::Unreachable(e.message))?;
            request = request.header(reqwest::header::AUTHORIZATION, auth);
        }
        let mut response =
            self.send(request).await.map_err(|e| FederationFailure::Unreachable(format!("{server_name}: {e}")))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        if status != 200 {
            let body = read_json(response).await.unwrap_or(Value::Null);
            return Err(FederationFailure::Refused(RemoteError { status, body }));
        }
        if response.content_length().is_some_and(|l| l > limit) {
            return Err(FederationFailure::Refused(RemoteError { status: 413, body: Value::Null }));
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| FederationFailure::Unreachable(error_chain(&e)))? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(FederationFailure::Refused(RemoteError { status: 413, body: Value::Null }));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((content_type, body.freeze()))
    }
}

impl FederationClient {
    /// A `PUT` to a v2 endpoint that has a v1 form (`send_join`, `send_leave`, `invite`): when
    /// the remote does not know the v2 path (404, or 400 `M_UNRECOGNIZED`), asks the v1 path
    /// with `v1_body` and unwraps its `[200, answer]` form, as Synapse falls back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn put_v2_or_v1(
        &self,
        key: &SigningKey,
        origin: &str,
        server_name: &str,
        v2: (&str, &Value),
        v1: (&str, &Value),
        timeout: Duration,
    ) -> std::result::Result<Value, FederationFailure> {
        match self.request(key, origin, server_name, "PUT", v2.0, Some(v2.1), timeout).await {
            Err(FederationFailure::Refused(RemoteError { status, body }))
                if status == 404 || (status == 400 && body["errcode"] == "M_UNRECOGNIZED") =>
            {
                let answer = self.request(key, origin, server_name, "PUT", v1.0, Some(v1.1), timeout).await?;
                match answer {
                    Value::Array(mut parts) if parts.len() == 2 => Ok(parts.remove(1)),
                    other => {
                        Err(FederationFailure::Unreachable(format!("a v1 answer that is not [code, body]: {other}")))
                    }
                }
            }
            other => other,
        }
    }
}

/// Why a federation request failed.
#[derive(Debug)]
pub(crate) enum FederationFailure {
    /// No answer (discovery, connection, TLS, timeout, blocked address, unreadable body).
    Unreachable(String),
    /// The remote answered with an error.
    Refused(RemoteError),
}

impl FederationFailure {
    /// As a core error for a client: the remote's Matrix error when it gave one.
    pub(crate) fn into_error(self, what: &str) -> Error {
        let bad_gateway = || ErrorKind::Module { status: 502, errcode: "M_UNKNOWN".into() };
        match self {
            // The reason stays in the log: telling a client whether a port was closed, a TLS
            // handshake failed or an address is blocked would let it scan the network.
            FederationFailure::Unreachable(why) => {
                tracing::info!(request = what, reason = %why, "remote server unreachable");
                Error::new(bad_gateway(), format!("{what}: could not reach the remote server"))
            }
            FederationFailure::Refused(RemoteError { status, body }) => {
                let message = body["error"].as_str().unwrap_or("the remote server refused").to_owned();
                let kind = match (status, body["errcode"].as_str()) {
                    (_, Some("M_FORBIDDEN")) | (403, None) => ErrorKind::Forbidden,
                    (_, Some("M_NOT_FOUND")) | (404, None) => ErrorKind::NotFound,
                    (400..=499, Some(code)) => ErrorKind::Module { status, errcode: code.to_owned() },
                    _ => bad_gateway(),
                };
                let mut error = Error::new(kind, format!("{what}: {message}"));
                // A room version the remote room has and this server cannot join is named, so
                // the client can say which (as Synapse relays it).
                if body["errcode"] == "M_INCOMPATIBLE_ROOM_VERSION"
                    && let Some(version) = body["room_version"].as_str()
                {
                    error.fields.insert("room_version".into(), Value::String(version.to_owned()));
                }
                error
            }
        }
    }
}

async fn read_json(response: reqwest::Response) -> std::result::Result<Value, String> {
    if response.content_length().is_some_and(|l| l as usize > MAX_RESPONSE_BYTES) {
        return Err("answer too large".into());
    }
    let bytes = response.bytes().await.map_err(|e| error_chain(&e))?;
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err("answer too large".into());
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))
}

/// The destination of a server name that names its own address: an IP literal (port 8448
/// unless given) or a hostname with an explicit port. `None` when discovery must ask.
fn literal_destination(server_name: &str) -> Result<Option<Destination>> {
    let invalid = || Error::bad_json(format!("Invalid server name {server_name}"));
    if let Some(rest) = server_name.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(invalid)?;
        ip.parse::<std::net::Ipv6Addr>().map_err(|_| invalid())?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| invalid())?,
            None if after.is_empty() => 8448,
            None => return Err(invalid()),
        };
        return Ok(Some(Destination { host: format!("[{ip}]"), port }));
    }
    let (host, port) = match server_name.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| invalid())?)),
        None => (server_name, None),
    };
    if host.is_empty() {
        return Err(invalid());
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(Some(Destination { host: host.to_owned(), port: port.unwrap_or(8448) }));
    }
    Ok(port.map(|port| Destination { host: host.to_ascii_lowercase(), port }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_their_own_address_need_no_lookup() {
        let d = |h: &str, p| Some(Destination { host: h.into(), port: p });
        assert_eq!(literal_destination("1.2.3.4").unwrap(), d("1.2.3.4", 8448));
        assert_eq!(literal_destination("1.2.3.4:99").unwrap(), d("1.2.3.4", 99));
        assert_eq!(literal_destination("[::1]").unwrap(), d("[::1]", 8448));
        assert_eq!(literal_destination("[::1]:8000").unwrap(), d("[::1]", 8000));
        assert_eq!(literal_destination("Example.org:8443").unwrap(), d("example.org", 8443));
        assert_eq!(literal_destination("example.org").unwrap(), None);
        for bad in ["[::1", "[nope]:1", "a:b", ":80", "[::1]x"] {
            assert!(literal_destination(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn srv_answers_are_picked_by_priority_then_weight() {
        let r = |p, w, port, t: &str| (p, w, port, t.to_owned());
        assert_eq!(pick_srv(vec![r(10, 5, 1, "b."), r(5, 1, 2, "a."), r(5, 9, 3, "c.")]), Some(("c".into(), 3)));
        assert_eq!(pick_srv(vec![r(0, 0, 0, ".")]), None, "'.' means no service");
        assert_eq!(pick_srv(vec![]), None);
    }
}
