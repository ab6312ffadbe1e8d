//! Third-party event rules (Synapse's `register_third_party_rules_callbacks`) and account
//! validity (`register_account_validity_callbacks`).
//!
//! - `check_event_allowed(event, state)`: every locally created event, membership included,
//!   before `check_event_for_spam`. The first `false` rejects (403 M_FORBIDDEN "This event is
//!   not allowed in this context"); the first replacement content wins.
//! - `on_create_room(user_id, config, is_admin)`: may return an amended `/createRoom` body;
//!   an error other than a Matrix error refuses with 403 "Room creation forbidden with these
//!   parameters".
//! - `on_new_event(event, state)`: after an event is stored; every callback runs, errors are
//!   logged.
//! - `check_visibility_can_be_modified(room_id, state, new_visibility)`: before a room is
//!   published to the directory and when it is created; the first `false` refuses (403); an
//!   error is logged and counts as no objection.
//! - `on_profile_update(user_id, profile, by_admin, deactivation)` and
//!   `on_user_deactivation_status_changed(user_id, deactivated, by_admin)`: after the change;
//!   every callback runs, errors are logged.
//! - `check_can_deactivate_user(user_id, by_admin)`: the first `false` refuses (403 "Deactivation
//!   of this user is forbidden"); an error is logged and counts as no objection.
//! - `check_can_shutdown_room(user_id, room_id)`: the first `false` refuses a room's shutdown
//!   (403 "Shutdown of this room is forbidden"); an error is logged and counts as no objection.
//! - `on_user_login(user_id, auth_provider_type, auth_provider_id)`: after a login; an error
//!   fails the login, as on Synapse.
//! - `is_user_expired(user_id)`: the first `Some` wins; `Some(true)` refuses every
//!   authenticated request but logout with 403 `ORG_MATRIX_EXPIRED_ACCOUNT`.
//! - `on_user_registration(user_id)`: after an account is created; errors are logged.

use serde_json::{Map, Value};

use crate::EventView;
use crate::callbacks::callback_struct;

/// A room's current state handed to third-party rules: the state events.
pub type StateEvents = Vec<EventView>;

/// A user's profile as given to `on_profile_update` (Synapse's `ProfileInfo`).
///
/// Since 0.2.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileInfo {
    /// The display name, if any.
    pub display_name: Option<String>,
    /// The avatar URL, if any.
    pub avatar_url: Option<String>,
}

/// `on_create_room`'s arguments: `(user_id, config, is_requester_admin)`.
pub type CreateRoomArgs = (String, Map<String, Value>, bool);

/// The answer of `check_event_allowed`.
///
/// Since 0.1.
#[derive(Debug, Clone, PartialEq)]
pub enum EventAllowed {
    /// Allowed as is.
    Allow,
    /// Allowed with this content instead (local events only).
    Replace(Map<String, Value>),
    /// Refused.
    Deny,
}

crate::third_party_rules_callbacks!(
    callback_struct,
    /// Third-party rules callbacks; any subset may be set.
    ///
    /// Since 0.1.
    ThirdPartyRulesCallbacks
);

crate::account_validity_callbacks!(
    callback_struct,
    /// Account validity callbacks; any subset may be set.
    ///
    /// Since 0.1.
    AccountValidityCallbacks
);
