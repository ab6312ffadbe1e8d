//! Accounts: registration (with user-interactive auth), login, access tokens, devices,
//! passwords, deactivation and profiles.
//!
//! Here: the shared types, password hashing, access-token authentication and user-interactive
//! auth. Beside it: `register`, `login`, `devices`, `profile`, `account_data`.

mod account_data;
mod account_validity;
mod devices;
mod login;
mod profile;
mod register;
mod sessions;

pub use account_validity::{AccountValiditySettings, Renewal};
pub use profile::check_profile_field_name;
pub use sessions::Session;
pub(crate) use sessions::{NewDevice, TokenLife};

use std::time::Duration;

use myelin_module_api::spam::RegistrationBehaviour;
use myelin_storage::{ProfileField, UserFlag, UserRow};
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::server::{now_ms, random_string};
use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// Where a request came from, for spam checks and device records.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// `User-Agent`, if sent.
    pub user_agent: String,
    /// Client IP.
    pub ip: String,
    /// `?user_id=`: the user an appservice acts as.
    pub as_user_id: Option<String>,
    /// `?device_id=` (or MSC3202's `org.matrix.msc3202.device_id`): the device it acts on.
    pub as_device_id: Option<String>,
    /// `?ts=`: the timestamp an appservice gives the event it sends.
    pub as_ts: Option<i64>,
}

/// A UIA session in progress.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct UiaSession {
    pub(crate) completed: Vec<String>,
    /// Registration: the first request's parameters (Synapse's `clientdict`), for a retry that
    /// names only the session; the password is kept as its hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registration: Option<RegisterRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_hash: Option<String>,
    /// Registration: the account this session made; repeating it logs in again, as Synapse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registered_user_id: Option<String>,
    /// The operation the session authenticates (say `DELETE /devices/ABC`): a later request of
    /// the session for another one is refused, as Synapse compares the request's URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) operation: Option<String>,
    /// The user an account operation's session authenticates (who SSO must prove to be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) user_id: Option<String>,
    /// Set once the user proved to be `user_id` at their SSO provider (`m.login.sso`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sso_user: Option<String>,
    /// The address an `m.login.email.identity` stage of this session proved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    threepid: Option<crate::threepids::ValidatedThreepid>,
}

/// The `TransientStore` kind of UIA sessions.
const UIA_SESSION: &str = "uia_session";
/// How long a UIA session lasts (Synapse's 48 hours).
const UIA_SESSION_LIFETIME_MS: i64 = 48 * 3600 * 1000;
/// The `TransientStore` kind of shared-secret registration nonces.
pub(crate) const REGISTRATION_NONCE: &str = "registration_nonce";
/// The `TransientStore` kind of OpenID tokens.
pub(crate) const OPENID_TOKEN: &str = "openid_token";

/// `POST /register`'s body.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct RegisterRequest {
    /// Desired localpart.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Device ID to use.
    pub device_id: Option<String>,
    /// Device display name.
    pub initial_device_display_name: Option<String>,
    /// Don't log in.
    pub inhibit_login: bool,
    /// `type`: `m.login.application_service` for an appservice registering a user of its own.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// UIA auth dict.
    pub auth: Option<Value>,
    /// A guest's access token: the guest registers a full account under its own user ID.
    pub guest_access_token: Option<String>,
    /// `refresh_token`: `true` asks for a refresh token.
    pub refresh_token: Option<Value>,
}

impl RegisterRequest {
    /// Whether the request carries nothing but its `auth` (a step of user-interactive auth).
    fn is_only_auth(&self) -> bool {
        self.username.is_none()
            && self.password.is_none()
            && self.device_id.is_none()
            && self.initial_device_display_name.is_none()
            && !self.inhibit_login
            && self.kind.is_none()
            && self.guest_access_token.is_none()
    }
}

/// The result of a registration.
#[derive(Debug, Clone)]
pub struct RegisterResponse {
    /// The new user.
    pub user_id: OwnedUserId,
    /// The new session, unless `inhibit_login`.
    pub login: Option<Session>,
}

/// `POST /login`'s body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LoginRequest {
    /// Login type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `{type: m.id.user, user}`.
    pub identifier: Option<Value>,
    /// Legacy user field.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Device to reuse.
    pub device_id: Option<String>,
    /// Device display name.
    pub initial_device_display_name: Option<String>,
    /// Everything else in the body (what module auth checkers read).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct LoginResponse {
    /// The user.
    pub user_id: OwnedUserId,
    /// The new session.
    pub session: Session,
    /// Fields an SSO provider's mapping adds to the answer (`extra_attributes`).
    pub extra: Map<String, Value>,
}

/// Synapse's shadow-ban delay before a fake success: 1 to 10 seconds.
pub(crate) async fn shadow_ban_delay() {
    use rand::Rng;
    let ms = rand::thread_rng().gen_range(1000..10_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Hashes a password with argon2id (on the blocking pool: it takes tens of milliseconds).
pub async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        use argon2::PasswordHasher;
        let salt = argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::internal(format!("hashing failed: {e}")))
    })
    .await
    .map_err(Error::internal)?
}

/// A hash of a random password, checked against when the account does not exist.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(crate::server::random_string(32).as_bytes(), &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
});

/// Verifies a password against an argon2 hash, or a bcrypt hash imported from Synapse.
async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        if hash.starts_with("$2") {
            return bcrypt::verify(&password, &hash).unwrap_or(false);
        }
        use argon2::PasswordVerifier;
        argon2::password_hash::PasswordHash::new(&hash)
            .map(|parsed| argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Synapse's localpart rule for new users.
fn validate_localpart(localpart: &str, server_name: &str) -> Result<()> {
    if localpart.is_empty() {
        return Err(Error::new(ErrorKind::InvalidUsername, "User ID cannot be empty"));
    }
    if !localpart.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+')) {
        return Err(Error::new(
            ErrorKind::InvalidUsername,
            "User ID can only contain characters a-z, 0-9, or '=_-./+'",
        ));
    }
    if localpart.starts_with('_') {
        return Err(Error::new(ErrorKind::InvalidUsername, "User ID may not begin with _"));
    }
    if localpart.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::new(ErrorKind::InvalidUsername, "Numeric user IDs are reserved for guest users."));
    }
    if localpart.len() + server_name.len() + 2 > 255 {
        return Err(Error::new(ErrorKind::InvalidUsername, "User ID may not be longer than 255 characters"));
    }
    Ok(())
}

/// The accounts service's in-memory state (`hs.accounts`).
pub(crate) struct AccountsState {
    /// When each `(user, device)`'s last-seen row was last written, from which IP and user
    /// agent; held only to decide whether to write again (a cache).
    #[allow(clippy::type_complexity)]
    pub(crate) last_seen: std::sync::Mutex<crate::cache::BoundedMap<(String, String), (i64, String, String)>>,
    /// Each user's ignored users (`m.ignored_user_list`), read on every timeline a user is
    /// shown (a cache; dropped when the user writes the list, here or on another process).
    pub(crate) ignored:
        std::sync::Mutex<crate::cache::BoundedMap<String, std::sync::Arc<std::collections::HashSet<String>>>>,
    /// Erased users (deactivated with `erase`), read from the database once, on first need;
    /// every process adds the ones erased later.
    pub(crate) erased: std::sync::RwLock<Option<std::sync::Arc<std::collections::HashSet<String>>>>,
}

impl AccountsState {
    pub(crate) fn new(sizes: &crate::cache::CacheSizes) -> Self {
        AccountsState {
            last_seen: std::sync::Mutex::new(crate::cache::BoundedMap::new("last_seen", sizes.last_seen)),
            ignored: std::sync::Mutex::new(crate::cache::BoundedMap::new("ignored_users", sizes.last_seen)),
            erased: std::sync::RwLock::new(None),
        }
    }
}

impl Homeserver {
    /// The erased users (see [`AccountsState::erased`]).
    pub(crate) async fn erased_users(&self) -> Result<std::sync::Arc<std::collections::HashSet<String>>> {
        if let Some(set) = self.accounts.erased.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(set);
        }
        let set = std::sync::Arc::new(self.db(|s| s.erased_users()).await?.into_iter().collect());
        *self.accounts.erased.write().unwrap_or_else(|p| p.into_inner()) = Some(std::sync::Arc::clone(&set));
        Ok(set)
    }

    /// `user` was erased (here or on another process): added to the loaded set.
    pub(crate) fn note_erased(&self, user: &str) {
        let mut erased = self.accounts.erased.write().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = erased.as_mut() {
            std::sync::Arc::make_mut(set).insert(user.to_owned());
        }
    }
}

impl Homeserver {
    /// Resolves an access token to its requester; expired accounts (account validity modules)
    /// are refused unless `allow_expired` (logout).
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        info: &RequestInfo,
        allow_expired: bool,
    ) -> Result<Requester> {
        let Some(token) = token else {
            return Err(Error::new(ErrorKind::MissingToken, "Missing access token"));
        };
        // An appservice's token from an address its registration does not allow is just an
        // unknown token (Synapse).
        if let Some(registration) =
            self.appservice_by_token(token).filter(|r| r.accepts_requests_from(&info.ip)).cloned()
        {
            return self.appservice_requester(&registration, token, info).await;
        }
        let t = token.to_owned();
        let found = self
            .db(move |s| {
                let Some(session) = s.get_access_token(&t)? else { return Ok(None) };
                Ok(s.get_user(&session.user_id)?.map(|u| (u, session)))
            })
            .await?;
        let soft_logout = |soft: bool| [("soft_logout".to_owned(), json!(soft))].into_iter().collect();
        let Some((user, session)) = found else {
            return Err(Error::new(ErrorKind::UnknownToken, "Unknown access token").with_fields(soft_logout(false)));
        };
        // An expired token is a soft logout: the client may refresh or log in again and keep
        // its data (Synapse).
        if !allow_expired && session.valid_until_ms.is_some_and(|until| until < now_ms()) {
            return Err(Error::new(ErrorKind::UnknownToken, "Access token has expired").with_fields(soft_logout(true)));
        }
        // The first use of a refreshed token retires the refresh token it came from.
        if session.refresh_token_id.is_some() && !session.used {
            let t = token.to_owned();
            self.db(move |s| s.mark_access_token_used(&t)).await?;
        }
        let device_id = session.device_id;
        if user.deactivated {
            return Err(Error::new(ErrorKind::UnknownToken, "Unknown access token"));
        }
        // A locked account may only log out (Synapse's `allow_locked`, which its logout
        // endpoints pass, as they pass `allow_expired`).
        if user.locked && !allow_expired {
            let mut soft_logout = serde_json::Map::new();
            soft_logout.insert("soft_logout".into(), true.into());
            return Err(Error::new(
                ErrorKind::Module { status: 401, errcode: "M_USER_LOCKED".into() },
                "User account has been locked",
            )
            .with_fields(soft_logout));
        }
        if !allow_expired && self.account_expired(&user.user_id).await? {
            return Err(crate::modules::third_party::expired());
        }
        // Last-seen bookkeeping must not slow requests down: written in the background, and at
        // most once a minute per device (and whenever the IP changes), as Synapse batches its
        // client-IP updates, so a busy client does not add a write to every request (a new IP or
        // user agent is written at once).
        let now = now_ms();
        let due = {
            let mut seen = self.accounts.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            let key = (user.user_id.clone(), device_id.clone());
            match seen.get(&key) {
                Some((at, ip, agent)) if now - at < 60_000 && *ip == info.ip && *agent == info.user_agent => false,
                _ => {
                    seen.insert(key, (now, info.ip.clone(), info.user_agent.clone()));
                    true
                }
            }
        };
        if due {
            let (u, d, ip, agent) = (user.user_id.clone(), device_id.clone(), info.ip.clone(), info.user_agent.clone());
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.touch_device(&u, &d, &ip, &agent, now));
        }
        Ok(Requester {
            user_id: OwnedUserId::try_from(user.user_id).map_err(Error::internal)?,
            device_id,
            access_token: token.to_owned(),
            is_admin: user.is_admin,
            shadow_banned: user.shadow_banned,
            suspended: user.suspended,
            is_guest: user.is_guest,
            app_service: None,
            app_service_ts: None,
        })
    }

    /// 400 for a UIA `session` this server never issued (or forgot), as Synapse answers.
    /// Sessions are in the database, so any process of a deployment knows them.
    pub(crate) async fn check_uia_session(&self, session: Option<&str>) -> Result<()> {
        let Some(id) = session else { return Ok(()) };
        let key = id.to_owned();
        if self.db(move |s| s.get_transient(UIA_SESSION, &key, now_ms())).await?.is_none() {
            return Err(Error::new(ErrorKind::BadRequest, format!("Unknown session ID: {id}")));
        }
        Ok(())
    }

    /// A UIA session's record, if it exists and has not expired.
    pub(crate) async fn uia_session(&self, session: &str) -> Result<Option<UiaSession>> {
        let key = session.to_owned();
        let stored = self.db(move |s| s.get_transient(UIA_SESSION, &key, now_ms())).await?;
        Ok(stored.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Replaces a UIA session's record (it keeps its lifetime from now).
    pub(crate) async fn save_uia_session(&self, session: &str, record: &UiaSession) -> Result<()> {
        let (key, value) = (session.to_owned(), serde_json::to_string(record).map_err(Error::internal)?);
        self.db(move |s| s.put_transient(UIA_SESSION, &key, &value, now_ms() + UIA_SESSION_LIFETIME_MS)).await
    }

    /// The 401 that asks for `stages`, in `session` (a new one when `None`).
    pub(crate) async fn uia_challenge(&self, stages: &[&str], session: Option<String>, error: Option<&str>) -> Error {
        let (session, completed) = match session {
            Some(id) => {
                let key = id.clone();
                let stored = self.db(move |s| s.get_transient(UIA_SESSION, &key, now_ms())).await.ok().flatten();
                let completed: Vec<String> = stored
                    .and_then(|v| serde_json::from_str::<UiaSession>(&v).ok())
                    .map(|s| s.completed)
                    .unwrap_or_default();
                (id, completed)
            }
            None => {
                let id = random_string(24);
                let key = id.clone();
                let value = serde_json::to_string(&UiaSession::default()).unwrap_or_default();
                if let Err(e) = self
                    .db(move |s| s.put_transient(UIA_SESSION, &key, &value, now_ms() + UIA_SESSION_LIFETIME_MS))
                    .await
                {
                    return e;
                }
                (id, Vec::new())
            }
        };
        let mut fields = Map::new();
        fields.insert("flows".into(), json!(stages.iter().map(|s| json!({"stages": [s]})).collect::<Vec<_>>()));
        fields.insert("params".into(), json!({}));
        fields.insert("session".into(), json!(session));
        fields.insert("completed".into(), json!(completed));
        let mut e = Error::new(ErrorKind::UserInteractiveAuth, error.unwrap_or("")).with_fields(fields);
        if error.is_some() {
            e.fields.insert("errcode".into(), json!("M_FORBIDDEN"));
        }
        e
    }

    /// Runs user-interactive auth for an account operation: the user's password, or (for an
    /// account with an identity at an SSO provider) `m.login.sso`.
    ///
    /// `operation` names what is being authorised (the request's method and path): a session
    /// begun for one operation cannot complete another.
    pub(crate) async fn uia_password(
        &self,
        requester: &Requester,
        auth: Option<&Value>,
        operation: &str,
    ) -> Result<()> {
        // An appservice's users have no password; its token is its authentication (Synapse
        // skips user-interactive auth for appservice requests).
        if requester.app_service.is_some() {
            return Ok(());
        }
        // Synapse's `_get_available_ui_auth_types`: the password when the account has one (or
        // SSO is not in use), SSO when the account has an identity at a configured provider.
        let has_sso = !self.sso_providers_for_user(requester.user_id.as_str()).await?.is_empty();
        let stages: &[&str] = if !has_sso {
            &["m.login.password"]
        } else {
            let u = requester.user_id.to_string();
            let has_password = self.db(move |s| s.get_user(&u)).await?.is_some_and(|r| r.password_hash.is_some());
            if has_password && self.config.password.enabled {
                &["m.login.password", crate::sso::SSO_STAGE]
            } else {
                &[crate::sso::SSO_STAGE]
            }
        };
        let Some(auth) = auth.and_then(Value::as_object) else {
            let challenge = self.uia_challenge(stages, None, None).await;
            if let Some(id) = challenge.fields.get("session").and_then(Value::as_str) {
                let record = UiaSession {
                    operation: Some(operation.to_owned()),
                    user_id: Some(requester.user_id.to_string()),
                    ..UiaSession::default()
                };
                self.save_uia_session(id, &record).await?;
            }
            return Err(challenge);
        };
        let session = auth.get("session").and_then(Value::as_str).map(str::to_owned);
        self.check_uia_session(session.as_deref()).await?;
        let record = match &session {
            Some(id) => self.uia_session(id).await?,
            None => None,
        };
        if record.as_ref().and_then(|r| r.operation.as_deref()).is_some_and(|op| op != operation) {
            return Err(Error::forbidden("Requested operation has changed during the UI authentication session."));
        }
        // The SSO stage is completed by the provider's callback, for this very user.
        if stages.contains(&crate::sso::SSO_STAGE)
            && record.as_ref().and_then(|r| r.sso_user.as_deref()) == Some(requester.user_id.as_str())
        {
            return Ok(());
        }
        if auth.get("type").and_then(Value::as_str) != Some("m.login.password") || !stages.contains(&"m.login.password")
        {
            return Err(self.uia_challenge(stages, session, Some("Unknown auth type")).await);
        }
        let user = auth
            .get("identifier")
            .and_then(|i| i.get("user"))
            .or_else(|| auth.get("user"))
            .and_then(Value::as_str)
            .unwrap_or(requester.user_id.as_str());
        let qualified = if user.starts_with('@') { user.to_owned() } else { format!("@{user}:{}", self.server_name()) };
        let password = auth.get("password").and_then(Value::as_str).unwrap_or_default().to_owned();
        // The password is checked for the user the auth names; if that is someone else (a
        // stolen token used with one's own password), the right password is still refused.
        let named = qualified.clone();
        let found = self.db(move |s| s.find_user_case_insensitive(&named)).await?;
        let ok = match found.as_ref().and_then(|u| u.password_hash.clone()) {
            Some(h) => verify_password(password, h).await,
            None => false,
        };
        if !ok {
            return Err(self.uia_challenge(stages, session, Some("Invalid password")).await);
        }
        if found.is_none_or(|u| u.user_id != requester.user_id.as_str()) {
            return Err(Error::forbidden("Invalid auth"));
        }
        Ok(())
    }

    /// A requester acting as a local user, for what the server does on their behalf (modules,
    /// the admin API, `myelin import-synapse`): their admin flag, no shadow-ban, no device.
    pub async fn requester_for(&self, user: &UserId) -> Result<Requester> {
        let u = user.to_string();
        let is_admin = self.db(move |s| s.get_user(&u)).await?.is_some_and(|u| u.is_admin);
        Ok(Requester {
            user_id: user.to_owned(),
            device_id: String::new(),
            access_token: String::new(),
            is_admin,
            shadow_banned: false,
            // What the server does on a user's behalf is not held to their suspension (Synapse's
            // `request_by_server`).
            suspended: false,
            is_guest: false,
            app_service: None,
            app_service_ts: None,
        })
    }

    /// 403 unless the requester is a server admin.
    pub(crate) fn require_admin(&self, requester: &Requester) -> Result<()> {
        if requester.is_admin { Ok(()) } else { Err(Error::forbidden("You are not a server admin")) }
    }
}
