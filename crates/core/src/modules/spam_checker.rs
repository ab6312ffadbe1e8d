//! Spam-checker dispatch: the semantics Synapse's `SpamCheckerModuleApiCallbacks` owns.
//!
//! For each callback: call the registered callbacks in registration order; stop at the first
//! non-allow result; turn it into the call site's fixed message with the module's errcode and
//! extra fields. A module's Matrix error passes through; any other error or a panic becomes a
//! 500 for that request only. Every call is counted and timed under its module's name.
//!
//! Admin exemptions are decided by the call sites (they know the requester); the table is in
//! docs/modules/callbacks.md.

use myelin_module_api::EventView;
use myelin_module_api::spam::*;
use serde_json::{Map, Value};

use super::{ModuleRegistry, Registered, dispatch_lists, invoke};
use crate::{Error, ErrorKind, Result};

myelin_module_api::spam_checker_callbacks!(dispatch_lists, SpamLists, SpamCheckerCallbacks);

/// Calls each callback in order until one's result is not an allow; returns that result.
async fn first_objection<A: Clone, R>(
    list: &[Registered<A, R>],
    name: &str,
    args: A,
    allows: impl Fn(&R) -> bool,
) -> Result<Option<R>> {
    for reg in list {
        match invoke(reg, args.clone()).await {
            Ok(result) if allows(&result) => continue,
            Ok(result) => return Ok(Some(result)),
            Err(e) => {
                tracing::warn!(module = %reg.module, callback = name, error = %e, "module callback raised");
                return Err(Error::from(e));
            }
        }
    }
    Ok(None)
}

fn denial(d: Denial, message: &str) -> Error {
    Error::new(ErrorKind::Denied(d.errcode), message).with_fields(d.fields)
}

async fn decide<A: Clone>(list: &[Registered<A, Decision>], name: &str, args: A, message: &str) -> Result<()> {
    match first_objection(list, name, args, |d| *d == Decision::Allow).await? {
        Some(Decision::Deny(d)) => Err(denial(d, message)),
        _ => Ok(()),
    }
}

impl ModuleRegistry {
    /// Whether any module checks events for spam.
    pub fn has_check_event_for_spam(&self) -> bool {
        !self.callbacks().spam.check_event_for_spam.is_empty()
    }

    /// `check_event_for_spam`: Ok if no module objects.
    pub async fn check_event_for_spam(&self, event: &EventView) -> Result<()> {
        let list = &self.callbacks().spam.check_event_for_spam;
        if list.is_empty() {
            return Ok(());
        }
        match first_objection(list, "check_event_for_spam", (event.clone(),), |d| *d == EventDecision::Allow).await? {
            Some(EventDecision::Deny(d)) => Err(denial(d, "This message has been rejected as probable spam")),
            Some(EventDecision::DenyWithMessage(m)) => Err(Error::forbidden(m)),
            _ => Ok(()),
        }
    }

    /// `federated_user_may_invite`, then (if it allows) `user_may_invite`, for an invite that
    /// arrived over federation. Both deny with Synapse's federation message.
    pub async fn federated_user_may_invite(&self, invite: &EventView) -> Result<()> {
        const MESSAGE: &str = "This user is not permitted to send invites to this server/user";
        let list = &self.callbacks().spam.federated_user_may_invite;
        if !list.is_empty() {
            decide(list, "federated_user_may_invite", (invite.clone(),), MESSAGE).await?;
        }
        let list = &self.callbacks().spam.user_may_invite;
        if list.is_empty() {
            return Ok(());
        }
        let field = |k: &str| invite.as_json().get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let args = (field("sender"), field("state_key"), field("room_id"));
        decide(list, "user_may_invite", args, MESSAGE).await
    }

    /// `should_drop_federated_event`: whether any module drops the event. A module that fails
    /// does not drop it (the failure is logged).
    pub async fn should_drop_federated_event(&self, event: &EventView) -> bool {
        let list = &self.callbacks().spam.should_drop_federated_event;
        if list.is_empty() {
            return false;
        }
        match first_objection(list, "should_drop_federated_event", (event.clone(),), |drop| !*drop).await {
            Ok(found) => found.is_some(),
            Err(_) => false,
        }
    }

    /// Whether any module wants `should_drop_federated_event`.
    pub fn has_should_drop_federated_event(&self) -> bool {
        !self.callbacks().spam.should_drop_federated_event.is_empty()
    }

    /// `user_may_invite`.
    pub async fn user_may_invite(&self, inviter: &str, invitee: &str, room_id: &str) -> Result<()> {
        let list = &self.callbacks().spam.user_may_invite;
        if list.is_empty() {
            return Ok(());
        }
        let args = (inviter.to_owned(), invitee.to_owned(), room_id.to_owned());
        decide(list, "user_may_invite", args, "Invites have been disabled on this server").await
    }

    /// `user_may_send_3pid_invite`.
    pub async fn user_may_send_3pid_invite(
        &self,
        inviter: &str,
        medium: &str,
        address: &str,
        room_id: &str,
    ) -> Result<()> {
        let list = &self.callbacks().spam.user_may_send_3pid_invite;
        if list.is_empty() {
            return Ok(());
        }
        let args = (inviter.to_owned(), medium.to_owned(), address.to_owned(), room_id.to_owned());
        decide(list, "user_may_send_3pid_invite", args, "Cannot send threepid invite").await
    }

    /// `user_may_join_room`.
    pub async fn user_may_join_room(&self, user_id: &str, room_id: &str, is_invited: bool) -> Result<()> {
        let list = &self.callbacks().spam.user_may_join_room;
        if list.is_empty() {
            return Ok(());
        }
        let args = (user_id.to_owned(), room_id.to_owned(), is_invited);
        decide(list, "user_may_join_room", args, "Not allowed to join this room").await
    }

    /// `user_may_create_room`, with the (possibly amended) request body.
    pub async fn user_may_create_room(&self, user_id: &str, config: &Map<String, Value>) -> Result<()> {
        let list = &self.callbacks().spam.user_may_create_room;
        if list.is_empty() {
            return Ok(());
        }
        let args = (user_id.to_owned(), config.clone());
        decide(list, "user_may_create_room", args, "You are not permitted to create rooms").await
    }

    /// `user_may_create_room_alias`.
    pub async fn user_may_create_room_alias(&self, user_id: &str, alias: &str) -> Result<()> {
        let list = &self.callbacks().spam.user_may_create_room_alias;
        if list.is_empty() {
            return Ok(());
        }
        let args = (user_id.to_owned(), alias.to_owned());
        decide(list, "user_may_create_room_alias", args, "This user is not permitted to create this alias").await
    }

    /// `user_may_publish_room`.
    pub async fn user_may_publish_room(&self, user_id: &str, room_id: &str) -> Result<()> {
        let list = &self.callbacks().spam.user_may_publish_room;
        if list.is_empty() {
            return Ok(());
        }
        let args = (user_id.to_owned(), room_id.to_owned());
        decide(list, "user_may_publish_room", args, "This user is not permitted to publish rooms to the room list")
            .await
    }

    /// `user_may_send_state_event`. Extra fields are dropped, as in Synapse.
    pub async fn user_may_send_state_event(
        &self,
        user_id: &str,
        room_id: &str,
        event_type: &str,
        state_key: &str,
        content: &Map<String, Value>,
    ) -> Result<()> {
        let list = &self.callbacks().spam.user_may_send_state_event;
        if list.is_empty() {
            return Ok(());
        }
        let args =
            (user_id.to_owned(), room_id.to_owned(), event_type.to_owned(), state_key.to_owned(), content.clone());
        match first_objection(list, "user_may_send_state_event", args, |d| *d == Decision::Allow).await? {
            Some(Decision::Deny(d)) => {
                Err(Error::new(ErrorKind::Denied(d.errcode), "You are not permitted to send the state event"))
            }
            _ => Ok(()),
        }
    }

    /// `check_username_for_spam`: whether any module hides this user from `requester_id`.
    pub async fn check_username_for_spam(&self, profile: UserProfile, requester_id: &str) -> Result<bool> {
        let list = &self.callbacks().spam.check_username_for_spam;
        if list.is_empty() {
            return Ok(false);
        }
        let found =
            first_objection(list, "check_username_for_spam", (profile, requester_id.to_owned()), |spammy| !spammy)
                .await?;
        Ok(found.is_some())
    }

    /// `check_registration_for_spam`: the first non-Allow behaviour.
    pub async fn check_registration_for_spam(
        &self,
        email_threepid: Option<Value>,
        username: Option<&str>,
        request_info: Vec<(String, String)>,
        auth_provider_id: Option<&str>,
    ) -> Result<RegistrationBehaviour> {
        let list = &self.callbacks().spam.check_registration_for_spam;
        if list.is_empty() {
            return Ok(RegistrationBehaviour::Allow);
        }
        let args = (email_threepid, username.map(str::to_owned), request_info, auth_provider_id.map(str::to_owned));
        let found =
            first_objection(list, "check_registration_for_spam", args, |b| *b == RegistrationBehaviour::Allow).await?;
        Ok(found.unwrap_or(RegistrationBehaviour::Allow))
    }

    /// `check_login_for_spam`.
    pub async fn check_login_for_spam(
        &self,
        user_id: &str,
        device_id: Option<&str>,
        initial_display_name: Option<&str>,
        request_info: Vec<(String, String)>,
        auth_provider_id: Option<&str>,
    ) -> Result<()> {
        let list = &self.callbacks().spam.check_login_for_spam;
        if list.is_empty() {
            return Ok(());
        }
        let args = (
            user_id.to_owned(),
            device_id.map(str::to_owned),
            initial_display_name.map(str::to_owned),
            request_info,
            auth_provider_id.map(str::to_owned),
        );
        decide(list, "check_login_for_spam", args, "Login was blocked by the server").await
    }

    /// `check_media_file_for_spam`: any denial is `400 M_UNKNOWN "Bad content"` for uploads.
    pub async fn check_media_file_for_spam(&self, file: MediaFile) -> Result<()> {
        let list = &self.callbacks().spam.check_media_file_for_spam;
        if list.is_empty() {
            return Ok(());
        }
        match first_objection(list, "check_media_file_for_spam", (file,), |d| *d == Decision::Allow).await? {
            Some(_) => Err(Error::new(ErrorKind::BadContent, "Bad content")),
            None => Ok(()),
        }
    }

    /// `check_media_file_for_spam` on a remote file fetched into the cache: a denial is
    /// Synapse's `SpamMediaException`, 404 with the module's errcode (extra fields dropped).
    pub async fn check_remote_media_file_for_spam(&self, file: MediaFile) -> Result<()> {
        let list = &self.callbacks().spam.check_media_file_for_spam;
        if list.is_empty() {
            return Ok(());
        }
        match first_objection(list, "check_media_file_for_spam", (file,), |d| *d == Decision::Allow).await? {
            Some(Decision::Deny(d)) => {
                Err(Error::new(ErrorKind::Module { status: 404, errcode: d.errcode }, "Not found"))
            }
            Some(Decision::Allow) | None => Ok(()),
        }
    }
}
