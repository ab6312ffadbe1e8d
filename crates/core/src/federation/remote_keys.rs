//! Other servers' signing keys: fetched from each server's `/_matrix/key/v2/server` (checked to
//! be signed by themselves), cached in storage until `valid_until_ts`, and used to check
//! `X-Matrix` requests and the signatures of received events.
//!
//! Keys are fetched directly from the server they belong to (no notary is asked). A server
//! whose keys cannot be fetched is not asked again for ten seconds, so a flood of requests
//! claiming to come from it costs one fetch.

use std::collections::BTreeMap;
use std::time::Duration;

use ruma::CanonicalJsonObject;
use ruma::room_version_rules::RoomVersionRules;
use ruma::serde::Base64;
use serde_json::Value;

use super::{XMatrix, canonical_object, unauthorized, verify_request};
use crate::server::now_ms;
use crate::{Error, ErrorKind, Homeserver, Result};

/// How long a failed fetch of a server's keys is remembered.
const FAILED_FETCH_BACKOFF_MS: i64 = 10_000;

/// A received event's signatures checked out; `Signatures` means its content hash did not
/// match (the event was redacted on the way, or tampered with) and only the redacted form may
/// be kept.
pub(crate) use ruma::signatures::Verified;

impl Homeserver {
    /// The public keys of `server` (key ID -> unpadded base64) valid now, fetching them when
    /// the cache has none valid or lacks `wanted`.
    pub(crate) async fn server_verify_keys(
        &self,
        server: &str,
        wanted: Option<&str>,
    ) -> Result<BTreeMap<String, String>> {
        if server == self.server_name() {
            // What this server signed with its old keys (imported history) checks too.
            let (id, key) = self.verify_key();
            let old = self.config.federation.old_signing_keys.iter().map(|(id, (key, _))| (id.clone(), key.clone()));
            return Ok(old.chain([(id.to_owned(), key.to_owned())]).collect());
        }
        let now = now_ms();
        let cached = {
            let s = server.to_owned();
            self.db(move |st| st.server_keys(&s)).await?
        };
        let valid: BTreeMap<String, String> =
            cached.into_iter().filter(|(_, _, until)| *until > now).map(|(id, key, _)| (id, key)).collect();
        if !valid.is_empty() && wanted.is_none_or(|w| valid.contains_key(w)) {
            return Ok(valid);
        }
        {
            let failed = self.federation.key_fetch_failures.lock().unwrap_or_else(|p| p.into_inner());
            if failed.get(server).is_some_and(|at| now - at < FAILED_FETCH_BACKOFF_MS) {
                return Err(unauthorized(format!("Could not fetch the keys of {server} (recently failed)")));
            }
        }
        match self.fetch_server_keys(server).await {
            Ok(fetched) => Ok(fetched),
            Err(e) => {
                self.federation
                    .key_fetch_failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(server.to_owned(), now);
                Err(e)
            }
        }
    }

    /// Fetches `server`'s keys from itself, checks they are signed by themselves, and caches
    /// them.
    async fn fetch_server_keys(&self, server: &str) -> Result<BTreeMap<String, String>> {
        let body = self
            .federation
            .client
            .get_unsigned(server, "/_matrix/key/v2/server")
            .await
            .map_err(|e| unauthorized(format!("Could not fetch the keys of {server}: {e}")))?;
        // An expired answer is kept too (a notary passes on the latest it has, as Synapse's),
        // but never used to verify.
        let keys = parse_server_keys(server, &body, i64::MIN)?;
        let valid_until = body["valid_until_ts"].as_i64().unwrap_or_default();
        let response = body.to_string();
        let rows: Vec<(String, String, i64)> =
            keys.iter().map(|(id, (key, until))| (id.clone(), key.clone(), *until)).collect();
        let s = server.to_owned();
        self.db(move |st| st.store_server_keys(&s, &rows, (&response, valid_until))).await?;
        if valid_until <= now_ms() {
            return Err(unauthorized(format!("Keys of {server}: expired")));
        }
        Ok(keys.into_iter().map(|(id, (key, _))| (id, key)).collect())
    }

    /// Another server's key answer as a notary passes it on: as that server signed it, with
    /// this server's signature added. Fetched again when the cache has none valid until
    /// `minimum`; when that fails, or gives an expired answer, the latest kept is passed on
    /// (as Synapse's notary: the asker judges its validity).
    pub(crate) async fn notarised_keys(&self, server: &str, minimum: i64) -> Option<Value> {
        let s = server.to_owned();
        let cached = self.db(move |st| st.server_key_response(&s)).await.ok().flatten();
        let response = match cached {
            Some((json, until)) if until >= minimum.max(now_ms()) => json,
            _ => {
                if let Err(e) = self.fetch_server_keys(server).await {
                    tracing::info!(server, error = %e, "a notary request could not refresh a server's keys");
                }
                let s = server.to_owned();
                self.db(move |st| st.server_key_response(&s)).await.ok().flatten()?.0
            }
        };
        let value: Value = serde_json::from_str(&response).ok()?;
        super::sign_json_value(value, self.server_name(), &self.key).ok()
    }

    /// Checks an inbound request's `X-Matrix` authorization and returns the origin.
    pub async fn authenticate_request(
        &self,
        authorization: Option<&str>,
        method: &str,
        uri: &str,
        content: Option<&Value>,
    ) -> Result<String> {
        let header = authorization.ok_or_else(|| unauthorized("Missing Authorization headers"))?;
        let auth = XMatrix::parse(header)?;
        if ruma::ServerName::parse(&auth.origin).is_err() {
            return Err(super::malformed_authorization("Invalid origin in X-Matrix"));
        }
        if auth.origin == self.server_name() {
            return Err(unauthorized("Requests from this server's own name are not accepted"));
        }
        let keys = self.server_verify_keys(&auth.origin, Some(&auth.key)).await?;
        let key = keys.get(&auth.key).ok_or_else(|| unauthorized(format!("Unknown key {}", auth.key)))?;
        verify_request(&auth, key, self.server_name(), method, uri, content)?;
        // A server that talks to us is up: anything queued for it goes now.
        self.wake_destination(&auth.origin);
        Ok(auth.origin)
    }

    /// Checks a received event's hashes and the signatures the room version requires.
    pub(crate) async fn verify_event_signatures(
        &self,
        object: &CanonicalJsonObject,
        rules: &RoomVersionRules,
    ) -> Result<Verified> {
        let servers = ruma::signatures::required_server_signatures_to_verify_event(object, &rules.signatures)
            .map_err(|e| Error::bad_json(format!("Event cannot be verified: {e}")))?;
        let mut key_map = ruma::signatures::PublicKeyMap::new();
        for server in servers {
            let wanted = object
                .get("signatures")
                .and_then(|s| s.as_object())
                .and_then(|s| s.get(server.as_str()))
                .and_then(|s| s.as_object())
                .and_then(|s| s.keys().next().cloned());
            let keys = self.server_verify_keys(server.as_str(), wanted.as_deref()).await?;
            let mut set = BTreeMap::new();
            for (id, key) in keys {
                if let Ok(key) = Base64::parse(&key) {
                    set.insert(id, key);
                }
            }
            key_map.insert(server.to_string(), set);
        }
        ruma::signatures::verify_event(&key_map, object, rules)
            .map_err(|e| Error::new(ErrorKind::Forbidden, format!("Event signature check failed: {e}")))
    }
}

/// The keys in a `/_matrix/key/v2/server` answer, checked: for `server`, signed by one of its
/// own listed keys, not expired. Returns key ID -> (key, valid until).
fn parse_server_keys(server: &str, body: &Value, now: i64) -> Result<BTreeMap<String, (String, i64)>> {
    let bad = |why: &str| unauthorized(format!("Keys of {server}: {why}"));
    if body["server_name"].as_str() != Some(server) {
        return Err(bad("answer is for another server"));
    }
    let valid_until = body["valid_until_ts"].as_i64().ok_or_else(|| bad("no valid_until_ts"))?;
    if valid_until <= now {
        return Err(bad("expired"));
    }
    let verify_keys = body["verify_keys"].as_object().ok_or_else(|| bad("no verify_keys"))?;
    let mut keys = BTreeMap::new();
    let mut key_map = BTreeMap::new();
    for (id, k) in verify_keys {
        let key = k["key"].as_str().ok_or_else(|| bad("malformed verify key"))?;
        let parsed = Base64::parse(key).map_err(|_| bad("malformed verify key"))?;
        key_map.insert(id.clone(), parsed);
        keys.insert(id.clone(), (key.to_owned(), valid_until));
    }
    // Signed by the keys it lists (each signature present must verify).
    let object = canonical_object(body.clone())?;
    let public: ruma::signatures::PublicKeyMap = [(server.to_owned(), key_map)].into_iter().collect();
    ruma::signatures::verify_json(&public, &object).map_err(|e| bad(&format!("bad self-signature: {e}")))?;
    Ok(keys)
}

/// How long callers wait for a remote server by default.
pub(crate) const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::SigningKey;
    use serde_json::json;

    #[test]
    fn fetched_keys_must_be_signed_by_themselves_and_current() {
        let k = SigningKey::from_seed("v1", &[3u8; 32]).unwrap();
        let body = json!({
            "server_name": "a.test",
            "valid_until_ts": 10_000,
            "verify_keys": {k.key_id.clone(): {"key": k.public_key_base64.clone()}},
            "old_verify_keys": {},
        });
        let signed = super::super::sign_json_value(body.clone(), "a.test", &k).unwrap();
        let keys = parse_server_keys("a.test", &signed, 5).unwrap();
        assert_eq!(keys[&k.key_id], (k.public_key_base64.clone(), 10_000));
        assert!(parse_server_keys("b.test", &signed, 5).is_err(), "another server's answer");
        assert!(parse_server_keys("a.test", &signed, 20_000).is_err(), "expired");
        assert!(parse_server_keys("a.test", &body, 5).is_err(), "unsigned");
        let mut tampered = signed.clone();
        tampered["valid_until_ts"] = json!(99_999);
        assert!(parse_server_keys("a.test", &tampered, 5).is_err(), "changed after signing");
        let other = SigningKey::from_seed("v1", &[4u8; 32]).unwrap();
        let forged = super::super::sign_json_value(body, "a.test", &other).unwrap();
        assert!(parse_server_keys("a.test", &forged, 5).is_err(), "signed by another key");
    }
}
