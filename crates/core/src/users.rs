//! Accounts: registration (with user-interactive auth), login, access tokens, devices,
//! passwords, deactivation and profiles.

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
}

/// A UIA session in progress.
#[derive(Debug, Clone, Default)]
pub(crate) struct UiaSession {
    completed: Vec<String>,
}

/// `POST /register`'s body.
#[derive(Debug, Clone, Default, Deserialize)]
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
    /// UIA auth dict.
    pub auth: Option<Value>,
}

/// The result of a registration.
#[derive(Debug, Clone)]
pub struct RegisterResponse {
    /// The new user.
    pub user_id: OwnedUserId,
    /// Token and device, unless `inhibit_login`.
    pub login: Option<(String, String)>,
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
    /// The token.
    pub access_token: String,
    /// The device.
    pub device_id: String,
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
#[derive(Default)]
pub(crate) struct AccountsState {
    /// UIA sessions in progress: session ID -> completed stage types and request info (the
    /// only copy: several processes need them in the database).
    pub(crate) uia_sessions: std::sync::Mutex<std::collections::HashMap<String, UiaSession>>,
    /// Shared-secret registration nonces -> issue time (ms); single use, one minute (the only
    /// copy).
    pub(crate) registration_nonces: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// When each `(user, device)`'s last-seen row was last written, and from which IP; held
    /// only to decide whether to write again (a cache).
    pub(crate) last_seen: std::sync::Mutex<std::collections::HashMap<(String, String), (i64, String)>>,
    /// OpenID tokens -> (user, expiry ms); they last an hour (the only copy).
    pub(crate) openid_tokens: std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>,
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
        let t = token.to_owned();
        let found = self
            .db(move |s| {
                let Some((user_id, device_id)) = s.get_access_token(&t)? else { return Ok(None) };
                Ok(s.get_user(&user_id)?.map(|u| (u, device_id)))
            })
            .await?;
        let Some((user, device_id)) = found else {
            return Err(Error::new(ErrorKind::UnknownToken, "Unknown access token")
                .with_fields([("soft_logout".to_owned(), json!(false))].into_iter().collect()));
        };
        if user.deactivated {
            return Err(Error::new(ErrorKind::UnknownToken, "Unknown access token"));
        }
        if !allow_expired && self.modules.has_is_user_expired() && self.modules.is_user_expired(&user.user_id).await? {
            return Err(crate::modules::third_party::expired());
        }
        // Last-seen bookkeeping must not slow requests down: written in the background, and at
        // most once a minute per device (and whenever the IP changes), as Synapse batches its
        // client-IP updates, so a busy client does not add a write to every request.
        let now = now_ms();
        let due = {
            let mut seen = self.accounts.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            let key = (user.user_id.clone(), device_id.clone());
            match seen.get(&key) {
                Some((at, ip)) if now - at < 60_000 && *ip == info.ip => false,
                _ => {
                    seen.insert(key, (now, info.ip.clone()));
                    true
                }
            }
        };
        if due {
            let (u, d, ip) = (user.user_id.clone(), device_id.clone(), info.ip.clone());
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.touch_device(&u, &d, &ip, now));
        }
        Ok(Requester {
            user_id: OwnedUserId::try_from(user.user_id).map_err(Error::internal)?,
            device_id,
            access_token: token.to_owned(),
            is_admin: user.is_admin,
            shadow_banned: user.shadow_banned,
            is_guest: user.is_guest,
        })
    }

    /// 400 for a UIA `session` this server never issued (or forgot), as Synapse answers.
    fn check_uia_session(&self, session: Option<&str>) -> Result<()> {
        match session {
            Some(id) if !self.accounts.uia_sessions.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id) => {
                Err(Error::new(ErrorKind::BadRequest, format!("Unknown session ID: {id}")))
            }
            _ => Ok(()),
        }
    }

    fn uia_challenge(&self, stages: &[&str], session: Option<String>, error: Option<&str>) -> Error {
        let session = session.unwrap_or_else(|| {
            let id = random_string(24);
            self.accounts
                .uia_sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), UiaSession::default());
            id
        });
        let completed = self
            .accounts
            .uia_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&session)
            .map(|s| s.completed.clone())
            .unwrap_or_default();
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

    /// Runs user-interactive auth for an account operation: the user's password is the one flow.
    pub(crate) async fn uia_password(&self, requester: &Requester, auth: Option<&Value>) -> Result<()> {
        let Some(auth) = auth.and_then(Value::as_object) else {
            return Err(self.uia_challenge(&["m.login.password"], None, None));
        };
        let session = auth.get("session").and_then(Value::as_str).map(str::to_owned);
        self.check_uia_session(session.as_deref())?;
        if auth.get("type").and_then(Value::as_str) != Some("m.login.password") {
            return Err(self.uia_challenge(&["m.login.password"], session, Some("Unknown auth type")));
        }
        let user = auth
            .get("identifier")
            .and_then(|i| i.get("user"))
            .or_else(|| auth.get("user"))
            .and_then(Value::as_str)
            .unwrap_or(requester.user_id.as_str());
        let qualified = if user.starts_with('@') { user.to_owned() } else { format!("@{user}:{}", self.server_name()) };
        let password = auth.get("password").and_then(Value::as_str).unwrap_or_default().to_owned();
        let uid = requester.user_id.to_string();
        let hash = self.db(move |s| s.get_user(&uid)).await?.and_then(|u| u.password_hash);
        let ok = qualified.eq_ignore_ascii_case(requester.user_id.as_str())
            && match hash {
                Some(h) => verify_password(password, h).await,
                None => false,
            };
        if !ok {
            return Err(self.uia_challenge(&["m.login.password"], session, Some("Invalid password")));
        }
        Ok(())
    }

    /// `GET /register/available`.
    pub async fn username_available(&self, username: &str) -> Result<()> {
        validate_localpart(username, self.server_name())?;
        let user_id = format!("@{username}:{}", self.server_name());
        if self.db(move |s| s.find_user_case_insensitive(&user_id)).await?.is_some() {
            return Err(Error::new(ErrorKind::UserInUse, "User ID already taken."));
        }
        Ok(())
    }

    /// `POST /register` for a normal account: UIA (`m.login.dummy`), the registration spam
    /// check (its one call site for client registration), then the account and a login.
    pub async fn register(&self, request: RegisterRequest, info: &RequestInfo) -> Result<RegisterResponse> {
        if !self.config.enable_registration {
            return Err(Error::forbidden("Registration has been disabled"));
        }
        // `rc_registration` per address: asked now, counted when an account is made.
        self.limiters.registration.peek(&info.ip)?;
        if let Some(username) = &request.username {
            self.username_available(&username.to_lowercase()).await?;
        }
        if let Some(p) = &request.password
            && p.len() > 512
        {
            return Err(Error::bad_json("Password too long"));
        }
        if let Some(password) = &request.password {
            self.check_password_policy(password)?;
        }
        let auth = request.auth.as_ref().and_then(Value::as_object);
        let session = auth.and_then(|a| a.get("session")).and_then(Value::as_str).map(str::to_owned);
        self.check_uia_session(session.as_deref())?;
        let stage =
            if self.config.registration_requires_token { "m.login.registration_token" } else { "m.login.dummy" };
        let mut used_token = None;
        match auth.and_then(|a| a.get("type")).and_then(Value::as_str) {
            Some(t) if t == stage && stage == "m.login.dummy" => {}
            Some(t) if t == stage => {
                let token = auth.and_then(|a| a.get("token")).and_then(Value::as_str).unwrap_or_default().to_owned();
                if !self.registration_token_valid(&token).await? {
                    return Err(self.uia_challenge(&[stage], session, Some("Invalid registration token")));
                }
                used_token = Some(token);
            }
            Some(_) => return Err(self.uia_challenge(&[stage], session, Some("Unknown auth type"))),
            None => return Err(self.uia_challenge(&[stage], session, None)),
        }
        self.limiters.registration.check(&info.ip)?;
        if let Some(s) = &session {
            self.accounts.uia_sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(s);
        }
        let registered = self
            .create_account(
                request.username.map(|u| u.to_lowercase()),
                request.password,
                false,
                info,
                (!request.inhibit_login).then_some((request.device_id, request.initial_device_display_name)),
            )
            .await?;
        if let Some(token) = used_token {
            self.db(move |s| s.use_registration_token(&token)).await?;
        }
        Ok(registered)
    }

    /// `GET /register/m.login.registration_token/validity`, limited per address by
    /// `rc_registration_token_validity`.
    pub async fn check_registration_token_validity(&self, token: &str, info: &RequestInfo) -> Result<bool> {
        self.limiters.registration_token_validity.check(&info.ip)?;
        self.registration_token_valid(token).await
    }

    /// Whether a password meets `password_config.policy`: 400 with Synapse's errcodes.
    pub(crate) fn check_password_policy(&self, password: &str) -> Result<()> {
        let Some(policy) = &self.config.password.policy else { return Ok(()) };
        let refuse = |errcode: &str, message: String| {
            Err(Error::new(ErrorKind::Module { status: 400, errcode: errcode.to_owned() }, message))
        };
        if password.chars().count() < policy.minimum_length {
            return refuse(
                "M_PASSWORD_TOO_SHORT",
                format!("The password must be at least {} characters long", policy.minimum_length),
            );
        }
        if policy.require_digit && !password.chars().any(|c| c.is_ascii_digit()) {
            return refuse("M_PASSWORD_NO_DIGIT", "The password must include at least one digit".into());
        }
        if policy.require_symbol && password.chars().all(|c| c.is_ascii_alphanumeric()) {
            return refuse("M_PASSWORD_NO_SYMBOL", "The password must include at least one symbol".into());
        }
        if policy.require_uppercase && !password.chars().any(|c| c.is_ascii_uppercase()) {
            return refuse("M_PASSWORD_NO_UPPERCASE", "The password must include at least one uppercase letter".into());
        }
        if policy.require_lowercase && !password.chars().any(|c| c.is_ascii_lowercase()) {
            return refuse("M_PASSWORD_NO_LOWERCASE", "The password must include at least one lowercase letter".into());
        }
        Ok(())
    }

    /// Whether a registration token exists, has not expired and has uses left.
    pub async fn registration_token_valid(&self, token: &str) -> Result<bool> {
        let t = token.to_owned();
        let found = self.db(move |s| s.get_registration_token(&t)).await?;
        Ok(found.is_some_and(|t| {
            t.expiry_time.is_none_or(|e| e > now_ms()) && t.uses_allowed.is_none_or(|n| t.pending + t.completed < n)
        }))
    }

    /// `POST /_synapse/admin/v1/registration_tokens/new` (admins only).
    pub async fn create_registration_token(
        &self,
        requester: &Requester,
        token: Option<String>,
        uses_allowed: Option<i64>,
        expiry_time: Option<i64>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let token = token.unwrap_or_else(|| random_string(16));
        if token.is_empty()
            || token.len() > 64
            || !token.chars().all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c))
        {
            return Err(Error::invalid_param(
                "token must consist only of characters matched by [A-Za-z0-9._~-] and be at most 64 long",
            ));
        }
        if uses_allowed.is_some_and(|n| n < 0) {
            return Err(Error::invalid_param("uses_allowed must be a non-negative integer or null"));
        }
        if expiry_time.is_some_and(|t| t < now_ms()) {
            return Err(Error::invalid_param("expiry_time must not be in the past"));
        }
        let row = myelin_storage::RegistrationToken {
            token: token.clone(),
            uses_allowed,
            pending: 0,
            completed: 0,
            expiry_time,
        };
        match self.db(move |s| s.create_registration_token(&row)).await {
            Err(e) if e.kind == ErrorKind::Internal => {
                return Err(Error::invalid_param(format!("Token already exists: {token}")));
            }
            other => other?,
        }
        Ok(
            json!({"token": token, "uses_allowed": uses_allowed, "pending": 0, "completed": 0, "expiry_time": expiry_time}),
        )
    }

    /// `GET /_synapse/admin/v1/registration_tokens` (admins only).
    pub async fn list_registration_tokens(&self, requester: &Requester) -> Result<Value> {
        self.require_admin(requester)?;
        let tokens = self.db(|s| s.list_registration_tokens()).await?;
        let list: Vec<Value> = tokens
            .into_iter()
            .map(|t| json!({"token": t.token, "uses_allowed": t.uses_allowed, "pending": t.pending, "completed": t.completed, "expiry_time": t.expiry_time}))
            .collect();
        Ok(json!({"registration_tokens": list}))
    }

    fn require_admin(&self, requester: &Requester) -> Result<()> {
        if requester.is_admin { Ok(()) } else { Err(Error::forbidden("You are not a server admin")) }
    }

    /// `POST /register?kind=guest`.
    pub async fn register_guest(&self, info: &RequestInfo) -> Result<RegisterResponse> {
        if !self.config.allow_guest_access {
            return Err(Error::forbidden("Guest access is disabled"));
        }
        self.limiters.registration.check(&info.ip)?;
        use rand::Rng;
        let localpart = rand::thread_rng().gen_range(100_000_000u64..999_999_999).to_string();
        let user_id = OwnedUserId::try_from(format!("@{localpart}:{}", self.server_name())).map_err(Error::internal)?;
        let row = UserRow {
            user_id: user_id.to_string(),
            password_hash: None,
            is_admin: false,
            is_guest: true,
            deactivated: false,
            shadow_banned: false,
            creation_ts: now_ms(),
        };
        self.db(move |s| s.create_user(&row, None)).await?;
        let login = Some(self.new_session(&user_id, None, None).await?);
        Ok(RegisterResponse { user_id, login })
    }

    /// Creates an account (client registration, shared-secret and command-line paths).
    pub async fn create_account(
        &self,
        localpart: Option<String>,
        password: Option<String>,
        admin: bool,
        info: &RequestInfo,
        login: Option<(Option<String>, Option<String>)>,
    ) -> Result<RegisterResponse> {
        let behaviour = self
            .modules
            .check_registration_for_spam(
                None,
                localpart.as_deref(),
                vec![(info.user_agent.clone(), info.ip.clone())],
                None,
            )
            .await?;
        if behaviour == RegistrationBehaviour::Deny {
            return Err(Error::new(ErrorKind::RegistrationDenied, "Rate limited"));
        }
        let localpart = match localpart {
            Some(l) => {
                validate_localpart(&l, self.server_name())?;
                l
            }
            None => random_string(12).to_lowercase(),
        };
        let user_id = OwnedUserId::try_from(format!("@{localpart}:{}", self.server_name()))
            .map_err(|_| Error::new(ErrorKind::InvalidUsername, "Invalid user ID"))?;
        let password_hash = match password {
            Some(p) => Some(hash_password(p).await?),
            None => None,
        };
        let row = UserRow {
            user_id: user_id.to_string(),
            password_hash,
            is_admin: admin,
            is_guest: false,
            deactivated: false,
            shadow_banned: behaviour == RegistrationBehaviour::ShadowBan,
            creation_ts: now_ms(),
        };
        let lp = localpart.clone();
        match self.db(move |s| s.create_user(&row, Some(&lp))).await {
            Err(e) if e.kind == ErrorKind::Internal => {
                // A race with another registration of the same name hits the primary key.
                let uid = user_id.to_string();
                if self.db(move |s| s.get_user(&uid)).await?.is_some() {
                    return Err(Error::new(ErrorKind::UserInUse, "User ID already taken."));
                }
                return Err(e);
            }
            other => other?,
        }
        self.modules.on_user_registration(user_id.as_str()).await;
        let login = match login {
            Some((device_id, name)) => Some(self.new_session(&user_id, device_id, name).await?),
            None => None,
        };
        Ok(RegisterResponse { user_id, login })
    }

    async fn new_session(
        &self,
        user_id: &UserId,
        device_id: Option<String>,
        name: Option<String>,
    ) -> Result<(String, String)> {
        let device_id = device_id.filter(|d| !d.is_empty()).unwrap_or_else(|| random_string(10).to_uppercase());
        let token = format!("myl_{}", random_string(40));
        let (u, d, t) = (user_id.to_string(), device_id.clone(), token.clone());
        let is_new = self
            .db(move |s| {
                let is_new = !s.get_devices(&u)?.iter().any(|x| x.device_id == d);
                s.upsert_device(&u, &d, name.as_deref())?;
                s.add_access_token(&t, &u, &d)?;
                Ok(is_new)
            })
            .await?;
        if is_new {
            self.device_list_changed(user_id.as_str(), &device_id).await;
        }
        Ok((token, device_id))
    }

    /// `POST /login` with `m.login.password`; `check_login_for_spam` runs here, before the
    /// device is created.
    ///
    /// Rate limits as Synapse: `rc_login.address` per client address on every attempt,
    /// `rc_login.failed_attempts` per account (checked first, counted on each failure) and
    /// `rc_login.account` per account once the login succeeds.
    pub async fn login(&self, request: LoginRequest, info: &RequestInfo) -> Result<LoginResponse> {
        let module_type = self.modules.handles_login_type(&request.kind);
        let password_login = request.kind == "m.login.password" && self.config.password.enabled;
        if !password_login && !module_type {
            return Err(Error::new(ErrorKind::BadRequest, "Unknown login type").with_fields(Map::new()));
        }
        self.limiters.login_address.check(&info.ip)?;
        let invalid = || Error::forbidden("Invalid username or password");
        let identifier = request.identifier.clone().unwrap_or(Value::Null);
        let vouched = match identifier.get("type").and_then(Value::as_str) {
            // A third-party identifier: only password providers can vouch for it.
            Some("m.id.thirdparty") => {
                let medium = identifier["medium"].as_str().unwrap_or_default();
                let address = identifier["address"].as_str().unwrap_or_default();
                let password = request.password.as_deref().unwrap_or_default();
                Some(self.modules.check_3pid_auth(medium, address, password).await.ok_or_else(invalid)?)
            }
            Some("m.id.user") | None => None,
            Some(_) => return Err(Error::new(ErrorKind::BadRequest, "Unknown login identifier type")),
        };
        let user = match &vouched {
            Some(u) => u.clone(),
            None => identifier
                .get("user")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| request.user.clone())
                .ok_or_else(|| Error::new(ErrorKind::MissingParam, "Missing user"))?,
        };
        let qualified = if user.starts_with('@') { user } else { format!("@{user}:{}", self.server_name()) };
        let account_key = qualified.to_lowercase();
        self.limiters.login_failed_attempts.peek(&account_key)?;
        let result = self.login_checked(request, info, vouched, qualified).await;
        match &result {
            Err(e) if e.kind == ErrorKind::Forbidden => self.limiters.login_failed_attempts.record(&account_key),
            _ => {}
        }
        result
    }

    /// [`Self::login`] once the account is named and its rate limits allow an attempt.
    async fn login_checked(
        &self,
        request: LoginRequest,
        info: &RequestInfo,
        vouched: Option<String>,
        qualified: String,
    ) -> Result<LoginResponse> {
        let module_type = self.modules.handles_login_type(&request.kind);
        let invalid = || Error::forbidden("Invalid username or password");
        // Module auth checkers for this login type first; for m.login.password the local
        // database decides when none vouches.
        let vouched = match vouched {
            Some(v) => Some(v),
            None if module_type => {
                let mut dict = request.extra.clone();
                dict.insert("type".into(), json!(request.kind));
                if let Some(p) = &request.password {
                    dict.insert("password".into(), json!(p));
                }
                self.modules.check_auth(&qualified, &request.kind, &dict).await
            }
            None => None,
        };
        let lookup = vouched.clone().unwrap_or_else(|| qualified.clone());
        let found = self.db(move |s| s.find_user_case_insensitive(&lookup)).await?;
        if vouched.is_none() {
            if request.kind != "m.login.password" || !self.config.password.localdb_enabled {
                return Err(invalid());
            }
            let password =
                request.password.clone().ok_or_else(|| Error::new(ErrorKind::MissingParam, "Missing password"))?;
            // An unknown account costs a hash check too, so that timing does not tell which
            // accounts exist.
            let hash = found.as_ref().and_then(|row| row.password_hash.clone());
            let matches = verify_password(password, hash.unwrap_or_else(|| DUMMY_HASH.clone())).await;
            if !matches || found.as_ref().is_none_or(|row| row.password_hash.is_none()) {
                return Err(invalid());
            }
        }
        let Some(row) = found else { return Err(invalid()) };
        if row.deactivated {
            return Err(Error::new(ErrorKind::UserDeactivated, "This account has been deactivated"));
        }
        self.modules
            .check_login_for_spam(
                &row.user_id,
                request.device_id.as_deref(),
                request.initial_device_display_name.as_deref(),
                vec![(info.user_agent.clone(), info.ip.clone())],
                None,
            )
            .await?;
        self.limiters.login_account.check(&row.user_id.to_lowercase())?;
        let user_id = OwnedUserId::try_from(row.user_id).map_err(Error::internal)?;
        let (access_token, device_id) =
            self.new_session(&user_id, request.device_id, request.initial_device_display_name).await?;
        Ok(LoginResponse { user_id, access_token, device_id })
    }

    /// `POST /logout`; password providers' `on_logged_out` runs afterwards.
    pub async fn logout(&self, requester: &Requester) -> Result<()> {
        let (u, d) = (requester.user_id.to_string(), requester.device_id.clone());
        self.db(move |s| s.delete_device(&u, &d).map(|_| ())).await?;
        self.modules
            .on_logged_out(requester.user_id.as_str(), Some(&requester.device_id), &requester.access_token)
            .await;
        Ok(())
    }

    /// `GET /login`: password login plus the types modules handle.
    pub fn login_flows(&self) -> Vec<String> {
        let mut flows = Vec::new();
        if self.config.password.enabled {
            flows.push("m.login.password".to_owned());
        }
        for t in self.modules.module_login_types() {
            if !flows.contains(&t) {
                flows.push(t);
            }
        }
        flows
    }

    /// `POST /logout/all`.
    pub async fn logout_all(&self, requester: &Requester) -> Result<()> {
        let u = requester.user_id.to_string();
        self.db(move |s| s.delete_all_devices(&u, None)).await
    }

    /// `GET /devices`.
    pub async fn devices(&self, requester: &Requester) -> Result<Vec<Value>> {
        let u = requester.user_id.to_string();
        let rows = self.db(move |s| s.get_devices(&u)).await?;
        Ok(rows
            .into_iter()
            .map(|d| {
                let mut v = json!({"device_id": d.device_id});
                if let Some(n) = d.display_name {
                    v["display_name"] = json!(n);
                }
                if let Some(ts) = d.last_seen_ts {
                    v["last_seen_ts"] = json!(ts);
                }
                if let Some(ip) = d.last_seen_ip {
                    v["last_seen_ip"] = json!(ip);
                }
                v
            })
            .collect())
    }

    /// `PUT /devices/{id}`.
    pub async fn rename_device(&self, requester: &Requester, device_id: &str, name: Option<String>) -> Result<()> {
        let (u, d) = (requester.user_id.to_string(), device_id.to_owned());
        if self.db(move |s| s.rename_device(&u, &d, name.as_deref())).await? {
            self.device_list_changed(requester.user_id.as_str(), device_id).await;
            Ok(())
        } else {
            Err(Error::not_found("Unknown device"))
        }
    }

    /// `DELETE /devices/{id}` (UIA with the password).
    pub async fn delete_device(&self, requester: &Requester, device_id: &str, auth: Option<&Value>) -> Result<()> {
        let (u, d) = (requester.user_id.to_string(), device_id.to_owned());
        let exists = self.db(move |s| Ok(s.get_devices(&u)?.iter().any(|x| x.device_id == d))).await?;
        if !exists {
            return Err(Error::not_found("Unknown device"));
        }
        self.uia_password(requester, auth).await?;
        let (u, d) = (requester.user_id.to_string(), device_id.to_owned());
        self.db(move |s| s.delete_device(&u, &d).map(|_| ())).await?;
        self.device_list_changed(requester.user_id.as_str(), device_id).await;
        Ok(())
    }

    /// A device was added, renamed or deleted: the user's device list changed, for the user's
    /// other devices and everyone sharing a room with them (`device_lists.changed`), and for
    /// the servers sharing a room (`m.device_list_update`). Best effort: the change itself has
    /// happened, and a client learns of it at the latest when it next queries the keys.
    pub(crate) async fn device_list_changed(&self, user: &str, device: &str) {
        let u = user.to_owned();
        match self.db(move |s| s.note_device_list_change(&u)).await {
            Ok(pos) => {
                self.advance_stream(pos);
                self.announce_device_change(user, device, pos).await;
            }
            Err(e) => tracing::warn!(%user, error = %e, "a device list change was not recorded"),
        }
    }

    /// `POST /delete_devices` (UIA with the password); unknown IDs are ignored.
    pub async fn delete_devices(
        &self,
        requester: &Requester,
        devices: Vec<String>,
        auth: Option<&Value>,
    ) -> Result<()> {
        self.uia_password(requester, auth).await?;
        let u = requester.user_id.to_string();
        let deleted = self
            .db(move |s| {
                let mut deleted = Vec::new();
                for d in devices {
                    if s.delete_device(&u, &d)? {
                        deleted.push(d);
                    }
                }
                Ok(deleted)
            })
            .await?;
        for device in deleted {
            self.device_list_changed(requester.user_id.as_str(), &device).await;
        }
        Ok(())
    }

    /// A room's tags (`m.tag` room account data).
    pub async fn room_tags(&self, requester: &Requester, user_id: &str, room_id: &str) -> Result<Value> {
        match self.get_account_data(requester, user_id, Some(room_id), "m.tag").await {
            Ok(v) => Ok(json!({"tags": v.get("tags").cloned().unwrap_or(json!({}))})),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(json!({"tags": {}})),
            Err(e) => Err(e),
        }
    }

    /// Adds (`Some(info)`) or removes (`None`) a room tag.
    pub async fn set_room_tag(
        &self,
        requester: &Requester,
        user_id: &str,
        room_id: &str,
        tag: &str,
        info: Option<Value>,
    ) -> Result<()> {
        if tag.len() > 255 {
            return Err(Error::invalid_param("tag too long"));
        }
        let mut tags =
            self.room_tags(requester, user_id, room_id).await?["tags"].as_object().cloned().unwrap_or_default();
        match info {
            Some(i) => {
                tags.insert(tag.to_owned(), i);
            }
            None => {
                tags.remove(tag);
            }
        }
        // Tags are room account data; `set_account_data` refuses m.tag from clients, so write
        // through storage directly.
        let (u, r, content) = (user_id.to_owned(), room_id.to_owned(), json!({"tags": tags}));
        let pos = self.db(move |s| s.set_account_data(&u, &r, "m.tag", &content)).await?;
        self.advance_stream(pos);
        Ok(())
    }

    /// `POST /account/password` (UIA with the old password).
    pub async fn change_password(
        &self,
        requester: &Requester,
        new_password: String,
        logout_devices: bool,
        auth: Option<&Value>,
    ) -> Result<()> {
        self.uia_password(requester, auth).await?;
        self.check_password_policy(&new_password)?;
        let hash = hash_password(new_password).await?;
        let (u, d) = (requester.user_id.to_string(), requester.device_id.clone());
        self.db(move |s| {
            s.set_password_hash(&u, Some(&hash))?;
            if logout_devices { s.delete_all_devices(&u, Some(&d)) } else { Ok(()) }
        })
        .await
    }

    /// `POST /account/deactivate` (UIA): revokes every token and leaves every room.
    pub async fn deactivate(&self, requester: &Requester, auth: Option<&Value>) -> Result<()> {
        self.uia_password(requester, auth).await?;
        let u = requester.user_id.to_string();
        let rooms = self.db(move |s| s.rooms_for_user(&u, "join")).await?;
        for room in rooms {
            if let Ok(room_id) = ruma::OwnedRoomId::try_from(room) {
                let user = requester.user_id.clone();
                let _ = self.update_membership_unlimited(requester, &room_id, &user, "leave", None, Map::new()).await;
            }
        }
        let u = requester.user_id.to_string();
        self.db(move |s| {
            s.set_user_flag(&u, UserFlag::Deactivated, true)?;
            s.set_password_hash(&u, None)?;
            s.delete_all_devices(&u, None)
        })
        .await
    }

    /// `(displayname, avatar_url)` of a local user; both `None` if unknown.
    pub(crate) async fn profile_of(&self, user_id: &str) -> Result<(Option<String>, Option<String>)> {
        let u = user_id.to_owned();
        Ok(self.db(move |s| s.get_profile(&u)).await?.unwrap_or_default())
    }

    /// `GET /profile/{userId}` for `requester` (none when the request carried no token):
    /// `require_auth_for_profile_requests` and `limit_profile_requests_to_users_who_share_rooms`
    /// as on Synapse.
    pub async fn profile_for(&self, requester: Option<&Requester>, user_id: &str) -> Result<Map<String, Value>> {
        let Some(me) = requester else {
            if self.config.require_auth_for_profile_requests {
                return Err(Error::new(ErrorKind::MissingToken, "Missing access token"));
            }
            return self.get_profile(user_id).await;
        };
        if self.config.limit_profile_requests_to_users_who_share_rooms && me.user_id.as_str() != user_id {
            let (m, u) = (me.user_id.to_string(), user_id.to_owned());
            let shared = self
                .db(move |s| {
                    let mine: std::collections::HashSet<String> = s.rooms_for_user(&m, "join")?.into_iter().collect();
                    Ok(s.rooms_for_user(&u, "join")?.into_iter().any(|r| mine.contains(&r)))
                })
                .await?;
            if !shared {
                return Err(Error::forbidden("Profile isn't available"));
            }
        }
        self.get_profile(user_id).await
    }

    /// A user's profile (local or remote), whoever asks.
    pub async fn get_profile(&self, user_id: &str) -> Result<Map<String, Value>> {
        if let Ok(user) = ruma::OwnedUserId::try_from(user_id)
            && !self.is_mine(&user)
        {
            return self.remote_profile(user_id).await;
        }
        let u = user_id.to_owned();
        let exists = self.db(move |s| s.get_user(&u)).await?.is_some_and(|u| !u.deactivated);
        if !exists {
            return Err(Error::not_found("Profile was not found"));
        }
        let (d, a) = self.profile_of(user_id).await?;
        let mut out = Map::new();
        if let Some(d) = d {
            out.insert("displayname".into(), json!(d));
        }
        if let Some(a) = a {
            out.insert("avatar_url".into(), json!(a));
        }
        Ok(out)
    }

    /// `PUT /profile/{userId}/{field}`: updates the profile and, unless the user is
    /// shadow-banned, the member event of every joined room.
    pub async fn set_profile_field(
        &self,
        requester: &Requester,
        user_id: &str,
        field: &str,
        value: Option<String>,
    ) -> Result<()> {
        if user_id != requester.user_id.as_str() {
            return Err(Error::forbidden("You cannot set another user's profile"));
        }
        let column = match field {
            "displayname" => ProfileField::DisplayName,
            "avatar_url" => ProfileField::AvatarUrl,
            _ => return Err(Error::new(ErrorKind::Unrecognized, "Unknown profile field")),
        };
        if value.as_ref().is_some_and(|v| v.len() > 256) {
            return Err(Error::bad_json(format!("{field} is too long (max 256)")));
        }
        let (u, v) = (user_id.to_owned(), value.clone());
        self.db(move |s| s.set_profile_field(&u, column, v.as_deref())).await?;
        if requester.shadow_banned {
            return Ok(());
        }
        let u = user_id.to_owned();
        for room in self.db(move |s| s.rooms_for_user(&u, "join")).await? {
            let Ok(room_id) = ruma::OwnedRoomId::try_from(room) else { continue };
            let (displayname, avatar_url) = self.profile_of(user_id).await?;
            let mut content = Map::new();
            content.insert("membership".into(), json!("join"));
            if let Some(d) = displayname {
                content.insert("displayname".into(), json!(d));
            }
            if let Some(a) = avatar_url {
                content.insert("avatar_url".into(), json!(a));
            }
            let user = requester.user_id.clone();
            self.append_event(&room_id, &user, "m.room.member", Some(user.as_str()), content, Default::default())
                .await?;
        }
        Ok(())
    }

    /// Global or room account data.
    pub async fn set_account_data(
        &self,
        requester: &Requester,
        user_id: &str,
        room_id: Option<&str>,
        kind: &str,
        content: Value,
    ) -> Result<()> {
        if user_id != requester.user_id.as_str() {
            return Err(Error::forbidden("Cannot add account data for other users."));
        }
        if let Some(r) = room_id {
            ruma::RoomId::parse(r).map_err(|_| Error::invalid_param(format!("Invalid room ID: {r}")))?;
        }
        if kind == "m.fully_read" || kind == "m.push_rules" || kind == "m.tag" {
            return Err(Error::new(ErrorKind::BadJson, format!("Cannot set {kind} through this API.")));
        }
        let (u, r, k) = (user_id.to_owned(), room_id.unwrap_or_default().to_owned(), kind.to_owned());
        let pos = self.db(move |s| s.set_account_data(&u, &r, &k, &content)).await?;
        self.advance_stream(pos);
        Ok(())
    }

    /// One account-data item.
    pub async fn get_account_data(
        &self,
        requester: &Requester,
        user_id: &str,
        room_id: Option<&str>,
        kind: &str,
    ) -> Result<Value> {
        if user_id != requester.user_id.as_str() {
            return Err(Error::forbidden("Cannot get account data for other users."));
        }
        let (u, r, k) = (user_id.to_owned(), room_id.unwrap_or_default().to_owned(), kind.to_owned());
        self.db(move |s| s.get_account_data(&u, &r, &k))
            .await?
            .ok_or_else(|| Error::not_found("Account data not found"))
    }

    /// Stores a sync filter.
    pub async fn create_filter(&self, requester: &Requester, user_id: &str, filter: Value) -> Result<String> {
        if user_id != requester.user_id.as_str() {
            return Err(Error::forbidden("Cannot create filters for other users"));
        }
        validate_filter(&filter).map_err(|why| Error::bad_json(format!("Invalid filter: {why}")))?;
        let u = user_id.to_owned();
        Ok(self.db(move |s| s.create_filter(&u, &filter)).await?.to_string())
    }

    /// A stored filter.
    pub async fn get_filter(&self, requester: &Requester, user_id: &str, filter_id: &str) -> Result<Value> {
        if user_id != requester.user_id.as_str() {
            return Err(Error::forbidden("Cannot get filters for other users"));
        }
        let id: i64 = filter_id.parse().map_err(|_| Error::not_found("No such filter"))?;
        let u = user_id.to_owned();
        self.db(move |s| s.get_filter(&u, id)).await?.ok_or_else(|| Error::not_found("No such filter"))
    }

    /// `GET /_synapse/admin/v1/register`: a single-use nonce for shared-secret registration.
    pub fn registration_nonce(&self) -> Result<String> {
        if self.config.registration_shared_secret.is_none() {
            return Err(Error::new(ErrorKind::BadRequest, "Shared secret registration is not enabled"));
        }
        let nonce = random_string(32);
        let mut nonces = self.accounts.registration_nonces.lock().unwrap_or_else(|p| p.into_inner());
        // Nonces live a minute, as in Synapse.
        let now = now_ms();
        nonces.retain(|_, issued| now - *issued < 60_000);
        nonces.insert(nonce.clone(), now);
        Ok(nonce)
    }

    /// `POST /_synapse/admin/v1/register`: Synapse's HMAC-SHA1 scheme over
    /// `nonce \0 username \0 password \0 admin|notadmin`.
    pub async fn register_with_shared_secret(
        &self,
        nonce: &str,
        username: &str,
        password: &str,
        admin: bool,
        mac: &str,
        displayname: Option<String>,
    ) -> Result<RegisterResponse> {
        use hmac::Mac;
        let Some(secret) = &self.config.registration_shared_secret else {
            return Err(Error::new(ErrorKind::BadRequest, "Shared secret registration is not enabled"));
        };
        let issued = self.accounts.registration_nonces.lock().unwrap_or_else(|p| p.into_inner()).remove(nonce);
        if issued.is_none_or(|t| now_ms() - t >= 60_000) {
            return Err(Error::new(ErrorKind::BadRequest, "unrecognised nonce"));
        }
        let mut hmac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).map_err(Error::internal)?;
        for (i, part) in [nonce, username, password, if admin { "admin" } else { "notadmin" }].iter().enumerate() {
            if i > 0 {
                hmac.update(b"\x00");
            }
            hmac.update(part.as_bytes());
        }
        let expected = hex::decode(mac).map_err(|_| Error::forbidden("HMAC incorrect"))?;
        hmac.verify_slice(&expected).map_err(|_| Error::forbidden("HMAC incorrect"))?;
        let localpart = username.to_lowercase();
        self.username_available(&localpart).await?;
        let info = RequestInfo::default();
        let r =
            self.create_account(Some(localpart), Some(password.to_owned()), admin, &info, Some((None, None))).await?;
        if let Some(d) = displayname {
            let u = r.user_id.to_string();
            self.db(move |s| s.set_profile_field(&u, ProfileField::DisplayName, Some(&d))).await?;
        }
        Ok(r)
    }

    /// Creates a user from the command line or the shared-secret admin API.
    pub async fn register_local_user(&self, localpart: &str, password: &str, admin: bool) -> Result<OwnedUserId> {
        let info = RequestInfo::default();
        let localpart = localpart.to_lowercase();
        self.username_available(&localpart).await?;
        Ok(self.create_account(Some(localpart), Some(password.to_owned()), admin, &info, None).await?.user_id)
    }

    /// `ModuleApi.register_user`: a local user with no password, its display name defaulting
    /// to the localpart (Synapse's registration handler does the same).
    pub(crate) async fn module_register_user(
        &self,
        localpart: &str,
        displayname: Option<String>,
        admin: bool,
    ) -> Result<OwnedUserId> {
        let localpart = localpart.to_lowercase();
        self.username_available(&localpart).await?;
        let user_id =
            self.create_account(Some(localpart.clone()), None, admin, &RequestInfo::default(), None).await?.user_id;
        let (u, d) = (user_id.to_string(), displayname.unwrap_or(localpart));
        self.db(move |s| s.set_profile_field(&u, ProfileField::DisplayName, Some(&d))).await?;
        Ok(user_id)
    }

    /// `ModuleApi.register_device`: a new access token on `device_id` (generated if absent).
    pub(crate) async fn module_register_device(
        &self,
        user_id: &UserId,
        device_id: Option<String>,
        display_name: Option<String>,
    ) -> Result<(String, String)> {
        self.new_session(user_id, device_id, display_name).await
    }

    /// Marks a user as admin (or not).
    pub async fn set_admin(&self, user_id: &str, admin: bool) -> Result<()> {
        let u = user_id.to_owned();
        self.db(move |s| s.set_user_flag(&u, UserFlag::Admin, admin)).await
    }

    /// `account_data_manager.get_global`: local users only.
    pub(crate) async fn module_get_global_account_data(&self, user_id: &str, kind: &str) -> Result<Option<Value>> {
        let user = OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
        if !self.is_mine(&user) {
            return Err(Error::invalid_param(format!("{user_id} is not local to this homeserver")));
        }
        let (u, k) = (user_id.to_owned(), kind.to_owned());
        self.db(move |s| s.get_account_data(&u, "", &k)).await
    }

    /// `account_data_manager.put_global`: local, existing users only.
    pub(crate) async fn module_put_global_account_data(
        &self,
        user_id: &str,
        kind: &str,
        content: Map<String, Value>,
    ) -> Result<()> {
        let user = OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
        if !self.is_mine(&user) {
            return Err(Error::invalid_param(format!("{user_id} is not local to this homeserver")));
        }
        let u = user_id.to_owned();
        if self.db(move |s| s.get_user(&u)).await?.is_none() {
            return Err(Error::not_found(format!("User {user_id} does not exist")));
        }
        let (u, k) = (user_id.to_owned(), kind.to_owned());
        let pos = self.db(move |s| s.set_account_data(&u, "", &k, &Value::Object(content))).await?;
        self.advance_stream(pos);
        Ok(())
    }

    /// Looks a local user up for `ModuleApi.get_userinfo_by_id`.
    pub(crate) async fn user_info(&self, user_id: &str) -> Result<Option<myelin_module_api::UserInfo>> {
        let u = user_id.to_owned();
        Ok(self.db(move |s| s.get_user(&u)).await?.map(|u| myelin_module_api::UserInfo {
            user_id: u.user_id,
            is_admin: u.is_admin,
            is_guest: u.is_guest,
            is_deactivated: u.deactivated,
            is_shadow_banned: u.shadow_banned,
            creation_ts: u.creation_ts / 1000,
        }))
    }
}

impl Homeserver {
    /// `POST /user/{userId}/openid/request_token`: a token a third party can check with
    /// `/_matrix/federation/v1/openid/userinfo`; an hour long, as Synapse's.
    pub fn openid_token(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        if user_id != requester.user_id.as_str() {
            return Err(Error::forbidden("Cannot request tokens for other users."));
        }
        let token = random_string(32);
        let expires = now_ms() + 3_600_000;
        let mut tokens = self.accounts.openid_tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|_, (_, exp)| *exp > now_ms());
        tokens.insert(token.clone(), (user_id.to_owned(), expires));
        Ok(json!({
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": self.server_name(),
            "expires_in": 3600,
        }))
    }

    /// The user an OpenID token was issued to, while it lasts.
    pub fn openid_user(&self, token: &str) -> Option<String> {
        let tokens = self.accounts.openid_tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.get(token).filter(|(_, exp)| *exp > now_ms()).map(|(u, _)| u.clone())
    }
}

/// Checks a filter's shape as Synapse's schema does: the sections are objects, the lists are
/// lists of strings, room IDs and user IDs are such IDs. Unknown keys are allowed.
fn validate_filter(filter: &Value) -> std::result::Result<(), String> {
    fn object<'a>(v: &'a Value, at: &str) -> std::result::Result<&'a Map<String, Value>, String> {
        v.as_object().ok_or_else(|| format!("{at} must be an object"))
    }
    fn list(v: &Map<String, Value>, key: &str, at: &str, check: fn(&str) -> bool) -> std::result::Result<(), String> {
        let Some(value) = v.get(key) else { return Ok(()) };
        let items = value.as_array().ok_or_else(|| format!("{at}.{key} must be a list"))?;
        for item in items {
            match item.as_str() {
                Some(s) if check(s) => {}
                _ => return Err(format!("{at}.{key} holds {item}, which is not valid there")),
            }
        }
        Ok(())
    }
    let any = |_: &str| true;
    let user = |s: &str| ruma::UserId::parse(s).is_ok();
    let room = |s: &str| ruma::RoomId::parse(s).is_ok();
    let event_filter = |v: &Value, at: &str, in_room: bool| -> std::result::Result<(), String> {
        let f = object(v, at)?;
        list(f, "types", at, any)?;
        list(f, "not_types", at, any)?;
        list(f, "senders", at, user)?;
        list(f, "not_senders", at, user)?;
        if in_room {
            list(f, "rooms", at, room)?;
            list(f, "not_rooms", at, room)?;
        }
        if let Some(limit) = f.get("limit")
            && limit.as_u64().is_none()
        {
            return Err(format!("{at}.limit must be a non-negative integer"));
        }
        for flag in ["lazy_load_members", "include_redundant_members", "contains_url", "unread_thread_notifications"] {
            if f.get(flag).is_some_and(|v| !v.is_boolean()) {
                return Err(format!("{at}.{flag} must be a boolean"));
            }
        }
        Ok(())
    };
    let top = object(filter, "the filter")?;
    list(top, "event_fields", "the filter", any)?;
    for section in ["presence", "account_data"] {
        if let Some(v) = top.get(section) {
            event_filter(v, section, false)?;
        }
    }
    if let Some(room_section) = top.get("room") {
        let r = object(room_section, "room")?;
        list(r, "rooms", "room", room)?;
        list(r, "not_rooms", "room", room)?;
        for section in ["timeline", "state", "ephemeral", "account_data"] {
            if let Some(v) = r.get(section) {
                event_filter(v, &format!("room.{section}"), true)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod filter_tests {
    use super::validate_filter;
    use serde_json::json;

    #[test]
    fn filters_of_the_wrong_shape_are_refused() {
        for bad in [
            json!({"room": {"timeline": "not_an_object"}}),
            json!({"presence": "not_an_object"}),
            json!({"room": {"timeline": {"not_rooms": "not_a_list"}}}),
            json!({"room": {"timeline": {"types": [0]}}}),
            json!({"room": {"timeline": {"rooms": ["not_a_room_id"]}}}),
            json!({"room": {"timeline": {"senders": ["not_a_sender_id"]}}}),
            json!({"room": {"rooms": "!a:b"}}),
            json!({"room": {"timeline": {"limit": -1}}}),
            json!({"room": {"state": {"lazy_load_members": "true"}}}),
            json!([]),
        ] {
            assert!(validate_filter(&bad).is_err(), "{bad}");
        }
        for good in [
            json!({}),
            json!({"room": {"timeline": {"limit": 10, "types": ["m.room.message"], "rooms": ["!a:b"]}, "include_leave": true}}),
            json!({"presence": {"senders": ["@a:b"]}, "event_fields": ["content.body"], "unknown": 1}),
        ] {
            assert!(validate_filter(&good).is_ok(), "{good}");
        }
    }
}
