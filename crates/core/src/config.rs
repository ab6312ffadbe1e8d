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
    /// SQLite database file.
    pub database_path: PathBuf,
    /// Signing key file.
    pub signing_key_path: PathBuf,
    /// Media store directory.
    pub media_store_path: PathBuf,
    /// Largest accepted request body or upload, in bytes.
    pub max_upload_size: u64,
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
    /// Who may publish rooms to the directory; empty allows everyone.
    pub room_list_publication_rules: Vec<crate::PublicationRule>,
    /// `user_directory.search_all_users`.
    pub search_all_users: bool,
    /// `presence.enabled`: with it off, presence is accepted and never shown.
    pub presence_enabled: bool,
    /// One line per unknown or unsupported key.
    pub warnings: Vec<String>,
}

/// Top-level keys Myelin reads. Others are warned about.
const KNOWN_KEYS: &[&str] = &[
    "server_name",
    "public_baseurl",
    "listeners",
    "database",
    "signing_key_path",
    "media_store_path",
    "max_upload_size",
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
];

/// Room versions Myelin can create and participate in.
pub const SUPPORTED_ROOM_VERSIONS: &[&str] = &["10", "11"];

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

impl Config {
    /// Reads and validates a config file. Relative paths in it are relative to its directory.
    /// Runs every module's `parse_config`, as Synapse does at config load.
    pub fn load(path: &Path, natives: &NativeModules) -> Result<(Config, Vec<LoadedModule>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: vec![],
            lines: vec![format!("Could not read config file {}: {e}", path.display())],
            raw: false,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &base, natives)
    }

    /// Validates config text; `base` anchors relative paths.
    pub fn parse(text: &str, base: &Path, natives: &NativeModules) -> Result<(Config, Vec<LoadedModule>), ConfigError> {
        let value: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigError {
            path: vec![],
            lines: vec![format!("Invalid YAML: {e}")],
            raw: false,
        })?;
        let root = match value {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            _ => return Err(ConfigError::at(&[], "expected a mapping at the top level")),
        };
        let w = Walker { path: vec![], root: &root };
        let mut warnings = Vec::new();
        for key in root.keys() {
            if !KNOWN_KEYS.contains(&key.as_str()) {
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

        let listeners = parse_listeners(root.get("listeners"))?;
        let public_baseurl = match w.string("public_baseurl")? {
            Some(u) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(w.err("public_baseurl", "expected a URL starting with http:// or https://"));
                }
                if u.ends_with('/') { u } else { format!("{u}/") }
            }
            None => format!("https://{server_name}/"),
        };

        let database_path = match root.get("database") {
            None | Some(Value::Null) => resolve("homeserver.db".into()),
            Some(Value::Object(db)) => {
                let dw = Walker { path: vec!["database".into()], root: db };
                let name = dw.string("name")?.unwrap_or_else(|| "sqlite3".into());
                if name != "sqlite3" {
                    return Err(
                        dw.err("name", format!("Unsupported database type '{name}': this Myelin supports 'sqlite3'"))
                    );
                }
                match db.get("args") {
                    None | Some(Value::Null) => resolve("homeserver.db".into()),
                    Some(Value::Object(args)) => {
                        let aw = Walker { path: vec!["database".into(), "args".into()], root: args };
                        resolve(aw.string("database")?.unwrap_or_else(|| "homeserver.db".into()))
                    }
                    Some(_) => return Err(dw.err("args", "expected a mapping")),
                }
            }
            Some(_) => return Err(w.err("database", "expected a mapping")),
        };

        let signing_key_path =
            resolve(w.string("signing_key_path")?.unwrap_or_else(|| format!("{server_name}.signing.key")));
        let media_store_path = resolve(w.string("media_store_path")?.unwrap_or_else(|| "media_store".into()));
        let max_upload_size = match root.get("max_upload_size") {
            None | Some(Value::Null) => 50 * 1024 * 1024,
            Some(v) => parse_size(v).ok_or_else(|| w.err("max_upload_size", "expected a size such as 50M"))?,
        };
        let enable_registration = w.boolean("enable_registration", false)?;
        let without_verification = w.boolean("enable_registration_without_verification", false)?;
        let registration_requires_token = w.boolean("registration_requires_token", false)?;
        if enable_registration && !without_verification && !registration_requires_token {
            return Err(ConfigError::at(
                &[],
                "You have enabled open registration without any verification. This is a known vector \
                 for spam and abuse. If you would like to allow public registration, please consider \
                 adding email, captcha, or token-based verification. Otherwise this check can be removed \
                 by setting the `enable_registration_without_verification` config option to `true`.",
            ));
        }
        let default_room_version = match root.get("default_room_version") {
            None | Some(Value::Null) => "10".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err(w.err("default_room_version", "expected a string")),
        };
        if !SUPPORTED_ROOM_VERSIONS.contains(&default_room_version.as_str()) {
            return Err(w.err("default_room_version", format!("Unknown room version '{default_room_version}'")));
        }
        let log_level = w.string("log_level")?.unwrap_or_else(|| "info".into()).to_lowercase();
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
        let config = Config {
            room_list_publication_rules,
            search_all_users,
            presence_enabled,
            server_name,
            public_baseurl,
            listeners,
            database_path,
            signing_key_path,
            media_store_path,
            max_upload_size,
            enable_registration,
            registration_requires_token,
            allow_guest_access: w.boolean("allow_guest_access", false)?,
            registration_shared_secret: w.string("registration_shared_secret")?,
            default_room_version,
            log_level: if log_level == "warning" { "warn".into() } else { log_level },
            warnings,
        };
        Ok((config, modules))
    }
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

fn parse_listeners(value: Option<&Value>) -> Result<Vec<Listener>, ConfigError> {
    let items = match value {
        None | Some(Value::Null) => {
            return Ok(vec![Listener {
                port: 8008,
                bind_addresses: vec!["127.0.0.1".into()],
                resources: vec!["client".into(), "federation".into()],
            }]);
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ConfigError::at(&["listeners".into()], "expected a list")),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = vec!["listeners".to_owned(), format!("<item {i}>")];
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
        if kind != "http" {
            // Synapse's other listener types (metrics, manhole) are not served by Myelin.
            continue;
        }
        if w.boolean("tls", false)? {
            return Err(w.err("tls", "TLS listeners are not supported yet; terminate TLS in a reverse proxy"));
        }
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
                                Value::String(s) => resources.push(s.clone()),
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
        out.push(Listener { port, bind_addresses, resources });
    }
    Ok(out)
}

/// The commented config written on first run.
pub fn generate_config(server_name: &str, data_dir: &str) -> String {
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
    bind_addresses: ["127.0.0.1"]
    resources:
      - names: [client, federation]

# The embedded SQLite database (relative paths are relative to this file).
database:
  name: sqlite3
  args:
    database: "{data_dir}/homeserver.db"

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
