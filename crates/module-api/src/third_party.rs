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
//! - `is_user_expired(user_id)`: the first `Some` wins; `Some(true)` refuses every
//!   authenticated request but logout with 403 `ORG_MATRIX_EXPIRED_ACCOUNT`.
//! - `on_user_registration(user_id)`: after an account is created; errors are logged.

use serde_json::{Map, Value};

use crate::EventView;
use crate::spam::Callback;

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

/// Third-party rules callbacks; any subset may be set.
///
/// Since 0.1.
#[derive(Default, Clone)]
pub struct ThirdPartyRulesCallbacks {
    /// `(event, state)`.
    pub check_event_allowed: Option<Callback<(EventView, StateEvents), EventAllowed>>,
    /// `(user_id, config, is_requester_admin)`: `Some(config)` replaces the request body.
    pub on_create_room: Option<Callback<CreateRoomArgs, Option<Map<String, Value>>>>,
    /// `(event, state)`.
    pub on_new_event: Option<Callback<(EventView, StateEvents), ()>>,
}

/// Account validity callbacks; any subset may be set.
///
/// Since 0.1.
#[derive(Default, Clone)]
pub struct AccountValidityCallbacks {
    /// `(user_id)`: `Some(true)` if the account has expired, `None` if this module does not know.
    pub is_user_expired: Option<Callback<(String,), Option<bool>>>,
    /// `(user_id)`: a new account exists.
    pub on_user_registration: Option<Callback<(String,), ()>>,
}
