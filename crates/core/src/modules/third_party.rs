//! Third-party rules and account validity dispatch, with Synapse's semantics
//! (`third_party_event_rules_callbacks.py`, `account_validity_callbacks.py`).

use myelin_module_api::EventView;
use myelin_module_api::third_party::*;
use serde_json::{Map, Value};

use super::{ModuleRegistry, Registered, invoke};
use crate::{Error, ErrorKind, Result};

/// One list per callback, in registration order.
#[derive(Default)]
pub(crate) struct ThirdPartyLists {
    pub(crate) check_event_allowed: Vec<Registered<(EventView, StateEvents), EventAllowed>>,
    pub(crate) on_create_room: Vec<Registered<CreateRoomArgs, Option<Map<String, Value>>>>,
    pub(crate) on_new_event: Vec<Registered<(EventView, StateEvents), ()>>,
    pub(crate) is_user_expired: Vec<Registered<(String,), Option<bool>>>,
    pub(crate) on_user_registration: Vec<Registered<(String,), ()>>,
}

impl ThirdPartyLists {
    pub(crate) fn add_rules(&mut self, module: &str, cbs: ThirdPartyRulesCallbacks) {
        if let Some(cb) = cbs.check_event_allowed {
            self.check_event_allowed.push(Registered::new(module, cb));
        }
        if let Some(cb) = cbs.on_create_room {
            self.on_create_room.push(Registered::new(module, cb));
        }
        if let Some(cb) = cbs.on_new_event {
            self.on_new_event.push(Registered::new(module, cb));
        }
    }

    pub(crate) fn add_validity(&mut self, module: &str, cbs: AccountValidityCallbacks) {
        if let Some(cb) = cbs.is_user_expired {
            self.is_user_expired.push(Registered::new(module, cb));
        }
        if let Some(cb) = cbs.on_user_registration {
            self.on_user_registration.push(Registered::new(module, cb));
        }
    }

    pub(crate) fn for_each_metric(&self, f: &mut dyn FnMut(&str, &str, u64, u64)) {
        use std::sync::atomic::Ordering::Relaxed;
        macro_rules! each {
            ($($name:ident),*) => {$(
                for r in &self.$name {
                    f(stringify!($name), &r.module, r.calls.load(Relaxed), r.nanos.load(Relaxed));
                }
            )*};
        }
        each!(check_event_allowed, on_create_room, on_new_event, is_user_expired, on_user_registration);
    }
}

impl ModuleRegistry {
    /// Whether any module checks events (so the caller can skip gathering state).
    pub fn has_check_event_allowed(&self) -> bool {
        !self.callbacks().third_party.check_event_allowed.is_empty()
    }

    /// Whether any module wants `on_new_event`.
    pub fn has_on_new_event(&self) -> bool {
        !self.callbacks().third_party.on_new_event.is_empty()
    }

    /// `check_event_allowed`: `Ok(Some(content))` if a module replaced the content.
    pub async fn check_event_allowed(
        &self,
        event: &EventView,
        state: &StateEvents,
    ) -> Result<Option<Map<String, Value>>> {
        let mut replacement = None;
        for reg in &self.callbacks().third_party.check_event_allowed {
            match invoke(reg, (event.clone(), state.clone())).await {
                Ok(EventAllowed::Allow) => {}
                Ok(EventAllowed::Replace(content)) => {
                    replacement.get_or_insert(content);
                }
                Ok(EventAllowed::Deny) => return Err(Error::forbidden("This event is not allowed in this context")),
                Err(e) => return Err(Error::from(e)),
            }
        }
        Ok(replacement)
    }

    /// `on_create_room`: the (possibly amended) request body.
    pub async fn on_create_room(
        &self,
        user_id: &str,
        config: Map<String, Value>,
        is_admin: bool,
    ) -> Result<Map<String, Value>> {
        let mut config = config;
        for reg in &self.callbacks().third_party.on_create_room {
            match invoke(reg, (user_id.to_owned(), config.clone(), is_admin)).await {
                Ok(Some(amended)) => config = amended,
                Ok(None) => {}
                Err(e @ myelin_module_api::ModuleError::Matrix { .. }) => return Err(Error::from(e)),
                Err(e) => {
                    tracing::warn!("module {} refused room creation: {e}", reg.module);
                    return Err(Error::forbidden("Room creation forbidden with these parameters"));
                }
            }
        }
        Ok(config)
    }

    /// `is_user_expired`: the first answer that is not `None`.
    pub async fn is_user_expired(&self, user_id: &str) -> Result<bool> {
        for reg in &self.callbacks().third_party.is_user_expired {
            match invoke(reg, (user_id.to_owned(),)).await {
                Ok(Some(expired)) => return Ok(expired),
                Ok(None) => {}
                Err(e) => return Err(Error::from(e)),
            }
        }
        Ok(false)
    }

    /// Whether any account validity module is registered.
    pub fn has_is_user_expired(&self) -> bool {
        !self.callbacks().third_party.is_user_expired.is_empty()
    }

    /// `on_user_registration`: every callback runs; errors are logged.
    pub async fn on_user_registration(&self, user_id: &str) {
        for reg in &self.callbacks().third_party.on_user_registration {
            if let Err(e) = invoke(reg, (user_id.to_owned(),)).await {
                tracing::warn!("module {} failed in on_user_registration: {e}", reg.module);
            }
        }
    }
}

/// `on_new_event`: every callback runs; errors are logged.
pub(crate) async fn on_new_event(callbacks: &super::Callbacks, event: &EventView, state: &StateEvents) {
    for reg in &callbacks.third_party.on_new_event {
        if let Err(e) = invoke(reg, (event.clone(), state.clone())).await {
            tracing::warn!("module {} failed in on_new_event: {e}", reg.module);
        }
    }
}

/// The 403 for expired accounts.
pub(crate) fn expired() -> Error {
    Error::new(
        ErrorKind::Module { status: 403, errcode: "ORG_MATRIX_EXPIRED_ACCOUNT".into() },
        "User account has expired",
    )
}
