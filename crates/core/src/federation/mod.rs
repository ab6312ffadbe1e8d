//! Federation's foundations: this server's published keys, and request authentication with
//! `X-Matrix` signatures, both ways.
//!
//! A request between servers is authenticated by signing, with the origin's key, the JSON
//! object `{method, uri, origin, destination, content?}` (the spec's "Request
//! Authentication"); the signature travels in `Authorization: X-Matrix origin=..,
//! destination=.., key=.., sig=..`. [`sign_request`] makes that header; [`XMatrix::parse`] and
//! [`verify_request`] check one against the origin's public key.

mod acl;
pub(crate) mod client;
pub mod destinations;
mod device_lists;
mod history;
mod invites;
pub(crate) mod media;
mod queries;

pub use queries::percent_decode;
pub(crate) mod remote_keys;
pub(crate) mod rooms;
pub(crate) mod sender;
pub(crate) mod transactions;

use std::collections::BTreeMap;

use ruma::CanonicalJsonObject;
use ruma::canonical_json::CanonicalJsonValue;
use ruma::serde::Base64;
use serde_json::{Value, json};

use crate::events::SigningKey;
use crate::server::now_ms;
use crate::{Error, ErrorKind, Homeserver, Result};

/// How long the keys this server publishes are valid for (Synapse's `key_refresh_interval`
/// default): remote servers and notaries cache them for that long.
const KEY_VALIDITY_MS: i64 = 24 * 60 * 60 * 1000;

/// The federation service's in-memory state (`hs.federation`).
pub(crate) struct FederationState {
    /// Requests to other servers (discovery, TLS, signing; see `client`).
    pub(crate) client: client::FederationClient,
    /// Servers whose keys could not be fetched, and when (a cache that spaces retries; see
    /// `remote_keys`).
    pub(crate) key_fetch_failures: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// The oldest timeline events a backfill was asked before (see `rooms::gaps`): asked once
    /// each, so paginating at the start of a room's history does not ask again and again.
    pub(crate) backfilled_before: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The outbound queue's per-destination tasks (see `sender`): the queue is in the database;
    /// the tasks are this process's (several processes must share destinations out).
    pub(crate) outbound: sender::Outbound,
    /// Inbound transactions in progress and answered (see `transactions`; the only copy: a
    /// repeat reaching another process would be handled again).
    pub(crate) inbound: transactions::Inbound,
    /// `rc_federation`, per origin server (the only copy of the counts).
    pub(crate) limiter: crate::ratelimit::FederationLimiter,
    /// The `federation_sender_instances` alive now (only this process until the bus says
    /// otherwise; see `sender`).
    pub(crate) live_senders: std::sync::Mutex<Vec<String>>,
}

impl Homeserver {
    /// `GET /_matrix/key/v2/server`: the current verify key, signed with itself, and the
    /// configured old ones (`old_signing_keys`).
    pub fn server_keys(&self) -> Result<Value> {
        let (key_id, public) = self.verify_key();
        let old: serde_json::Map<String, Value> = self
            .config
            .federation
            .old_signing_keys
            .iter()
            .map(|(id, (key, expired_ts))| (id.clone(), json!({"key": key, "expired_ts": expired_ts})))
            .collect();
        let body = json!({
            "server_name": self.server_name(),
            "valid_until_ts": now_ms() + KEY_VALIDITY_MS,
            "verify_keys": {key_id: {"key": public}},
            "old_verify_keys": old,
        });
        sign_json_value(body, self.server_name(), &self.key)
    }
}

impl Homeserver {
    /// `POST /_matrix/key/v2/query` and `GET /_matrix/key/v2/query/{serverName}`: as a
    /// notary, the keys of each server asked about (`server_keys` maps server names to the key
    /// IDs wanted, with `minimum_valid_until_ts`). This server's own come fresh; another
    /// server's are its cached self-signed answer (fetched if none is valid long enough) with
    /// this server's signature added. A server whose keys cannot be had is left out, as the
    /// spec allows.
    pub async fn query_server_keys(&self, body: &Value) -> Result<Value> {
        let Some(servers) = body.get("server_keys").and_then(Value::as_object) else {
            return Err(Error::bad_json("server_keys must be an object"));
        };
        let mut wanted = Vec::new();
        for (server, criteria) in servers {
            let Some(criteria) = criteria.as_object() else {
                return Err(Error::bad_json(format!("server_keys.{server} must be an object")));
            };
            let mut minimum = 0;
            for (key_id, c) in criteria {
                let ts = &c["minimum_valid_until_ts"];
                if !c.is_object() || !(ts.is_null() || ts.is_i64()) {
                    return Err(Error::bad_json(format!("server_keys.{server}.{key_id} is not query criteria")));
                }
                minimum = minimum.max(ts.as_i64().unwrap_or(0));
            }
            wanted.push((server.clone(), minimum));
        }
        let mut found = Vec::new();
        for (server, minimum) in wanted {
            if server == self.server_name() {
                found.push(self.server_keys()?);
            } else if ruma::ServerName::parse(&server).is_ok()
                && let Some(keys) = self.notarised_keys(&server, minimum).await
            {
                found.push(keys);
            }
        }
        Ok(json!({"server_keys": found}))
    }
}

/// `GET /_matrix/federation/v1/version`.
pub fn version() -> Value {
    json!({"server": {"name": "Myelin", "version": env!("CARGO_PKG_VERSION")}})
}

/// Signs a JSON object as `entity` (adding to its `signatures`).
pub(crate) fn sign_json_value(value: Value, entity: &str, key: &SigningKey) -> Result<Value> {
    let mut object = canonical_object(value)?;
    ruma::signatures::sign_json(entity, &key.pair, &mut object).map_err(Error::internal)?;
    serde_json::to_value(&object).map_err(Error::internal)
}

pub(crate) fn canonical_object(value: Value) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(value).map_err(|e| Error::bad_json(format!("Not canonical JSON: {e}")))? {
        CanonicalJsonValue::Object(o) => Ok(o),
        _ => Err(Error::bad_json("Expected a JSON object")),
    }
}

/// The object a request's signature covers.
fn request_object(method: &str, uri: &str, origin: &str, destination: &str, content: Option<&Value>) -> Value {
    let mut object = json!({"method": method, "uri": uri, "origin": origin, "destination": destination});
    if let Some(content) = content {
        object["content"] = content.clone();
    }
    object
}

/// The `Authorization` header value for a request from this server to `destination`. `uri` is
/// the path and query, as sent.
pub fn sign_request(
    key: &SigningKey,
    origin: &str,
    destination: &str,
    method: &str,
    uri: &str,
    content: Option<&Value>,
) -> Result<String> {
    let signed = sign_json_value(request_object(method, uri, origin, destination, content), origin, key)?;
    let sig = signed["signatures"][origin][&key.key_id]
        .as_str()
        .ok_or_else(|| Error::internal("signing produced no signature"))?
        .to_owned();
    Ok(format!(r#"X-Matrix origin="{origin}",destination="{destination}",key="{}",sig="{sig}""#, key.key_id))
}

/// A parsed `X-Matrix` authorization header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrix {
    /// The sending server.
    pub origin: String,
    /// The server the request was for; older servers leave it out.
    pub destination: Option<String>,
    /// `ed25519:<version>`.
    pub key: String,
    /// Unpadded base64 signature.
    pub sig: String,
}

pub(crate) fn unauthorized(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unauthorized, message)
}

/// A malformed `X-Matrix` header: 400 `M_UNAUTHORIZED`, as Synapse answers it (an unsigned
/// or wrongly signed request is 401).
pub(crate) fn malformed_authorization(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Module { status: 400, errcode: "M_UNAUTHORIZED".into() }, message)
}

impl XMatrix {
    /// Parses `X-Matrix k=v,k="v",...` (values quoted or bare; unknown keys ignored).
    pub fn parse(header: &str) -> Result<XMatrix> {
        let rest = header
            .strip_prefix("X-Matrix ")
            .or_else(|| header.strip_prefix("X-Matrix\t"))
            .ok_or_else(|| unauthorized("Authorization is not X-Matrix"))?;
        let mut fields = BTreeMap::new();
        for part in split_params(rest) {
            let (k, v) = part.split_once('=').ok_or_else(|| malformed_authorization("Malformed X-Matrix parameter"))?;
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            fields.insert(k.trim().to_ascii_lowercase(), v.replace("\\\"", "\"").replace("\\\\", "\\"));
        }
        let mut take = |k: &str| fields.remove(k);
        let origin = take("origin").ok_or_else(|| malformed_authorization("X-Matrix without origin"))?;
        let key = take("key").ok_or_else(|| malformed_authorization("X-Matrix without key"))?;
        let sig = take("sig").ok_or_else(|| malformed_authorization("X-Matrix without sig"))?;
        Ok(XMatrix { origin, destination: take("destination"), key, sig })
    }
}

/// Splits on commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

/// Checks a request's `X-Matrix` signature against the origin's public key (unpadded base64,
/// for `auth.key`), and that it was meant for `me`.
pub fn verify_request(
    auth: &XMatrix,
    public_key: &str,
    me: &str,
    method: &str,
    uri: &str,
    content: Option<&Value>,
) -> Result<()> {
    if auth.destination.as_deref().is_some_and(|d| d != me) {
        return Err(unauthorized(format!(
            "Request is for {}, not this server",
            auth.destination.as_deref().unwrap_or("")
        )));
    }
    let object = request_object(method, uri, &auth.origin, auth.destination.as_deref().unwrap_or(me), content);
    let mut signed = canonical_object(object)?;
    signed.insert(
        "signatures".into(),
        CanonicalJsonValue::Object(
            [(
                auth.origin.clone(),
                CanonicalJsonValue::Object(
                    [(auth.key.clone(), CanonicalJsonValue::String(auth.sig.clone()))].into_iter().collect(),
                ),
            )]
            .into_iter()
            .collect(),
        ),
    );
    let key = Base64::parse(public_key).map_err(|_| unauthorized("Malformed public key"))?;
    let keys: ruma::signatures::PublicKeyMap =
        [(auth.origin.clone(), [(auth.key.clone(), key)].into_iter().collect())].into_iter().collect();
    ruma::signatures::verify_json(&keys, &signed).map_err(|e| unauthorized(format!("Invalid X-Matrix signature: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_seed("k1", &rand::random::<[u8; 32]>()).unwrap()
    }

    #[test]
    fn a_signed_request_verifies_and_a_changed_one_does_not() {
        let k = key();
        let body = json!({"pdus": [], "edus": [{"edu_type": "m.typing"}]});
        let header = sign_request(&k, "a.test", "b.test", "PUT", "/_matrix/federation/v1/send/1", Some(&body)).unwrap();
        let auth = XMatrix::parse(&header).unwrap();
        assert_eq!(auth.origin, "a.test");
        assert_eq!(auth.destination.as_deref(), Some("b.test"));
        assert_eq!(auth.key, k.key_id);
        let public = k.public_key_base64.clone();
        verify_request(&auth, &public, "b.test", "PUT", "/_matrix/federation/v1/send/1", Some(&body)).unwrap();

        // Each part of the signed object matters.
        let bad = |method: &str, uri: &str, me: &str, content: Option<&Value>| {
            verify_request(&auth, &public, me, method, uri, content).unwrap_err().kind
        };
        assert_eq!(bad("POST", "/_matrix/federation/v1/send/1", "b.test", Some(&body)), ErrorKind::Unauthorized);
        assert_eq!(bad("PUT", "/_matrix/federation/v1/send/2", "b.test", Some(&body)), ErrorKind::Unauthorized);
        assert_eq!(bad("PUT", "/_matrix/federation/v1/send/1", "c.test", Some(&body)), ErrorKind::Unauthorized);
        assert_eq!(bad("PUT", "/_matrix/federation/v1/send/1", "b.test", Some(&json!({}))), ErrorKind::Unauthorized);
        assert_eq!(bad("PUT", "/_matrix/federation/v1/send/1", "b.test", None), ErrorKind::Unauthorized);
        // Another server's key does not verify it, and a forged origin neither.
        let other = key();
        let err = verify_request(
            &auth,
            &other.public_key_base64,
            "b.test",
            "PUT",
            "/_matrix/federation/v1/send/1",
            Some(&body),
        );
        assert!(err.is_err());
        let forged = XMatrix { origin: "evil.test".into(), ..auth.clone() };
        assert!(
            verify_request(&forged, &public, "b.test", "PUT", "/_matrix/federation/v1/send/1", Some(&body)).is_err()
        );
    }

    #[test]
    fn headers_parse_as_servers_send_them() {
        let a = XMatrix::parse(r#"X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF...""#).unwrap();
        assert_eq!(a.origin, "origin.hs.example.com");
        assert_eq!(a.destination.as_deref(), Some("destination.hs.example.com"));
        assert_eq!((a.key.as_str(), a.sig.as_str()), ("ed25519:key1", "ABCDEF..."));
        // Bare values, spaces, other order, no destination (older servers), unknown keys.
        let b = XMatrix::parse("X-Matrix key=ed25519:k , sig=c2ln, origin=o.test, extra=1").unwrap();
        assert_eq!(
            (b.origin.as_str(), b.destination, b.key.as_str(), b.sig.as_str()),
            ("o.test", None, "ed25519:k", "c2ln")
        );
        // Not X-Matrix at all: 401 (no credentials); X-Matrix but malformed: 400, as Synapse.
        assert_eq!(XMatrix::parse("Bearer abc").unwrap_err().kind, ErrorKind::Unauthorized);
        for bad in ["X-Matrix origin=o", "X-Matrix key=k,sig=s", "X-Matrix origin"] {
            let kind = XMatrix::parse(bad).unwrap_err().kind;
            assert_eq!(kind, ErrorKind::Module { status: 400, errcode: "M_UNAUTHORIZED".into() }, "{bad}");
        }
    }

    #[test]
    fn published_keys_are_signed_by_themselves() {
        let k = key();
        let body = sign_json_value(
            json!({"server_name": "a.test", "valid_until_ts": 1, "verify_keys": {k.key_id.clone(): {"key": k.public_key_base64}}}),
            "a.test",
            &k,
        )
        .unwrap();
        let object = canonical_object(body).unwrap();
        let keys: ruma::signatures::PublicKeyMap = [(
            "a.test".to_owned(),
            [(k.key_id.clone(), Base64::parse(&k.public_key_base64).unwrap())].into_iter().collect(),
        )]
        .into_iter()
        .collect();
        ruma::signatures::verify_json(&keys, &object).unwrap();
    }
}
