//! What the homeserver asks appservices: whether a user or alias exists (so a bridge can
//! create it on demand), third-party protocol lookups, and the ping a service asks for.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::Registration;
use crate::error::{Error, ErrorKind};
use crate::server::url_encode;
use crate::{Homeserver, Requester, Result};

/// How long a lookup may take before the service counts as not knowing.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

impl Homeserver {
    /// Asks the appservices whose alias namespace holds `alias` whether it exists (`GET
    /// /_matrix/app/v1/rooms/{alias}`); true as soon as one answers 200 (it has created it).
    pub(crate) async fn query_appservices_for_alias(&self, alias: &str) -> bool {
        for registration in self.appservices().iter().filter(|r| r.is_alias_in_namespace(alias)) {
            if self.query_exists(registration, &format!("rooms/{}", url_encode(alias))).await {
                return true;
            }
        }
        false
    }

    /// Asks an appservice whether a user of its namespace exists (`GET
    /// /_matrix/app/v1/users/{userId}`), for a local user not registered yet.
    pub(crate) async fn query_appservice_for_user(&self, registration: &Registration, user_id: &str) -> bool {
        self.query_exists(registration, &format!("users/{}", url_encode(user_id))).await
    }

    /// One existence query: any 2xx answer means yes; errors, timeouts and 404 mean no.
    async fn query_exists(&self, registration: &Registration, path: &str) -> bool {
        let Some(url) = &registration.url else { return false };
        let request = self
            .to_appservice(self.appservices.http.get(format!("{url}/_matrix/app/v1/{path}")), registration)
            .timeout(QUERY_TIMEOUT);
        match request.send().await {
            Ok(response) if response.status().is_success() => true,
            Ok(response) => {
                if response.status().as_u16() != 404 {
                    tracing::warn!(appservice = %registration.id, path, status = %response.status(), "appservice query failed");
                }
                false
            }
            Err(e) => {
                tracing::warn!(appservice = %registration.id, path, error = %e, "appservice query failed");
                false
            }
        }
    }

    /// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`: the homeserver pings the
    /// service (`POST /_matrix/app/v1/ping`) and reports how long it took; a transaction
    /// waiting on a failing service is retried at once.
    pub async fn ping_appservice(&self, requester: &Requester, id: &str, txn_id: Option<&str>) -> Result<Value> {
        let Some(registration) = requester.app_service.as_ref() else {
            return Err(Error::forbidden("Only application services can use the /appservice/ping endpoint"));
        };
        if registration.id != id {
            return Err(Error::forbidden("Mismatching application service ID in path"));
        }
        let Some(url) = &registration.url else {
            return Err(Error::new(
                ErrorKind::Module { status: 400, errcode: "M_URL_NOT_SET".into() },
                "The application service does not have a URL set",
            ));
        };
        let started = Instant::now();
        let sent = self
            .to_appservice(self.appservices.http.post(format!("{url}/_matrix/app/v1/ping")), registration)
            .json(&json!({"transaction_id": txn_id}))
            .send()
            .await;
        let failure = |status: u16, errcode: &str, message: String| {
            Error::new(ErrorKind::Module { status, errcode: errcode.into() }, message)
        };
        match sent {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                let mut fields = Map::new();
                fields.insert("status".into(), json!(status.as_u16()));
                fields.insert("body".into(), json!(body));
                let reason = status.canonical_reason().unwrap_or_default();
                return Err(
                    failure(502, "M_BAD_STATUS", format!("HTTP {} {reason}", status.as_u16())).with_fields(fields)
                );
            }
            Err(e) if e.is_timeout() => return Err(failure(504, "M_CONNECTION_TIMEOUT", format!("Timed out: {e}"))),
            Err(e) => return Err(failure(502, "M_CONNECTION_FAILED", format!("ConnectError: {e}"))),
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        self.wake_appservice_sender(&registration.id);
        Ok(json!({"duration_ms": duration_ms}))
    }

    /// `GET /thirdparty/protocols` (`only` set: `/thirdparty/protocol/{protocol}`): each
    /// protocol's metadata from the appservices that declare it (`GET
    /// /_matrix/app/v1/thirdparty/protocol/{protocol}`), their `instances` merged, each
    /// instance given Synapse's `instance_id` (`{appservice ID}|{network_id}`).
    pub async fn thirdparty_protocols(&self, only: Option<&str>) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        for registration in self.appservices() {
            for protocol in &registration.protocols {
                if only.is_some_and(|o| o != protocol) {
                    continue;
                }
                let Some(mut info) = self.protocol_metadata(registration, protocol).await else { continue };
                match out.get_mut(protocol) {
                    // The other fields are the same across services; only instances add up.
                    Some(Value::Object(existing)) => {
                        if let (Some(Value::Array(more)), Some(Value::Array(all))) =
                            (info.remove("instances"), existing.get_mut("instances"))
                        {
                            all.extend(more);
                        }
                    }
                    _ => {
                        out.insert(protocol.clone(), Value::Object(info));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn protocol_metadata(&self, registration: &Registration, protocol: &str) -> Option<Map<String, Value>> {
        let url = registration.url.as_ref()?;
        let request =
            self.appservices.http.get(format!("{url}/_matrix/app/v1/thirdparty/protocol/{}", url_encode(protocol)));
        let response = self.to_appservice(request, registration).timeout(QUERY_TIMEOUT).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let Ok(Value::Object(mut info)) = response.json::<Value>().await else { return None };
        let Some(Value::Array(instances)) = info.get_mut("instances") else {
            tracing::warn!(appservice = %registration.id, protocol, "protocol metadata without an instances list");
            return None;
        };
        for instance in instances.iter_mut() {
            if let Some(network) = instance.get("network_id").and_then(Value::as_str).map(str::to_owned) {
                instance["instance_id"] = json!(format!("{}|{network}", registration.id));
            }
        }
        Some(info)
    }

    /// `GET /thirdparty/{user|location}/{protocol}?fields...`: the matches of every appservice
    /// that declares the protocol (invalid entries dropped, as Synapse). Without a protocol
    /// no service is asked and the answer is empty, as on Synapse.
    pub async fn thirdparty_query(
        &self,
        kind: &str,
        protocol: Option<&str>,
        fields: &[(String, String)],
    ) -> Result<Vec<Value>> {
        let required = match kind {
            "user" => "userid",
            "location" => "alias",
            _ => return Err(Error::new(ErrorKind::Unrecognized, "Unrecognized request")),
        };
        let Some(protocol) = protocol else { return Ok(vec![]) };
        let mut out = Vec::new();
        for registration in self.appservices().iter().filter(|r| r.protocols.iter().any(|p| p == protocol)) {
            let Some(url) = &registration.url else { continue };
            let request =
                self.appservices.http.get(format!("{url}/_matrix/app/v1/thirdparty/{kind}/{}", url_encode(protocol)));
            let sent = self.to_appservice(request.query(fields), registration).timeout(QUERY_TIMEOUT).send().await;
            let Ok(response) = sent else { continue };
            let Ok(Value::Array(results)) = response.json::<Value>().await else { continue };
            out.extend(results.into_iter().filter(|r| {
                [required, "protocol"].iter().all(|k| r.get(k).is_some_and(Value::is_string))
                    && r.get("fields").is_some_and(Value::is_object)
            }));
        }
        Ok(out)
    }
}
