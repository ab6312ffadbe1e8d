//! The stable interface between Myelin and its modules.
//!
//! This is the only crate a Rust module author depends on. It depends on no Myelin crate, so
//! nothing internal leaks into a module's build, and Myelin's internals can change freely behind
//! it. It mirrors Synapse's module system (`synapse.module_api`): a module is built from its
//! parsed config plus a [`ModuleApi`], and registers callbacks and web resources through it.
//!
//! # Layout
//! - [`Module`]: what a module type implements (`NAME`, `parse_config`, `new`).
//! - [`ModuleApi`]: the handle a module receives; `register_*` methods and server facts.
//! - [`spam`]: the spam-checker callbacks and their decision types.
//! - [`third_party`], [`auth`], [`repository`], [`presence`], [`federation`]: the other callback
//!   categories (third-party rules and account validity; password auth providers; account data,
//!   the media repository and rate limits; the presence router and extra `unsigned` fields;
//!   events delivered over federation).
//! - [`callbacks`]: the one list of every callback Myelin calls.
//! - [`web`]: web resources served by the homeserver.
//! - [`ConfigError`], [`ModuleError`]: the two error types a module can produce.
//! - [`EventView`]: the read-only view of an event given to callbacks.
//!
//! # Why callbacks are boxed async closures
//! Callbacks are `Arc<dyn Fn(..) -> BoxFuture<..>>` rather than trait methods: a module registers
//! any subset (as Synapse's keyword arguments allow), Rust and Python modules share one list per
//! callback, and the dispatcher can call them without knowing the module's type. The cost is one
//! allocation per call, measured in `benches/dispatch.rs` (well under a microsecond for a chain).
//!
//! # Example
//! ```
//! use myelin_module_api::{ConfigError, Module, ModuleApi, ModuleError, spam::*};
//!
//! struct DenyEvil;
//!
//! impl Module for DenyEvil {
//!     const NAME: &'static str = "example.DenyEvil";
//!     type Config = ();
//!     fn parse_config(_config: serde_json::Value) -> Result<(), ConfigError> {
//!         Ok(())
//!     }
//!     fn new(_config: (), api: &ModuleApi) -> Result<Self, ModuleError> {
//!         api.register_spam_checker_callbacks(SpamCheckerCallbacks {
//!             user_may_create_room: Some(callback(|user_id: String, _config| async move {
//!                 if user_id.starts_with("@evil:") { Ok(Decision::forbidden()) } else { Ok(Decision::Allow) }
//!             })),
//!             ..Default::default()
//!         })?;
//!         Ok(DenyEvil)
//!     }
//! }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod callbacks;
pub mod federation;
pub mod http;
pub mod presence;
pub mod repository;
pub mod spam;
pub mod third_party;
pub mod web;

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

pub use futures;
pub use serde_json;

/// A module type. Myelin instantiates one value per `modules:` entry naming [`Module::NAME`].
///
/// Since 0.1.
pub trait Module: Send + Sync + Sized + 'static {
    /// The name admins write in `module:`, e.g. `"myelin.demo.DemoModule"`.
    const NAME: &'static str;
    /// The parsed configuration handed to [`Module::new`].
    type Config: Send + 'static;
    /// Validates the raw `config:` value (`{}` when absent, as in Synapse). Runs at config load,
    /// in `check-config` as well as `serve`.
    fn parse_config(config: Value) -> Result<Self::Config, ConfigError>;
    /// Builds the module after the database is ready and before any listener opens. Callbacks and
    /// web resources must be registered here; registering later fails.
    fn new(config: Self::Config, api: &ModuleApi) -> Result<Self, ModuleError>;
}

/// A configuration error with the path (below the module's `config`) where it was found.
///
/// Shown as Synapse does: `Error in configuration at 'modules.<item N>.config.<path>':`.
/// Since 0.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// What is wrong, in a sentence.
    pub message: String,
    /// Keys (and `<item k>` list positions) from the module's config root to the bad value.
    pub path: Vec<String>,
}

impl ConfigError {
    /// An error about the config as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError { message: message.into(), path: Vec::new() }
    }
    /// An error at `path` below the module's config.
    pub fn at(message: impl Into<String>, path: &[&str]) -> Self {
        ConfigError { message: message.into(), path: path.iter().map(|s| s.to_string()).collect() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// An error raised by module code.
///
/// [`ModuleError::Matrix`] is Synapse's `SynapseError`: it reaches the client unchanged. Anything
/// else becomes `500 M_UNKNOWN "Internal server error"` for the request that triggered it.
/// Since 0.1.
#[derive(Debug, Clone, PartialEq)]
pub enum ModuleError {
    /// A Matrix error to send as is: status, errcode, message and extra top-level fields.
    Matrix {
        /// HTTP status code.
        status: u16,
        /// Matrix errcode such as `M_FORBIDDEN`.
        errcode: String,
        /// Human-readable message (`error`).
        message: String,
        /// Extra fields merged into the error body.
        fields: Map<String, Value>,
    },
    /// A registration method was called after start-up.
    RegisteredAfterStartup(&'static str),
    /// Any other failure; logged, and the client sees a 500.
    Other(String),
}

impl ModuleError {
    /// A Matrix error with no extra fields.
    pub fn matrix(status: u16, errcode: &str, message: impl Into<String>) -> Self {
        ModuleError::Matrix { status, errcode: errcode.to_owned(), message: message.into(), fields: Map::new() }
    }
    /// Any other failure.
    pub fn other(message: impl fmt::Display) -> Self {
        ModuleError::Other(message.to_string())
    }
}

impl fmt::Display for ModuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModuleError::Matrix { status, errcode, message, .. } => {
                write!(f, "{status} {errcode}: {message}")
            }
            ModuleError::RegisteredAfterStartup(what) => {
                write!(f, "Tried to register {what} from a module after startup")
            }
            ModuleError::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ModuleError {}

impl From<ConfigError> for ModuleError {
    fn from(e: ConfigError) -> Self {
        ModuleError::Other(e.message)
    }
}

/// A read-only view of a room event, in the federation (PDU) format.
///
/// Since 0.1.
#[derive(Debug, Clone)]
pub struct EventView {
    /// The whole event as JSON (`event_id`, `type`, `sender`, `content`, ...).
    json: Arc<Map<String, Value>>,
}

impl EventView {
    /// Wraps an event's JSON object. Myelin builds these; modules only read them.
    pub fn new(json: Map<String, Value>) -> Self {
        EventView { json: Arc::new(json) }
    }
    fn str_field(&self, key: &str) -> &str {
        self.json.get(key).and_then(Value::as_str).unwrap_or_default()
    }
    /// The event ID (`$...`).
    pub fn event_id(&self) -> &str {
        self.str_field("event_id")
    }
    /// The event type, e.g. `m.room.message`.
    pub fn event_type(&self) -> &str {
        self.str_field("type")
    }
    /// The sender's user ID.
    pub fn sender(&self) -> &str {
        self.str_field("sender")
    }
    /// The room ID.
    pub fn room_id(&self) -> &str {
        self.str_field("room_id")
    }
    /// The state key, for state events.
    pub fn state_key(&self) -> Option<&str> {
        self.json.get("state_key").and_then(Value::as_str)
    }
    /// The event content (an empty object if missing).
    pub fn content(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        self.json.get("content").and_then(Value::as_object).unwrap_or_else(|| EMPTY.get_or_init(Map::new))
    }
    /// Any top-level field.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key)
    }
    /// The whole event.
    pub fn as_json(&self) -> &Map<String, Value> {
        &self.json
    }
}

/// A local user's account, as `ModuleApi.get_userinfo_by_id` returns it.
///
/// Since 0.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The full user ID.
    pub user_id: String,
    /// Whether the user is a server admin.
    pub is_admin: bool,
    /// Whether the user is a guest.
    pub is_guest: bool,
    /// Whether the account is deactivated.
    pub is_deactivated: bool,
    /// Whether the user is shadow-banned.
    pub is_shadow_banned: bool,
    /// Creation time, seconds since the epoch (as Synapse).
    pub creation_ts: i64,
    /// The application service whose exclusive namespace (or sender) the user is, if any.
    pub appservice_id: Option<String>,
}

/// A user's global profile.
///
/// Since 0.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileInfo {
    /// Display name, if set.
    pub display_name: Option<String>,
    /// Avatar URL (`mxc://`), if set.
    pub avatar_url: Option<String>,
}

/// Adds rooms to and removes them from the public room directory.
///
/// Since 0.1.
#[derive(Clone)]
pub struct PublicRoomListManager {
    api: ModuleApi,
}

impl PublicRoomListManager {
    /// Whether the room is published.
    pub async fn room_is_in_public_room_list(&self, room_id: &str) -> Result<bool, ModuleError> {
        self.api.host.room_is_in_public_room_list(room_id.to_owned()).await
    }
    /// Publishes the room.
    pub async fn add_room_to_public_room_list(&self, room_id: &str) -> Result<(), ModuleError> {
        self.api.host.set_room_in_public_room_list(room_id.to_owned(), true).await
    }
    /// Unpublishes the room.
    pub async fn remove_room_from_public_room_list(&self, room_id: &str) -> Result<(), ModuleError> {
        self.api.host.set_room_in_public_room_list(room_id.to_owned(), false).await
    }
}

/// An IP address and user agent a user was seen with, and when (Synapse's `UserIpAndAgent`).
///
/// Since 0.2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIpAndAgent {
    /// The client's address.
    pub ip: String,
    /// Its `User-Agent` (empty when it sent none).
    pub user_agent: String,
    /// When, in ms since the epoch.
    pub last_seen: i64,
}

/// A third-party identifier on an account: `(medium, address, validated_at, added_at)`, the
/// times in milliseconds.
pub type ThreepidInfo = (String, String, i64, i64);

/// Facts of the server's configuration a module may read.
///
/// Since 0.3.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFacts {
    /// `public_baseurl`, ending in `/`.
    pub public_baseurl: String,
    /// `email.app_name` (`Matrix` without it).
    pub email_app_name: String,
    /// `custom_template_directory`, if set.
    pub custom_template_directory: Option<String>,
}

/// A mail a module sends (Synapse's `ModuleApi.send_mail`).
///
/// Since 0.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    /// The recipient's address.
    pub recipient: String,
    /// The subject.
    pub subject: String,
    /// The HTML part.
    pub html: String,
    /// The plain text part.
    pub text: String,
}

/// The browser answer that completes an SSO login a module drove
/// ([`ModuleApi::complete_sso_login`]): a redirect to the client with its login token, or the
/// confirmation page, or the "account deactivated" page.
///
/// Since 0.3.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SsoLoginPage {
    /// The HTTP status (302 for a redirect).
    pub status: u16,
    /// Where a redirect goes.
    pub location: Option<String>,
    /// `Set-Cookie` values.
    pub set_cookies: Vec<String>,
    /// The page (empty for a redirect).
    pub html: String,
}

/// The services a module may call. Myelin's core implements this; modules reach it only through
/// [`ModuleApi`]. Not meant to be implemented by modules.
///
/// Since 0.1.
pub trait Host: Send + Sync + 'static {
    /// The homeserver's domain.
    fn server_name(&self) -> &str;
    /// Facts of the server's configuration that modules read (Synapse's `ModuleApi`
    /// properties). Since 0.3.
    fn server_facts(&self) -> ServerFacts {
        ServerFacts::default()
    }
    /// Sends a mail through the server's SMTP settings (`email:`). Since 0.3.
    fn send_mail(&self, _mail: OutgoingMail) -> BoxFuture<'static, Result<(), ModuleError>> {
        Box::pin(async { Err(ModuleError::other("This server cannot send mail")) })
    }
    /// Completes an SSO login for a local user (`ModuleApi.complete_sso_login_async`).
    fn complete_sso_login(
        &self,
        _user_id: String,
        _client_redirect_url: String,
        _new_user: bool,
        _auth_provider_id: String,
    ) -> BoxFuture<'static, Result<SsoLoginPage, ModuleError>> {
        Box::pin(async { Err(ModuleError::other("This server does not do SSO")) })
    }
    /// Adds callbacks for `module` to the shared registry.
    fn register_spam_checker_callbacks(
        &self,
        module: &str,
        callbacks: spam::SpamCheckerCallbacks,
    ) -> Result<(), ModuleError>;
    /// Adds third-party rules callbacks for `module`.
    fn register_third_party_rules_callbacks(
        &self,
        module: &str,
        callbacks: third_party::ThirdPartyRulesCallbacks,
    ) -> Result<(), ModuleError>;
    /// Adds password auth provider callbacks for `module`.
    fn register_password_auth_provider_callbacks(
        &self,
        module: &str,
        callbacks: auth::PasswordAuthProviderCallbacks,
    ) -> Result<(), ModuleError>;
    /// Adds account validity callbacks for `module`.
    fn register_account_validity_callbacks(
        &self,
        module: &str,
        callbacks: third_party::AccountValidityCallbacks,
    ) -> Result<(), ModuleError>;
    /// Adds the federation callback for `module`.
    fn register_federation_callbacks(
        &self,
        module: &str,
        callbacks: federation::FederationCallbacks,
    ) -> Result<(), ModuleError>;
    /// Adds account data callbacks for `module`.
    fn register_account_data_callbacks(
        &self,
        module: &str,
        callbacks: repository::AccountDataCallbacks,
    ) -> Result<(), ModuleError>;
    /// Adds media repository callbacks for `module`.
    fn register_media_repository_callbacks(
        &self,
        module: &str,
        callbacks: repository::MediaRepositoryCallbacks,
    ) -> Result<(), ModuleError>;
    /// Adds ratelimit callbacks for `module`.
    fn register_ratelimit_callbacks(
        &self,
        module: &str,
        callbacks: repository::RatelimitCallbacks,
    ) -> Result<(), ModuleError>;
    /// Adds presence router callbacks for `module`.
    fn register_presence_router_callbacks(
        &self,
        module: &str,
        callbacks: presence::PresenceRouterCallbacks,
    ) -> Result<(), ModuleError>;
    /// Adds the unsigned-fields callback for `module`.
    fn register_unsigned_callbacks(
        &self,
        module: &str,
        callbacks: presence::UnsignedCallbacks,
    ) -> Result<(), ModuleError>;
    /// Adds a web resource for `module`; the first registration of a path wins.
    fn register_web_resource(
        &self,
        module: &str,
        path: &str,
        resource: Arc<dyn web::WebResource>,
    ) -> Result<(), ModuleError>;
    /// Looks up a local user.
    fn get_userinfo_by_id(&self, user_id: String) -> BoxFuture<'static, Option<UserInfo>>;
    /// A local user's profile, by localpart or full ID.
    fn get_profile_for_user(&self, user: String) -> BoxFuture<'static, Option<ProfileInfo>>;
    /// Sends a non-membership event (`type`, `room_id`, `sender`, `content`, optional
    /// `state_key`) as its sender; returns the stored event. `check_event_for_spam` applies.
    fn create_and_send_event_into_room(
        &self,
        event: Map<String, Value>,
    ) -> BoxFuture<'static, Result<EventView, ModuleError>>;
    /// Changes `target`'s membership in `room_id` as `sender` (a local user).
    fn update_room_membership(
        &self,
        sender: String,
        target: String,
        room_id: String,
        membership: String,
    ) -> BoxFuture<'static, Result<EventView, ModuleError>>;
    /// Creates a room as `user_id` with a `/createRoom` body; returns the room ID and alias.
    fn create_room(
        &self,
        user_id: String,
        config: Map<String, Value>,
    ) -> BoxFuture<'static, Result<(String, Option<String>), ModuleError>>;
    /// Completes after `duration`.
    fn sleep(&self, duration: std::time::Duration) -> BoxFuture<'static, ()>;
    /// Runs a background task for the server's lifetime.
    fn spawn(&self, task: BoxFuture<'static, ()>);
    /// The room's current state events.
    fn get_room_state(&self, room_id: String) -> BoxFuture<'static, Result<Vec<EventView>, ModuleError>>;
    /// Where and with what a local user was seen since `since_ts`.
    fn get_user_ip_and_agents(
        &self,
        user_id: String,
        since_ts: i64,
    ) -> BoxFuture<'static, Result<Vec<UserIpAndAgent>, ModuleError>>;
    /// Sets users' presence (`ModuleApi.set_presence_for_users`): `(user_id, state, status_msg)`.
    fn set_presence_for_users(
        &self,
        users: Vec<(String, String, Option<String>)>,
    ) -> BoxFuture<'static, Result<(), ModuleError>>;
    /// Sets the actions of a local user's push rule (`ModuleApi.set_push_rule_action`).
    fn set_push_rule_action(
        &self,
        user_id: String,
        kind: String,
        rule_id: String,
        actions: Value,
    ) -> BoxFuture<'static, Result<(), ModuleError>>;
    /// Ends the session of an access token (`ModuleApi.invalidate_access_token`).
    fn invalidate_access_token(&self, token: String) -> BoxFuture<'static, Result<(), ModuleError>>;
    /// Records a local account's identity at an SSO provider (`ModuleApi.record_user_external_id`).
    fn record_user_external_id(
        &self,
        auth_provider: String,
        external_id: String,
        user_id: String,
    ) -> BoxFuture<'static, Result<(), ModuleError>>;
    /// Sends users the presence of this server's online users (`ModuleApi.send_local_online_presence_to`).
    fn send_local_online_presence_to(&self, users: Vec<String>) -> BoxFuture<'static, Result<(), ModuleError>>;
    /// Schedules a room's shutdown and purge (`ModuleApi.delete_room`).
    fn delete_room(&self, room_id: String) -> Result<(), ModuleError>;
    /// A login token for a local user (`ModuleApi.create_login_token`), valid `valid_ms`.
    fn create_login_token(
        &self,
        user_id: String,
        valid_ms: u64,
        auth_provider_id: Option<String>,
    ) -> BoxFuture<'static, Result<String, ModuleError>>;
    /// A local user's global account data of `data_type`.
    fn get_global_account_data(
        &self,
        user_id: String,
        data_type: String,
    ) -> BoxFuture<'static, Result<Option<Value>, ModuleError>>;
    /// Sets a local, existing user's global account data.
    fn put_global_account_data(
        &self,
        user_id: String,
        data_type: String,
        content: Map<String, Value>,
    ) -> BoxFuture<'static, Result<(), ModuleError>>;
    /// The user behind an access token (`ModuleApi.get_user_by_req`).
    fn get_user_by_access_token(
        &self,
        token: String,
        allow_expired: bool,
    ) -> BoxFuture<'static, Result<String, ModuleError>>;
    /// Sends an outbound HTTP request.
    fn http_request(
        &self,
        request: http::HttpRequest,
    ) -> BoxFuture<'static, Result<http::HttpResponse, http::HttpError>>;
    /// Whether a room is published in the room directory.
    fn room_is_in_public_room_list(&self, room_id: String) -> BoxFuture<'static, Result<bool, ModuleError>>;
    /// Publishes or unpublishes a room, with no spam check (as Synapse's manager).
    fn set_room_in_public_room_list(
        &self,
        room_id: String,
        public: bool,
    ) -> BoxFuture<'static, Result<(), ModuleError>>;
    /// Resolves a room alias to its room ID and servers.
    fn lookup_room_alias(&self, alias: String) -> BoxFuture<'static, Result<(String, Vec<String>), ModuleError>>;
    /// Creates a local user without a password (`check_registration_for_spam` applies);
    /// returns the user ID.
    fn register_user(
        &self,
        localpart: String,
        displayname: Option<String>,
        admin: bool,
    ) -> BoxFuture<'static, Result<String, ModuleError>>;
    /// A local user's third-party identifiers, as `(medium, address, validated_at, added_at)`.
    fn get_threepids_for_user(&self, user_id: String) -> BoxFuture<'static, Result<Vec<ThreepidInfo>, ModuleError>>;
    /// Adds an e-mail address to a local user's account (with its notification pusher when the
    /// server mails notifications to new users), as `register_user(emails=...)` does on Synapse.
    fn add_email_to_user(&self, user_id: String, email: String) -> BoxFuture<'static, Result<(), ModuleError>>;
    /// Logs an existing local user in on a new (or given) device; returns `(device_id, token)`.
    fn register_device(
        &self,
        user_id: String,
        device_id: Option<String>,
        display_name: Option<String>,
    ) -> BoxFuture<'static, Result<(String, String), ModuleError>>;
    /// Makes a local user a server admin, or not.
    fn set_user_admin(&self, user_id: String, admin: bool) -> BoxFuture<'static, Result<(), ModuleError>>;
    /// Sets a local user's display name, updating their member events as a client's change would.
    fn set_displayname(&self, user_id: String, displayname: String) -> BoxFuture<'static, Result<(), ModuleError>>;
}

/// The handle a module receives at construction, scoped to that module.
///
/// Since 0.1.
#[derive(Clone)]
pub struct ModuleApi {
    host: Arc<dyn Host>,
    module: Arc<str>,
}

impl ModuleApi {
    /// Myelin creates one per module instance.
    pub fn new(host: Arc<dyn Host>, module: &str) -> Self {
        ModuleApi { host, module: module.into() }
    }
    /// The name of the module this handle belongs to.
    pub fn module_name(&self) -> &str {
        &self.module
    }
    /// The homeserver's domain.
    pub fn server_name(&self) -> &str {
        self.host.server_name()
    }
    /// Facts of the server's configuration: `public_baseurl`, the e-mail app name, the
    /// custom template directory.
    ///
    /// Since 0.3.
    pub fn server_facts(&self) -> ServerFacts {
        self.host.server_facts()
    }
    /// Sends a mail from the server (`email.notif_from`), as Synapse's `send_mail`; an error if
    /// the server has no `email:` section or the SMTP server refuses it.
    ///
    /// Since 0.3.
    pub async fn send_mail(&self, mail: OutgoingMail) -> Result<(), ModuleError> {
        self.host.send_mail(mail).await
    }
    /// Completes an SSO login a module drove (its own web resource authenticated the person):
    /// a login token for `user_id`, and the answer to give the browser: straight to
    /// `client_redirect_url` with the token when the URL is in `sso.client_whitelist`, else the
    /// confirmation page (worded for a new account with `new_user`), as Synapse's
    /// `complete_sso_login_async`. A deactivated account gets its page and no token.
    ///
    /// Since 0.3.
    pub async fn complete_sso_login(
        &self,
        user_id: &str,
        client_redirect_url: &str,
        new_user: bool,
        auth_provider_id: &str,
    ) -> Result<SsoLoginPage, ModuleError> {
        self.host
            .complete_sso_login(
                user_id.to_owned(),
                client_redirect_url.to_owned(),
                new_user,
                auth_provider_id.to_owned(),
            )
            .await
    }
    /// `@localpart:server` for a localpart; a full user ID is returned unchanged.
    pub fn get_qualified_user_id(&self, localpart_or_user_id: &str) -> String {
        if localpart_or_user_id.starts_with('@') {
            localpart_or_user_id.to_owned()
        } else {
            format!("@{localpart_or_user_id}:{}", self.server_name())
        }
    }
    /// Whether a user, room or alias ID belongs to this server.
    pub fn is_mine(&self, id: &str) -> bool {
        id.split_once(':').is_some_and(|(_, server)| server == self.server_name())
    }
    /// Registers any subset of the spam-checker callbacks. Only allowed during construction.
    pub fn register_spam_checker_callbacks(&self, callbacks: spam::SpamCheckerCallbacks) -> Result<(), ModuleError> {
        self.host.register_spam_checker_callbacks(&self.module, callbacks)
    }
    /// Registers third-party event rules callbacks. Only allowed during construction.
    pub fn register_third_party_rules_callbacks(
        &self,
        callbacks: third_party::ThirdPartyRulesCallbacks,
    ) -> Result<(), ModuleError> {
        self.host.register_third_party_rules_callbacks(&self.module, callbacks)
    }
    /// Registers password auth provider callbacks. Only allowed during construction.
    pub fn register_password_auth_provider_callbacks(
        &self,
        callbacks: auth::PasswordAuthProviderCallbacks,
    ) -> Result<(), ModuleError> {
        self.host.register_password_auth_provider_callbacks(&self.module, callbacks)
    }
    /// Registers account validity callbacks. Only allowed during construction.
    pub fn register_account_validity_callbacks(
        &self,
        callbacks: third_party::AccountValidityCallbacks,
    ) -> Result<(), ModuleError> {
        self.host.register_account_validity_callbacks(&self.module, callbacks)
    }
    /// Registers the federation callback. Only allowed during construction.
    ///
    /// Since 0.3.
    pub fn register_federation_callbacks(&self, callbacks: federation::FederationCallbacks) -> Result<(), ModuleError> {
        self.host.register_federation_callbacks(&self.module, callbacks)
    }
    /// Registers account data callbacks. Only allowed during construction.
    ///
    /// Since 0.2.
    pub fn register_account_data_callbacks(
        &self,
        callbacks: repository::AccountDataCallbacks,
    ) -> Result<(), ModuleError> {
        self.host.register_account_data_callbacks(&self.module, callbacks)
    }
    /// Registers media repository callbacks. Only allowed during construction.
    ///
    /// Since 0.2.
    pub fn register_media_repository_callbacks(
        &self,
        callbacks: repository::MediaRepositoryCallbacks,
    ) -> Result<(), ModuleError> {
        self.host.register_media_repository_callbacks(&self.module, callbacks)
    }
    /// Registers the ratelimit callback. Only allowed during construction.
    ///
    /// Since 0.2.
    pub fn register_ratelimit_callbacks(&self, callbacks: repository::RatelimitCallbacks) -> Result<(), ModuleError> {
        self.host.register_ratelimit_callbacks(&self.module, callbacks)
    }
    /// Registers presence router callbacks (both, as Synapse requires). Only allowed during
    /// construction.
    ///
    /// Since 0.2.
    pub fn register_presence_router_callbacks(
        &self,
        callbacks: presence::PresenceRouterCallbacks,
    ) -> Result<(), ModuleError> {
        if callbacks.get_users_for_states.is_some() != callbacks.get_interested_users.is_some() {
            return Err(ModuleError::other(
                "PresenceRouter modules must register neither or both of the paired callbacks: [get_users_for_states, get_interested_users]",
            ));
        }
        self.host.register_presence_router_callbacks(&self.module, callbacks)
    }
    /// Registers the callback adding fields to events' `unsigned` for clients
    /// (`register_add_extra_fields_to_unsigned_client_event_callbacks`). Only allowed during
    /// construction.
    ///
    /// Since 0.2.
    pub fn register_add_extra_fields_to_unsigned_client_event_callbacks(
        &self,
        callbacks: presence::UnsignedCallbacks,
    ) -> Result<(), ModuleError> {
        self.host.register_unsigned_callbacks(&self.module, callbacks)
    }
    /// Serves `resource` at exactly `path` on every HTTP listener. Only allowed during
    /// construction. Use `/_synapse/client/<module>/...`: paths under built-in API roots are
    /// unreachable.
    pub fn register_web_resource(&self, path: &str, resource: impl web::WebResource) -> Result<(), ModuleError> {
        self.host.register_web_resource(&self.module, path, Arc::new(resource))
    }
    /// Looks up a local user; `None` if unknown.
    pub async fn get_userinfo_by_id(&self, user_id: &str) -> Option<UserInfo> {
        self.host.get_userinfo_by_id(user_id.to_owned()).await
    }
    /// A local user's profile.
    pub async fn get_profile_for_user(&self, localpart: &str) -> Option<ProfileInfo> {
        self.host.get_profile_for_user(localpart.to_owned()).await
    }
    /// Sends a non-membership event into a room; see [`Host::create_and_send_event_into_room`].
    pub async fn create_and_send_event_into_room(&self, event: Map<String, Value>) -> Result<EventView, ModuleError> {
        self.host.create_and_send_event_into_room(event).await
    }
    /// Changes a membership; `sender` must be local.
    pub async fn update_room_membership(
        &self,
        sender: &str,
        target: &str,
        room_id: &str,
        membership: &str,
    ) -> Result<EventView, ModuleError> {
        self.host.update_room_membership(sender.into(), target.into(), room_id.into(), membership.into()).await
    }
    /// Creates a room; returns `(room_id, alias)`.
    pub async fn create_room(
        &self,
        user_id: &str,
        config: Map<String, Value>,
    ) -> Result<(String, Option<String>), ModuleError> {
        self.host.create_room(user_id.to_owned(), config).await
    }
    /// Resolves an alias to `(room_id, servers)`.
    pub async fn lookup_room_alias(&self, alias: &str) -> Result<(String, Vec<String>), ModuleError> {
        self.host.lookup_room_alias(alias.to_owned()).await
    }
    /// The room's current state events.
    pub async fn get_room_state(&self, room_id: &str) -> Result<Vec<EventView>, ModuleError> {
        self.host.get_room_state(room_id.to_owned()).await
    }
    /// Where and with what a local user's sessions were last seen, since `since_ts` (Synapse's
    /// `get_user_ip_and_agents`; one entry per device here).
    ///
    /// Since 0.2.
    pub async fn get_user_ip_and_agents(
        &self,
        user_id: &str,
        since_ts: i64,
    ) -> Result<Vec<UserIpAndAgent>, ModuleError> {
        self.host.get_user_ip_and_agents(user_id.to_owned(), since_ts).await
    }
    /// Sets the presence of users, local or remote, as `(user_id, state, status_msg)` (Synapse's
    /// `set_presence_for_users`); nothing happens when presence is off.
    ///
    /// Since 0.2.
    pub async fn set_presence_for_users(
        &self,
        users: Vec<(String, String, Option<String>)>,
    ) -> Result<(), ModuleError> {
        self.host.set_presence_for_users(users).await
    }
    /// Records that `user_id` is `external_id` at SSO provider `auth_provider` (Synapse's
    /// `record_user_external_id`); admins see it in the user's `external_ids`. Another account
    /// holding it is a 409 `ModuleError::Matrix`.
    ///
    /// Since 0.2.
    pub async fn record_user_external_id(
        &self,
        auth_provider: &str,
        external_id: &str,
        user_id: &str,
    ) -> Result<(), ModuleError> {
        self.host.record_user_external_id(auth_provider.to_owned(), external_id.to_owned(), user_id.to_owned()).await
    }
    /// Makes users receive the current presence of every online user they may see, as a
    /// presence initial sync would (Synapse's `send_local_online_presence_to`): local users in
    /// their next sync, remote users through their servers. An invalid user ID is a 400.
    ///
    /// Since 0.2.
    pub async fn send_local_online_presence_to(&self, users: &[String]) -> Result<(), ModuleError> {
        self.host.send_local_online_presence_to(users.to_vec()).await
    }
    /// Schedules the shutdown and purge of a room, as `ModuleApi.delete_room` (Synapse 1.89):
    /// local members leave, then the room is removed from storage, in the background. A room
    /// already being deleted is left to that deletion; `check_can_shutdown_room` is asked with
    /// no requester. An invalid room ID is a 400 `ModuleError::Matrix`.
    ///
    /// Since 0.2.
    pub fn delete_room(&self, room_id: &str) -> Result<(), ModuleError> {
        self.host.delete_room(room_id.to_owned())
    }
    /// A login token (`m.login.token`) for a local user, valid `valid_ms` milliseconds (Synapse's
    /// `create_login_token`, 2 minutes by default there). An unknown user is a 404
    /// `ModuleError::Matrix`.
    ///
    /// Since 0.2.
    pub async fn create_login_token(
        &self,
        user_id: &str,
        valid_ms: u64,
        auth_provider_id: Option<&str>,
    ) -> Result<String, ModuleError> {
        self.host.create_login_token(user_id.to_owned(), valid_ms, auth_provider_id.map(str::to_owned)).await
    }
    /// Sets the actions of `user_id`'s global push rule `kind`/`rule_id` (Synapse's
    /// `set_push_rule_action`): an unknown rule is a 404 `ModuleError::Matrix`, invalid actions
    /// a 400.
    ///
    /// Since 0.2.
    pub async fn set_push_rule_action(
        &self,
        user_id: &str,
        kind: &str,
        rule_id: &str,
        actions: Value,
    ) -> Result<(), ModuleError> {
        self.host.set_push_rule_action(user_id.to_owned(), kind.to_owned(), rule_id.to_owned(), actions).await
    }
    /// Ends the session of `access_token` as a logout would (Synapse's
    /// `invalidate_access_token`); an unknown token is no error.
    ///
    /// Since 0.2.
    pub async fn invalidate_access_token(&self, access_token: &str) -> Result<(), ModuleError> {
        self.host.invalidate_access_token(access_token.to_owned()).await
    }
    /// A local user's global account data (`account_data_manager.get_global`).
    pub async fn get_global_account_data(&self, user_id: &str, data_type: &str) -> Result<Option<Value>, ModuleError> {
        self.host.get_global_account_data(user_id.to_owned(), data_type.to_owned()).await
    }
    /// Sets global account data for a local, existing user (`account_data_manager.put_global`).
    pub async fn put_global_account_data(
        &self,
        user_id: &str,
        data_type: &str,
        content: Map<String, Value>,
    ) -> Result<(), ModuleError> {
        self.host.put_global_account_data(user_id.to_owned(), data_type.to_owned(), content).await
    }
    /// The user ID an access token belongs to; a Matrix 401 error if none.
    pub async fn get_user_by_access_token(&self, token: &str, allow_expired: bool) -> Result<String, ModuleError> {
        self.host.get_user_by_access_token(token.to_owned(), allow_expired).await
    }

    /// Creates a local user with no password (for login through a module); returns the user ID.
    /// The display name defaults to the localpart, as on Synapse.
    pub async fn register_user(
        &self,
        localpart: &str,
        displayname: Option<&str>,
        admin: bool,
    ) -> Result<String, ModuleError> {
        self.host.register_user(localpart.to_owned(), displayname.map(str::to_owned), admin).await
    }
    /// A local user's third-party identifiers (Synapse's `get_threepids_for_user`).
    ///
    /// Since 0.3.
    pub async fn get_threepids_for_user(&self, user_id: &str) -> Result<Vec<ThreepidInfo>, ModuleError> {
        self.host.get_threepids_for_user(user_id.to_owned()).await
    }
    /// Adds an e-mail address to a local user's account (`register_user`'s `emails` on Synapse).
    ///
    /// Since 0.3.
    pub async fn add_email_to_user(&self, user_id: &str, email: &str) -> Result<(), ModuleError> {
        self.host.add_email_to_user(user_id.to_owned(), email.to_owned()).await
    }
    /// Logs `user_id` in on a device; returns `(device_id, access_token)`.
    pub async fn register_device(
        &self,
        user_id: &str,
        device_id: Option<&str>,
        display_name: Option<&str>,
    ) -> Result<(String, String), ModuleError> {
        self.host
            .register_device(user_id.to_owned(), device_id.map(str::to_owned), display_name.map(str::to_owned))
            .await
    }
    /// Makes a local user a server admin, or not.
    pub async fn set_user_admin(&self, user_id: &str, admin: bool) -> Result<(), ModuleError> {
        self.host.set_user_admin(user_id.to_owned(), admin).await
    }
    /// Sets a local user's display name (their member events follow).
    pub async fn set_displayname(&self, user_id: &str, displayname: &str) -> Result<(), ModuleError> {
        self.host.set_displayname(user_id.to_owned(), displayname.to_owned()).await
    }

    /// The outbound HTTP client.
    pub fn http_client(&self) -> http::HttpClient {
        http::HttpClient { api: self.clone() }
    }

    /// The room directory, written directly (no `user_may_publish_room`), as Synapse's
    /// `public_room_list_manager`.
    pub fn public_room_list_manager(&self) -> PublicRoomListManager {
        PublicRoomListManager { api: self.clone() }
    }

    /// Sleeps without blocking the server.
    pub async fn sleep(&self, seconds: f64) {
        self.host.sleep(std::time::Duration::from_secs_f64(seconds.max(0.0))).await
    }
    /// Runs a task in the background (Synapse's `run_as_background_process`).
    pub fn run_in_background(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.host.spawn(Box::pin(task));
    }

    /// Calls `f` every `interval`, the first time after one interval, for the server's lifetime.
    pub fn looping_background_call<F, Fut>(&self, interval: std::time::Duration, f: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let api = self.clone();
        self.host.spawn(Box::pin(async move {
            loop {
                api.sleep(interval.as_secs_f64()).await;
                f().await;
            }
        }));
    }
}
