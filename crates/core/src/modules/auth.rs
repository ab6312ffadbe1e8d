//! Password auth provider dispatch, with Synapse's semantics (`handlers/auth.py`): errors and
//! wrongly-shaped answers are logged and count as "no".

use myelin_module_api::auth::*;
use serde_json::{Map, Value};

use super::{ModuleRegistry, Registered, invoke_logged};

/// One `auth_checkers` entry: login type, fields, callback.
type Checker = (String, Vec<String>, Registered<AuthCheckerArgs, Option<String>>);

/// The registered password auth provider callbacks.
#[derive(Default)]
pub(crate) struct AuthLists {
    pub(crate) checkers: Vec<Checker>,
    pub(crate) check_3pid_auth: Vec<Registered<(String, String, String), Option<String>>>,
    pub(crate) on_logged_out: Vec<Registered<LoggedOutArgs, ()>>,
    pub(crate) get_username_for_registration: Vec<Registered<RegistrationParams, Option<String>>>,
    pub(crate) get_displayname_for_registration: Vec<Registered<RegistrationParams, Option<String>>>,
    pub(crate) is_3pid_allowed: Vec<Registered<(String, String, bool), bool>>,
}

impl AuthLists {
    pub(crate) fn add(&mut self, module: &str, cbs: PasswordAuthProviderCallbacks) {
        for ((login_type, fields), cb) in cbs.auth_checkers {
            self.checkers.push((login_type, fields, Registered::new(module, "auth_checker", cb)));
        }
        if let Some(cb) = cbs.check_3pid_auth {
            self.check_3pid_auth.push(Registered::new(module, "check_3pid_auth", cb));
        }
        if let Some(cb) = cbs.get_username_for_registration {
            self.get_username_for_registration.push(Registered::new(module, "get_username_for_registration", cb));
        }
        if let Some(cb) = cbs.get_displayname_for_registration {
            self.get_displayname_for_registration.push(Registered::new(module, "get_displayname_for_registration", cb));
        }
        if let Some(cb) = cbs.is_3pid_allowed {
            self.is_3pid_allowed.push(Registered::new(module, "is_3pid_allowed", cb));
        }
        if let Some(cb) = cbs.on_logged_out {
            self.on_logged_out.push(Registered::new(module, "on_logged_out", cb));
        }
    }
}

impl ModuleRegistry {
    /// Login types modules handle, for `GET /login`.
    pub fn module_login_types(&self) -> Vec<String> {
        let mut types: Vec<String> = Vec::new();
        for (t, _, _) in &self.callbacks().auth.checkers {
            if !types.contains(t) {
                types.push(t.clone());
            }
        }
        types
    }

    /// Whether a module handles `login_type`.
    pub fn handles_login_type(&self, login_type: &str) -> bool {
        self.callbacks().auth.checkers.iter().any(|(t, _, _)| t == login_type)
    }

    /// The auth checkers for `login_type`, in order; the first user ID returned wins.
    pub async fn check_auth(&self, user: &str, login_type: &str, login: &Map<String, Value>) -> Option<String> {
        for (t, _, reg) in &self.callbacks().auth.checkers {
            if t != login_type {
                continue;
            }
            if let Some(Some(user_id)) = invoke_logged(reg, (user.to_owned(), t.clone(), login.clone())).await {
                return Some(user_id);
            }
        }
        None
    }

    /// `get_username_for_registration`: the first localpart a module gives.
    pub async fn username_for_registration(
        &self,
        uia: &Map<String, Value>,
        params: &Map<String, Value>,
    ) -> Option<String> {
        for reg in &self.callbacks().auth.get_username_for_registration {
            if let Some(Some(name)) = invoke_logged(reg, (uia.clone(), params.clone())).await {
                return Some(name);
            }
        }
        None
    }

    /// `get_displayname_for_registration`: the first display name a module gives.
    pub async fn displayname_for_registration(
        &self,
        uia: &Map<String, Value>,
        params: &Map<String, Value>,
    ) -> Option<String> {
        for reg in &self.callbacks().auth.get_displayname_for_registration {
            if let Some(Some(name)) = invoke_logged(reg, (uia.clone(), params.clone())).await {
                return Some(name);
            }
        }
        None
    }

    /// Whether a module picks the usernames or display names of new accounts.
    pub fn has_registration_hooks(&self) -> bool {
        let auth = &self.callbacks().auth;
        !auth.get_username_for_registration.is_empty() || !auth.get_displayname_for_registration.is_empty()
    }

    /// `check_3pid_auth`: the first user ID returned wins.
    pub async fn check_3pid_auth(&self, medium: &str, address: &str, password: &str) -> Option<String> {
        for reg in &self.callbacks().auth.check_3pid_auth {
            let args = (medium.to_owned(), address.to_owned(), password.to_owned());
            if let Some(Some(user_id)) = invoke_logged(reg, args).await {
                return Some(user_id);
            }
        }
        None
    }

    /// `is_3pid_allowed`: the first `false` refuses; an error is a 500, as Synapse raises one.
    pub async fn is_3pid_allowed(&self, medium: &str, address: &str, registration: bool) -> crate::Result<bool> {
        for reg in &self.callbacks().auth.is_3pid_allowed {
            match super::invoke(reg, (medium.to_owned(), address.to_owned(), registration)).await {
                Ok(false) => return Ok(false),
                Ok(true) => {}
                Err(e) => {
                    tracing::error!(module = %reg.module, error = %e, "is_3pid_allowed failed");
                    return Err(crate::Error::new(
                        crate::ErrorKind::Module { status: 500, errcode: "M_UNKNOWN".into() },
                        "Internal Server Error",
                    ));
                }
            }
        }
        Ok(true)
    }

    /// `on_logged_out`: every callback runs.
    pub async fn on_logged_out(&self, user_id: &str, device_id: Option<&str>, access_token: &str) {
        for reg in &self.callbacks().auth.on_logged_out {
            let args = (user_id.to_owned(), device_id.map(str::to_owned), access_token.to_owned());
            invoke_logged(reg, args).await;
        }
    }
}
