//! Third-party rules and account validity dispatch, with Synapse's semantics
//! (`third_party_event_rules_callbacks.py`, `account_validity_callbacks.py`).

use myelin_module_api::EventView;
use myelin_module_api::third_party::*;
use serde_json::{Map, Value};

use super::{ModuleRegistry, dispatch_lists, invoke, invoke_logged};
use crate::{Error, ErrorKind, Result};

myelin_module_api::third_party_rules_callbacks!(dispatch_lists, RulesLists, ThirdPartyRulesCallbacks);
myelin_module_api::account_validity_callbacks!(dispatch_lists, ValidityLists, AccountValidityCallbacks);

impl ModuleRegistry {
    /// Whether any module checks events (so the caller can skip gathering state).
    pub fn has_check_event_allowed(&self) -> bool {
        !self.callbacks().rules.check_event_allowed.is_empty()
    }

    /// Whether any module wants `on_new_event`.
    pub fn has_on_new_event(&self) -> bool {
        !self.callbacks().rules.on_new_event.is_empty()
    }

    /// `check_event_allowed`: `Ok(Some(content))` if a module replaced the content.
    pub async fn check_event_allowed(
        &self,
        event: &EventView,
        state: &StateEvents,
    ) -> Result<Option<Map<String, Value>>> {
        let mut replacement = None;
        for reg in &self.callbacks().rules.check_event_allowed {
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
        for reg in &self.callbacks().rules.on_create_room {
            match invoke(reg, (user_id.to_owned(), config.clone(), is_admin)).await {
                Ok(Some(amended)) => config = amended,
                Ok(None) => {}
                Err(e @ myelin_module_api::ModuleError::Matrix { .. }) => return Err(Error::from(e)),
                Err(e) => {
                    tracing::warn!(module = %reg.module, error = %e, "module refused room creation");
                    return Err(Error::forbidden("Room creation forbidden with these parameters"));
                }
            }
        }
        Ok(config)
    }

    /// `on_legacy_send_mail` (one module at most): None when no module took it over.
    pub async fn legacy_send_mail(&self, user_id: &str) -> Option<Result<()>> {
        let reg = self.callbacks().validity.on_legacy_send_mail.first()?;
        Some(invoke(reg, (user_id.to_owned(),)).await.map_err(Error::from))
    }

    /// `on_legacy_renew` (one module at most): `(token_valid, token_stale, expiration_ts)`.
    pub async fn legacy_renew(&self, token: &str) -> Option<Result<(bool, bool, i64)>> {
        let reg = self.callbacks().validity.on_legacy_renew.first()?;
        Some(invoke(reg, (token.to_owned(),)).await.map_err(Error::from))
    }

    /// `on_legacy_admin_request` (one module at most): the new expiration date.
    pub async fn legacy_admin_request(&self, body: &Map<String, Value>) -> Option<Result<i64>> {
        let reg = self.callbacks().validity.on_legacy_admin_request.first()?;
        Some(invoke(reg, (body.clone(),)).await.map_err(Error::from))
    }

    /// `is_user_expired`: the first answer that is not `None`.
    pub async fn is_user_expired(&self, user_id: &str) -> Result<Option<bool>> {
        for reg in &self.callbacks().validity.is_user_expired {
            match invoke(reg, (user_id.to_owned(),)).await {
                Ok(Some(expired)) => return Ok(Some(expired)),
                Ok(None) => {}
                Err(e) => return Err(Error::from(e)),
            }
        }
        Ok(None)
    }

    /// Whether any account validity module is registered.
    pub fn has_is_user_expired(&self) -> bool {
        !self.callbacks().validity.is_user_expired.is_empty()
    }

    /// Whether any module checks room visibility changes (so the caller can skip gathering state).
    pub fn has_check_visibility_can_be_modified(&self) -> bool {
        !self.callbacks().rules.check_visibility_can_be_modified.is_empty()
    }

    /// Whether any module registered `check_threepid_can_be_invited`.
    pub fn has_check_threepid_can_be_invited(&self) -> bool {
        !self.callbacks().rules.check_threepid_can_be_invited.is_empty()
    }

    /// `check_threepid_can_be_invited`: `false` when a module refuses; errors are logged and
    /// count as no objection.
    pub async fn check_threepid_can_be_invited(&self, medium: &str, address: &str, state: &StateEvents) -> bool {
        for reg in &self.callbacks().rules.check_threepid_can_be_invited {
            if invoke_logged(reg, (medium.to_owned(), address.to_owned(), state.clone())).await == Some(false) {
                return false;
            }
        }
        true
    }

    /// `check_visibility_can_be_modified`: `false` when a module refuses; a module's error is
    /// logged and counts as no objection (Synapse's rules).
    pub async fn check_visibility_can_be_modified(&self, room_id: &str, state: &StateEvents, visibility: &str) -> bool {
        for reg in &self.callbacks().rules.check_visibility_can_be_modified {
            let args = (room_id.to_owned(), state.clone(), visibility.to_owned());
            if invoke_logged(reg, args).await == Some(false) {
                return false;
            }
        }
        true
    }

    /// `on_profile_update`: every callback runs; errors are logged.
    pub async fn on_profile_update(&self, user_id: &str, profile: ProfileInfo, by_admin: bool, deactivation: bool) {
        for reg in &self.callbacks().rules.on_profile_update {
            invoke_logged(reg, (user_id.to_owned(), profile.clone(), by_admin, deactivation)).await;
        }
    }

    /// `check_can_deactivate_user`: `false` when a module refuses; errors are logged and count
    /// as no objection.
    pub async fn check_can_deactivate_user(&self, user_id: &str, by_admin: bool) -> bool {
        for reg in &self.callbacks().rules.check_can_deactivate_user {
            if invoke_logged(reg, (user_id.to_owned(), by_admin)).await == Some(false) {
                return false;
            }
        }
        true
    }

    /// `check_can_shutdown_room`: `false` when a module refuses; errors are logged and count as
    /// no objection.
    pub async fn check_can_shutdown_room(&self, user_id: Option<&str>, room_id: &str) -> bool {
        for reg in &self.callbacks().rules.check_can_shutdown_room {
            if invoke_logged(reg, (user_id.map(str::to_owned), room_id.to_owned())).await == Some(false) {
                return false;
            }
        }
        true
    }

    /// `on_add_user_third_party_identifier`, then the deprecated `on_threepid_bind`: every
    /// callback runs; errors are logged.
    pub async fn on_threepid_added(&self, user_id: &str, medium: &str, address: &str) {
        let args = (user_id.to_owned(), medium.to_owned(), address.to_owned());
        for reg in &self.callbacks().rules.on_add_user_third_party_identifier {
            invoke_logged(reg, args.clone()).await;
        }
        for reg in &self.callbacks().rules.on_threepid_bind {
            invoke_logged(reg, args.clone()).await;
        }
    }

    /// `on_remove_user_third_party_identifier`: every callback runs; errors are logged.
    pub async fn on_threepid_removed(&self, user_id: &str, medium: &str, address: &str) {
        let args = (user_id.to_owned(), medium.to_owned(), address.to_owned());
        for reg in &self.callbacks().rules.on_remove_user_third_party_identifier {
            invoke_logged(reg, args.clone()).await;
        }
    }

    /// `on_user_deactivation_status_changed`: every callback runs; errors are logged.
    pub async fn on_user_deactivation_status_changed(&self, user_id: &str, deactivated: bool, by_admin: bool) {
        for reg in &self.callbacks().rules.on_user_deactivation_status_changed {
            invoke_logged(reg, (user_id.to_owned(), deactivated, by_admin)).await;
        }
    }

    /// `on_user_login`: every callback runs; an error fails the login (Synapse does not catch
    /// them either).
    pub async fn on_user_login(&self, user_id: &str, login_type: Option<&str>, provider: Option<&str>) -> Result<()> {
        for reg in &self.callbacks().validity.on_user_login {
            invoke(reg, (user_id.to_owned(), login_type.map(str::to_owned), provider.map(str::to_owned))).await?;
        }
        Ok(())
    }

    /// `on_user_registration`: every callback runs; errors are logged.
    pub async fn on_user_registration(&self, user_id: &str) {
        for reg in &self.callbacks().validity.on_user_registration {
            invoke_logged(reg, (user_id.to_owned(),)).await;
        }
    }
}

/// `on_new_event`: every callback runs; errors are logged.
pub(crate) async fn on_new_event(callbacks: &super::Callbacks, event: &EventView, state: &StateEvents) {
    for reg in &callbacks.rules.on_new_event {
        invoke_logged(reg, (event.clone(), state.clone())).await;
    }
}

/// The 403 for expired accounts.
pub(crate) fn expired() -> Error {
    Error::new(
        ErrorKind::Module { status: 403, errcode: "ORG_MATRIX_EXPIRED_ACCOUNT".into() },
        "User account has expired",
    )
}
