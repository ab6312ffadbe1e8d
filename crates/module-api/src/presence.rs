//! The presence router (Synapse's `register_presence_router_callbacks`) and the extra `unsigned`
//! fields of client events (`register_add_extra_fields_to_unsigned_client_event_callbacks`).
//!
//! - `get_users_for_states(states)`: for presence updates of local users, who else should get
//!   them (user ID to the states they get); each such user's server is sent them. Every
//!   callback's answer is merged; an error is logged and skipped.
//! - `get_interested_users(user_id)`: whose presence a local user gets besides the users they
//!   share a room with, or [`InterestedUsers::All`] for everybody's. The answers are merged;
//!   the first `All` wins; an error is logged and skipped. Keep it consistent with
//!   `get_users_for_states`, as Synapse's docs ask.
//! - `add_field_to_unsigned_callback(event)`: fields added to the event's `unsigned` wherever
//!   clients are served events (sync timelines, `/messages`, `/context`, `/event`, `/relations`,
//!   `/search`, ...). Later callbacks' fields win over earlier ones'; the server's own fields
//!   (`age`, `prev_content`, ...) are never replaced.

use serde_json::{Map, Value};

use crate::callbacks::callback_struct;

/// A user's presence, as the router sees it (Synapse's `UserPresenceState`).
///
/// Since 0.2.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PresenceState {
    /// Whose presence.
    pub user_id: String,
    /// `online`, `unavailable` or `offline`.
    pub state: String,
    /// When the user was last active (ms since the epoch).
    pub last_active_ts: i64,
    /// The status message, if any.
    pub status_msg: Option<String>,
    /// Active in the last few minutes.
    pub currently_active: bool,
}

/// Whose presence a user should get, besides the users they share a room with.
///
/// Since 0.2.
#[derive(Debug, Clone, PartialEq)]
pub enum InterestedUsers {
    /// These users' (Synapse's set of user IDs).
    Users(Vec<String>),
    /// Everybody's (Synapse's `PresenceRouter.ALL_USERS`).
    All,
}

/// Who should get which presence updates: user ID to states.
pub type UsersForStates = std::collections::HashMap<String, Vec<PresenceState>>;

crate::presence_router_callbacks!(
    callback_struct,
    /// Presence router callbacks; set both (Synapse refuses one without the other).
    ///
    /// Since 0.2.
    PresenceRouterCallbacks
);

/// Extra `unsigned` fields for an event served to clients.
pub type UnsignedFields = Map<String, Value>;

crate::unsigned_callbacks!(
    callback_struct,
    /// The `add_field_to_unsigned_callback` callback.
    ///
    /// Since 0.2.
    UnsignedCallbacks
);
