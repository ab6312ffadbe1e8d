//! Application services (bridges and bots): their registration files, what they may do on the
//! Client-Server API, and what the homeserver tells them (docs/appservices.md).
//!
//! - Registrations are read from `app_service_config_files` at start-up, in Synapse's format;
//!   a bad file is a config error naming the file and the key ([`load_registrations`]).
//! - A request with an appservice's `as_token` acts as its `sender_localpart` user, or as the
//!   user named by `?user_id=` when that user is in its namespace and registered (Synapse's
//!   masquerading rules, [`Homeserver::appservice_requester`]).
//! - Exclusive namespaces keep normal users out of the user IDs and aliases a bridge owns.
//! - `sender` delivers transactions (events, and ephemeral events when asked) from a
//!   position kept in the database, so nothing is dropped or reordered across restarts.
//! - `queries` asks appservices about users and aliases that do not exist yet, serves the
//!   ping and the third-party protocol lookups.

mod queries;
mod sender;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ruma::OwnedUserId;
use serde_json::{Map, Value};

use crate::config::ConfigError;
use crate::error::{Error, ErrorKind};
use crate::users::RequestInfo;
use crate::{Homeserver, Requester, Result};

/// One regex of a namespace.
pub struct Namespace {
    /// Whether the application service claims these IDs for itself alone.
    pub exclusive: bool,
    /// Anchored at the start only, as Python's `re.match` (what Synapse uses).
    regex: regex::Regex,
}

/// One application service, as registered in its file.
pub struct Registration {
    /// `id`: unique among the registrations.
    pub id: String,
    /// `url`: where transactions and queries go; `None` (an explicit `null`) for a service that
    /// only uses the Client-Server API.
    pub url: Option<String>,
    /// `as_token`: how the service authenticates to the homeserver.
    pub as_token: String,
    /// `hs_token`: how the homeserver authenticates to the service.
    pub hs_token: String,
    /// The `sender_localpart` user.
    pub sender: OwnedUserId,
    /// `namespaces.users`.
    pub users: Vec<Namespace>,
    /// `namespaces.aliases`.
    pub aliases: Vec<Namespace>,
    /// `namespaces.rooms`.
    pub rooms: Vec<Namespace>,
    /// `protocols`: third-party protocols it answers lookups for.
    pub protocols: Vec<String>,
    /// `rate_limited` (default true): whether its users are rate limited.
    pub rate_limited: bool,
    /// `receive_ephemeral`: transactions carry `ephemeral`.
    pub receive_ephemeral: bool,
    /// `de.sorunome.msc2409.push_ephemeral`: transactions carry `de.sorunome.msc2409.ephemeral`.
    pub unstable_ephemeral: bool,
    /// `org.matrix.msc3202`: transactions carry device list changes and key counts.
    pub msc3202: bool,
    /// `ip_range_whitelist`: when set, its `as_token` is accepted only from these addresses.
    pub ip_range_whitelist: Option<Vec<crate::config::IpRange>>,
    /// The file it came from.
    pub file: PathBuf,
}

impl std::fmt::Debug for Registration {
    /// Without the tokens (start-up logs print registrations).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("sender", &self.sender)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn matches<'a>(namespaces: &'a [Namespace], id: &str) -> Option<&'a Namespace> {
    namespaces.iter().find(|n| n.regex.is_match(id))
}

impl Registration {
    /// Its sender, or a user in its user namespace (Synapse's `is_interested_in_user`).
    pub fn is_interested_in_user(&self, user_id: &str) -> bool {
        user_id == self.sender.as_str() || matches(&self.users, user_id).is_some()
    }

    /// A user ID only it may register: its sender, or in an exclusive user namespace.
    pub fn is_exclusive_user(&self, user_id: &str) -> bool {
        user_id == self.sender.as_str() || matches(&self.users, user_id).is_some_and(|n| n.exclusive)
    }

    /// An alias in its alias namespace.
    pub fn is_alias_in_namespace(&self, alias: &str) -> bool {
        matches(&self.aliases, alias).is_some()
    }

    /// An alias in an exclusive alias namespace of it.
    pub fn is_exclusive_alias(&self, alias: &str) -> bool {
        matches(&self.aliases, alias).is_some_and(|n| n.exclusive)
    }

    /// A room ID in its room namespace.
    pub fn is_room_in_namespace(&self, room_id: &str) -> bool {
        matches(&self.rooms, room_id).is_some()
    }

    /// Whether its token may be used from `ip` (`ip_range_whitelist`).
    pub fn accepts_requests_from(&self, ip: &str) -> bool {
        let Some(ranges) = &self.ip_range_whitelist else { return true };
        ip.parse().is_ok_and(|ip| ranges.iter().any(|r| r.contains(ip)))
    }

    /// Whether transactions carry ephemeral events (either spelling of the flag).
    pub fn wants_ephemeral(&self) -> bool {
        self.receive_ephemeral || self.unstable_ephemeral
    }
}

/// Reads every file of `app_service_config_files` (already resolved to paths), as Synapse's
/// `load_appservices`: IDs and `as_token`s must be unique across files.
pub(crate) fn load_registrations(paths: &[PathBuf], server_name: &str) -> Result<Vec<Arc<Registration>>, ConfigError> {
    let mut out: Vec<Arc<Registration>> = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let at = vec!["app_service_config_files".to_owned(), format!("<item {i}>")];
        let fail = |message: String| ConfigError::at(&at, format!("{}: {message}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read the file: {e}")))?;
        let yaml: Value = serde_yaml_ng::from_str(&text).map_err(|e| fail(format!("not valid YAML: {e}")))?;
        let Value::Object(info) = yaml else {
            return Err(fail("expected a mapping".into()));
        };
        let registration = parse_registration(&info, server_name, path).map_err(fail)?;
        if let Some(other) = out.iter().find(|r| r.id == registration.id) {
            return Err(fail(format!(
                "Cannot reuse ID across application services: {} (also in {})",
                registration.id,
                other.file.display()
            )));
        }
        if let Some(other) = out.iter().find(|r| r.as_token == registration.as_token) {
            return Err(fail(format!(
                "Cannot reuse as_token across application services (also in {})",
                other.file.display()
            )));
        }
        out.push(Arc::new(registration));
    }
    Ok(out)
}

/// One registration file's mapping; the error names the key, as Synapse's messages do.
fn parse_registration(info: &Map<String, Value>, server_name: &str, path: &Path) -> Result<Registration, String> {
    let string = |key: &str| match info.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(format!("Required string field: '{key}'")),
    };
    let (id, as_token, hs_token, localpart) =
        (string("id")?, string("as_token")?, string("hs_token")?, string("sender_localpart")?);
    if id.contains('|') {
        return Err("'id': an application service ID cannot contain '|'".into());
    }
    let url = match info.get("url") {
        Some(Value::String(u)) => Some(u.trim_end_matches('/').to_owned()),
        Some(Value::Null) => None,
        _ => return Err("Required string field or explicit null: 'url'".into()),
    };
    if let Some(u) = &url
        && reqwest::Url::parse(u).map(|p| !matches!(p.scheme(), "http" | "https")).unwrap_or(true)
    {
        return Err(format!("'url': expected an http:// or https:// URL, got '{u}'"));
    }
    // Synapse: the localpart must read the same URL-encoded.
    if !localpart.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~' | b'/')) {
        return Err(format!("'sender_localpart': '{localpart}' needs characters which are not URL encoded"));
    }
    let sender = OwnedUserId::try_from(format!("@{localpart}:{server_name}"))
        .map_err(|_| format!("'sender_localpart': '{localpart}' does not make a valid user ID"))?;
    let flag = |key: &str, default: bool| match info.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("'{key}': expected true or false")),
    };
    // Synapse treats a rate_limited that is not a boolean as true.
    let rate_limited = info.get("rate_limited").and_then(Value::as_bool).unwrap_or(true);
    let Some(Value::Object(namespaces)) = info.get("namespaces") else {
        return Err("Requires 'namespaces' object.".into());
    };
    let namespace = |kind: &str| -> Result<Vec<Namespace>, String> {
        let list = match namespaces.get(kind) {
            None | Some(Value::Null) => return Ok(vec![]),
            Some(Value::Array(list)) => list,
            Some(_) => return Err(format!("'namespaces.{kind}': expected a list")),
        };
        let mut out = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            let at = format!("'namespaces.{kind}.<item {i}>'");
            let Value::Object(entry) = entry else { return Err(format!("{at}: expected a mapping")) };
            let Some(Value::String(pattern)) = entry.get("regex") else {
                return Err(format!("{at}: Missing/bad type 'regex' key"));
            };
            let Some(Value::Bool(exclusive)) = entry.get("exclusive") else {
                return Err(format!("{at}: Missing/bad type 'exclusive' key"));
            };
            let regex = regex::Regex::new(&format!("^(?:{pattern})"))
                .map_err(|e| format!("{at}: invalid regex '{pattern}': {e}"))?;
            out.push(Namespace { exclusive: *exclusive, regex });
        }
        Ok(out)
    };
    let ip_range_whitelist = match info.get("ip_range_whitelist") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|i| i.as_str().and_then(crate::config::IpRange::parse))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| "'ip_range_whitelist': expected a list of IP ranges".to_owned())?,
        ),
        Some(_) => return Err("'ip_range_whitelist': expected a list of IP ranges".into()),
    };
    let protocols = match info.get("protocols") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .map(|p| p.as_str().map(str::to_owned).ok_or_else(|| "Bad value for 'protocols' item".to_owned()))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("Optional 'protocols' must be a list if present.".into()),
    };
    Ok(Registration {
        id,
        url,
        as_token,
        hs_token,
        sender,
        users: namespace("users")?,
        aliases: namespace("aliases")?,
        rooms: namespace("rooms")?,
        protocols,
        rate_limited,
        receive_ephemeral: flag("receive_ephemeral", false)?,
        unstable_ephemeral: flag("de.sorunome.msc2409.push_ephemeral", false)?,
        msc3202: flag("org.matrix.msc3202", false)?,
        ip_range_whitelist,
        file: path.to_path_buf(),
    })
}

/// The appservices' shared state (`hs.appservices`).
pub(crate) struct AppserviceState {
    /// The client for transactions and queries. Appservice URLs are the admin's own, usually on
    /// loopback, so the outbound IP blocklist does not apply (as on Synapse).
    pub(crate) http: reqwest::Client,
    /// Wakes each service's sender (a ping succeeded: retry a failing transaction now).
    pub(crate) retry_now: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
}

impl AppserviceState {
    /// HTTPS appservice URLs are checked against the public roots (reqwest is built without any
    /// of its own), or not at all with `use_insecure_ssl_client_just_for_testing_do_not_use`.
    pub(crate) fn new(insecure_tls: bool) -> Self {
        let http = crate::federation::client::web_tls_config(insecure_tls)
            .and_then(|tls| {
                reqwest::Client::builder()
                    .use_preconfigured_tls(tls)
                    .timeout(std::time::Duration::from_secs(60))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "appservice HTTP client without its settings");
                reqwest::Client::new()
            });
        AppserviceState { http, retry_now: Default::default() }
    }
}

impl Homeserver {
    /// The registrations.
    pub fn appservices(&self) -> &[Arc<Registration>] {
        &self.config.app_services
    }

    /// The appservice whose `as_token` this is.
    pub(crate) fn appservice_by_token(&self, token: &str) -> Option<&Arc<Registration>> {
        self.appservices().iter().find(|r| r.as_token == token)
    }

    /// The appservice that owns a user: the user is its sender or in its exclusive namespace
    /// (Synapse's `appservice_id` of an account).
    pub fn appservice_owning(&self, user_id: &str) -> Option<&Arc<Registration>> {
        self.appservices().iter().find(|r| r.is_exclusive_user(user_id))
    }

    /// The requester of a request made with `registration`'s `as_token`: its sender, or the
    /// user of `?user_id=` (in its namespace and registered), on the device of `?device_id=`
    /// (which must exist).
    pub(crate) async fn appservice_requester(
        &self,
        registration: &Arc<Registration>,
        token: &str,
        info: &RequestInfo,
    ) -> Result<Requester> {
        let user_id = match &info.as_user_id {
            Some(u) if u != registration.sender.as_str() => {
                let local = OwnedUserId::try_from(u.as_str()).is_ok_and(|user| self.is_mine(&user));
                if !local || !registration.is_interested_in_user(u) {
                    return Err(Error::forbidden(format!("Application service cannot masquerade as this user ({u}).")));
                }
                u.clone()
            }
            _ => registration.sender.to_string(),
        };
        let uid = user_id.clone();
        let Some(user) = self.db(move |s| s.get_user(&uid)).await? else {
            return Err(Error::forbidden(format!("Application service has not registered this user ({user_id})")));
        };
        let device_id = match &info.as_device_id {
            Some(device) => {
                let (u, d) = (user_id.clone(), device.clone());
                if !self.db(move |s| Ok(s.get_devices(&u)?.iter().any(|x| x.device_id == d))).await? {
                    return Err(Error::new(
                        ErrorKind::Module { status: 400, errcode: "M_UNKNOWN_DEVICE".into() },
                        format!(
                            "Application service trying to use a device that doesn't exist ('{device}' for {user_id})"
                        ),
                    ));
                }
                device.clone()
            }
            None => String::new(),
        };
        Ok(Requester {
            user_id: OwnedUserId::try_from(user_id).map_err(Error::internal)?,
            device_id,
            access_token: token.to_owned(),
            is_admin: user.is_admin,
            shadow_banned: user.shadow_banned,
            suspended: user.suspended,
            is_guest: false,
            app_service: Some(registration.clone()),
            app_service_ts: info.as_ts,
        })
    }

    /// Refuses a user ID an appservice other than `allowed` claims exclusively (normal
    /// registration, and appservices registering outside their own namespace).
    /// The server notices account is reserved too, as on Synapse.
    pub(crate) fn check_user_not_exclusive(&self, user_id: &str, allowed: Option<&Registration>) -> Result<()> {
        if let Some(notices) = &self.config.server_notices
            && user_id == format!("@{}:{}", notices.localpart, self.server_name())
        {
            return Err(exclusive("This user ID is reserved."));
        }
        let taken = self
            .appservices()
            .iter()
            .filter(|r| allowed.is_none_or(|a| a.id != r.id))
            .any(|r| r.is_exclusive_user(user_id));
        if taken {
            return Err(exclusive("This user ID is reserved by an application service."));
        }
        Ok(())
    }

    /// Whether `requester` may create or delete `alias` as far as appservices go (Synapse's
    /// `can_modify_alias`, and the appservice's own namespace for its requests).
    pub(crate) fn check_alias_namespace(&self, requester: &Requester, alias: &str) -> Result<()> {
        if let Some(registration) = &requester.app_service {
            if !registration.is_alias_in_namespace(alias) {
                return Err(exclusive("This application service has not reserved this kind of alias."));
            }
            return Ok(());
        }
        for registration in self.appservices().iter().filter(|r| r.is_alias_in_namespace(alias)) {
            if requester.user_id == registration.sender {
                return Ok(());
            }
            if registration.is_exclusive_alias(alias) {
                return Err(exclusive("This alias is reserved by an application service."));
            }
        }
        Ok(())
    }

    /// Whether a user's actions skip rate limits: an appservice registered with `rate_limited:
    /// false` owns them (its sender, or its exclusive namespace, which only it can register and
    /// act as; a non-exclusive namespace such as `@.*` exempts nobody).
    pub(crate) fn exempt_from_rate_limits(&self, user_id: &str) -> bool {
        self.appservices().iter().any(|r| !r.rate_limited && r.is_exclusive_user(user_id))
    }

    /// Creates each appservice's sender user if it does not exist yet (at start-up, as Synapse).
    pub async fn ensure_appservice_senders(&self) -> Result<()> {
        for registration in self.appservices() {
            let user_id = registration.sender.to_string();
            let localpart = registration.sender.localpart().to_owned();
            let uid = user_id.clone();
            if self.db(move |s| s.get_user(&uid)).await?.is_some() {
                continue;
            }
            // `false`: another process created it first.
            if self.create_passwordless_user(&user_id, localpart).await? {
                tracing::info!(appservice = %registration.id, user = %user_id, "created the appservice's sender");
            }
        }
        Ok(())
    }

    /// Creates an account without a password (appservices' users); false if it exists already.
    async fn create_passwordless_user(&self, user_id: &str, localpart: String) -> Result<bool> {
        let row = myelin_storage::UserRow {
            user_id: user_id.to_owned(),
            password_hash: None,
            is_admin: false,
            is_guest: false,
            deactivated: false,
            shadow_banned: false,
            creation_ts: crate::server::now_ms(),
            locked: false,
            suspended: false,
        };
        match self.db(move |s| s.create_user(&row, Some(&localpart))).await {
            Ok(()) => Ok(true),
            Err(e) => {
                let u = user_id.to_owned();
                if self.db(move |s| s.get_user(&u)).await?.is_some() { Ok(false) } else { Err(e) }
            }
        }
    }

    /// `POST /register` with `type: m.login.application_service`: registers a user in the
    /// appservice's namespace (no password), logging it in unless `inhibit_login`.
    pub async fn register_appservice_user(
        &self,
        token: Option<&str>,
        info: &RequestInfo,
        request: crate::users::RegisterRequest,
    ) -> Result<crate::users::RegisterResponse> {
        let Some(token) = token else {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "Appservice token must be provided when using a type of m.login.application_service",
            ));
        };
        let Some(registration) = self.appservice_by_token(token).filter(|r| r.accepts_requests_from(&info.ip)).cloned()
        else {
            return Err(Error::new(ErrorKind::UnknownToken, "Unrecognised access token"));
        };
        let Some(username) = request.username.clone() else {
            return Err(Error::new(ErrorKind::BadRequest, "Desired Username is missing or not a string"));
        };
        // Always a user of this server (Synapse builds the ID from the localpart; a name that is
        // a whole user ID, or holds a ':', does not make one).
        let user_id = format!("@{}:{}", username, self.server_name());
        if username.contains(':') || !registration.is_interested_in_user(&user_id) {
            return Err(exclusive("Invalid user localpart for this application service."));
        }
        self.check_user_not_exclusive(&user_id, Some(&registration))?;
        let user = OwnedUserId::try_from(user_id.as_str())
            .map_err(|_| Error::new(ErrorKind::InvalidUsername, "Invalid user ID"))?;
        if !self.create_passwordless_user(&user_id, user.localpart().to_owned()).await? {
            return Err(Error::new(ErrorKind::UserInUse, "User ID already taken."));
        }
        self.modules.on_user_registration(&user_id).await;
        let login = match request.inhibit_login {
            true => None,
            false => Some(
                self.new_session(
                    &user,
                    crate::users::NewDevice {
                        life: self.token_life(request.refresh_token.as_ref())?,
                        device_id: request.device_id,
                        display_name: request.initial_device_display_name,
                    },
                )
                .await?,
            ),
        };
        Ok(crate::users::RegisterResponse { user_id: user, login })
    }

    /// `POST /login` with `type: m.login.application_service`: a new device for a user of the
    /// appservice whose token the request carries.
    pub async fn login_appservice_user(
        &self,
        token: Option<&str>,
        info: &RequestInfo,
        request: crate::users::LoginRequest,
    ) -> Result<crate::users::LoginResponse> {
        self.limiters.login_address.check(&info.ip)?;
        let registration =
            token.and_then(|t| self.appservice_by_token(t)).filter(|r| r.accepts_requests_from(&info.ip));
        let Some(registration) = registration.cloned() else {
            return Err(Error::new(ErrorKind::UnknownToken, "Invalid access_token"));
        };
        let given = request
            .identifier
            .as_ref()
            .and_then(|i| i.get("user"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(request.user.clone())
            .ok_or_else(|| Error::new(ErrorKind::MissingParam, "Missing user"))?;
        let user_id = if given.starts_with('@') { given } else { format!("@{given}:{}", self.server_name()) };
        let local = OwnedUserId::try_from(user_id.as_str()).is_ok_and(|u| self.is_mine(&u));
        if !local || !registration.is_interested_in_user(&user_id) {
            return Err(Error::forbidden("Invalid access_token"));
        }
        let uid = user_id.clone();
        match self.db(move |s| s.get_user(&uid)).await? {
            Some(u) if !u.deactivated => {}
            Some(_) => return Err(Error::new(ErrorKind::UserDeactivated, "This account has been deactivated")),
            None => return Err(Error::forbidden("Invalid username or password")),
        }
        let user = OwnedUserId::try_from(user_id).map_err(Error::internal)?;
        let device = crate::users::NewDevice {
            life: self.token_life(request.extra.get("refresh_token"))?,
            device_id: request.device_id,
            display_name: request.initial_device_display_name,
        };
        let session = self.new_session(&user, device).await?;
        Ok(crate::users::LoginResponse { user_id: user, session, extra: Default::default() })
    }
}

fn exclusive(message: &str) -> Error {
    Error::new(ErrorKind::Module { status: 400, errcode: "M_EXCLUSIVE".into() }, message)
}

impl Homeserver {
    /// A request to an appservice with the homeserver's credentials: `Authorization: Bearer
    /// <hs_token>`, and the token in the query string too with
    /// `use_appservice_legacy_authorization` (deprecated, as on Synapse).
    fn to_appservice(&self, request: reqwest::RequestBuilder, registration: &Registration) -> reqwest::RequestBuilder {
        let request = request.header("Authorization", format!("Bearer {}", registration.hs_token));
        if self.config.use_appservice_legacy_authorization {
            return request.query(&[("access_token", registration.hs_token.as_str())]);
        }
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Registration, String> {
        let Value::Object(info) = serde_yaml_ng::from_str(yaml).unwrap() else { panic!("not a mapping") };
        parse_registration(&info, "example.org", Path::new("reg.yaml"))
    }

    const GOOD: &str = "id: irc\nurl: http://127.0.0.1:9999/\nas_token: a\nhs_token: h\nsender_localpart: ircbot\n\
        namespaces:\n  users: [{exclusive: true, regex: '@irc_.*:example.org'}]\n  aliases: [{exclusive: false, regex: '#irc_.*'}]\n";

    #[test]
    fn a_registration_reads_as_synapse_reads_it() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.url.as_deref(), Some("http://127.0.0.1:9999"), "no trailing slash");
        assert_eq!(r.sender.as_str(), "@ircbot:example.org");
        assert!(r.rate_limited, "rate limited unless it says otherwise");
        assert!(r.is_exclusive_user("@irc_bob:example.org"));
        assert!(r.is_exclusive_user("@ircbot:example.org"), "its sender is its own");
        assert!(!r.is_interested_in_user("@bob:example.org"));
        // Anchored at the start only, as Python's re.match.
        assert!(!r.is_interested_in_user("@x_irc_bob:example.org"));
        assert!(r.is_interested_in_user("@irc_bob:example.org.evil"));
        assert!(r.is_alias_in_namespace("#irc_chan:example.org") && !r.is_exclusive_alias("#irc_chan:example.org"));
        assert!(parse(&GOOD.replace("url: http://127.0.0.1:9999/", "url: null")).unwrap().url.is_none());
    }

    #[test]
    fn a_bad_registration_names_the_key() {
        let cases = [
            (GOOD.replace("as_token: a\n", ""), "Required string field: 'as_token'"),
            (GOOD.replace("url: http://127.0.0.1:9999/\n", ""), "Required string field or explicit null: 'url'"),
            (GOOD.replace("url: http://127.0.0.1:9999/", "url: ftp://x"), "'url'"),
            (GOOD.replace("sender_localpart: ircbot", "sender_localpart: 'a b'"), "'sender_localpart'"),
            (GOOD.replace("exclusive: true, ", ""), "Missing/bad type 'exclusive' key"),
            (GOOD.replace("'@irc_.*:example.org'", "'@irc_(:example.org'"), "invalid regex"),
            (GOOD.replace("namespaces:", "spaces:"), "Requires 'namespaces' object."),
            (format!("{GOOD}protocols: irc\n"), "'protocols' must be a list"),
            (format!("{GOOD}receive_ephemeral: yes please\n"), "'receive_ephemeral'"),
            (GOOD.replace("id: irc", "id: 'ir|c'"), "'id'"),
        ];
        for (yaml, expected) in cases {
            let error = parse(&yaml).err().unwrap_or_else(|| panic!("accepted: {yaml}"));
            assert!(error.contains(expected), "{error:?} should contain {expected:?}");
        }
    }

    #[test]
    fn ids_and_tokens_are_unique_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&a, GOOD).unwrap();
        std::fs::write(&b, GOOD.replace("as_token: a", "as_token: b")).unwrap();
        let error = load_registrations(&[a.clone(), b.clone()], "example.org").unwrap_err().to_string();
        assert!(error.contains("Cannot reuse ID"), "{error}");
        std::fs::write(&b, GOOD.replace("id: irc", "id: other")).unwrap();
        let error = load_registrations(&[a.clone(), b.clone()], "example.org").unwrap_err().to_string();
        assert!(error.contains("Cannot reuse as_token") && error.contains("b.yaml"), "{error}");
        assert!(!error.contains("as_token: a"), "the token itself is not printed");
        std::fs::write(&b, GOOD.replace("id: irc", "id: other").replace("as_token: a", "as_token: b")).unwrap();
        assert_eq!(load_registrations(&[a, b], "example.org").unwrap().len(), 2);
        let missing = load_registrations(&[dir.path().join("nope.yaml")], "example.org").unwrap_err().to_string();
        assert!(missing.contains("nope.yaml") && missing.contains("app_service_config_files"), "{missing}");
    }
}
