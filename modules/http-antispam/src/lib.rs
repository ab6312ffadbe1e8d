//! `synapse-http-antispam`, natively: every enabled spam-checker callback is a `POST` of a JSON
//! body to `<base_url>/<callback name>`, and the backend's answer decides.
//!
//! Wire-compatible with the Python module (version 0.5.1): same config keys (`base_url`,
//! `authorization` or `authorization_path`, `enabled_callbacks`, `fail_open`, `async`), same
//! paths and bodies, same `Authorization: Bearer` header, same reading of replies:
//! - a 2xx answer with a JSON body allows;
//! - any other status with a JSON object body denies with that object: its `errcode` (or
//!   `M_FORBIDDEN`) and every other field, `error` included, reach the client;
//! - a non-JSON error body is "Unexpected response from antispam server" (`M_UNKNOWN`), and a
//!   backend that cannot be reached (or a 2xx that is not JSON) is "Failed to connect to
//!   antispam server" (`M_UNKNOWN`), unless `fail_open` names the callback, which then allows;
//!   `check_event_for_spam` fails open by default;
//! - callbacks named in `async` are sent in the background and always allow.
//!
//! It registers as `synapse_http_antispam.HTTPAntispam`, the Python module's own name, so an
//! existing Synapse config works unchanged with no Python at all.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use myelin_module_api::http::{HttpClient, HttpError};
use myelin_module_api::spam::*;
use myelin_module_api::{ConfigError, EventView, Module, ModuleApi, ModuleError};
use serde_json::{Map, Value, json};

/// The module.
pub struct HttpAntispam;

/// The callbacks the Python module implements that Myelin can call.
const SUPPORTED: &[&str] = &[
    "user_may_join_room",
    "user_may_invite",
    "user_may_create_room",
    "user_may_create_room_alias",
    "user_may_publish_room",
    "check_username_for_spam",
    "check_login_for_spam",
    "check_event_for_spam",
    "federated_user_may_invite",
];

/// The Python module's other callbacks: accepted in `enabled_callbacks`, not called yet.
const NOT_YET: &[&str] = &["accept_make_join", "user_may_send_3pid_invite"];

/// Parsed config.
pub struct Config {
    base_url: String,
    authorization: Option<String>,
    enabled: Vec<String>,
    fail_open: HashMap<String, bool>,
    background: HashMap<String, bool>,
}

fn bool_map(config: &Value, key: &str) -> Result<HashMap<String, bool>, ConfigError> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(HashMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::Bool(b) => Ok((k.clone(), *b)),
                _ => Err(ConfigError::at("expected a boolean", &[key, k])),
            })
            .collect(),
        Some(_) => Err(ConfigError::at("expected a mapping of callback names to booleans", &[key])),
    }
}

struct Backend {
    http: HttpClient,
    base_url: String,
    headers: Vec<(String, String)>,
    fail_open: HashMap<String, bool>,
    background: HashMap<String, bool>,
    api: ModuleApi,
}

impl Backend {
    /// One callback's request and the decision its answer means.
    async fn decide(&self, path: &'static str, body: Value) -> Result<Decision, ModuleError> {
        let url = format!("{}/{path}", self.base_url);
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if self.background.get(path).copied().unwrap_or(false) {
            let http = self.http.clone();
            let owned = self.headers.clone();
            self.api.run_in_background(async move {
                let h: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let _ = http.post_json_get_json(&url, &body, &h).await;
            });
            return Ok(Decision::Allow);
        }
        let fail_open = self.fail_open.get(path).copied().unwrap_or(false);
        let fallback = |message: &str| {
            if fail_open {
                Decision::Allow
            } else {
                let mut fields = Map::new();
                fields.insert("error".into(), json!(message));
                Decision::deny_with("M_UNKNOWN", fields)
            }
        };
        match self.http.post_json_get_json(&url, &body, &headers).await {
            Ok(_) => Ok(Decision::Allow),
            Err(HttpError::Status { body, .. }) => match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(mut data)) => {
                    let errcode = match data.remove("errcode") {
                        Some(Value::String(code)) => code,
                        Some(other) => {
                            // The Python module keeps a non-string errcode in the body, where it
                            // overrides the code: mirror that.
                            data.insert("errcode".into(), other);
                            "M_FORBIDDEN".into()
                        }
                        None => "M_FORBIDDEN".into(),
                    };
                    Ok(Decision::deny_with(&errcode, data))
                }
                // A JSON error body that is not an object makes the Python module raise.
                Ok(_) => Err(ModuleError::other("antispam server answered a non-object error body")),
                Err(_) => Ok(fallback("Unexpected response from antispam server")),
            },
            Err(_) => Ok(fallback("Failed to connect to antispam server")),
        }
    }
}

fn event_body(event: &EventView) -> Value {
    // format_event_for_client_v2 plus event_id, as the Python module sends.
    let mut e = Map::new();
    for key in
        ["event_id", "type", "sender", "room_id", "origin_server_ts", "content", "state_key", "redacts", "unsigned"]
    {
        if let Some(v) = event.get(key) {
            e.insert(key.into(), v.clone());
        }
    }
    json!({ "event": e })
}

impl Module for HttpAntispam {
    const NAME: &'static str = "synapse_http_antispam.HTTPAntispam";
    type Config = Config;

    fn parse_config(config: Value) -> Result<Config, ConfigError> {
        let base_url = match config.get("base_url") {
            Some(Value::String(u)) if !u.is_empty() => u.trim_end_matches('/').to_owned(),
            _ => return Err(ConfigError::at("base_url is required", &["base_url"])),
        };
        let authorization = match (config.get("authorization"), config.get("authorization_path")) {
            (Some(Value::String(a)), _) if !a.is_empty() => Some(a.clone()),
            (_, Some(Value::String(path))) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::at(format!("cannot read {path}: {e}"), &["authorization_path"]))?
                    .trim()
                    .to_owned(),
            ),
            _ => None,
        };
        let enabled = match config.get("enabled_callbacks") {
            None | Some(Value::Null) => SUPPORTED.iter().chain(NOT_YET).map(|s| s.to_string()).collect(),
            Some(Value::Array(list)) => {
                let mut out = Vec::new();
                for (i, v) in list.iter().enumerate() {
                    let item = format!("<item {i}>");
                    match v.as_str() {
                        Some(name) if SUPPORTED.contains(&name) || NOT_YET.contains(&name) => out.push(name.to_owned()),
                        _ => return Err(ConfigError::at("unknown callback", &["enabled_callbacks", &item])),
                    }
                }
                out
            }
            Some(_) => return Err(ConfigError::at("expected a list", &["enabled_callbacks"])),
        };
        let mut fail_open = HashMap::from([("check_event_for_spam".to_owned(), true)]);
        fail_open.extend(bool_map(&config, "fail_open")?);
        Ok(Config { base_url, authorization, enabled, fail_open, background: bool_map(&config, "async")? })
    }

    fn new(config: Config, api: &ModuleApi) -> Result<Self, ModuleError> {
        let mut headers = Vec::new();
        if let Some(a) = &config.authorization {
            headers.push(("Authorization".to_owned(), format!("Bearer {a}")));
        }
        let backend = Arc::new(Backend {
            http: api.http_client(),
            base_url: config.base_url,
            headers,
            fail_open: config.fail_open,
            background: config.background,
            api: api.clone(),
        });
        let on = |name: &str| config.enabled.iter().any(|e| e == name);
        let mut cbs = SpamCheckerCallbacks::default();
        if on("user_may_join_room") {
            let b = backend.clone();
            cbs.user_may_join_room = Some(callback(move |user: String, room: String, is_invited: bool| {
                let b = b.clone();
                async move {
                    b.decide("user_may_join_room", json!({"user": user, "room": room, "is_invited": is_invited})).await
                }
            }));
        }
        if on("user_may_invite") {
            let b = backend.clone();
            cbs.user_may_invite = Some(callback(move |inviter: String, invitee: String, room_id: String| {
                let b = b.clone();
                async move {
                    b.decide("user_may_invite", json!({"inviter": inviter, "invitee": invitee, "room_id": room_id}))
                        .await
                }
            }));
        }
        if on("user_may_create_room") {
            let b = backend.clone();
            cbs.user_may_create_room = Some(callback(move |user_id: String, _config: RoomConfig| {
                let b = b.clone();
                async move { b.decide("user_may_create_room", json!({"user_id": user_id})).await }
            }));
        }
        if on("user_may_create_room_alias") {
            let b = backend.clone();
            cbs.user_may_create_room_alias = Some(callback(move |user_id: String, room_alias: String| {
                let b = b.clone();
                async move {
                    b.decide("user_may_create_room_alias", json!({"user_id": user_id, "room_alias": room_alias})).await
                }
            }));
        }
        if on("user_may_publish_room") {
            let b = backend.clone();
            cbs.user_may_publish_room = Some(callback(move |user_id: String, room_id: String| {
                let b = b.clone();
                async move { b.decide("user_may_publish_room", json!({"user_id": user_id, "room_id": room_id})).await }
            }));
        }
        if on("check_username_for_spam") {
            let b = backend.clone();
            cbs.check_username_for_spam = Some(callback(move |profile: UserProfile, requester_id: String| {
                let b = b.clone();
                async move {
                    let body = json!({
                        "user_profile": {"user_id": profile.user_id, "display_name": profile.display_name, "avatar_url": profile.avatar_url},
                        "requester_id": requester_id,
                    });
                    Ok(b.decide("check_username_for_spam", body).await? != Decision::Allow)
                }
            }));
        }
        if on("check_login_for_spam") {
            let b = backend.clone();
            cbs.check_login_for_spam = Some(callback(
                move |user_id: String,
                      device_id: Option<String>,
                      initial_display_name: Option<String>,
                      request_info: Vec<(String, String)>,
                      auth_provider_id: Option<String>| {
                    let b = b.clone();
                    async move {
                        let body = json!({"user_id": user_id, "device_id": device_id, "initial_display_name": initial_display_name,
                                          "request_info": request_info, "auth_provider_id": auth_provider_id});
                        b.decide("check_login_for_spam", body).await
                    }
                },
            ));
        }
        if on("check_event_for_spam") {
            let b = backend.clone();
            cbs.check_event_for_spam = Some(callback(move |event: EventView| {
                let b = b.clone();
                async move {
                    Ok(match b.decide("check_event_for_spam", event_body(&event)).await? {
                        Decision::Allow => EventDecision::Allow,
                        Decision::Deny(d) => EventDecision::Deny(d),
                    })
                }
            }));
        }
        if on("federated_user_may_invite") {
            let b = backend.clone();
            cbs.federated_user_may_invite = Some(callback(move |event: EventView| {
                let b = b.clone();
                async move { b.decide("federated_user_may_invite", event_body(&event)).await }
            }));
        }
        api.register_spam_checker_callbacks(cbs)?;
        Ok(HttpAntispam)
    }
}
