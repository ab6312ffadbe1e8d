//! `PyHost`, the object behind the shim's `ModuleApi`: registering Python callbacks as module-api callbacks, and translating their answers.

use std::sync::Arc;

use futures::future::BoxFuture;
use myelin_module_api::spam::*;
use myelin_module_api::{EventView, ModuleApi, ModuleError};
use pyo3::prelude::*;
use serde_json::{Map, Value, json};

use crate::*;

/// The host object behind the shim's `ModuleApi`.
#[pyclass]
pub(crate) struct PyHost {
    pub(crate) api: ModuleApi,
    pub(crate) runtime: Arc<PythonRuntime>,
}

pub(crate) fn module_error(v: &Value) -> Option<ModuleError> {
    if let Some(m) = v.get("matrix") {
        return Some(ModuleError::Matrix {
            status: m["status"].as_u64().unwrap_or(500) as u16,
            errcode: m["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned(),
            message: m["error"].as_str().unwrap_or_default().to_owned(),
            fields: m["fields"].as_object().cloned().unwrap_or_default(),
        });
    }
    v.get("exception").map(|tb| ModuleError::Other(tb.as_str().unwrap_or_default().to_owned()))
}

/// The user ID an auth checker vouched for, if any.
pub(crate) fn vouched_user(v: Value) -> Result<Option<String>, ModuleError> {
    if let Some(e) = module_error(&v) {
        return Err(e);
    }
    if let Some(w) = v.get("warning").and_then(Value::as_str) {
        tracing::warn!("{w}");
    }
    Ok(v["user"].as_str().map(str::to_owned))
}

pub(crate) fn decision(v: Value) -> Result<Decision, ModuleError> {
    if let Some(e) = module_error(&v) {
        return Err(e);
    }
    if let Some(w) = v.get("warning").and_then(Value::as_str) {
        tracing::warn!("{w}");
    }
    match v.get("deny") {
        Some(code) => Ok(Decision::deny_with(
            code.as_str().unwrap_or("M_FORBIDDEN"),
            v["fields"].as_object().cloned().unwrap_or_default(),
        )),
        None => Ok(Decision::Allow),
    }
}

impl PyHost {
    /// A callback that runs `function` on the Python thread with `args` (as Python data), normalising
    /// the result as `kind` requires.
    pub(crate) fn invoke(
        &self,
        kind: &'static str,
        function: &Arc<Py<PyAny>>,
        args: Value,
    ) -> BoxFuture<'static, Result<Value, ModuleError>> {
        let f = function.clone();
        let rx = self
            .runtime
            .call("invoke", move |py| Ok(vec![to_py(py, kind), f.clone_ref(py), to_python(py, &args)?.unbind()]));
        Box::pin(async move { rx.await.map_err(|_| ModuleError::other("the Python thread dropped the call")) })
    }

    pub(crate) fn callback<A: Send + 'static, R: Send + 'static>(
        self: &Arc<Self>,
        kind: &'static str,
        function: Py<PyAny>,
        args: impl Fn(A) -> Value + Send + Sync + 'static,
        result: fn(Value) -> Result<R, ModuleError>,
    ) -> Callback<A, R> {
        let me = self.clone();
        let function = Arc::new(function);
        Arc::new(move |a: A| {
            let call = me.invoke(kind, &function, args(a));
            Box::pin(async move { result(call.await?) })
        })
    }
}

#[pymethods]
impl PyHost {
    pub(crate) fn server_name(&self) -> String {
        self.api.server_name().to_owned()
    }

    /// The callbacks Myelin calls for `register_<method>_callbacks` (module-api's list).
    pub(crate) fn callback_names(&self, method: &str) -> Vec<&'static str> {
        myelin_module_api::callbacks::names(method).to_vec()
    }

    pub(crate) fn public_baseurl(&self) -> String {
        self.api.server_facts().public_baseurl
    }

    pub(crate) fn email_app_name(&self) -> String {
        self.api.server_facts().email_app_name
    }

    pub(crate) fn custom_template_directory(&self) -> Option<String> {
        self.api.server_facts().custom_template_directory
    }

    /// Adds one callback to the shared registry; `arity` picks Synapse's argument forms.
    pub(crate) fn register_spam(&self, _module: &str, name: &str, function: Py<PyAny>, arity: i64) -> PyResult<()> {
        let me = Arc::new(PyHost { api: self.api.clone(), runtime: self.runtime.clone() });
        let mut cbs = SpamCheckerCallbacks::default();
        match name {
            "check_event_for_spam" => {
                cbs.check_event_for_spam = Some(me.callback(
                    "check_event_for_spam",
                    function,
                    |(e,): (EventView,)| json!([Value::Object(e.as_json().clone())]),
                    |v| {
                        if let Some(e) = module_error(&v) {
                            return Err(e);
                        }
                        if let Some(m) = v.get("message").and_then(Value::as_str) {
                            return Ok(EventDecision::DenyWithMessage(m.to_owned()));
                        }
                        Ok(match decision(v)? {
                            Decision::Allow => EventDecision::Allow,
                            Decision::Deny(d) => EventDecision::Deny(d),
                        })
                    },
                ))
            }
            "federated_user_may_invite" => {
                cbs.federated_user_may_invite = Some(me.callback(
                    "federated_user_may_invite",
                    function,
                    |(e,): (EventView,)| json!([Value::Object(e.as_json().clone())]),
                    decision,
                ))
            }
            "should_drop_federated_event" => {
                cbs.should_drop_federated_event = Some(me.callback(
                    "should_drop_federated_event",
                    function,
                    |(e,): (EventView,)| json!([Value::Object(e.as_json().clone())]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["bool"].as_bool().unwrap_or(false)),
                    },
                ))
            }
            "user_may_invite" => {
                cbs.user_may_invite = Some(me.callback(
                    "user_may_invite",
                    function,
                    |(a, b, c): (String, String, String)| json!([a, b, c]),
                    decision,
                ))
            }
            "user_may_send_3pid_invite" => {
                cbs.user_may_send_3pid_invite = Some(me.callback(
                    "user_may_send_3pid_invite",
                    function,
                    |(a, b, c, d): (String, String, String, String)| json!([a, b, c, d]),
                    decision,
                ))
            }
            "user_may_join_room" => {
                cbs.user_may_join_room = Some(me.callback(
                    "user_may_join_room",
                    function,
                    |(a, b, c): (String, String, bool)| json!([a, b, c]),
                    decision,
                ))
            }
            "user_may_create_room" => {
                cbs.user_may_create_room = Some(me.callback(
                    "user_may_create_room",
                    function,
                    // Exactly two parameters: the new form with the room config (Synapse).
                    move |(u, c): (String, RoomConfig)| if arity == 2 { json!([u, c]) } else { json!([u]) },
                    decision,
                ))
            }
            "user_may_create_room_alias" => {
                cbs.user_may_create_room_alias = Some(me.callback(
                    "user_may_create_room_alias",
                    function,
                    |(a, b): (String, String)| json!([a, b]),
                    decision,
                ))
            }
            "user_may_publish_room" => {
                cbs.user_may_publish_room = Some(me.callback(
                    "user_may_publish_room",
                    function,
                    |(a, b): (String, String)| json!([a, b]),
                    decision,
                ))
            }
            "user_may_send_state_event" => {
                cbs.user_may_send_state_event = Some(me.callback(
                    "user_may_send_state_event",
                    function,
                    |(a, b, c, d, e): StateEventArgs| json!([a, b, c, d, e]),
                    decision,
                ))
            }
            "check_username_for_spam" => {
                cbs.check_username_for_spam = Some(me.callback(
                    "check_username_for_spam",
                    function,
                    move |(p, r): (UserProfile, String)| {
                        let profile =
                            json!({"user_id": p.user_id, "display_name": p.display_name, "avatar_url": p.avatar_url});
                        if arity == 2 { json!([profile, r]) } else { json!([profile]) }
                    },
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["bool"].as_bool().unwrap_or(false)),
                    },
                ))
            }
            "check_registration_for_spam" => {
                cbs.check_registration_for_spam = Some(me.callback(
                    "check_registration_for_spam",
                    function,
                    |(e, u, i, p): RegistrationArgs| json!([e, u, i, p]),
                    |v| {
                        if let Some(e) = module_error(&v) {
                            return Err(e);
                        }
                        Ok(match v["registration"].as_str() {
                            Some("shadow_ban") => RegistrationBehaviour::ShadowBan,
                            Some("deny") => RegistrationBehaviour::Deny,
                            _ => RegistrationBehaviour::Allow,
                        })
                    },
                ))
            }
            "check_login_for_spam" => {
                cbs.check_login_for_spam = Some(me.callback(
                    "check_login_for_spam",
                    function,
                    |(a, b, c, d, e): LoginArgs| json!([a, b, c, d, e]),
                    decision,
                ))
            }
            "check_media_file_for_spam" => {
                cbs.check_media_file_for_spam = Some(me.callback(
                    "check_media_file_for_spam",
                    function,
                    |(f,): (MediaFile,)| json!([f.path.to_string_lossy(), f.media_id, f.server_name, f.thumbnail]),
                    decision,
                ))
            }
            other => {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!("unknown spam checker callback {other}")));
            }
        }
        self.api
            .register_spam_checker_callbacks(cbs)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// Adds one third-party rules or account validity callback to the shared registry.
    pub(crate) fn register_third_party(&self, _module: &str, name: &str, function: Py<PyAny>) -> PyResult<()> {
        use myelin_module_api::third_party::*;
        let me = Arc::new(PyHost { api: self.api.clone(), runtime: self.runtime.clone() });
        let view_json = |e: &EventView| Value::Object(e.as_json().clone());
        let mut rules = ThirdPartyRulesCallbacks::default();
        let mut validity = AccountValidityCallbacks::default();
        match name {
            "check_event_allowed" => {
                rules.check_event_allowed = Some(me.callback(
                    "check_event_allowed",
                    function,
                    move |(e, state): (EventView, StateEvents)| {
                        json!([view_json(&e), state.iter().map(view_json).collect::<Vec<_>>()])
                    },
                    |v| {
                        if let Some(e) = module_error(&v) {
                            return Err(e);
                        }
                        if !v["allowed"].as_bool().unwrap_or(false) {
                            return Ok(EventAllowed::Deny);
                        }
                        // A replacement is a whole event dict; its content is what changes.
                        Ok(match v["replacement"].get("content").and_then(Value::as_object) {
                            Some(c) => EventAllowed::Replace(c.clone()),
                            None => EventAllowed::Allow,
                        })
                    },
                ))
            }
            "on_create_room" => {
                rules.on_create_room = Some(me.callback(
                    "on_create_room",
                    function,
                    |(u, c, admin): (String, Map<String, Value>, bool)| json!([u, c, admin]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["config"].as_object().cloned()),
                    },
                ))
            }
            "check_threepid_can_be_invited" => {
                rules.check_threepid_can_be_invited = Some(me.callback(
                    "check_threepid_can_be_invited",
                    function,
                    move |(medium, address, state): (String, String, StateEvents)| {
                        json!([medium, address, state.iter().map(view_json).collect::<Vec<_>>()])
                    },
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["bool"].as_bool().unwrap_or(true)),
                    },
                ))
            }
            "check_visibility_can_be_modified" => {
                rules.check_visibility_can_be_modified = Some(me.callback(
                    "check_visibility_can_be_modified",
                    function,
                    move |(room, state, visibility): (String, StateEvents, String)| {
                        json!([room, state.iter().map(view_json).collect::<Vec<_>>(), visibility])
                    },
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["bool"].as_bool().unwrap_or(true)),
                    },
                ))
            }
            "on_new_event" => {
                rules.on_new_event = Some(me.callback(
                    "on_new_event",
                    function,
                    move |(e, state): (EventView, StateEvents)| {
                        json!([view_json(&e), state.iter().map(view_json).collect::<Vec<_>>()])
                    },
                    |v| module_error(&v).map_or(Ok(()), Err),
                ))
            }
            "on_legacy_send_mail" => {
                validity.on_legacy_send_mail = Some(me.callback(
                    "on_legacy_send_mail",
                    function,
                    |(u,): (String,)| json!([u]),
                    |v| module_error(&v).map_or(Ok(()), Err),
                ))
            }
            "on_legacy_renew" => {
                validity.on_legacy_renew = Some(me.callback(
                    "on_legacy_renew",
                    function,
                    |(token,): (String,)| json!([token]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => match (v["valid"].as_bool(), v["stale"].as_bool(), v["expiration_ts"].as_i64()) {
                            (Some(valid), Some(stale), Some(ts)) => Ok((valid, stale, ts)),
                            _ => Err(ModuleError::other(format!("on_legacy_renew answered {v}"))),
                        },
                    },
                ))
            }
            "on_legacy_admin_request" => {
                validity.on_legacy_admin_request = Some(me.callback(
                    "on_legacy_admin_request",
                    function,
                    |(body,): (RoomConfig,)| json!([body]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => v["expiration_ts"]
                            .as_i64()
                            .ok_or_else(|| ModuleError::other(format!("on_legacy_admin_request answered {v}"))),
                    },
                ))
            }
            "is_user_expired" => {
                validity.is_user_expired = Some(me.callback(
                    "is_user_expired",
                    function,
                    |(u,): (String,)| json!([u]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["expired"].as_bool()),
                    },
                ))
            }
            "on_profile_update" => {
                rules.on_profile_update = Some(me.callback(
                    "on_profile_update",
                    function,
                    |(u, p, admin, deactivation): (String, ProfileInfo, bool, bool)| {
                        json!([u, {"display_name": p.display_name, "avatar_url": p.avatar_url}, admin, deactivation])
                    },
                    |v| module_error(&v).map_or(Ok(()), Err),
                ))
            }
            "check_can_deactivate_user" => {
                rules.check_can_deactivate_user = Some(me.callback(
                    "check_can_deactivate_user",
                    function,
                    |(u, admin): (String, bool)| json!([u, admin]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["bool"].as_bool().unwrap_or(true)),
                    },
                ))
            }
            "check_can_shutdown_room" => {
                rules.check_can_shutdown_room = Some(me.callback(
                    "check_can_shutdown_room",
                    function,
                    |(u, room): (Option<String>, String)| json!([u, room]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["bool"].as_bool().unwrap_or(true)),
                    },
                ))
            }
            "on_user_deactivation_status_changed" => {
                rules.on_user_deactivation_status_changed = Some(me.callback(
                    "on_user_deactivation_status_changed",
                    function,
                    |(u, deactivated, admin): (String, bool, bool)| json!([u, deactivated, admin]),
                    |v| module_error(&v).map_or(Ok(()), Err),
                ))
            }
            "on_add_user_third_party_identifier" | "on_remove_user_third_party_identifier" | "on_threepid_bind" => {
                let cb = me.callback(
                    match name {
                        "on_add_user_third_party_identifier" => "on_add_user_third_party_identifier",
                        "on_remove_user_third_party_identifier" => "on_remove_user_third_party_identifier",
                        _ => "on_threepid_bind",
                    },
                    function,
                    |(u, medium, address): (String, String, String)| json!([u, medium, address]),
                    |v| module_error(&v).map_or(Ok(()), Err),
                );
                match name {
                    "on_add_user_third_party_identifier" => rules.on_add_user_third_party_identifier = Some(cb),
                    "on_remove_user_third_party_identifier" => rules.on_remove_user_third_party_identifier = Some(cb),
                    _ => rules.on_threepid_bind = Some(cb),
                }
            }
            "is_3pid_allowed" => {
                let cb = me.callback(
                    "is_3pid_allowed",
                    function,
                    |(medium, address, registration): (String, String, bool)| json!([medium, address, registration]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        // Anything but `False` (including a wrongly-typed answer) allows, as Synapse.
                        None => Ok(v["bool"].as_bool() != Some(false)),
                    },
                );
                let auth = myelin_module_api::auth::PasswordAuthProviderCallbacks {
                    is_3pid_allowed: Some(cb),
                    ..Default::default()
                };
                return self
                    .api
                    .register_password_auth_provider_callbacks(auth)
                    .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()));
            }
            "on_user_login" => {
                validity.on_user_login = Some(me.callback(
                    "on_user_login",
                    function,
                    |(u, kind, provider): (String, Option<String>, Option<String>)| json!([u, kind, provider]),
                    |v| module_error(&v).map_or(Ok(()), Err),
                ))
            }
            "on_user_registration" => {
                validity.on_user_registration = Some(me.callback(
                    "on_user_registration",
                    function,
                    |(u,): (String,)| json!([u]),
                    |v| module_error(&v).map_or(Ok(()), Err),
                ))
            }
            "check_3pid_auth" => {
                let cb = me.callback(
                    "check_3pid_auth",
                    function,
                    |(m, a, p): (String, String, String)| json!([m, a, p]),
                    vouched_user,
                );
                let auth = myelin_module_api::auth::PasswordAuthProviderCallbacks {
                    check_3pid_auth: Some(cb),
                    ..Default::default()
                };
                return self
                    .api
                    .register_password_auth_provider_callbacks(auth)
                    .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()));
            }
            "get_username_for_registration" | "get_displayname_for_registration" => {
                let cb = me.callback(
                    if name == "get_username_for_registration" {
                        "get_username_for_registration"
                    } else {
                        "get_displayname_for_registration"
                    },
                    function,
                    |(uia, params): (Map<String, Value>, Map<String, Value>)| json!([uia, params]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["name"].as_str().map(str::to_owned)),
                    },
                );
                let mut auth = myelin_module_api::auth::PasswordAuthProviderCallbacks::default();
                if name == "get_username_for_registration" {
                    auth.get_username_for_registration = Some(cb);
                } else {
                    auth.get_displayname_for_registration = Some(cb);
                }
                return self
                    .api
                    .register_password_auth_provider_callbacks(auth)
                    .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()));
            }
            "on_logged_out" => {
                let cb = me.callback(
                    "on_logged_out",
                    function,
                    |(u, d, t): (String, Option<String>, String)| json!([u, d, t]),
                    |v| module_error(&v).map_or(Ok(()), Err),
                );
                let auth = myelin_module_api::auth::PasswordAuthProviderCallbacks {
                    on_logged_out: Some(cb),
                    ..Default::default()
                };
                return self
                    .api
                    .register_password_auth_provider_callbacks(auth)
                    .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()));
            }
            other => return Err(pyo3::exceptions::PyTypeError::new_err(format!("unknown callback {other}"))),
        }
        let result = if myelin_module_api::callbacks::names("account_validity").contains(&name) {
            self.api.register_account_validity_callbacks(validity)
        } else {
            self.api.register_third_party_rules_callbacks(rules)
        };
        result.map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// Adds one account data or media repository callback to the shared registry.
    pub(crate) fn register_repository(&self, _module: &str, name: &str, function: Py<PyAny>) -> PyResult<()> {
        use myelin_module_api::repository::*;
        let me = Arc::new(PyHost { api: self.api.clone(), runtime: self.runtime.clone() });
        let mut account_data = AccountDataCallbacks::default();
        let mut media = MediaRepositoryCallbacks::default();
        let mut ratelimit = RatelimitCallbacks::default();
        match name {
            "on_event_delivered_over_federation" => {
                let cb = me.callback(
                    "on_event_delivered_over_federation",
                    function,
                    |(delivery,): (myelin_module_api::federation::FederationDelivery,)| {
                        let events: Vec<Value> =
                            delivery.events.iter().map(|e| Value::Object(e.as_json().clone())).collect();
                        json!([delivery.server_name, events, delivery.method.as_str()])
                    },
                    |v| module_error(&v).map_or(Ok(()), Err),
                );
                let federation =
                    myelin_module_api::federation::FederationCallbacks { on_event_delivered_over_federation: Some(cb) };
                return self
                    .api
                    .register_federation_callbacks(federation)
                    .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()));
            }
            "get_ratelimit_override_for_user" => {
                ratelimit.get_ratelimit_override_for_user = Some(me.callback(
                    "get_ratelimit_override_for_user",
                    function,
                    |(u, limiter): (String, String)| json!([u, limiter]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["override"].as_object().map(|o| RatelimitOverride {
                            per_second: o.get("per_second").and_then(Value::as_f64).unwrap_or(0.0),
                            burst_count: o.get("burst_count").and_then(Value::as_u64).unwrap_or(0),
                        })),
                    },
                ))
            }
            "on_account_data_updated" => {
                account_data.on_account_data_updated = Some(me.callback(
                    "on_account_data_updated",
                    function,
                    |(u, room, kind, content): (String, Option<String>, String, Map<String, Value>)| {
                        json!([u, room, kind, content])
                    },
                    |v| module_error(&v).map_or(Ok(()), Err),
                ))
            }
            "get_media_config_for_user" => {
                media.get_media_config_for_user = Some(me.callback(
                    "get_media_config_for_user",
                    function,
                    |(u,): (String,)| json!([u]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["config"].as_object().cloned()),
                    },
                ))
            }
            "is_user_allowed_to_upload_media_of_size" => {
                media.is_user_allowed_to_upload_media_of_size = Some(me.callback(
                    "is_user_allowed_to_upload_media_of_size",
                    function,
                    |(u, size): (String, u64)| json!([u, size]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["bool"].as_bool().unwrap_or(false)),
                    },
                ))
            }
            "get_media_upload_limits_for_user" => {
                media.get_media_upload_limits_for_user = Some(me.callback(
                    "get_media_upload_limits_for_user",
                    function,
                    |(u,): (String,)| json!([u]),
                    |v| match module_error(&v) {
                        Some(e) => Err(e),
                        None => Ok(v["limits"].as_array().map(|limits| {
                            limits
                                .iter()
                                .map(|l| MediaUploadLimit {
                                    max_bytes: l["max_bytes"].as_u64().unwrap_or(0),
                                    time_period_ms: l["time_period_ms"].as_u64().unwrap_or(0),
                                    info_uri: l["info_uri"].as_str().map(str::to_owned),
                                    can_upgrade: l["can_upgrade"].as_bool().unwrap_or(false),
                                })
                                .collect()
                        })),
                    },
                ))
            }
            "on_media_upload_limit_exceeded" => {
                media.on_media_upload_limit_exceeded = Some(me.callback(
                    "on_media_upload_limit_exceeded",
                    function,
                    |(u, l, sent, attempted): (String, MediaUploadLimit, u64, u64)| {
                        json!([u, {"max_bytes": l.max_bytes, "time_period_ms": l.time_period_ms,
                                   "info_uri": l.info_uri, "can_upgrade": l.can_upgrade}, sent, attempted])
                    },
                    |v| module_error(&v).map_or(Ok(()), Err),
                ))
            }
            other => return Err(pyo3::exceptions::PyTypeError::new_err(format!("unknown callback {other}"))),
        }
        let result = if name == "on_account_data_updated" {
            self.api.register_account_data_callbacks(account_data)
        } else if name == "get_ratelimit_override_for_user" {
            self.api.register_ratelimit_callbacks(ratelimit)
        } else {
            self.api.register_media_repository_callbacks(media)
        };
        result.map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// The presence router's two callbacks (Synapse refuses one without the other).
    pub(crate) fn register_presence_router(
        &self,
        _module: &str,
        users_for_states: Py<PyAny>,
        interested_users: Py<PyAny>,
    ) -> PyResult<()> {
        use myelin_module_api::presence::*;
        let me = Arc::new(PyHost { api: self.api.clone(), runtime: self.runtime.clone() });
        let state_json = |s: &PresenceState| {
            json!({"user_id": s.user_id, "state": s.state, "last_active_ts": s.last_active_ts,
                   "status_msg": s.status_msg, "currently_active": s.currently_active})
        };
        let callbacks = PresenceRouterCallbacks {
            get_users_for_states: Some(me.callback(
                "get_users_for_states",
                users_for_states,
                move |(states,): (Vec<PresenceState>,)| json!([states.iter().map(state_json).collect::<Vec<_>>()]),
                |v| {
                    if let Some(e) = module_error(&v) {
                        return Err(e);
                    }
                    if let Some(w) = v.get("warning").and_then(Value::as_str) {
                        tracing::warn!("{w}");
                    }
                    let state = |s: &Value| PresenceState {
                        user_id: s["user_id"].as_str().unwrap_or_default().to_owned(),
                        state: s["state"].as_str().unwrap_or_default().to_owned(),
                        last_active_ts: s["last_active_ts"].as_i64().unwrap_or_default(),
                        status_msg: s["status_msg"].as_str().map(str::to_owned),
                        currently_active: s["currently_active"].as_bool().unwrap_or(false),
                    };
                    Ok(v["routed"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(user, states)| {
                            (user.clone(), states.as_array().into_iter().flatten().map(state).collect())
                        })
                        .collect())
                },
            )),
            get_interested_users: Some(me.callback(
                "get_interested_users",
                interested_users,
                |(user,): (String,)| json!([user]),
                |v| {
                    if let Some(e) = module_error(&v) {
                        return Err(e);
                    }
                    if let Some(w) = v.get("warning").and_then(Value::as_str) {
                        tracing::warn!("{w}");
                    }
                    if v["all"] == json!(true) {
                        return Ok(InterestedUsers::All);
                    }
                    Ok(InterestedUsers::Users(
                        v["users"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|u| u.as_str().map(str::to_owned))
                            .collect(),
                    ))
                },
            )),
        };
        self.api
            .register_presence_router_callbacks(callbacks)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// `add_field_to_unsigned_callback`.
    pub(crate) fn register_unsigned(&self, _module: &str, function: Py<PyAny>) -> PyResult<()> {
        let me = Arc::new(PyHost { api: self.api.clone(), runtime: self.runtime.clone() });
        let callbacks = myelin_module_api::presence::UnsignedCallbacks {
            add_field_to_unsigned_callback: Some(me.callback(
                "add_field_to_unsigned_callback",
                function,
                |(e,): (EventView,)| json!([Value::Object(e.as_json().clone())]),
                |v| match module_error(&v) {
                    Some(e) => Err(e),
                    None => Ok(v["fields"].as_object().cloned().unwrap_or_default()),
                },
            )),
        };
        self.api
            .register_add_extra_fields_to_unsigned_client_event_callbacks(callbacks)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// Adds one `auth_checkers` entry: `(login_type, fields) -> function`.
    pub(crate) fn register_auth_checker(
        &self,
        _module: &str,
        login_type: String,
        fields: Vec<String>,
        function: Py<PyAny>,
    ) -> PyResult<()> {
        let me = Arc::new(PyHost { api: self.api.clone(), runtime: self.runtime.clone() });
        let cb = me.callback(
            "auth_checker",
            function,
            |(user, login_type, dict): (String, String, Map<String, Value>)| json!([user, login_type, dict]),
            vouched_user,
        );
        let auth = myelin_module_api::auth::PasswordAuthProviderCallbacks {
            auth_checkers: vec![((login_type, fields), cb)],
            ..Default::default()
        };
        self.api
            .register_password_auth_provider_callbacks(auth)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// Serves `path` through the module's Twisted resource (mounted by the caller).
    pub(crate) fn register_web(&self, _module: &str, path: &str) -> PyResult<bool> {
        let resource = PyResource { runtime: self.runtime.clone(), path: path.to_owned() };
        self.api
            .register_web_resource(path, resource)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        Ok(true)
    }

    /// Runs an asynchronous ModuleApi operation on Tokio; `resolve(json)` fires on the reactor.
    pub(crate) fn call(&self, op: String, args: String, resolve: Py<PyAny>) -> PyResult<()> {
        let Some(handle) = self.runtime.tokio.get().cloned() else {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("ModuleApi calls are not available before start-up"));
        };
        let api = self.api.clone();
        let runtime = self.runtime.clone();
        handle.spawn(async move {
            let args: Value = serde_json::from_str(&args).unwrap_or_default();
            let answer = run_op(&api, &op, &args).await;
            runtime.submit(move |py| {
                resolve.call1(py, (answer.to_string(),))?;
                Ok(())
            });
        });
        Ok(())
    }
}
