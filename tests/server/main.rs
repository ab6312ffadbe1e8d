//! `myelin-test-server`: Myelin's real entry point plus [`Scripted`], a module whose callbacks do
//! what its config says, and which records every call. The black-box tests drive module
//! behaviour through it: each test writes the `modules:` list it needs.
//!
//! Config of one instance:
//! ```yaml
//! - module: myelin.test.Scripted
//!   config:
//!     label: a                       # names the call log at /_synapse/client/test/a/calls
//!     callbacks:                     # any spam-checker callback name -> an outcome
//!       user_may_invite: deny        # allow | deny | raise | panic | shadow_ban | spammy
//!       check_event_for_spam: {deny_if: "evil", then: {message: "no evil"}}
//!       user_may_join_room: {deny: M_CONSENT_NOT_GIVEN, fields: {k: v}}
//!     web: ["/_synapse/client/x"]   # resources answering {"module": label, "path": ...}
//!     fail_in_constructor: "why"     # the constructor returns an error
//!     register_late: true            # tries to register a resource after start-up
//!     threshold: 1                   # must be positive (a parse_config error path)
//!     limited_user: "@x:test"        # rc_message burst of 1 for this user (ratelimit callback),
//!                                    # and uploads over 10 bytes refused (media callback)
//! ```

use std::sync::{Arc, Mutex};

use myelin_module_api::spam::*;
use myelin_module_api::web::{Request, json_response};
use myelin_module_api::{ConfigError, EventView, Module, ModuleApi, ModuleError};
use serde_json::{Map, Value, json};

fn main() -> std::process::ExitCode {
    myelin::main_with_modules(vec![myelin::Module::of::<Scripted>()])
}

struct Scripted;

struct ScriptedConfig {
    label: String,
    callbacks: Map<String, Value>,
    web: Vec<String>,
    fail_in_constructor: Option<String>,
    register_late: bool,
    limited_user: Option<String>,
}

type CallLog = Arc<Mutex<Vec<Value>>>;

/// What a callback does, decided from its outcome spec and its arguments.
enum Outcome {
    Allow,
    Deny(String, Map<String, Value>),
    Message(String),
    Raise(Option<ModuleError>),
    Panic,
    ShadowBan,
}

fn outcome(spec: &Value, args: &Value) -> Outcome {
    match spec {
        Value::String(s) => match s.as_str() {
            "allow" => Outcome::Allow,
            "deny" | "spammy" => Outcome::Deny("M_FORBIDDEN".into(), Map::new()),
            "raise" => Outcome::Raise(None),
            "panic" => Outcome::Panic,
            "shadow_ban" => Outcome::ShadowBan,
            other => Outcome::Deny(other.to_owned(), Map::new()),
        },
        Value::Object(o) => {
            if let Some(needle) = o.get("deny_if").and_then(Value::as_str) {
                return if args.to_string().contains(needle) {
                    outcome(o.get("then").unwrap_or(&json!("deny")), args)
                } else {
                    Outcome::Allow
                };
            }
            if let Some(m) = o.get("message").and_then(Value::as_str) {
                return Outcome::Message(m.to_owned());
            }
            if let Some(r) = o.get("raise") {
                return Outcome::Raise(Some(ModuleError::Matrix {
                    status: r["status"].as_u64().unwrap_or(400) as u16,
                    errcode: r["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned(),
                    message: r["error"].as_str().unwrap_or_default().to_owned(),
                    fields: Map::new(),
                }));
            }
            let code = o.get("deny").and_then(Value::as_str).unwrap_or("M_FORBIDDEN").to_owned();
            Outcome::Deny(code, o.get("fields").and_then(Value::as_object).cloned().unwrap_or_default())
        }
        _ => Outcome::Allow,
    }
}

fn fail(o: Outcome) -> Result<Outcome, ModuleError> {
    match o {
        Outcome::Raise(Some(e)) => Err(e),
        Outcome::Raise(None) => Err(ModuleError::other("scripted failure")),
        Outcome::Panic => panic!("scripted panic"),
        other => Ok(other),
    }
}

fn decision(o: Outcome) -> Result<Decision, ModuleError> {
    Ok(match fail(o)? {
        Outcome::Allow => Decision::Allow,
        Outcome::Deny(code, fields) => Decision::deny_with(&code, fields),
        _ => Decision::forbidden(),
    })
}

/// Builds a callback that logs `(name, args)` and answers from the spec.
macro_rules! scripted {
    ($log:expr, $label:expr, $spec:expr, $name:literal, |$($arg:ident : $ty:ty),*| $args:expr, $convert:expr) => {{
        let log: CallLog = $log.clone();
        let spec: Value = $spec.clone();
        let label: String = $label.clone();
        callback(move |$($arg: $ty),*| {
            let args: Value = $args;
            log.lock().unwrap().push(json!({"callback": $name, "module": label, "args": args}));
            let result = $convert(outcome(&spec, &args));
            async move { result }
        })
    }};
}

impl Module for Scripted {
    const NAME: &'static str = "myelin.test.Scripted";
    type Config = ScriptedConfig;

    fn parse_config(config: Value) -> Result<ScriptedConfig, ConfigError> {
        if let Some(t) = config.get("threshold")
            && t.as_i64().is_none_or(|t| t <= 0)
        {
            return Err(ConfigError::at("threshold must be positive", &["threshold"]));
        }
        if config.get("reject_whole_config").is_some() {
            return Err(ConfigError::new("oops"));
        }
        Ok(ScriptedConfig {
            label: config["label"].as_str().unwrap_or("scripted").to_owned(),
            callbacks: config["callbacks"].as_object().cloned().unwrap_or_default(),
            web: config["web"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            fail_in_constructor: config["fail_in_constructor"].as_str().map(str::to_owned),
            register_late: config["register_late"].as_bool().unwrap_or(false),
            limited_user: config["limited_user"].as_str().map(str::to_owned),
        })
    }

    fn new(config: ScriptedConfig, api: &ModuleApi) -> Result<Self, ModuleError> {
        if let Some(why) = config.fail_in_constructor {
            return Err(ModuleError::other(why));
        }
        let log: CallLog = Arc::new(Mutex::new(Vec::new()));
        let label = config.label.clone();
        let cb = &config.callbacks;
        let mut cbs = SpamCheckerCallbacks::default();
        if let Some(spec) = cb.get("check_event_for_spam") {
            cbs.check_event_for_spam = Some(scripted!(
                log,
                label,
                spec,
                "check_event_for_spam",
                |event: EventView| json!([Value::Object(event.as_json().clone())]),
                |o| -> Result<EventDecision, ModuleError> {
                    Ok(match fail(o)? {
                        Outcome::Allow => EventDecision::Allow,
                        Outcome::Message(m) => EventDecision::DenyWithMessage(m),
                        Outcome::Deny(code, fields) => EventDecision::Deny(Denial { errcode: code, fields }),
                        _ => EventDecision::from_is_spam(true),
                    })
                }
            ));
        }
        if let Some(spec) = cb.get("user_may_invite") {
            cbs.user_may_invite = Some(scripted!(
                log,
                label,
                spec,
                "user_may_invite",
                |a: String, b: String, c: String| json!([a, b, c]),
                decision
            ));
        }
        if let Some(spec) = cb.get("user_may_join_room") {
            cbs.user_may_join_room = Some(scripted!(
                log,
                label,
                spec,
                "user_may_join_room",
                |a: String, b: String, c: bool| json!([a, b, c]),
                decision
            ));
        }
        if let Some(spec) = cb.get("user_may_create_room") {
            cbs.user_may_create_room = Some(scripted!(
                log,
                label,
                spec,
                "user_may_create_room",
                |a: String, b: Map<String, Value>| json!([a, b]),
                decision
            ));
        }
        if let Some(spec) = cb.get("user_may_create_room_alias") {
            cbs.user_may_create_room_alias = Some(scripted!(
                log,
                label,
                spec,
                "user_may_create_room_alias",
                |a: String, b: String| json!([a, b]),
                decision
            ));
        }
        if let Some(spec) = cb.get("user_may_publish_room") {
            cbs.user_may_publish_room = Some(scripted!(
                log,
                label,
                spec,
                "user_may_publish_room",
                |a: String, b: String| json!([a, b]),
                decision
            ));
        }
        if let Some(spec) = cb.get("user_may_send_state_event") {
            cbs.user_may_send_state_event = Some(scripted!(
                log,
                label,
                spec,
                "user_may_send_state_event",
                |a: String, b: String, c: String, d: String, e: Map<String, Value>| json!([a, b, c, d, e]),
                decision
            ));
        }
        if let Some(spec) = cb.get("check_username_for_spam") {
            cbs.check_username_for_spam = Some(scripted!(
                log,
                label,
                spec,
                "check_username_for_spam",
                |p: UserProfile, r: String| json!([{"user_id": p.user_id, "display_name": p.display_name, "avatar_url": p.avatar_url}, r]),
                |o| -> Result<bool, ModuleError> { Ok(!matches!(fail(o)?, Outcome::Allow)) }
            ));
        }
        if let Some(spec) = cb.get("check_registration_for_spam") {
            cbs.check_registration_for_spam = Some(scripted!(
                log,
                label,
                spec,
                "check_registration_for_spam",
                |e: Option<Value>, u: Option<String>, i: Vec<(String, String)>, p: Option<String>| json!([e, u, i, p]),
                |o| -> Result<RegistrationBehaviour, ModuleError> {
                    Ok(match fail(o)? {
                        Outcome::Allow => RegistrationBehaviour::Allow,
                        Outcome::ShadowBan => RegistrationBehaviour::ShadowBan,
                        _ => RegistrationBehaviour::Deny,
                    })
                }
            ));
        }
        if let Some(spec) = cb.get("check_login_for_spam") {
            cbs.check_login_for_spam = Some(scripted!(
                log,
                label,
                spec,
                "check_login_for_spam",
                |a: String, b: Option<String>, c: Option<String>, d: Vec<(String, String)>, e: Option<String>| json!([
                    a, b, c, d, e
                ]),
                decision
            ));
        }
        if let Some(spec) = cb.get("check_media_file_for_spam") {
            cbs.check_media_file_for_spam = Some(scripted!(
                log,
                label,
                spec,
                "check_media_file_for_spam",
                |f: MediaFile| json!([
                    String::from_utf8_lossy(&f.read().unwrap_or_default()),
                    f.media_id,
                    f.server_name,
                    f.thumbnail
                ]),
                decision
            ));
        }
        if let Some(spec) = cb.get("federated_user_may_invite") {
            cbs.federated_user_may_invite = Some(scripted!(
                log,
                label,
                spec,
                "federated_user_may_invite",
                |event: EventView| json!([Value::Object(event.as_json().clone())]),
                decision
            ));
        }
        if let Some(spec) = cb.get("should_drop_federated_event") {
            cbs.should_drop_federated_event = Some(scripted!(
                log,
                label,
                spec,
                "should_drop_federated_event",
                |event: EventView| json!([Value::Object(event.as_json().clone())]),
                |o| -> Result<bool, ModuleError> { Ok(!matches!(fail(o)?, Outcome::Allow)) }
            ));
        }
        api.register_spam_checker_callbacks(cbs)?;

        if let Some(user) = config.limited_user {
            use myelin_module_api::repository::*;
            let limited = user.clone();
            api.register_ratelimit_callbacks(RatelimitCallbacks {
                get_ratelimit_override_for_user: Some(callback(move |user_id: String, limiter: String| {
                    let hit = user_id == limited && limiter == "rc_message";
                    async move { Ok(hit.then_some(RatelimitOverride { per_second: 0.001, burst_count: 1 })) }
                })),
            })?;
            api.register_media_repository_callbacks(MediaRepositoryCallbacks {
                is_user_allowed_to_upload_media_of_size: Some(callback(move |user_id: String, size: u64| {
                    let allowed = user_id != user || size <= 10;
                    async move { Ok(allowed) }
                })),
                ..Default::default()
            })?;
        }

        for path in config.web {
            let label = label.clone();
            let p = path.clone();
            api.register_web_resource(&path, move |req: Request| {
                let body = json!({"module": label, "path": p, "method": req.method().as_str()});
                async move { json_response(200, &body) }
            })?;
        }
        let calls = log.clone();
        api.register_web_resource(&format!("/_synapse/client/test/{label}/calls"), move |_req: Request| {
            let body = Value::Array(calls.lock().unwrap().clone());
            async move { json_response(200, &body) }
        })?;
        // Sends the POSTed event dict through ModuleApi.create_and_send_event_into_room.
        let sender_api = api.clone();
        api.register_web_resource(&format!("/_synapse/client/test/{label}/send"), move |req: Request| {
            let api = sender_api.clone();
            async move {
                let event: Map<String, Value> = serde_json::from_slice(req.body()).unwrap_or_default();
                match api.create_and_send_event_into_room(event).await {
                    Ok(ev) => json_response(200, &json!({"event_id": ev.event_id()})),
                    Err(ModuleError::Matrix { status, errcode, message, .. }) => {
                        json_response(200, &json!({"status": status, "errcode": errcode, "error": message}))
                    }
                    Err(e) => json_response(200, &json!({"status": 500, "error": e.to_string()})),
                }
            }
        })?;
        // Calls a ModuleApi method named by the POSTed {"op": ..., ...} and answers its result.
        let op_api = api.clone();
        api.register_web_resource(&format!("/_synapse/client/test/{label}/api"), move |req: Request| {
            let api = op_api.clone();
            async move {
                let body: Value = serde_json::from_slice(req.body()).unwrap_or_default();
                let arg = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
                let result: Result<Value, ModuleError> = match body["op"].as_str().unwrap_or_default() {
                    "get_userinfo_by_id" => Ok(match api.get_userinfo_by_id(&arg("user_id")).await {
                        Some(u) => json!({"user_id": u.user_id, "is_admin": u.is_admin, "is_guest": u.is_guest,
                                          "is_deactivated": u.is_deactivated, "is_shadow_banned": u.is_shadow_banned}),
                        None => Value::Null,
                    }),
                    "get_profile_for_user" => Ok(match api.get_profile_for_user(&arg("user")).await {
                        Some(p) => json!({"display_name": p.display_name, "avatar_url": p.avatar_url}),
                        None => Value::Null,
                    }),
                    "update_room_membership" => api
                        .update_room_membership(&arg("sender"), &arg("target"), &arg("room_id"), &arg("membership"))
                        .await
                        .map(|e| Value::Object(e.as_json().clone())),
                    "create_room" => api
                        .create_room(&arg("user_id"), body["config"].as_object().cloned().unwrap_or_default())
                        .await
                        .map(|(room, alias)| json!([room, alias])),
                    "lookup_room_alias" => api.lookup_room_alias(&arg("alias")).await.map(|(r, s)| json!([r, s])),
                    "publish" => {
                        let m = api.public_room_list_manager();
                        let room = arg("room_id");
                        async {
                            let before = m.room_is_in_public_room_list(&room).await?;
                            m.add_room_to_public_room_list(&room).await?;
                            let added = m.room_is_in_public_room_list(&room).await?;
                            m.remove_room_from_public_room_list(&room).await?;
                            let removed = m.room_is_in_public_room_list(&room).await?;
                            Ok(json!([before, added, removed]))
                        }
                        .await
                    }
                    "get_json" => match api.http_client().get_json(&arg("url"), &[("X-Test", "yes")]).await {
                        Ok(v) => Ok(json!({"ok": v})),
                        Err(myelin_module_api::http::HttpError::Status { code, .. }) => Ok(json!({"status": code})),
                        Err(e) => Ok(json!({"error": e.to_string()})),
                    },
                    "qualify" => Ok(json!([
                        api.get_qualified_user_id(&arg("user")),
                        api.is_mine(&arg("user")),
                        api.server_name()
                    ])),
                    other => Err(ModuleError::other(format!("unknown op {other}"))),
                };
                match result {
                    Ok(v) => json_response(200, &json!({"result": v})),
                    Err(ModuleError::Matrix { status, errcode, message, .. }) => {
                        json_response(200, &json!({"status": status, "errcode": errcode, "error": message}))
                    }
                    Err(e) => json_response(200, &json!({"status": 500, "error": e.to_string()})),
                }
            }
        })?;
        if config.register_late {
            let api2 = api.clone();
            let log2 = log.clone();
            api.looping_background_call(std::time::Duration::from_millis(50), move || {
                let api = api2.clone();
                let log = log2.clone();
                async move {
                    let result = api.register_web_resource("/_synapse/client/late", |_r: Request| async {
                        json_response(200, &json!({}))
                    });
                    let mut log = log.lock().unwrap();
                    if !log.iter().any(|c| c["callback"] == "late_registration") {
                        log.push(
                            json!({"callback": "late_registration", "error": result.err().map(|e| e.to_string())}),
                        );
                    }
                }
            });
        }
        Ok(Scripted)
    }
}
