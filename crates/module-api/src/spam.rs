//! Spam-checker callbacks (Synapse's `register_spam_checker_callbacks`) and their decisions.
//!
//! Each callback is optional. Myelin calls the registered callbacks of one kind in registration
//! order (config order); the first non-allow result wins and later callbacks are not called. A
//! callback that returns `Err(ModuleError::Matrix{..})` sends that error to the client; any
//! other error, or a panic, gives `500 M_UNKNOWN`. Which message the client sees for a denial is
//! fixed per call site (see docs/modules/callbacks.md); the errcode and extra fields come from
//! the [`Denial`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::ModuleError;
use crate::callbacks::callback_struct;

/// A registered callback taking the argument tuple `A` and producing `R`.
///
/// Since 0.1.
pub type Callback<A, R> = Arc<dyn Fn(A) -> BoxFuture<'static, Result<R, ModuleError>> + Send + Sync>;

/// An async function usable as a callback: implemented for closures of one to five arguments
/// whose arguments form the tuple `A`.
///
/// Since 0.1.
pub trait Handler<A, R>: Send + Sync + 'static {
    /// Calls the function with the unpacked arguments.
    fn call(&self, args: A) -> BoxFuture<'static, Result<R, ModuleError>>;
}

macro_rules! impl_handler {
    ($($arg:ident),+) => {
        impl<F, Fut, R, $($arg),+> Handler<($($arg,)+), R> for F
        where
            F: Fn($($arg),+) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = Result<R, ModuleError>> + Send + 'static,
        {
            #[allow(non_snake_case)]
            fn call(&self, ($($arg,)+): ($($arg,)+)) -> BoxFuture<'static, Result<R, ModuleError>> {
                Box::pin((self)($($arg),+))
            }
        }
    };
}
impl_handler!(A1);
impl_handler!(A1, A2);
impl_handler!(A1, A2, A3);
impl_handler!(A1, A2, A3, A4);
impl_handler!(A1, A2, A3, A4, A5);

/// Turns an async closure into a [`Callback`].
///
/// Since 0.1.
pub fn callback<A: 'static, R: 'static>(handler: impl Handler<A, R>) -> Callback<A, R> {
    Arc::new(move |args| handler.call(args))
}

/// Why a callback refused: the errcode sent to the client and extra top-level body fields
/// (Synapse's `(Codes, dict)` form).
///
/// Since 0.1.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    /// Matrix errcode, e.g. `M_FORBIDDEN`.
    pub errcode: String,
    /// Extra fields merged into the error body.
    pub fields: Map<String, Value>,
}

/// The answer of a `user_may_*`, login or media callback.
///
/// Since 0.1.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Synapse's `NOT_SPAM`.
    Allow,
    /// Refuse with this errcode and extra fields.
    Deny(Denial),
}

impl Decision {
    /// Refuse with `M_FORBIDDEN`.
    pub fn forbidden() -> Self {
        Decision::deny("M_FORBIDDEN")
    }
    /// Refuse with `errcode`.
    pub fn deny(errcode: &str) -> Self {
        Decision::Deny(Denial { errcode: errcode.to_owned(), fields: Map::new() })
    }
    /// Refuse with `errcode` and extra body fields.
    pub fn deny_with(errcode: &str, fields: Map<String, Value>) -> Self {
        Decision::Deny(Denial { errcode: errcode.to_owned(), fields })
    }
    /// Synapse's deprecated boolean for the `user_may_*` family: `true` allows.
    pub fn from_may(allowed: bool) -> Self {
        if allowed { Decision::Allow } else { Decision::forbidden() }
    }
}

/// The answer of `check_event_for_spam`.
///
/// Since 0.1.
#[derive(Debug, Clone, PartialEq)]
pub enum EventDecision {
    /// Not spam.
    Allow,
    /// Spam: "This message has been rejected as probable spam" with this errcode and fields.
    Deny(Denial),
    /// Spam, with this text as the error message and `M_FORBIDDEN` (Synapse's plain-string form).
    DenyWithMessage(String),
}

impl EventDecision {
    /// Synapse's deprecated boolean for this callback: `true` means spam.
    pub fn from_is_spam(is_spam: bool) -> Self {
        if is_spam {
            EventDecision::Deny(Denial { errcode: "M_FORBIDDEN".into(), fields: Map::new() })
        } else {
            EventDecision::Allow
        }
    }
}

/// The answer of `check_registration_for_spam`.
///
/// Since 0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationBehaviour {
    /// Register normally.
    Allow,
    /// Register, but the user's later actions get fake successes.
    ShadowBan,
    /// Refuse, disguised as `429 M_UNKNOWN "Rate limited"`.
    Deny,
}

/// The profile given to `check_username_for_spam`.
///
/// Since 0.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProfile {
    /// The user ID.
    pub user_id: String,
    /// Display name, if any.
    pub display_name: Option<String>,
    /// Avatar URL, if any.
    pub avatar_url: Option<String>,
}

/// A stored media file given to `check_media_file_for_spam`.
///
/// Since 0.1.
#[derive(Debug, Clone)]
pub struct MediaFile {
    /// Where the bytes are; read-only for the module.
    pub path: PathBuf,
    /// The media ID.
    pub media_id: String,
    /// `None` for local media (as Synapse's `FileInfo.server_name`).
    pub server_name: Option<String>,
    /// The declared content type.
    pub content_type: Option<String>,
    /// Size in bytes.
    pub length: u64,
    /// Whether this file is a thumbnail.
    pub thumbnail: bool,
}

impl MediaFile {
    /// Reads the whole file.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.path)
    }
}

/// `check_registration_for_spam`'s arguments: `(email_threepid, username, request_info
/// [(user_agent, ip)], auth_provider_id)`.
pub type RegistrationArgs = (Option<Value>, Option<String>, Vec<(String, String)>, Option<String>);
/// `check_login_for_spam`'s arguments: `(user_id, device_id, initial_display_name,
/// request_info, auth_provider_id)`.
pub type LoginArgs = (String, Option<String>, Option<String>, Vec<(String, String)>, Option<String>);
/// `user_may_send_state_event`'s arguments: `(user_id, room_id, event_type, state_key, content)`.
pub type StateEventArgs = (String, String, String, String, Map<String, Value>);
/// A `/createRoom` body as given to `user_may_create_room`.
pub type RoomConfig = Map<String, Value>;

crate::spam_checker_callbacks!(
    callback_struct,
    /// The spam-checker callbacks a module registers; any subset may be set. The list is
    /// [`crate::callbacks`]'s.
    ///
    /// Since 0.1.
    SpamCheckerCallbacks
);
