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
//! - `is_user_expired(user_id)`: the first `Some` wins; `Some(true)` refuses every
//!   authenticated request but logout with 403 `ORG_MATRIX_EXPIRED_ACCOUNT`.
//! - `on_user_registration(user_id)`: after an account is created; errors are logged.

use serde_json::{Map, Value};

use crate::EventView;
use crate::callbacks::callback_struct;

/// A room's current state handed to third-party rules: the state events.
pub type StateEvents = Vec<EventView>;

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
