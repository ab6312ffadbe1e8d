//! `homeserver.yaml`: Synapse's key names, validated into a [`Config`].
//!
//! The raw YAML becomes a JSON value, then a hand-written walk checks each supported key and
//! reports the first problem as Synapse does (`Error in configuration at 'a.<item 0>.b':` then
//! `  expected an integer`). Unknown top-level keys are collected as warnings, not errors, so a
//! Synapse config with features Myelin lacks still starts.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::modules::{LoadedModule, NativeModules};

/// A configuration error with its location, printed in Synapse's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path segments (`listeners`, `<item 0>`, `port`); empty for a whole-file problem.
    pub path: Vec<String>,
    /// The message lines, already indented below the first.
    pub lines: Vec<String>,
    /// Print `lines` as they are (a module's traceback, as Synapse prints import failures).
    pub raw: bool,
}

impl ConfigError {
    pub(crate) fn at(path: &[String], message: impl Into<String>) -> Self {
        ConfigError { path: path.to_vec(), lines: vec![message.into()], raw: false }
    }
}

impl fmt::Display for ConfigError {
    /// The exact text Synapse prints to stderr, without the leading blank line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.raw {
            return writeln!(f, "{}", self.lines.join("\n").trim_end());
        }
        if self.path.is_empty() {
            writeln!(f, "Error in configuration:")?;
        } else {
            writeln!(f, "Error in configuration at '{}':", self.path.join("."))?;
        }
        for (i, line) in self.lines.iter().enumerate() {
            writeln!(f, "{}{}", "  ".repeat(i + 1), line)?;
        }
        Ok(())
    }
}

/// One HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// TCP port; 0 picks a free one (tests).
    pub port: u16,
    /// Addresses to bind.
    pub bind_addresses: Vec<String>,
    /// Resource names (`client`, `federation`, ...).
    pub resources: Vec<String>,
    /// Serve TLS with `tls_certificate_path` and `tls_private_key_path`.
    pub tls: bool,
    /// `x_forwarded`: the client's address is the first of `X-Forwarded-For` (behind a
    /// reverse proxy), not the peer's.
    pub x_forwarded: bool,
}

/// The resource names a listener may serve (Synapse's `KNOWN_RESOURCES`).
pub const KNOWN_RESOURCES: &[&str] =
    &["client", "consent", "federation", "health", "keys", "media", "metrics", "openid", "replication", "static"];

/// `password_config`: whether passwords log in, and the policy new passwords must meet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PasswordConfig {
    /// `enabled` (default true): password login at all.
    pub enabled: bool,
    /// `localdb_enabled` (default true): passwords checked against this server's database
    /// (password providers still may vouch when false).
    pub localdb_enabled: bool,
    /// `policy`, when `policy.enabled`.
    pub policy: Option<PasswordPolicy>,
}

/// How long sessions' tokens last (Synapse's keys of the same names, in ms; `None` is "never").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    /// `session_lifetime`: no session outlives it, refreshed or not.
    pub session_lifetime: Option<i64>,
    /// `refreshable_access_token_lifetime` (default 5 minutes): the access tokens of sessions
    /// with a refresh token; `null` turns refresh tokens off.
    pub refreshable_access_token_lifetime: Option<i64>,
    /// `refresh_token_lifetime`: how long a refresh token may wait to be used.
    pub refresh_token_lifetime: Option<i64>,
    /// `nonrefreshable_access_token_lifetime`: the access tokens of sessions without one.
    pub nonrefreshable_access_token_lifetime: Option<i64>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            session_lifetime: None,
            refreshable_access_token_lifetime: Some(5 * 60_000),
            refresh_token_lifetime: None,
            nonrefreshable_access_token_lifetime: None,
        }
    }
}

/// `server_notices`: the system account admins send notices from
/// (`POST /_synapse/admin/v1/send_server_notice`), with Synapse's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNotices {
    /// `system_mxid_localpart`.
    pub localpart: String,
    /// `system_mxid_display_name`.
    pub display_name: Option<String>,
    /// `system_mxid_avatar_url`.
    pub avatar_url: Option<String>,
    /// `room_name` (default "Server Notices").
    pub room_name: Option<String>,
    /// `room_avatar_url`.
    pub room_avatar_url: Option<String>,
    /// `room_topic`.
    pub room_topic: Option<String>,
    /// `auto_join` (default false): the user is joined, not only invited.
    pub auto_join: bool,
}

/// `login_via_existing_session` (MSC3882): a logged-in client may get a one-time login token
/// for another device (`POST /login/get_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginViaExisting {
    /// `enabled` (default false).
    pub enabled: bool,
    /// `require_ui_auth` (default true): the password is asked again first.
    pub require_ui_auth: bool,
    /// `token_timeout` (default 5 minutes), in ms.
    pub token_timeout: i64,
}

impl Default for LoginViaExisting {
    fn default() -> Self {
        LoginViaExisting { enabled: false, require_ui_auth: true, token_timeout: 5 * 60_000 }
    }
}

/// `password_config.policy`: what a new password must contain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PasswordPolicy {
    /// `minimum_length`.
    pub minimum_length: usize,
    /// `require_digit`.
    pub require_digit: bool,
    /// `require_symbol`.
    pub require_symbol: bool,
    /// `require_lowercase`.
    pub require_lowercase: bool,
    /// `require_uppercase`.
    pub require_uppercase: bool,
}

/// How this server reaches other homeservers (Synapse's keys of the same names).
#[derive(Debug, Clone)]
pub struct FederationSettings {
    /// `federation_verify_certificates`: check remote servers' TLS certificates (default on).
    pub verify_certificates: bool,
    /// `federation_custom_ca_list`: PEM files of CAs trusted instead of the public roots.
    pub custom_ca_list: Vec<PathBuf>,
    /// `ip_range_blacklist` / `ip_range_whitelist`: the addresses every outbound request may
    /// reach (federation, key fetches, media, module HTTP clients, push gateways).
    pub ip_filter: crate::outbound::IpFilter,
    /// `federation_ip_range_blacklist` (deprecated, as on Synapse): when set, replaces the
    /// filter for federation requests, with no allowlist.
    pub federation_ip_filter: Option<crate::outbound::IpFilter>,
    /// `old_signing_keys`: keys this server signed with before, key ID -> (public key, unpadded
    /// base64; when it stopped being used, ms). Published as `old_verify_keys`, so other servers
    /// can still check what was signed with them.
    pub old_signing_keys: std::collections::BTreeMap<String, (String, i64)>,
}

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRange {
    network: std::net::IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `addr/prefix` or a bare address.
    pub fn parse(text: &str) -> Option<IpRange> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let network: std::net::IpAddr = addr.trim().parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpRange { network, prefix })
    }

    /// Whether `ip` lies in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(v) => (u32::from(v) as u128, 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ((net, width), (addr, addr_width)) = (bits(self.network), bits(ip));
        if width != addr_width {
            return false;
        }
        let shift = width - self.prefix as u32;
        shift >= width || (net >> shift) == (addr >> shift)
    }
}

/// Synapse's default `ip_range_blacklist`: private, loopback, link-local, documentation and
/// multicast ranges, so that a remote server name cannot aim requests at the local network.
pub const DEFAULT_IP_RANGE_BLOCKLIST: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "0.0.0.0/8",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
    "::/128",
];

/// As Synapse: `0.0.0.0` and `::` are blocked whatever the configured list says.
fn always_blocked(mut ranges: Vec<IpRange>) -> Vec<IpRange> {
    ranges.extend(["0.0.0.0", "::"].iter().filter_map(|r| IpRange::parse(r)));
    ranges
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The domain in user and room IDs.
    pub server_name: String,
    /// The public base URL clients use.
    pub public_baseurl: String,
    /// HTTP listeners.
    pub listeners: Vec<Listener>,
    /// Where the data lives.
    pub database: Database,
    /// Signing key file.
    pub signing_key_path: PathBuf,
    /// Media store directory.
    pub media_store_path: PathBuf,
    /// Largest accepted request body or upload, in bytes.
    pub max_upload_size: u64,
    /// URL previews (`url_preview_*`, `max_spider_size`).
    pub url_preview: crate::url_preview::UrlPreviewSettings,
    /// oEmbed providers for URL previews (`oembed:`).
    pub oembed: Vec<crate::oembed::OembedEndpoint>,
    /// How long a connection may take to send a request's headers, the wait on an idle
    /// kept-alive connection included (`request_header_timeout`, Myelin's own; 60 s as nginx).
    pub request_header_timeout: std::time::Duration,
    /// Every in-memory cache's size limit (Synapse's `caches.global_factor` and
    /// `caches.per_cache_factors`; see `crate::cache`).
    pub cache_sizes: crate::cache::CacheSizes,
    /// Open registration.
    pub enable_registration: bool,
    /// Registration needs an `m.login.registration_token` stage.
    pub registration_requires_token: bool,
    /// Guest registration (`/register?kind=guest`).
    pub allow_guest_access: bool,
    /// Shared secret for `/_synapse/admin/v1/register`.
    pub registration_shared_secret: Option<String>,
    /// Room version for new rooms.
    pub default_room_version: String,
    /// Log filter (`info`, `debug`, ...).
    pub log_level: String,
    /// `log_config`: where the log goes and in what form (see `log_config`).
    pub log: crate::log_config::LogSettings,
    /// `pid_file`: written with the process ID once serving, removed at a clean exit.
    pub pid_file: Option<PathBuf>,
    /// Who may publish rooms to the directory; empty allows everyone.
    pub room_list_publication_rules: Vec<crate::PublicationRule>,
    /// `user_directory.search_all_users`.
    pub search_all_users: bool,
    /// `presence.enabled`: with it off, presence is accepted and never shown.
    pub presence_enabled: bool,
    /// `tls_certificate_path`: the PEM certificate chain TLS listeners serve.
    pub tls_certificate_path: Option<PathBuf>,
    /// `tls_private_key_path`: its PEM private key.
    pub tls_private_key_path: Option<PathBuf>,
    /// Outbound federation.
    pub federation: FederationSettings,
    /// `require_auth_for_profile_requests`: profiles only for authenticated requests.
    pub require_auth_for_profile_requests: bool,
    /// `use_insecure_ssl_client_just_for_testing_do_not_use`: as on Synapse, the HTTP clients
    /// that are not federation's (push gateways, modules) skip TLS certificate checks. For test
    /// rigs only.
    pub insecure_outbound_tls: bool,
    /// `limit_profile_requests_to_users_who_share_rooms`.
    pub limit_profile_requests_to_users_who_share_rooms: bool,
    /// `rc_*`: rate limits.
    pub rate_limits: crate::ratelimit::RateLimitSettings,
    /// `password_config`.
    pub password: PasswordConfig,
    /// Token lifetimes and refresh tokens.
    pub sessions: SessionSettings,
    /// `login_via_existing_session`.
    pub login_via_existing: LoginViaExisting,
    /// `server_notices`, if configured.
    pub server_notices: Option<ServerNotices>,
    /// `media_upload_limits`: upload quotas per period, longest period first.
    pub media_upload_limits: Vec<myelin_module_api::repository::MediaUploadLimit>,
    /// Which process of the deployment this is, and what it runs.
    pub instance: InstanceSettings,
    /// `app_service_config_files`: the registered application services.
    pub app_services: Vec<std::sync::Arc<crate::appservice::Registration>>,
    /// `use_appservice_legacy_authorization`: the `hs_token` also goes in the query string of
    /// requests to appservices (deprecated and insecure, as Synapse warns).
    pub use_appservice_legacy_authorization: bool,
    /// `experimental_features.msc2409_to_device_messages_enabled`: appservices that receive
    /// ephemeral events get their users' to-device messages too.
    pub msc2409_to_device_messages: bool,
    /// `experimental_features.msc3202_transaction_extensions`: appservices registered with
    /// `org.matrix.msc3202` get device list changes and key counts in transactions.
    pub msc3202_transaction_extensions: bool,
    /// `email:`, when configured: mails are sent and addresses validated.
    pub email: Option<crate::mail::EmailSettings>,
    /// Single sign-on: `oidc_providers`, `oidc_config` and `sso:`.
    pub sso: crate::sso::SsoSettings,
    /// `user_types`: the account types there are (`support`, `bot`, and
    /// `extra_user_types`), and the one new accounts get (`default_user_type`).
    pub user_types: UserTypes,
    /// `account_validity:` when enabled: accounts expire unless renewed.
    pub account_validity: Option<crate::users::AccountValiditySettings>,
    /// `custom_template_directory`: where templates are looked up first (modules'
    /// `read_templates` too).
    pub custom_template_directory: Option<PathBuf>,
    /// Third-party identifiers on accounts (`registrations_require_3pid`, `enable_3pid_changes`, ...).
    pub threepids: crate::threepids::ThreepidSettings,
    /// One line per unknown or unsupported key.
    pub warnings: Vec<String>,
}

/// The main process's instance name, as Synapse calls it.
pub const MAIN_INSTANCE: &str = "master";

/// Synapse's worker keys: which process this is (`worker_name`, `master` for the main one) and
/// which processes run the work only one may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSettings {
    /// `worker_name`, or [`MAIN_INSTANCE`].
    pub name: String,
    /// `federation_sender_instances` (default: the main process): the processes that send to
    /// other servers, each owning the destinations that hash to it among the live ones.
    pub federation_senders: Vec<String>,
    /// `run_background_tasks_on` (default: the main process): push notifications and cleanup.
    pub background_tasks: String,
}

impl InstanceSettings {
    /// Which of the live `federation_sender_instances` sends to `destination`: the first of
    /// them in the destination's own order of all senders (rendezvous hashing: a stable hash
    /// of destination and instance name), so each destination has one owner, and when that
    /// process is down its destinations pass to the next live sender in their order, and back
    /// when it returns.
    pub fn sender_for<'a>(&'a self, destination: &str, live: &[String]) -> Option<&'a str> {
        // FNV-1a: stable across processes and builds, unlike std's hasher.
        let weight = |instance: &str| {
            destination
                .bytes()
                .chain([0])
                .chain(instance.bytes())
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
        };
        self.federation_senders
            .iter()
            .filter(|name| live.contains(name))
            .max_by_key(|name| (weight(name), name.as_str()))
            .map(String::as_str)
    }

    /// Whether this process runs the background jobs.
    pub fn runs_background_tasks(&self) -> bool {
        self.background_tasks == self.name
    }
}

/// Top-level keys Myelin reads. Others are warned about.
const KNOWN_KEYS: &[&str] = &[
    "app_service_config_files",
    "experimental_features",
    "track_appservice_user_ips",
    "use_appservice_legacy_authorization",
    "worker_name",
    "worker_app",
    "worker_listeners",
    "instance_map",
    "stream_writers",
    "federation_sender_instances",
    "run_background_tasks_on",
    "server_name",
    "public_baseurl",
    "listeners",
    "database",
    "signing_key_path",
    "media_store_path",
    "media_storage_providers",
    "backup_media_store_path",
    "synchronous_backup_media_store",
    "max_upload_size",
    "request_header_timeout",
    "caches",
    "enable_registration",
    "enable_registration_without_verification",
    "registration_shared_secret",
    "registration_requires_token",
    "allow_guest_access",
    "default_room_version",
    "modules",
    "python",
    "presence",
    "spam_checker",
    "log_level",
    "report_stats",
    "pid_file",
    "log_config",
    "room_list_publication_rules",
    "user_directory",
    "tls_certificate_path",
    "tls_private_key_path",
    "federation_verify_certificates",
    "federation_custom_ca_list",
    "ip_range_blacklist",
    "ip_range_blocklist",
    "ip_range_whitelist",
    "ip_range_allowlist",
    "federation_ip_range_blacklist",
    "password_config",
    "session_lifetime",
    "refreshable_access_token_lifetime",
    "refresh_token_lifetime",
    "nonrefreshable_access_token_lifetime",
    "login_via_existing_session",
    "server_notices",
    "media_upload_limits",
    "old_signing_keys",
    "require_auth_for_profile_requests",
    "use_insecure_ssl_client_just_for_testing_do_not_use",
    "limit_profile_requests_to_users_who_share_rooms",
    "url_preview_enabled",
    "url_preview_ip_range_blacklist",
    "url_preview_ip_range_blocklist",
    "url_preview_ip_range_whitelist",
    "url_preview_ip_range_allowlist",
    "url_preview_url_blacklist",
    "url_preview_accept_language",
    "oembed",
    "max_spider_size",
    "email",
    "custom_template_directory",
    "registrations_require_3pid",
    "enable_3pid_changes",
    "request_token_inhibit_3pid_errors",
    "next_link_domain_whitelist",
    "allowed_local_3pids",
    "disable_msisdn_registration",
    "account_threepid_delegates",
    "oidc_providers",
    "oidc_config",
    "sso",
    "user_types",
    "account_validity",
];

/// Room versions Myelin can create and participate in (docs/room-versions.md).
pub const SUPPORTED_ROOM_VERSIONS: &[&str] = &["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

/// The room version of new rooms unless `default_room_version` says otherwise (Synapse's).
pub const DEFAULT_ROOM_VERSION: &str = "12";

struct Walker<'a> {
    path: Vec<String>,
    root: &'a Map<String, Value>,
}

fn type_name_error(expected: &str) -> String {
    format!("expected {expected}")
}

impl<'a> Walker<'a> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let mut path = self.path.clone();
        path.push(key.to_owned());
        ConfigError::at(&path, message)
    }
    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.root.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.err(key, type_name_error("a string"))),
        }
    }
    fn boolean(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.root.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.err(key, type_name_error("a boolean"))),
        }
    }
}

fn parse_yaml_mapping(text: &str) -> Result<Map<String, Value>, ConfigError> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigError {
        path: vec![],
        lines: vec![format!("Invalid YAML: {e}")],
        raw: false,
    })?;
    match value {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(ConfigError::at(&[], "expected a mapping at the top level")),
    }
}

/// The worker keys. `worker_app` is accepted and ignored (every Myelin process can serve every
/// request); `instance_map` and `stream_writers` are accepted (Myelin's processes reach each
/// other through the database, and every process may write every stream).
fn parse_instance(
    w: &Walker<'_>,
    database: &Database,
) -> Result<(InstanceSettings, Option<Vec<Listener>>), ConfigError> {
    let name = w.string("worker_name")?;
    let _ = w.string("worker_app")?;
    for key in ["instance_map", "stream_writers"] {
        match w.root.get(key) {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => return Err(w.err(key, "expected a mapping")),
        }
    }
    let federation_senders = match w.root.get("federation_sender_instances") {
        None | Some(Value::Null) => vec![MAIN_INSTANCE.to_owned()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    ConfigError::at(&["federation_sender_instances".into(), format!("<item {i}>")], "expected a string")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(w.err("federation_sender_instances", "expected a list")),
    };
    let background_tasks = w.string("run_background_tasks_on")?.unwrap_or_else(|| MAIN_INSTANCE.to_owned());
    let worker_listeners = match (&name, w.root.get("worker_listeners")) {
        (Some(_), Some(value)) if !value.is_null() => Some(parse_listeners("worker_listeners", Some(value))?),
        _ => None,
    };
    if name.is_some() && matches!(database, Database::Sqlite(_)) {
        return Err(w.err(
            "worker_name",
            "several processes need a shared PostgreSQL database (database: name: psycopg2); \
             SQLite serves one process",
        ));
    }
    let instance = InstanceSettings {
        name: name.unwrap_or_else(|| MAIN_INSTANCE.to_owned()),
        federation_senders,
        background_tasks,
    };
    Ok((instance, worker_listeners))
}

/// The `database:` section: which backend, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// `name: sqlite3`: the embedded database (`args: {database: <file>, synchronous:
    /// full|normal}`; `synchronous` is Myelin's own key, see docs/reliability.md).
    Sqlite(myelin_storage::sqlite::SqliteOptions),
    /// `name: psycopg2`: PostgreSQL, with Synapse's connection arguments.
    Postgres(Box<myelin_storage::pg::PgOptions>),
}

/// Synapse's `database:` section. `args` are psycopg2's connection keywords plus Synapse's
/// pool sizes (`cp_min`, `cp_max`) and `allow_unsafe_locale`; keys psycopg2 accepts that
/// Myelin does not use (`keepalives_idle`, ...) are ignored, as they tune libpq only.
fn sqlite_options(path: PathBuf) -> myelin_storage::sqlite::SqliteOptions {
    myelin_storage::sqlite::SqliteOptions { path, synchronous: Default::default() }
}

/// Another server's `database:` section (Synapse's, for `myelin import-synapse`), read as
/// Myelin reads its own; a relative SQLite path is taken from `base`.
pub fn parse_database_section(value: Option<&Value>, base: &Path) -> Result<Database, String> {
    let resolve = |p: String| -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { base.join(p) }
    };
    parse_database(value, &resolve).map_err(|e| e.to_string())
}

fn parse_database(value: Option<&Value>, resolve: &dyn Fn(String) -> PathBuf) -> Result<Database, ConfigError> {
    let db = match value {
        None | Some(Value::Null) => return Ok(Database::Sqlite(sqlite_options(resolve("homeserver.db".into())))),
        Some(Value::Object(db)) => db,
        Some(_) => return Err(ConfigError::at(&["database".into()], "expected a mapping")),
    };
    let dw = Walker { path: vec!["database".into()], root: db };
    let name = dw.string("name")?.unwrap_or_else(|| "sqlite3".into());
    let empty = Map::new();
    let args = match db.get("args") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(args)) => args,
        Some(_) => return Err(dw.err("args", "expected a mapping")),
    };
    let aw = Walker { path: vec!["database".into(), "args".into()], root: args };
    match name.as_str() {
        "sqlite3" => {
            let mut options = sqlite_options(resolve(aw.string("database")?.unwrap_or_else(|| "homeserver.db".into())));
            options.synchronous = match aw.string("synchronous")?.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("full") => myelin_storage::sqlite::Synchronous::Full,
                Some("normal") => myelin_storage::sqlite::Synchronous::Normal,
                Some(other) => {
                    return Err(aw.err(
                        "synchronous",
                        format!("'{other}' is not a setting Myelin offers: 'full' (the default) or 'normal'"),
                    ));
                }
            };
            Ok(Database::Sqlite(options))
        }
        "psycopg2" => {
            let count = |key: &str, default: usize| -> Result<usize, ConfigError> {
                match args.get(key) {
                    None | Some(Value::Null) => Ok(default),
                    Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| aw.err(key, "expected an integer")),
                }
            };
            // psycopg2 takes the port as an integer or a string.
            let port = match args.get("port") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(n.as_u64().and_then(|p| u16::try_from(p).ok())),
                Some(Value::String(s)) => Some(s.parse().ok()),
                Some(_) => Some(None),
            };
            let port = match port {
                None => None,
                Some(Some(p)) => Some(p),
                Some(None) => return Err(aw.err("port", "expected a port number")),
            };
            let dbname = match aw.string("dbname")? {
                Some(name) => Some(name),
                None => aw.string("database")?,
            };
            let sslmode = aw.string("sslmode")?;
            if let Some(mode) = &sslmode
                && !myelin_storage::pg::SSL_MODES.contains(&mode.as_str())
            {
                return Err(aw.err(
                    "sslmode",
                    format!(
                        "invalid sslmode value: \"{mode}\" (expected one of {})",
                        myelin_storage::pg::SSL_MODES.join(", ")
                    ),
                ));
            }
            let defaults = myelin_storage::pg::PgOptions::default();
            let cp_min = count("cp_min", defaults.cp_min)?;
            let cp_max = count("cp_max", defaults.cp_max)?;
            if cp_max == 0 || cp_min > cp_max {
                return Err(aw.err("cp_max", "expected cp_max of at least 1 and at least cp_min"));
            }
            let connect_timeout = match args.get("connect_timeout") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| aw.err("connect_timeout", "expected an integer"))?),
            };
            Ok(Database::Postgres(Box::new(myelin_storage::pg::PgOptions {
                host: aw.string("host")?,
                port,
                user: aw.string("user")?,
                password: aw.string("password")?,
                dbname,
                sslmode,
                sslrootcert: aw.string("sslrootcert")?,
                sslcert: aw.string("sslcert")?,
                sslkey: aw.string("sslkey")?,
                cp_min,
                cp_max,
                allow_unsafe_locale: dw.boolean("allow_unsafe_locale", false)?
                    || aw.boolean("allow_unsafe_locale", false)?,
                application_name: aw.string("application_name")?,
                connect_timeout,
            })))
        }
        other => Err(dw.err(
            "name",
            format!("Unsupported database type '{other}': this Myelin supports 'sqlite3' and 'psycopg2'"),
        )),
    }
}

/// Parses `"50M"`, `"10K"`, `"1G"` or a plain number of bytes.
fn parse_size(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim();
            let (digits, mult) = match s.chars().last()? {
                'K' | 'k' => (&s[..s.len() - 1], 1024),
                'M' | 'm' => (&s[..s.len() - 1], 1024 * 1024),
                'G' | 'g' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
                _ => (s, 1),
            };
            digits.trim().parse::<u64>().ok().map(|n| n * mult)
        }
        _ => None,
    }
}

/// Synapse's `caches:` section: `global_factor` (default 0.5) and `per_cache_factors` (a
/// factor per cache name; Myelin's names are [`crate::cache::CacheSizes::NAMES`], others are
/// Synapse's own caches and are ignored). Synapse's other cache keys tune caches Myelin does
/// not have.
fn parse_caches(value: Option<&Value>) -> Result<crate::cache::CacheSizes, ConfigError> {
    let path = |key: &str| vec!["caches".to_owned(), key.to_owned()];
    let section = match value {
        None | Some(Value::Null) => return Ok(crate::cache::CacheSizes::default()),
        Some(Value::Object(section)) => section,
        Some(_) => return Err(ConfigError::at(&["caches".into()], "expected a mapping")),
    };
    let factor = |v: &Value, at: Vec<String>| -> Result<f64, ConfigError> {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .ok_or_else(|| ConfigError::at(&at, "expected a non-negative number"))
    };
    let global = match section.get("global_factor") {
        None | Some(Value::Null) => 0.5,
        Some(v) => factor(v, path("global_factor"))?,
    };
    let mut per_cache = std::collections::HashMap::new();
    match section.get("per_cache_factors") {
        None | Some(Value::Null) => {}
        Some(Value::Object(factors)) => {
            for (name, v) in factors {
                let mut at = path("per_cache_factors");
                at.push(name.clone());
                per_cache.insert(name.clone(), factor(v, at)?);
            }
        }
        Some(_) => return Err(ConfigError::at(&path("per_cache_factors"), "expected a mapping")),
    }
    Ok(crate::cache::CacheSizes::scaled(global, &per_cache))
}

/// Parses a duration as Synapse does: a number of milliseconds, or a string with a unit
/// (`"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"`, `"1w"`, `"1y"`; a bare number string is ms).
pub(crate) fn parse_duration(value: &Value) -> Option<std::time::Duration> {
    let ms = match value {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (digits, unit) = s.split_at(split);
            let n: u64 = digits.parse().ok()?;
            let unit_ms = match unit.trim() {
                "" | "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 7 * 86_400_000,
                "y" => 365 * 86_400_000,
                _ => return None,
            };
            n.checked_mul(unit_ms)?
        }
        _ => return None,
    };
    Some(std::time::Duration::from_millis(ms))
}

impl Config {
    /// Reads and validates a config file. Relative paths in it are relative to its directory.
    /// Runs every module's `parse_config`, as Synapse does at config load.
    pub fn load(path: &Path, natives: &NativeModules) -> Result<(Config, Vec<LoadedModule>), ConfigError> {
        Self::load_all(&[path.to_path_buf()], natives)
    }

    /// Reads several config files as one, as Synapse does with several `-c`: the top-level
    /// keys of a later file replace the same keys of earlier ones (a worker's file on top of the
    /// shared homeserver.yaml). Relative paths are relative to the first file's directory.
    pub fn load_all(paths: &[PathBuf], natives: &NativeModules) -> Result<(Config, Vec<LoadedModule>), ConfigError> {
        let mut root = Map::new();
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                path: vec![],
                lines: vec![format!("Could not read config file {}: {e}", path.display())],
                raw: false,
            })?;
            root.extend(parse_yaml_mapping(&text)?);
        }
        let base = paths.first().and_then(|p| p.parent()).map(Path::to_path_buf).unwrap_or_default();
        Self::from_root(root, &base, natives)
    }

    /// Validates config text; `base` anchors relative paths.
    pub fn parse(text: &str, base: &Path, natives: &NativeModules) -> Result<(Config, Vec<LoadedModule>), ConfigError> {
        Self::from_root(parse_yaml_mapping(text)?, base, natives)
    }

    fn from_root(
        root: Map<String, Value>,
        base: &Path,
        natives: &NativeModules,
    ) -> Result<(Config, Vec<LoadedModule>), ConfigError> {
        let w = Walker { path: vec![], root: &root };
        let mut warnings = Vec::new();
        for key in root.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) && !crate::ratelimit::CONFIG_KEYS.contains(&key.as_str()) {
                warnings.push(format!("Unknown or unsupported config key '{key}' is ignored"));
            }
        }

        // Modules first, as Synapse: their parse_config runs before the other sections. Legacy
        // spam checkers come after them, so their callbacks run after the modules' ones.
        natives.configure_foreign(&crate::modules::load_foreign_settings(root.get("python"), base)?)?;
        let mut modules = crate::modules::load_module_configs(root.get("modules"), natives)?;
        modules.extend(crate::modules::load_legacy_spam_checkers(root.get("spam_checker"), natives)?);
        if root.get("spam_checker").is_some_and(|v| !v.is_null()) {
            warnings.push(
                "The 'spam_checker' config option is deprecated: legacy spam checkers still load, but \
                 should be converted to modules (see docs/modules/python.md)"
                    .into(),
            );
        }

        let server_name = w
            .string("server_name")?
            .ok_or_else(|| ConfigError::at(&["server_name".into()], "Missing mandatory config key 'server_name'"))?;
        if server_name.is_empty() || ruma::ServerName::parse(&server_name).is_err() {
            return Err(w.err("server_name", format!("Invalid server name '{server_name}'")));
        }
        let resolve = |p: String| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { base.join(p) }
        };

        modules.extend(crate::modules::load_storage_providers(&root, natives, &|p: &str| resolve(p.to_owned()))?);

        let listeners = parse_listeners("listeners", root.get("listeners"))?;
        let public_baseurl = match w.string("public_baseurl")? {
            Some(u) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(w.err("public_baseurl", "expected a URL starting with http:// or https://"));
                }
                if u.ends_with('/') { u } else { format!("{u}/") }
            }
            None => format!("https://{server_name}/"),
        };

        let database = parse_database(root.get("database"), &resolve)?;
        let (instance, worker_listeners) = parse_instance(&w, &database)?;
        let listeners = worker_listeners.unwrap_or(listeners);

        let signing_key_path =
            resolve(w.string("signing_key_path")?.unwrap_or_else(|| format!("{server_name}.signing.key")));
        let media_store_path = resolve(w.string("media_store_path")?.unwrap_or_else(|| "media_store".into()));
        let max_upload_size = match root.get("max_upload_size") {
            None | Some(Value::Null) => 50 * 1024 * 1024,
            Some(v) => parse_size(v).ok_or_else(|| w.err("max_upload_size", "expected a size such as 50M"))?,
        };
        let request_header_timeout = match root.get("request_header_timeout") {
            None | Some(Value::Null) => std::time::Duration::from_secs(60),
            Some(v) => parse_duration(v)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| w.err("request_header_timeout", "expected a duration such as 60s"))?,
        };
        let cache_sizes = parse_caches(root.get("caches"))?;
        let enable_registration = w.boolean("enable_registration", false)?;
        let without_verification = w.boolean("enable_registration_without_verification", false)?;
        let registration_requires_token = w.boolean("registration_requires_token", false)?;
        let email = crate::mail::parse_email(&root, &resolve)?;
        let threepids = crate::threepids::ThreepidSettings::parse(&root, email.is_some())?;
        let sso = crate::sso::SsoSettings::parse(&root, &resolve, &public_baseurl)?;
        let user_types = UserTypes::parse(root.get("user_types"))?;
        let account_validity =
            crate::users::AccountValiditySettings::parse(&root, &resolve, &public_baseurl, &mut warnings)?;
        if enable_registration
            && !without_verification
            && !registration_requires_token
            && threepids.registrations_require_3pid.is_empty()
        {
            return Err(ConfigError::at(
                &[],
                "You have enabled open registration without any verification. This is a known vector \
                 for spam and abuse. If you would like to allow public registration, please consider \
                 adding email, captcha, or token-based verification. Otherwise this check can be removed \
                 by setting the `enable_registration_without_verification` config option to `true`.",
            ));
        }
        let default_room_version = match root.get("default_room_version") {
            None | Some(Value::Null) => DEFAULT_ROOM_VERSION.to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err(w.err("default_room_version", "expected a string")),
        };
        if !SUPPORTED_ROOM_VERSIONS.contains(&default_room_version.as_str()) {
            return Err(w.err("default_room_version", format!("Unknown room version '{default_room_version}'")));
        }
        let log = match w.string("log_config")? {
            Some(path) => crate::log_config::load(&resolve(path), base)?,
            None => Default::default(),
        };
        warnings.extend(log.warnings.iter().cloned());
        let log_level = match w.string("log_level")? {
            Some(level) => level.to_lowercase(),
            None => log.level.clone().unwrap_or_else(|| "info".into()),
        };
        if !["trace", "debug", "info", "warn", "warning", "error"].contains(&log_level.as_str()) {
            return Err(w.err("log_level", "expected one of trace, debug, info, warning, error"));
        }

        let room_list_publication_rules = parse_publication_rules(root.get("room_list_publication_rules"))?;
        let presence_enabled = match root.get("presence") {
            None | Some(Value::Null) => true,
            Some(Value::Object(p)) => Walker { path: vec!["presence".into()], root: p }.boolean("enabled", true)?,
            Some(_) => return Err(ConfigError::at(&["presence".to_owned()], "expected a mapping")),
        };
        let search_all_users = match root.get("user_directory") {
            None | Some(Value::Null) => false,
            Some(Value::Object(ud)) => {
                Walker { path: vec!["user_directory".into()], root: ud }.boolean("search_all_users", false)?
            }
            Some(_) => return Err(w.err("user_directory", "expected a mapping")),
        };
        let tls_certificate_path = w.string("tls_certificate_path")?.map(resolve);
        let tls_private_key_path = w.string("tls_private_key_path")?.map(resolve);
        if listeners.iter().any(|l| l.tls) && (tls_certificate_path.is_none() || tls_private_key_path.is_none()) {
            return Err(ConfigError::at(
                &[],
                "A TLS listener needs both 'tls_certificate_path' and 'tls_private_key_path'",
            ));
        }
        // Read now, as Synapse does, so that check-config finds a bad file.
        {
            use rustls_pki_types::pem::PemObject;
            if let Some(path) = &tls_certificate_path {
                let certs: Result<Vec<_>, _> =
                    rustls_pki_types::CertificateDer::pem_file_iter(path).and_then(|c| c.collect());
                match certs {
                    Ok(c) if !c.is_empty() => {}
                    Ok(_) => {
                        return Err(w.err("tls_certificate_path", format!("{}: no certificate found", path.display())));
                    }
                    Err(e) => return Err(w.err("tls_certificate_path", format!("{}: {e}", path.display()))),
                }
            }
            if let Some(path) = &tls_private_key_path
                && let Err(e) = rustls_pki_types::PrivateKeyDer::from_pem_file(path)
            {
                return Err(w.err("tls_private_key_path", format!("{}: {e}", path.display())));
            }
        }
        let custom_ca_list = match root.get("federation_custom_ca_list") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let at = [String::from("federation_custom_ca_list"), format!("<item {i}>")];
                    let Value::String(p) = item else {
                        return Err(ConfigError::at(&at, "expected a string"));
                    };
                    let path = resolve(p.clone());
                    use rustls_pki_types::pem::PemObject;
                    let certs: Result<Vec<_>, _> =
                        rustls_pki_types::CertificateDer::pem_file_iter(&path).and_then(|c| c.collect());
                    match certs {
                        Ok(c) if !c.is_empty() => {}
                        Ok(_) => return Err(ConfigError::at(&at, format!("{}: no certificate found", path.display()))),
                        Err(e) => return Err(ConfigError::at(&at, format!("{}: {e}", path.display()))),
                    }
                    out.push(path);
                }
                out
            }
            Some(_) => return Err(w.err("federation_custom_ca_list", "expected a list")),
        };
        let ranges = |keys: [&str; 2], default: &[&str]| -> Result<Vec<IpRange>, ConfigError> {
            let Some((key, value)) = keys.iter().find_map(|k| root.get(*k).map(|v| (*k, v))) else {
                return Ok(default.iter().filter_map(|r| IpRange::parse(r)).collect());
            };
            let Value::Array(items) = value else { return Err(w.err(key, "expected a list of IP ranges")) };
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str().and_then(IpRange::parse) {
                    Some(r) => out.push(r),
                    None => {
                        return Err(ConfigError::at(&[key.into(), format!("<item {i}>")], "expected an IP range"));
                    }
                }
            }
            Ok(out)
        };
        let federation = FederationSettings {
            old_signing_keys: parse_old_signing_keys(root.get("old_signing_keys"))?,
            verify_certificates: w.boolean("federation_verify_certificates", true)?,
            custom_ca_list,
            ip_filter: crate::outbound::IpFilter {
                blocklist: always_blocked(ranges(
                    ["ip_range_blacklist", "ip_range_blocklist"],
                    DEFAULT_IP_RANGE_BLOCKLIST,
                )?),
                allowlist: ranges(["ip_range_whitelist", "ip_range_allowlist"], &[])?,
            },
            federation_ip_filter: match root.get("federation_ip_range_blacklist") {
                None | Some(Value::Null) => None,
                Some(_) => Some(crate::outbound::IpFilter {
                    blocklist: always_blocked(ranges(
                        ["federation_ip_range_blacklist", "federation_ip_range_blacklist"],
                        &[],
                    )?),
                    allowlist: vec![],
                }),
            },
        };
        // URL previews: off by default; on, they need their own IP blocklist (as Synapse).
        let url_preview = if w.boolean("url_preview_enabled", false)? {
            if !root.contains_key("url_preview_ip_range_blacklist")
                && !root.contains_key("url_preview_ip_range_blocklist")
            {
                return Err(w.err(
                    "url_preview_enabled",
                    "For security, you must specify an explicit target IP address blacklist in \
                     url_preview_ip_range_blacklist for url previewing to work",
                ));
            }
            let url_blocklist = match root.get("url_preview_url_blacklist") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(rules)) => {
                    let mut out = Vec::new();
                    for (i, rule) in rules.iter().enumerate() {
                        let at = ["url_preview_url_blacklist".to_owned(), format!("<item {i}>")];
                        let Value::Object(parts) = rule else {
                            return Err(ConfigError::at(&at, "expected a map of URL parts to patterns"));
                        };
                        let mut entry = Vec::new();
                        for (part, pattern) in parts {
                            let Value::String(pattern) = pattern else {
                                return Err(ConfigError::at(&at, format!("{part}: expected a pattern")));
                            };
                            entry.push((part.clone(), pattern.clone()));
                        }
                        out.push(entry);
                    }
                    out
                }
                Some(_) => return Err(w.err("url_preview_url_blacklist", "expected a list")),
            };
            crate::url_preview::UrlPreviewSettings {
                enabled: true,
                ip_filter: crate::outbound::IpFilter {
                    blocklist: always_blocked(ranges(
                        ["url_preview_ip_range_blacklist", "url_preview_ip_range_blocklist"],
                        &[],
                    )?),
                    allowlist: ranges(["url_preview_ip_range_whitelist", "url_preview_ip_range_allowlist"], &[])?,
                },
                url_blocklist,
                max_spider_size: match root.get("max_spider_size") {
                    None | Some(Value::Null) => 10 * 1024 * 1024,
                    Some(v) => parse_size(v).ok_or_else(|| w.err("max_spider_size", "expected a size such as 10M"))?,
                },
                accept_language: match root.get("url_preview_accept_language") {
                    Some(Value::Array(l)) => l.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
                    _ => vec!["en".to_owned()],
                },
            }
        } else {
            crate::url_preview::UrlPreviewSettings::default()
        };
        let oembed = crate::oembed::parse(&root, &resolve)?;
        let app_services = match root.get("app_service_config_files") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                let paths: Vec<PathBuf> =
                    items.iter().filter_map(Value::as_str).map(|p| resolve(p.to_owned())).collect();
                crate::appservice::load_registrations(&paths, &server_name)?
            }
            Some(_) => return Err(w.err("app_service_config_files", "Expected a list of AS config files")),
        };
        if w.boolean("use_appservice_legacy_authorization", false)? {
            warnings.push(
                "The use of appservice legacy authorization via query params is deprecated and should be \
                 considered insecure."
                    .into(),
            );
        }
        // Only the experimental switches Myelin has are read; the rest are Synapse's own.
        let experimental = match root.get("experimental_features") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(w.err("experimental_features", "expected a mapping")),
        };
        let ew = Walker { path: vec!["experimental_features".into()], root: &experimental };
        let config = Config {
            use_appservice_legacy_authorization: w.boolean("use_appservice_legacy_authorization", false)?,
            msc2409_to_device_messages: ew.boolean("msc2409_to_device_messages_enabled", false)?,
            msc3202_transaction_extensions: ew.boolean("msc3202_transaction_extensions", false)?,
            app_services,
            tls_certificate_path,
            tls_private_key_path,
            federation,
            room_list_publication_rules,
            search_all_users,
            presence_enabled,
            server_name,
            public_baseurl,
            listeners,
            database,
            instance,
            signing_key_path,
            media_store_path,
            max_upload_size,
            url_preview,
            oembed,
            request_header_timeout,
            cache_sizes,
            enable_registration,
            registration_requires_token,
            allow_guest_access: w.boolean("allow_guest_access", false)?,
            registration_shared_secret: w.string("registration_shared_secret")?,
            default_room_version,
            rate_limits: crate::ratelimit::RateLimitSettings::parse(&root)?,
            require_auth_for_profile_requests: w.boolean("require_auth_for_profile_requests", false)?,
            insecure_outbound_tls: w.boolean("use_insecure_ssl_client_just_for_testing_do_not_use", false)?,
            limit_profile_requests_to_users_who_share_rooms: w
                .boolean("limit_profile_requests_to_users_who_share_rooms", false)?,
            password: parse_password_config(root.get("password_config"))?,
            sessions: parse_session_settings(&root)?,
            login_via_existing: parse_login_via_existing(root.get("login_via_existing_session"))?,
            server_notices: parse_server_notices(root.get("server_notices"))?,
            media_upload_limits: parse_media_upload_limits(root.get("media_upload_limits"))?,
            log_level: if log_level == "warning" { "warn".into() } else { log_level },
            log,
            pid_file: w.string("pid_file")?.map(resolve),
            email,
            threepids,
            sso,
            user_types,
            account_validity,
            custom_template_directory: w.string("custom_template_directory")?.map(resolve),
            warnings,
        };
        Ok((config, modules))
    }
}

/// Account types (Synapse's `user_types` section).
#[derive(Debug, Clone)]
pub struct UserTypes {
    /// The type new accounts get, if any.
    pub default_user_type: Option<String>,
    /// Every type an account may have: Synapse's `support` and `bot`, then `extra_user_types`.
    pub all: Vec<String>,
}

impl Default for UserTypes {
    fn default() -> Self {
        UserTypes { default_user_type: None, all: vec!["support".into(), "bot".into()] }
    }
}

impl UserTypes {
    fn parse(section: Option<&Value>) -> Result<Self, ConfigError> {
        let mut types = UserTypes::default();
        let at = |key: &str| vec!["user_types".to_owned(), key.to_owned()];
        let section = match section {
            None | Some(Value::Null) => return Ok(types),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(ConfigError::at(&["user_types".into()], "expected a mapping")),
        };
        match section.get("extra_user_types") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                types.all.extend(items.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            Some(_) => return Err(ConfigError::at(&at("extra_user_types"), "expected a list of strings")),
        }
        match section.get("default_user_type") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if types.all.contains(t) => types.default_user_type = Some(t.clone()),
            Some(Value::String(t)) => {
                return Err(ConfigError::at(
                    &[],
                    format!("Default user type {t} is not in the list of all user types: {:?}", types.all),
                ));
            }
            Some(_) => return Err(ConfigError::at(&at("default_user_type"), "expected a string")),
        }
        Ok(types)
    }

    /// A body's `user_type`: absent or null is none; anything but a known type is 400
    /// "Invalid user type", as Synapse's admin API says.
    pub(crate) fn check(&self, value: Option<&Value>) -> crate::Result<Option<String>> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(t)) if self.all.contains(t) => Ok(Some(t.clone())),
            Some(_) => Err(crate::Error::new(crate::ErrorKind::BadRequest, "Invalid user type")),
        }
    }
}

/// `old_signing_keys`, as Synapse reads it: `{"ed25519:<id>": {key: <unpadded base64 public
/// key>, expired_ts: <ms>}}`.
fn parse_old_signing_keys(
    value: Option<&Value>,
) -> Result<std::collections::BTreeMap<String, (String, i64)>, ConfigError> {
    const KEY: &str = "old_signing_keys";
    let map = match value {
        None | Some(Value::Null) => return Ok(Default::default()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ConfigError::at(&[KEY.to_owned()], "expected a mapping")),
    };
    let mut out = std::collections::BTreeMap::new();
    for (id, entry) in map {
        let at = [KEY.to_owned(), id.clone()];
        if !id.starts_with("ed25519:") || id.len() == "ed25519:".len() {
            return Err(ConfigError::at(&at, format!("Unsupported signing algorithm for old key: {id:?}")));
        }
        let key = entry["key"].as_str().unwrap_or_default();
        let decoded =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD_NO_PAD, key.trim_end_matches('='));
        if decoded.map_or(true, |k| k.len() != 32) {
            return Err(ConfigError::at(&at, "expected `key`: an ed25519 public key in unpadded base64"));
        }
        let Some(expired_ts) = entry["expired_ts"].as_i64() else {
            return Err(ConfigError::at(&at, "expected `expired_ts`: when the key stopped being used, in ms"));
        };
        out.insert(id.clone(), (key.trim_end_matches('=').to_owned(), expired_ts));
    }
    Ok(out)
}

/// A duration key in ms: `None` when absent or `null`.
fn duration_ms(root: &Map<String, Value>, path: &[&str], key: &str) -> Result<Option<i64>, ConfigError> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_duration(v).map(|d| Some(d.as_millis() as i64)).ok_or_else(|| {
            let mut at: Vec<String> = path.iter().map(|p| (*p).to_owned()).collect();
            at.push(key.to_owned());
            ConfigError::at(&at, "expected a duration such as 5m")
        }),
    }
}

fn parse_session_settings(root: &Map<String, Value>) -> Result<SessionSettings, ConfigError> {
    let session_lifetime = duration_ms(root, &[], "session_lifetime")?;
    let refreshable_access_token_lifetime = match root.get("refreshable_access_token_lifetime") {
        None => SessionSettings::default().refreshable_access_token_lifetime,
        Some(_) => duration_ms(root, &[], "refreshable_access_token_lifetime")?,
    };
    let settings = SessionSettings {
        session_lifetime,
        refreshable_access_token_lifetime,
        refresh_token_lifetime: duration_ms(root, &[], "refresh_token_lifetime")?,
        nonrefreshable_access_token_lifetime: duration_ms(root, &[], "nonrefreshable_access_token_lifetime")?,
    };
    // As Synapse: a token lifetime set beside `session_lifetime` may not exceed it.
    if let Some(session) = session_lifetime {
        let explicit = |key: &str, value: Option<i64>| root.contains_key(key) && value.is_some_and(|v| v > session);
        for (key, value) in [
            ("refreshable_access_token_lifetime", settings.refreshable_access_token_lifetime),
            ("nonrefreshable_access_token_lifetime", settings.nonrefreshable_access_token_lifetime),
            ("refresh_token_lifetime", settings.refresh_token_lifetime),
        ] {
            if explicit(key, value) {
                return Err(ConfigError::at(
                    &[],
                    format!(
                        "Both `session_lifetime` and `{key}` configuration options have been set, but `{key}` exceeds `session_lifetime`!"
                    ),
                ));
            }
        }
    }
    Ok(settings)
}

/// Synapse's `media_upload_limits`: `[{time_period, max_size, info_uri?, can_upgrade?}]`.
fn parse_media_upload_limits(
    value: Option<&Value>,
) -> Result<Vec<myelin_module_api::repository::MediaUploadLimit>, ConfigError> {
    const KEY: &str = "media_upload_limits";
    let invalid = || ConfigError::at(&[KEY.to_owned()], "Could not validate media_upload_limits entry");
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid()),
    };
    let mut limits = Vec::new();
    for item in items {
        let Value::Object(entry) = item else { return Err(invalid()) };
        let max_bytes = entry.get("max_size").and_then(parse_size).ok_or_else(invalid)?;
        let period = entry.get("time_period").and_then(parse_duration).ok_or_else(invalid)?;
        let info_uri = match entry.get("info_uri") {
            None | Some(Value::Null) => None,
            Some(Value::String(u)) if u.contains("://") => Some(u.clone()),
            Some(_) => return Err(invalid()),
        };
        let can_upgrade = match entry.get("can_upgrade") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid()),
        };
        limits.push(myelin_module_api::repository::MediaUploadLimit {
            max_bytes,
            time_period_ms: period.as_millis() as u64,
            info_uri,
            can_upgrade,
        });
    }
    limits.sort_by_key(|l| std::cmp::Reverse(l.time_period_ms));
    Ok(limits)
}

fn parse_server_notices(value: Option<&Value>) -> Result<Option<ServerNotices>, ConfigError> {
    const SECTION: &str = "server_notices";
    let map = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ConfigError::at(&[SECTION.to_owned()], "expected a mapping")),
    };
    let w = Walker { path: vec![SECTION.to_owned()], root: map };
    let Some(localpart) = w.string("system_mxid_localpart")? else {
        return Err(ConfigError::at(
            &[SECTION.to_owned(), "system_mxid_localpart".into()],
            "Missing mandatory config key",
        ));
    };
    Ok(Some(ServerNotices {
        localpart,
        display_name: w.string("system_mxid_display_name")?,
        avatar_url: w.string("system_mxid_avatar_url")?,
        room_name: Some(w.string("room_name")?.unwrap_or_else(|| "Server Notices".into())),
        room_avatar_url: w.string("room_avatar_url")?,
        room_topic: w.string("room_topic")?,
        auto_join: w.boolean("auto_join", false)?,
    }))
}

fn parse_login_via_existing(value: Option<&Value>) -> Result<LoginViaExisting, ConfigError> {
    const SECTION: &str = "login_via_existing_session";
    let map = match value {
        None | Some(Value::Null) => return Ok(LoginViaExisting::default()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ConfigError::at(&[SECTION.to_owned()], "expected a mapping")),
    };
    let w = Walker { path: vec![SECTION.to_owned()], root: map };
    let defaults = LoginViaExisting::default();
    Ok(LoginViaExisting {
        enabled: w.boolean("enabled", defaults.enabled)?,
        require_ui_auth: w.boolean("require_ui_auth", defaults.require_ui_auth)?,
        token_timeout: duration_ms(map, &[SECTION], "token_timeout")?.unwrap_or(defaults.token_timeout),
    })
}

fn parse_password_config(value: Option<&Value>) -> Result<PasswordConfig, ConfigError> {
    let section = vec!["password_config".to_owned()];
    let map = match value {
        None | Some(Value::Null) => return Ok(PasswordConfig { enabled: true, localdb_enabled: true, policy: None }),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ConfigError::at(&section, "expected a mapping")),
    };
    let w = Walker { path: section.clone(), root: map };
    let enabled = match map.get("enabled") {
        // Synapse's `only_for_reauth` keeps passwords for re-authentication only.
        Some(Value::String(s)) if s == "only_for_reauth" => false,
        _ => w.boolean("enabled", true)?,
    };
    let policy = match map.get("policy") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => {
            let pw = Walker { path: vec!["password_config".into(), "policy".into()], root: p };
            if pw.boolean("enabled", false)? {
                let minimum_length = match p.get("minimum_length") {
                    None | Some(Value::Null) => 0,
                    Some(v) => v.as_u64().ok_or_else(|| pw.err("minimum_length", "expected an integer"))? as usize,
                };
                Some(PasswordPolicy {
                    minimum_length,
                    require_digit: pw.boolean("require_digit", false)?,
                    require_symbol: pw.boolean("require_symbol", false)?,
                    require_lowercase: pw.boolean("require_lowercase", false)?,
                    require_uppercase: pw.boolean("require_uppercase", false)?,
                })
            } else {
                None
            }
        }
        Some(_) => return Err(w.err("policy", "expected a mapping")),
    };
    Ok(PasswordConfig { enabled, localdb_enabled: w.boolean("localdb_enabled", true)?, policy })
}

fn parse_publication_rules(value: Option<&Value>) -> Result<Vec<crate::PublicationRule>, ConfigError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ConfigError::at(&["room_list_publication_rules".into()], "expected a list")),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = vec!["room_list_publication_rules".to_owned(), format!("<item {i}>")];
        let Value::Object(obj) = item else { return Err(ConfigError::at(&path, "expected a mapping")) };
        let w = Walker { path: path.clone(), root: obj };
        let allow = match w.string("action")?.as_deref() {
            Some("allow") => true,
            Some("deny") => false,
            _ => return Err(w.err("action", "expected 'allow' or 'deny'")),
        };
        out.push(crate::PublicationRule {
            user_id: w.string("user_id")?.unwrap_or_else(|| "*".into()),
            room_id: w.string("room_id")?.unwrap_or_else(|| "*".into()),
            allow,
        });
    }
    Ok(out)
}

/// The listeners under `key` (`listeners`, or a worker's `worker_listeners`).
fn parse_listeners(key: &str, value: Option<&Value>) -> Result<Vec<Listener>, ConfigError> {
    let items = match value {
        None | Some(Value::Null) => {
            return Ok(vec![Listener {
                port: 8008,
                bind_addresses: vec!["127.0.0.1".into()],
                resources: vec!["client".into(), "federation".into()],
                tls: false,
                x_forwarded: false,
            }]);
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ConfigError::at(&[key.into()], "expected a list")),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = vec![key.to_owned(), format!("<item {i}>")];
        let Value::Object(obj) = item else {
            return Err(ConfigError::at(&path, "expected a mapping"));
        };
        let w = Walker { path: path.clone(), root: obj };
        let port = match obj.get("port") {
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| w.err("port", "expected a port number between 0 and 65535"))?,
            None => return Err(w.err("port", "expected an integer")),
            Some(_) => return Err(w.err("port", "expected an integer")),
        };
        let kind = w.string("type")?.unwrap_or_else(|| "http".into());
        let metrics_only = match kind.as_str() {
            "http" => false,
            // As on Synapse: a metrics listener serves the metrics and nothing else.
            "metrics" => true,
            "manhole" => continue,
            other => {
                return Err(
                    w.err("type", format!("Unknown listener type '{other}': expected http, metrics or manhole"))
                );
            }
        };
        let tls = w.boolean("tls", false)?;
        let x_forwarded = w.boolean("x_forwarded", false)?;
        let bind_addresses = match obj.get("bind_addresses") {
            None | Some(Value::Null) => vec!["::".into(), "0.0.0.0".into()],
            Some(Value::Array(a)) => {
                let mut v = Vec::new();
                for (j, addr) in a.iter().enumerate() {
                    match addr {
                        Value::String(s) if s.parse::<std::net::IpAddr>().is_ok() => v.push(s.clone()),
                        _ => {
                            let mut p = path.clone();
                            p.push("bind_addresses".into());
                            p.push(format!("<item {j}>"));
                            return Err(ConfigError::at(&p, "expected an IP address"));
                        }
                    }
                }
                v
            }
            Some(_) => return Err(w.err("bind_addresses", "expected a list")),
        };
        let mut resources = Vec::new();
        if let Some(res) = obj.get("resources") {
            let Value::Array(res) = res else {
                return Err(w.err("resources", "expected a list"));
            };
            for (j, r) in res.iter().enumerate() {
                let mut p = path.clone();
                p.extend(["resources".into(), format!("<item {j}>")]);
                let Value::Object(r) = r else {
                    return Err(ConfigError::at(&p, "expected a mapping"));
                };
                match r.get("names") {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(names)) => {
                        for (k, n) in names.iter().enumerate() {
                            match n {
                                Value::String(s) if KNOWN_RESOURCES.contains(&s.as_str()) => resources.push(s.clone()),
                                Value::String(s) => {
                                    let mut p = p.clone();
                                    p.extend(["names".into(), format!("<item {k}>")]);
                                    return Err(ConfigError::at(
                                        &p,
                                        format!("'{s}' is not one of {}", KNOWN_RESOURCES.join(", ")),
                                    ));
                                }
                                _ => {
                                    let mut p = p.clone();
                                    p.extend(["names".into(), format!("<item {k}>")]);
                                    return Err(ConfigError::at(&p, "expected a string"));
                                }
                            }
                        }
                    }
                    Some(_) => {
                        p.push("names".into());
                        return Err(ConfigError::at(&p, "expected a list"));
                    }
                }
            }
        }
        if metrics_only {
            resources = vec!["metrics".into()];
        }
        out.push(Listener { port, bind_addresses, resources, tls, x_forwarded });
    }
    Ok(out)
}

/// The commented config written on first run, its listener on `bind_address` (loopback by
/// default; a container's entry point gives `0.0.0.0`).
pub fn generate_config(server_name: &str, data_dir: &str, bind_address: &str) -> String {
    let secret: String = {
        use rand::Rng;
        rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(32).map(char::from).collect()
    };
    format!(
        r#"# Myelin homeserver configuration. Keys follow Synapse's names; see docs/configuration.md.

# The domain in your users' IDs (@alice:{server_name}). It cannot be changed later.
server_name: "{server_name}"

# The URL clients reach this server at.
public_baseurl: "http://127.0.0.1:8008/"

listeners:
  - port: 8008
    type: http
    bind_addresses: ["{bind_address}"]
    resources:
      - names: [client, federation]

# The embedded SQLite database (relative paths are relative to this file).
database:
  name: sqlite3
  args:
    database: "{data_dir}/homeserver.db"
# Or PostgreSQL 14+, with Synapse's settings (docs/deployment.md):
# database:
#   name: psycopg2
#   args: {{user: synapse_user, password: secret, dbname: synapse, host: localhost, cp_min: 5, cp_max: 10}}

signing_key_path: "{data_dir}/{server_name}.signing.key"
media_store_path: "{data_dir}/media_store"
max_upload_size: 50M

# Open registration needs `enable_registration_without_verification: true` as well.
enable_registration: false
registration_shared_secret: "{secret}"

log_level: info

# Modules, in priority order: native Rust modules by name, e.g.
# modules:
#   - module: myelin.demo.DemoModule
#     config:
#       denied_user: "@evilguy:{server_name}"
# and Synapse's Python modules by dotted path, imported from this virtualenv (pip install
# the module and Twisted into it):
# python:
#   virtualenv: /opt/myelin/modules-venv
#   path: []
modules: []
"#
    )
}

#[cfg(test)]
mod ip_range_tests {
    use super::IpRange;

    #[test]
    fn ranges_contain_what_their_prefix_covers() {
        let r = IpRange::parse("10.0.0.0/8").unwrap();
        assert!(r.contains("10.1.2.3".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        assert!(r.contains("::ffff:10.0.0.1".parse().unwrap()), "IPv4-mapped addresses are IPv4");
        let loopback6 = IpRange::parse("::1/128").unwrap();
        assert!(loopback6.contains("::1".parse().unwrap()));
        assert!(!loopback6.contains("::2".parse().unwrap()));
        assert!(IpRange::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(IpRange::parse("127.0.0.1").unwrap().contains("127.0.0.1".parse().unwrap()));
        assert_eq!(IpRange::parse("10.0.0.0/33"), None);
        assert_eq!(IpRange::parse("nonsense"), None);
    }
}

#[cfg(test)]
mod database_tests {
    use super::*;

    fn parse_db(yaml: &str) -> Result<Database, ConfigError> {
        let text = format!("server_name: test\n{yaml}");
        Config::parse(&text, Path::new("/srv/myelin"), &NativeModules::default()).map(|(c, _)| c.database)
    }

    fn error(yaml: &str) -> String {
        parse_db(yaml).unwrap_err().to_string()
    }

    #[test]
    fn sqlite_is_the_default_and_paths_are_relative_to_the_config() {
        assert_eq!(parse_db("").unwrap(), Database::Sqlite(sqlite_options("/srv/myelin/homeserver.db".into())));
        assert_eq!(
            parse_db("database: {name: sqlite3, args: {database: data/x.db}}").unwrap(),
            Database::Sqlite(sqlite_options("/srv/myelin/data/x.db".into()))
        );
    }

    #[test]
    fn sqlite_is_durable_unless_told_otherwise() {
        use myelin_storage::sqlite::Synchronous;
        let synchronous = |yaml: &str| match parse_db(yaml).unwrap() {
            Database::Sqlite(options) => options.synchronous,
            other => panic!("{other:?}"),
        };
        assert_eq!(synchronous(""), Synchronous::Full);
        assert_eq!(synchronous("database: {name: sqlite3, args: {synchronous: full}}"), Synchronous::Full);
        assert_eq!(synchronous("database: {name: sqlite3, args: {synchronous: NORMAL}}"), Synchronous::Normal);
        assert!(error("database: {name: sqlite3, args: {synchronous: off}}").contains("'off' is not a setting"));
    }

    #[test]
    fn psycopg2_takes_synapses_args() {
        let db = parse_db(
            "database:\n  name: psycopg2\n  allow_unsafe_locale: true\n  args:\n    user: synapse_user\n    \
             password: secret\n    database: synapse\n    host: db.example\n    port: '5433'\n    cp_min: 2\n    \
             cp_max: 7\n    keepalives_idle: 10\n",
        )
        .unwrap();
        let Database::Postgres(o) = db else { panic!("expected PostgreSQL") };
        assert_eq!(o.user.as_deref(), Some("synapse_user"));
        assert_eq!(o.password.as_deref(), Some("secret"));
        assert_eq!(o.dbname.as_deref(), Some("synapse"), "`database` is psycopg2's alias of dbname");
        assert_eq!(o.host.as_deref(), Some("db.example"));
        assert_eq!(o.port, Some(5433), "psycopg2 takes the port as a string too");
        assert_eq!((o.cp_min, o.cp_max), (2, 7));
        assert!(o.allow_unsafe_locale);
        let Database::Postgres(o) = parse_db("database: {name: psycopg2}").unwrap() else { panic!() };
        assert_eq!((o.cp_min, o.cp_max, o.allow_unsafe_locale), (5, 10, false), "Synapse's pool defaults");
    }

    #[test]
    fn bad_database_settings_are_config_errors_at_their_key() {
        assert!(error("database: {name: mysql}").contains("'database.name'"));
        assert!(error("database: {name: mysql}").contains("Unsupported database type 'mysql'"));
        assert!(error("database: {name: psycopg2, args: {port: 99999}}").contains("'database.args.port'"));
        assert!(error("database: {name: psycopg2, args: {port: [1]}}").contains("expected a port number"));
        assert!(error("database: {name: psycopg2, args: {cp_min: 5, cp_max: 2}}").contains("'database.args.cp_max'"));
        assert!(error("database: {name: psycopg2, args: {cp_min: -1}}").contains("'database.args.cp_min'"));
        assert!(error("database: {name: psycopg2, args: {sslmode: verifyfull}}").contains("invalid sslmode value"));
        assert!(error("database: {name: psycopg2, args: {sslrootcert: 3}}").contains("'database.args.sslrootcert'"));
        assert!(error("database: {name: psycopg2, args: [1]}").contains("'database.args'"));
        assert!(error("database: 3").contains("'database'"));
    }
}

#[cfg(test)]
mod instance_tests {
    use super::*;

    fn senders(names: &[&str]) -> InstanceSettings {
        InstanceSettings {
            name: MAIN_INSTANCE.into(),
            federation_senders: names.iter().map(|n| n.to_string()).collect(),
            background_tasks: MAIN_INSTANCE.into(),
        }
    }

    #[test]
    fn each_destination_has_one_live_owner_and_only_a_dead_senders_move() {
        let settings = senders(&["master", "w1", "w2"]);
        let all: Vec<String> = ["master", "w1", "w2"].iter().map(|n| n.to_string()).collect();
        let destinations: Vec<String> = (0..300).map(|i| format!("server{i}.example")).collect();
        let owners: Vec<&str> = destinations.iter().map(|d| settings.sender_for(d, &all).unwrap()).collect();
        for name in ["master", "w1", "w2"] {
            let owned = owners.iter().filter(|o| **o == name).count();
            assert!(owned > 50, "{name} owns {owned} of 300: the hash spreads them");
        }
        // w1 dies: its destinations go to the others; nobody else's move.
        let without_w1: Vec<String> = ["master", "w2"].iter().map(|n| n.to_string()).collect();
        for (d, before) in destinations.iter().zip(&owners) {
            let after = settings.sender_for(d, &without_w1).unwrap();
            if *before == "w1" {
                assert_ne!(after, "w1");
            } else {
                assert_eq!(after, *before, "{d} moved though its owner lives");
            }
        }
        // Not a sender, or no live sender: nobody.
        assert_eq!(settings.sender_for("x", &["w9".to_string()]), None);
        assert_eq!(senders(&["master"]).sender_for("x", &all), Some("master"));
    }
}

#[cfg(test)]
mod session_tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        let text = format!("server_name: test\n{yaml}");
        Config::parse(&text, Path::new("/srv/myelin"), &NativeModules::default()).map(|(c, _)| c)
    }

    #[test]
    fn token_lifetimes_default_and_parse_as_synapse() {
        let defaults = parse("").unwrap();
        assert_eq!(defaults.sessions, SessionSettings::default());
        assert_eq!(defaults.sessions.refreshable_access_token_lifetime, Some(300_000));
        assert_eq!(defaults.login_via_existing, LoginViaExisting::default());
        let set = parse(
            "session_lifetime: 1d\nrefreshable_access_token_lifetime: 10m\nrefresh_token_lifetime: 1h\n\
             nonrefreshable_access_token_lifetime: 30000\nlogin_via_existing_session: {enabled: true, token_timeout: 1m}\n",
        )
        .unwrap();
        assert_eq!(
            set.sessions,
            SessionSettings {
                session_lifetime: Some(86_400_000),
                refreshable_access_token_lifetime: Some(600_000),
                refresh_token_lifetime: Some(3_600_000),
                nonrefreshable_access_token_lifetime: Some(30_000),
            }
        );
        assert_eq!(
            set.login_via_existing,
            LoginViaExisting { enabled: true, require_ui_auth: true, token_timeout: 60_000 }
        );
        assert_eq!(
            parse("refreshable_access_token_lifetime: null\n").unwrap().sessions.refreshable_access_token_lifetime,
            None
        );
    }

    #[test]
    fn lifetimes_beyond_the_session_or_malformed_are_refused() {
        let error = |yaml: &str| parse(yaml).unwrap_err().to_string();
        assert!(
            error("session_lifetime: 1m\nrefreshable_access_token_lifetime: 5m\n")
                .contains("exceeds `session_lifetime`")
        );
        assert!(error("session_lifetime: 1m\nnonrefreshable_access_token_lifetime: 1h\n").contains("exceeds"));
        // The default refreshable lifetime is not "set": a short session is fine on its own.
        assert!(parse("session_lifetime: 1m\n").is_ok());
        assert!(error("refresh_token_lifetime: soon\n").contains("refresh_token_lifetime"));
        assert!(error("login_via_existing_session: {enabled: maybe}\n").contains("enabled"));
    }
}

#[cfg(test)]
mod old_signing_key_tests {
    use super::*;

    #[test]
    fn old_signing_keys_parse_as_synapse_writes_them() {
        let key = "l8Hft5qXKn1vfHrg3p4+W8gELQVo8N13JkluMfmn2sQ";
        let parse = |yaml: String| parse_old_signing_keys(serde_yaml_ng::from_str::<Value>(&yaml).ok().as_ref());
        let keys = parse(format!("{{'ed25519:a': {{key: '{key}=', expired_ts: 5}}}}")).unwrap();
        assert_eq!(keys.get("ed25519:a"), Some(&(key.to_owned(), 5)), "padding dropped");
        assert!(parse(String::new()).unwrap().is_empty());
        for bad in [
            format!("{{'rsa:a': {{key: '{key}', expired_ts: 5}}}}"),
            format!("{{'ed25519:': {{key: '{key}', expired_ts: 5}}}}"),
            "{'ed25519:a': {key: 'c2hvcnQ', expired_ts: 5}}".to_owned(),
            format!("{{'ed25519:a': {{key: '{key}'}}}}"),
            "[1]".to_owned(),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }
}
