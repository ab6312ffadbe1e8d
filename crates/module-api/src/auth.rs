//! Password auth providers (Synapse's `register_password_auth_provider_callbacks`).
//!
//! - `auth_checkers`: per `(login type, fields)`, callbacks that vouch for a login. For a login
//!   of that type they run in order; the first to return a user ID logs that (existing, local)
//!   user in. For `m.login.password`, if none does, the local password database decides.
//!   Errors are logged and count as "no".
//! - `check_3pid_auth(medium, address, password)`: logins by third-party identifier.
//! - `on_logged_out(user_id, device_id, access_token)`: every callback runs; errors are logged.
//! - `get_username_for_registration(uia_results, params)` and
//!   `get_displayname_for_registration(uia_results, params)`: once a client registration's
//!   user-interactive auth is complete, the first `Some` is the new account's localpart (else
//!   the requested `username`) and display name (else the localpart). Errors are logged and
//!   count as `None`.
//! - `is_3pid_allowed(medium, address, registration)`: before a validation mail is sent for an
//!   address to register with or add, and before it is added; the first `false` refuses (403
//!   `M_THREEPID_DENIED`); an error refuses with 500, as Synapse.

use serde_json::{Map, Value};

use crate::spam::Callback;

/// An auth checker: `(user, login_type, login_dict)` to the user ID it vouches for.
pub type AuthChecker = Callback<AuthCheckerArgs, Option<String>>;

/// `auth_checkers` arguments: `(user, login_type, login_dict)`.
pub type AuthCheckerArgs = (String, String, Map<String, Value>);
/// `on_logged_out` arguments: `(user_id, device_id, access_token)`.
pub type LoggedOutArgs = (String, Option<String>, String);
/// Registration callbacks' arguments: `(uia_results, params)`: the completed stages (type to
/// result) and the request body.
pub type RegistrationParams = (Map<String, Value>, Map<String, Value>);

/// Password auth provider callbacks; any subset may be set.
///
/// Since 0.1.
#[derive(Default, Clone)]
pub struct PasswordAuthProviderCallbacks {
    /// `((login_type, fields), checker)`: the login type is advertised in `GET /login`.
    pub auth_checkers: Vec<((String, Vec<String>), AuthChecker)>,
    /// `(medium, address, password)` to the user ID it vouches for.
    pub check_3pid_auth: Option<Callback<(String, String, String), Option<String>>>,
    /// `(user_id, device_id, access_token)`.
    pub on_logged_out: Option<Callback<LoggedOutArgs, ()>>,
    /// `(uia_results, params)` to the localpart of the account being registered.
    ///
    /// Since 0.2.
    pub get_username_for_registration: Option<Callback<RegistrationParams, Option<String>>>,
    /// `(uia_results, params)` to the display name of the account being registered.
    ///
    /// Since 0.2.
    pub get_displayname_for_registration: Option<Callback<RegistrationParams, Option<String>>>,
    /// `(medium, address, registration)`: `false` refuses adding the identifier to an account
    /// (or registering with it); an error refuses with 500.
    ///
    /// Since 0.3.
    pub is_3pid_allowed: Option<Callback<(String, String, bool), bool>>,
}
