//! Account data callbacks (Synapse's `register_account_data_callbacks`) and media repository
//! callbacks (`register_media_repository_callbacks`).
//!
//! - `on_account_data_updated(user_id, room_id, type, content)`: after a user's global or room
//!   account data is written (by the user or a module); every callback runs, errors are logged.
//! - `get_media_config_for_user(user_id)`: `GET /media/config` answers the first non-empty
//!   result instead of the server's.
//! - `is_user_allowed_to_upload_media_of_size(user_id, size)`: the first `false` refuses the
//!   upload with 413 `M_TOO_LARGE` "Upload request body is too large".
//!
//! - `get_media_upload_limits_for_user(user_id)`: the first `Some` replaces the server's
//!   `media_upload_limits` for the user; an upload that would take the user's uploads in a
//!   period over its `max_bytes` is refused (403 `M_USER_LIMIT_EXCEEDED` with `info_uri`), after
//!   `on_media_upload_limit_exceeded(user_id, limit, sent_bytes, attempted_bytes)` ran.
//!
//! Errors of the media callbacks are 500s for the request, as on Synapse.
//!
//! And the ratelimit callback (`register_ratelimit_callbacks`):
//! `get_ratelimit_override_for_user(user_id, limiter_name)`: the first `Some` replaces the
//! server's setting of that limiter for that user (`per_second` 0 lifts it). Asked for every
//! limited action of a user, after the admin's per-user override; an error is a 500.

use crate::callbacks::callback_struct;

crate::account_data_callbacks!(
    callback_struct,
    /// Account data callbacks; any subset may be set.
    ///
    /// Since 0.2.
    AccountDataCallbacks
);

/// A per-user rate limit from a module (Synapse's `RatelimitOverride`).
///
/// Since 0.2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatelimitOverride {
    /// Actions per second; 0 lifts the limit.
    pub per_second: f64,
    /// How many actions may be taken at once.
    pub burst_count: u64,
}

/// An upload quota: at most `max_bytes` uploaded in any `time_period_ms` (Synapse's
/// `MediaUploadLimit`).
///
/// Since 0.2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaUploadLimit {
    /// The most bytes a user may upload in the period.
    pub max_bytes: u64,
    /// The period, in milliseconds.
    pub time_period_ms: u64,
    /// Where the refused user learns more (`info_uri` of `M_USER_LIMIT_EXCEEDED`); the server's
    /// own page when `None`.
    pub info_uri: Option<String>,
    /// Whether the user could buy a bigger quota (`can_upgrade`).
    pub can_upgrade: bool,
}

crate::ratelimit_callbacks!(
    callback_struct,
    /// The ratelimit callback; any subset may be set.
    ///
    /// Since 0.2.
    RatelimitCallbacks
);

crate::media_repository_callbacks!(
    callback_struct,
    /// Media repository callbacks; any subset may be set.
    ///
    /// Since 0.2.
    MediaRepositoryCallbacks
);
