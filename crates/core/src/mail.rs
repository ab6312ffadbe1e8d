//! E-mail, as Synapse sends it: the `email:` section of the config, the templates of the mails
//! and of the pages their links lead to, and an SMTP client.
//!
//! Templates are Jinja (rendered with minijinja), looked up by file name first in
//! `custom_template_directory`, then in the deprecated `email.template_dir`, then among
//! Myelin's own (`crates/core/templates/`), so an admin's Synapse templates keep working. HTML
//! templates are auto-escaped, as Synapse's.
//!
//! The SMTP client speaks plain SMTP, STARTTLS when the server offers it (`enable_tls`, the
//! default; required with `require_transport_security`) or TLS from the first byte
//! (`force_tls`), and authenticates with `smtp_user`/`smtp_pass` (AUTH PLAIN, or LOGIN when
//! that is all the server offers). One connection per mail, as Synapse.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::config::ConfigError;

/// How long an SMTP server has to connect and answer each command (Synapse's 30 s).
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The mails and pages Myelin renders, by Synapse's default file name.
const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    ("_base.html", include_str!("../templates/_base.html")),
    ("password_reset.html", include_str!("../templates/password_reset.html")),
    ("password_reset.txt", include_str!("../templates/password_reset.txt")),
    ("registration.html", include_str!("../templates/registration.html")),
    ("registration.txt", include_str!("../templates/registration.txt")),
    ("already_in_use.html", include_str!("../templates/already_in_use.html")),
    ("already_in_use.txt", include_str!("../templates/already_in_use.txt")),
    ("add_threepid.html", include_str!("../templates/add_threepid.html")),
    ("add_threepid.txt", include_str!("../templates/add_threepid.txt")),
    ("password_reset_confirmation.html", include_str!("../templates/password_reset_confirmation.html")),
    ("password_reset_failure.html", include_str!("../templates/validation_failure.html")),
    ("registration_failure.html", include_str!("../templates/validation_failure.html")),
    ("add_threepid_failure.html", include_str!("../templates/validation_failure.html")),
    ("password_reset_success.html", include_str!("../templates/password_reset_success.html")),
    ("registration_success.html", include_str!("../templates/validation_success.html")),
    ("add_threepid_success.html", include_str!("../templates/validation_success.html")),
    ("notif_mail.html", include_str!("../templates/notif_mail.html")),
    ("notif_mail.txt", include_str!("../templates/notif_mail.txt")),
    ("sso_error.html", include_str!("../templates/sso_error.html")),
    ("sso_redirect_confirm.html", include_str!("../templates/sso_redirect_confirm.html")),
    ("sso_login_idp_picker.html", include_str!("../templates/sso_login_idp_picker.html")),
    ("sso_account_deactivated.html", include_str!("../templates/sso_account_deactivated.html")),
    ("sso_auth_confirm.html", include_str!("../templates/sso_auth_confirm.html")),
    ("sso_auth_success.html", include_str!("../templates/sso_auth_success.html")),
    ("sso_auth_bad_user.html", include_str!("../templates/sso_auth_bad_user.html")),
    ("sso_auth_account_details.html", include_str!("../templates/sso_auth_account_details.html")),
    ("account_renewed.html", include_str!("../templates/account_renewed.html")),
    ("account_previously_renewed.html", include_str!("../templates/account_previously_renewed.html")),
    ("invalid_token.html", include_str!("../templates/invalid_token.html")),
    ("notice_expiry.html", include_str!("../templates/notice_expiry.html")),
    ("notice_expiry.txt", include_str!("../templates/notice_expiry.txt")),
];

/// What a template is for; each has a config key that may rename its file, as Synapse's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Template {
    /// The password reset mail.
    PasswordResetHtml,
    /// Its plain text part.
    PasswordResetText,
    /// The mail validating an address to register with.
    RegistrationHtml,
    /// Its plain text part.
    RegistrationText,
    /// The mail telling an address's owner it is in use already.
    AlreadyInUseHtml,
    /// Its plain text part.
    AlreadyInUseText,
    /// The mail validating an address to add to an account.
    AddThreepidHtml,
    /// Its plain text part.
    AddThreepidText,
    /// The page asking to confirm a password reset.
    PasswordResetConfirmation,
    /// The page shown when a reset link fails.
    PasswordResetFailure,
    /// The page shown when a registration link fails.
    RegistrationFailure,
    /// The page shown when an add-address link fails.
    AddThreepidFailure,
    /// The page shown once a password reset link is followed.
    PasswordResetSuccess,
    /// The page shown once a registration link is followed.
    RegistrationSuccess,
    /// The page shown once an add-address link is followed.
    AddThreepidSuccess,
    /// The mail about unread notifications.
    NotifMailHtml,
    /// Its plain text part.
    NotifMailText,
}

impl Template {
    const ALL: [Template; 17] = [
        Template::PasswordResetHtml,
        Template::PasswordResetText,
        Template::RegistrationHtml,
        Template::RegistrationText,
        Template::AlreadyInUseHtml,
        Template::AlreadyInUseText,
        Template::AddThreepidHtml,
        Template::AddThreepidText,
        Template::PasswordResetConfirmation,
        Template::PasswordResetFailure,
        Template::RegistrationFailure,
        Template::AddThreepidFailure,
        Template::PasswordResetSuccess,
        Template::RegistrationSuccess,
        Template::AddThreepidSuccess,
        Template::NotifMailHtml,
        Template::NotifMailText,
    ];

    /// The `email:` key naming its file (if it has one) and the default file name.
    fn key_and_default(self) -> (Option<&'static str>, &'static str) {
        match self {
            Template::PasswordResetHtml => (Some("password_reset_template_html"), "password_reset.html"),
            Template::PasswordResetText => (Some("password_reset_template_text"), "password_reset.txt"),
            Template::RegistrationHtml => (Some("registration_template_html"), "registration.html"),
            Template::RegistrationText => (Some("registration_template_text"), "registration.txt"),
            Template::AlreadyInUseHtml => (Some("already_in_use_template_html"), "already_in_use.html"),
            // Synapse reads the text part's name from the HTML key too (a slip kept for
            // compatibility: a renamed HTML file would be used as the text part).
            Template::AlreadyInUseText => (None, "already_in_use.txt"),
            Template::AddThreepidHtml => (Some("add_threepid_template_html"), "add_threepid.html"),
            Template::AddThreepidText => (Some("add_threepid_template_text"), "add_threepid.txt"),
            Template::PasswordResetConfirmation => (None, "password_reset_confirmation.html"),
            Template::PasswordResetFailure => {
                (Some("password_reset_template_failure_html"), "password_reset_failure.html")
            }
            Template::RegistrationFailure => (Some("registration_template_failure_html"), "registration_failure.html"),
            Template::AddThreepidFailure => (Some("add_threepid_template_failure_html"), "add_threepid_failure.html"),
            Template::PasswordResetSuccess => {
                (Some("password_reset_template_success_html"), "password_reset_success.html")
            }
            Template::RegistrationSuccess => (Some("registration_template_success_html"), "registration_success.html"),
            Template::AddThreepidSuccess => (Some("add_threepid_template_success_html"), "add_threepid_success.html"),
            Template::NotifMailHtml => (Some("notif_template_html"), "notif_mail.html"),
            Template::NotifMailText => (Some("notif_template_text"), "notif_mail.txt"),
        }
    }
}

/// The templates, loaded and checked when the config is read.
pub struct Templates {
    env: minijinja::Environment<'static>,
    names: std::collections::HashMap<Template, String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").field("names", &self.names).finish()
    }
}

impl Templates {
    /// Renders a template with `vars`.
    pub fn render(&self, which: Template, vars: &Map<String, Value>) -> Result<String, String> {
        let name = &self.names[&which];
        let template = self.env.get_template(name).map_err(|e| format!("template {name}: {e}"))?;
        template.render(vars).map_err(|e| format!("template {name}: {e}"))
    }
}

/// Loads the mails' templates (see [`template_environment`]), each checked now.
fn load_templates(
    dirs: Vec<PathBuf>,
    names: std::collections::HashMap<Template, String>,
    public_baseurl: &str,
) -> Result<Templates, String> {
    let env = template_environment(dirs, public_baseurl);
    // Missing or broken templates are configuration errors, found at start-up as on Synapse.
    for name in names.values() {
        env.get_template(name).map_err(|e| format!("template {name}: {e}"))?;
    }
    Ok(Templates { env, names })
}

/// The environment every page and mail template renders in: each name from the first of
/// `dirs` that has it, else Myelin's own; Synapse's two filters are there for templates
/// written for it: `format_ts(ms, strftime)` and `mxc_to_http(mxc, width, height, method)`.
pub(crate) fn template_environment(dirs: Vec<PathBuf>, public_baseurl: &str) -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.add_filter("format_ts", |ms: i64, format: String| format_ts(ms, &format));
    let base = public_baseurl.to_owned();
    env.add_filter("mxc_to_http", move |mxc: String, width: u32, height: u32, method: Option<String>| {
        let Some(rest) = mxc.strip_prefix("mxc://") else { return String::new() };
        let (path, fragment) = match rest.split_once('#') {
            Some((p, f)) => (p, format!("#{f}")),
            None => (rest, String::new()),
        };
        let method = method.unwrap_or_else(|| "crop".into());
        format!("{base}_matrix/media/v1/thumbnail/{path}?width={width}&height={height}&method={method}{fragment}")
    });
    env.set_loader(move |name| {
        for dir in &dirs {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => return Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("{}: {e}", path.display()),
                    ));
                }
            }
        }
        Ok(BUILTIN_TEMPLATES.iter().find(|(n, _)| *n == name).map(|(_, text)| (*text).to_owned()))
    });
    env
}

/// How to reach the SMTP server.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// `smtp_host` (default `localhost`).
    pub host: String,
    /// `smtp_port` (25, or 465 with `force_tls`).
    pub port: u16,
    /// `smtp_user`: authenticate as this user.
    pub user: Option<String>,
    /// `smtp_pass`.
    pub pass: Option<String>,
    /// `require_transport_security`: refuse to send unless STARTTLS succeeds.
    pub require_transport_security: bool,
    /// `enable_tls`: use STARTTLS when offered.
    pub enable_tls: bool,
    /// `force_tls`: TLS from the first byte (port 465).
    pub force_tls: bool,
    /// `tlsname`: the name to check the certificate against (default: `smtp_host`).
    pub tlsname: Option<String>,
}

/// Synapse's `email:` section, when it is there (without it, nothing is mailed and the e-mail
/// endpoints answer as Synapse does without e-mail).
#[derive(Debug, Clone)]
pub struct EmailSettings {
    /// The SMTP server.
    pub smtp: SmtpSettings,
    /// `notif_from`: the mails' `From`, where `%(app)s` is the app name.
    pub notif_from: String,
    /// `app_name` (default `Matrix`).
    pub app_name: String,
    /// `validation_token_lifetime` (default 1 hour).
    pub validation_token_lifetime: Duration,
    /// `subjects`, with Synapse's defaults for the ones not given.
    pub subjects: std::collections::HashMap<String, String>,
    /// `invite_client_location`.
    pub invite_client_location: Option<String>,
    /// `enable_notifs`: mail users about notifications they have not read.
    pub enable_notifs: bool,
    /// `notif_for_new_users` (default true): accounts registered with an address get an e-mail
    /// pusher for it.
    pub notif_for_new_users: bool,
    /// `client_base_url` (or the older `riot_base_url`): where the mails' links open rooms.
    pub client_base_url: String,
    /// `notif_delay_before_mail` (default 10 minutes): how long a notification stays unread
    /// before it is mailed.
    pub notif_delay_before_mail: Duration,
    /// The templates.
    pub templates: Arc<Templates>,
}

/// Synapse's default subjects (`%(server_name)s`, `%(app)s`, `%(person)s`, `%(room)s` and
/// `%(space)s` are filled in).
const DEFAULT_SUBJECTS: &[(&str, &str)] = &[
    ("message_from_person_in_room", "[%(app)s] You have a message on %(app)s from %(person)s in the %(room)s room..."),
    ("message_from_person", "[%(app)s] You have a message on %(app)s from %(person)s..."),
    ("messages_from_person", "[%(app)s] You have messages on %(app)s from %(person)s..."),
    ("messages_in_room", "[%(app)s] You have messages on %(app)s in the %(room)s room..."),
    ("messages_in_room_and_others", "[%(app)s] You have messages on %(app)s in the %(room)s room and others..."),
    ("messages_from_person_and_others", "[%(app)s] You have messages on %(app)s from %(person)s and others..."),
    ("invite_from_person", "[%(app)s] %(person)s has invited you to chat on %(app)s..."),
    ("invite_from_person_to_room", "[%(app)s] %(person)s has invited you to join the %(room)s room on %(app)s..."),
    ("invite_from_person_to_space", "[%(app)s] %(person)s has invited you to join the %(space)s space on %(app)s..."),
    ("password_reset", "[%(server_name)s] Password reset"),
    ("email_validation", "[%(server_name)s] Validate your email"),
    ("email_already_in_use", "[%(server_name)s] Email already in use"),
];

impl EmailSettings {
    /// The subject `key` with Python's `%(name)s` placeholders filled in from `vars`.
    pub fn subject(&self, key: &str, vars: &[(&str, &str)]) -> String {
        let mut subject = self.subjects.get(key).cloned().unwrap_or_default();
        for (name, value) in vars {
            subject = subject.replace(&format!("%({name})s"), value);
        }
        subject
    }

    /// The `From` header: `notif_from` with `%(app)s` filled in.
    pub fn from_header(&self) -> String {
        self.notif_from.replace("%(app)s", &self.app_name)
    }
}

/// Reads `email:` (and `custom_template_directory`, where templates are looked up first).
pub(crate) fn parse_email(
    root: &Map<String, Value>,
    resolve: &dyn Fn(String) -> PathBuf,
) -> Result<Option<EmailSettings>, ConfigError> {
    let at = |key: &str| vec!["email".to_owned(), key.to_owned()];
    let section = match root.get("email") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) if m.is_empty() => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ConfigError::at(&["email".into()], "expected a mapping")),
    };
    let string = |key: &str| -> Result<Option<String>, ConfigError> {
        match section.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ConfigError::at(&at(key), "expected a string")),
        }
    };
    let boolean = |key: &str, default: bool| -> Result<bool, ConfigError> {
        match section.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(ConfigError::at(&at(key), "expected a boolean")),
        }
    };
    let force_tls = boolean("force_tls", false)?;
    let enable_tls = boolean("enable_tls", true)?;
    let require_transport_security = boolean("require_transport_security", false)?;
    if force_tls && !enable_tls {
        return Err(ConfigError::at(&at("force_tls"), "email.force_tls requires email.enable_tls to be true"));
    }
    if require_transport_security && !enable_tls {
        return Err(ConfigError::at(
            &at("require_transport_security"),
            "email.require_transport_security requires email.enable_tls to be true",
        ));
    }
    let port = match section.get("smtp_port") {
        None | Some(Value::Null) => {
            if force_tls {
                465
            } else {
                25
            }
        }
        Some(v) => v
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| ConfigError::at(&at("smtp_port"), "expected a port number"))?,
    };
    let smtp = SmtpSettings {
        host: string("smtp_host")?.unwrap_or_else(|| "localhost".into()),
        port,
        user: string("smtp_user")?,
        pass: string("smtp_pass")?,
        require_transport_security,
        enable_tls,
        force_tls,
        tlsname: string("tlsname")?,
    };
    if root.get("trust_identity_server_for_password_resets").is_some_and(|v| v.as_bool() == Some(true)) {
        return Err(ConfigError::at(
            &["trust_identity_server_for_password_resets".into()],
            "The config option \"trust_identity_server_for_password_resets\" is no longer supported. \
             Please remove it from the config file.",
        ));
    }
    let notif_from = string("notif_from")?.ok_or_else(|| {
        ConfigError::at(
            &at("notif_from"),
            "Password reset emails are enabled on this homeserver due to a partial 'email' block. \
             However, the following required keys are missing: email.notif_from",
        )
    })?;
    if address_of(&notif_from).is_none() {
        return Err(ConfigError::at(&at("notif_from"), "Invalid notif_from address"));
    }
    let validation_token_lifetime = match section.get("validation_token_lifetime") {
        None | Some(Value::Null) => Duration::from_secs(3600),
        Some(v) => crate::config::parse_duration(v)
            .ok_or_else(|| ConfigError::at(&at("validation_token_lifetime"), "expected a duration such as 1h"))?,
    };
    let mut subjects: std::collections::HashMap<String, String> =
        DEFAULT_SUBJECTS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    match section.get("subjects") {
        None | Some(Value::Null) => {}
        Some(Value::Object(given)) => {
            for (key, value) in given {
                let Value::String(s) = value else {
                    return Err(ConfigError::at(
                        &["email".into(), "subjects".into(), key.clone()],
                        "expected a string",
                    ));
                };
                subjects.insert(key.clone(), s.clone());
            }
        }
        Some(_) => return Err(ConfigError::at(&at("subjects"), "expected a mapping")),
    }
    let invite_client_location = string("invite_client_location")?.filter(|s| !s.is_empty());
    if let Some(url) = &invite_client_location
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(ConfigError::at(
            &at("invite_client_location"),
            "Config option email.invite_client_location must be a http or https URL",
        ));
    }
    let mut dirs = Vec::new();
    match root.get("custom_template_directory") {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) => dirs.push(resolve(d.clone())),
        Some(_) => return Err(ConfigError::at(&["custom_template_directory".into()], "expected a string")),
    }
    if let Some(d) = string("template_dir")? {
        tracing::warn!("email.template_dir is deprecated: use custom_template_directory");
        dirs.push(resolve(d));
    }
    let mut names = std::collections::HashMap::new();
    for which in Template::ALL {
        let (key, default) = which.key_and_default();
        let name = match key {
            Some(key) => string(key)?.unwrap_or_else(|| default.to_owned()),
            None => default.to_owned(),
        };
        names.insert(which, name);
    }
    let public_baseurl = match root.get("public_baseurl").and_then(Value::as_str) {
        Some(u) if u.ends_with('/') => u.to_owned(),
        Some(u) => format!("{u}/"),
        None => String::new(),
    };
    let templates = load_templates(dirs, names, &public_baseurl).map_err(|e| ConfigError::at(&["email".into()], e))?;
    let notif_delay_before_mail = match section.get("notif_delay_before_mail") {
        None | Some(Value::Null) => Duration::from_secs(600),
        Some(v) => crate::config::parse_duration(v)
            .ok_or_else(|| ConfigError::at(&at("notif_delay_before_mail"), "expected a duration such as 10m"))?,
    };
    let client_base_url = match string("client_base_url")? {
        Some(u) => u,
        None => string("riot_base_url")?.unwrap_or_else(|| "https://matrix.to".into()),
    };
    Ok(Some(EmailSettings {
        smtp,
        notif_from,
        app_name: string("app_name")?.unwrap_or_else(|| "Matrix".into()),
        validation_token_lifetime,
        subjects,
        invite_client_location,
        enable_notifs: boolean("enable_notifs", false)?,
        notif_for_new_users: boolean("notif_for_new_users", true)?,
        client_base_url: client_base_url.trim_end_matches('/').to_owned(),
        notif_delay_before_mail,
        templates: Arc::new(templates),
    }))
}

/// Python's `strftime` for a time in milliseconds (UTC), for the directives templates use:
/// `%Y %m %d %H %M %S %y %b %B %a %A %p %I %%`.
fn format_ts(ms: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let secs = ms.div_euclid(1000);
    let (days, in_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (hour, minute, second) = (in_day / 3600, in_day % 3600 / 60, in_day % 60);
    // Days to a civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year.rem_euclid(100)),
            Some('m') => out += &format!("{month:02}"),
            Some('d') => out += &format!("{day:02}"),
            Some('H') => out += &format!("{hour:02}"),
            Some('I') => out += &format!("{:02}", if hour % 12 == 0 { 12 } else { hour % 12 }),
            Some('p') => out += if hour < 12 { "AM" } else { "PM" },
            Some('M') => out += &format!("{minute:02}"),
            Some('S') => out += &format!("{second:02}"),
            Some('b') => out += &month_name[..3],
            Some('B') => out += month_name,
            Some('a') => out += &weekday[..3],
            Some('A') => out += weekday,
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The bare address of `Name <user@host>` or `user@host`, as Python's `parseaddr` finds it.
fn address_of(header: &str) -> Option<&str> {
    let address = match (header.rfind('<'), header.rfind('>')) {
        (Some(open), Some(close)) if open < close => &header[open + 1..close],
        _ => header,
    };
    let address = address.trim();
    (address.contains('@') && !address.contains(char::is_whitespace)).then_some(address)
}

/// Synapse's `canonicalise_email` and `validate_email`: trimmed, one `@`, the local part case
/// folded and the domain lower-cased, 3 to 500 characters.
pub fn canonical_email(address: &str) -> Result<String, &'static str> {
    let address = address.trim();
    let mut parts = address.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("Unable to parse email address");
    };
    let canonical = format!("{}@{}", local.to_lowercase(), domain.to_lowercase());
    if canonical.chars().count() < 3 || canonical.chars().count() > 500 {
        return Err("Unable to parse email address");
    }
    Ok(canonical)
}

/// A mail ready to send: a `multipart/alternative` with a text and an HTML part.
pub struct Mail {
    /// `From`.
    pub from: String,
    /// The recipient's address.
    pub to: String,
    /// `Subject`.
    pub subject: String,
    /// The plain text part.
    pub text: String,
    /// The HTML part.
    pub html: String,
    /// More headers (`List-Unsubscribe`).
    pub headers: Vec<(String, String)>,
}

impl Mail {
    /// The message as it goes over SMTP (CRLF line ends, parts base64-encoded).
    fn to_message(&self, message_id_domain: &str) -> String {
        use rand::Rng;
        let random = |n: usize| -> String {
            rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(n).map(char::from).collect()
        };
        let boundary = format!("=_myelin_{}", random(24));
        let header_text = |s: &str| -> String {
            if s.is_ascii() && !s.contains(['\r', '\n']) {
                s.to_owned()
            } else {
                format!("=?utf-8?b?{}?=", base64::engine::general_purpose::STANDARD.encode(s))
            }
        };
        let body = |s: &str| -> String {
            let encoded = base64::engine::general_purpose::STANDARD.encode(s);
            encoded.as_bytes().chunks(76).map(|c| String::from_utf8_lossy(c).into_owned() + "\r\n").collect()
        };
        let mut m = String::new();
        m += &format!("Subject: {}\r\n", header_text(&self.subject));
        m += &format!("From: {}\r\n", header_text(&self.from));
        m += &format!("To: {}\r\n", header_text(&self.to));
        m += &format!("Date: {}\r\n", httpdate::fmt_http_date(std::time::SystemTime::now()));
        m += &format!("Message-ID: <{}@{}>\r\n", random(32), message_id_domain);
        // Discourage automatic replies (RFC 3834, and Exchange's own header), as Synapse.
        m += "Auto-Submitted: auto-generated\r\nX-Auto-Response-Suppress: All\r\n";
        for (name, value) in &self.headers {
            m += &format!("{name}: {}\r\n", header_text(value));
        }
        m += &format!("MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n");
        for (kind, content) in [("plain", &self.text), ("html", &self.html)] {
            m += &format!(
                "--{boundary}\r\nContent-Type: text/{kind}; charset=\"utf-8\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{}",
                body(content)
            );
        }
        m += &format!("--{boundary}--\r\n");
        m
    }
}

/// A connection that may be upgraded to TLS midway.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One SMTP conversation.
struct Conversation {
    io: BufReader<Box<dyn Io>>,
}

impl Conversation {
    /// Reads a reply: its code and the text of its lines.
    async fn reply(&mut self) -> Result<(u16, Vec<String>), String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(SMTP_TIMEOUT, self.io.read_line(&mut line))
                .await
                .map_err(|_| "the SMTP server did not answer in time".to_owned())?
                .map_err(|e| format!("reading from the SMTP server: {e}"))?;
            if n == 0 {
                return Err("the SMTP server closed the connection".into());
            }
            let line = line.trim_end();
            let code =
                line.get(..3).and_then(|c| c.parse::<u16>().ok()).ok_or_else(|| format!("bad SMTP reply {line:?}"))?;
            lines.push(line.get(4..).unwrap_or_default().to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, lines));
            }
        }
    }

    /// Sends a command and reads its reply, which must have the `expected` code.
    async fn command(&mut self, command: &str, expected: u16) -> Result<Vec<String>, String> {
        self.send(command).await?;
        self.expect(command.split(' ').next().unwrap_or(command), expected).await
    }

    async fn send(&mut self, text: &str) -> Result<(), String> {
        let io = self.io.get_mut();
        io.write_all(text.as_bytes()).await.map_err(|e| format!("writing to the SMTP server: {e}"))?;
        io.write_all(b"\r\n").await.map_err(|e| format!("writing to the SMTP server: {e}"))?;
        io.flush().await.map_err(|e| format!("writing to the SMTP server: {e}"))
    }

    async fn expect(&mut self, what: &str, expected: u16) -> Result<Vec<String>, String> {
        let (code, lines) = self.reply().await?;
        if code != expected {
            return Err(format!("the SMTP server answered {what} with {code} {}", lines.join(" ")));
        }
        Ok(lines)
    }
}

/// Sends `mail` through the SMTP server; `insecure_tls` skips certificate checks
/// (`use_insecure_ssl_client_just_for_testing_do_not_use`).
pub async fn send(settings: &SmtpSettings, insecure_tls: bool, helo_name: &str, mail: &Mail) -> Result<(), String> {
    let from = address_of(&mail.from).ok_or("Invalid 'from' address")?.to_owned();
    let to = address_of(&mail.to).ok_or("Invalid 'to' address")?.to_owned();
    if [&from, &to].iter().any(|a| a.contains(['\r', '\n', '<', '>'])) {
        return Err("Invalid address".into());
    }
    let tcp =
        tokio::time::timeout(SMTP_TIMEOUT, tokio::net::TcpStream::connect((settings.host.as_str(), settings.port)))
            .await
            .map_err(|_| format!("connecting to {}:{} timed out", settings.host, settings.port))?
            .map_err(|e| format!("connecting to {}:{}: {e}", settings.host, settings.port))?;
    let tls_name = settings.tlsname.clone().unwrap_or_else(|| settings.host.clone());
    let tls = || -> Result<tokio_rustls::TlsConnector, String> {
        let config = crate::federation::client::web_tls_config(insecure_tls)?;
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    };
    let server_name =
        || rustls_pki_types::ServerName::try_from(tls_name.clone()).map_err(|e| format!("tlsname {tls_name}: {e}"));
    let (io, mut secure): (Box<dyn Io>, bool) = if settings.force_tls {
        let stream = tls()?.connect(server_name()?, tcp).await.map_err(|e| format!("TLS with the SMTP server: {e}"))?;
        (Box::new(stream), true)
    } else {
        (Box::new(tcp), false)
    };
    let mut c = Conversation { io: BufReader::new(io) };
    c.expect("the greeting", 220).await?;
    let mut extensions = c.command(&format!("EHLO {helo_name}"), 250).await?;
    let offers = |extensions: &[String], name: &str| {
        extensions.iter().any(|e| e.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case(name)))
    };
    if !secure && settings.enable_tls && offers(&extensions, "STARTTLS") {
        c.command("STARTTLS", 220).await?;
        if !c.io.buffer().is_empty() {
            return Err("the SMTP server sent data before TLS began".into());
        }
        let plain = c.io.into_inner();
        let stream =
            tls()?.connect(server_name()?, plain).await.map_err(|e| format!("TLS with the SMTP server: {e}"))?;
        c = Conversation { io: BufReader::new(Box::new(stream)) };
        secure = true;
        extensions = c.command(&format!("EHLO {helo_name}"), 250).await?;
    }
    if settings.require_transport_security && !secure {
        return Err("the SMTP server does not offer STARTTLS, and require_transport_security is set".into());
    }
    if let Some(user) = &settings.user {
        let pass = settings.pass.as_deref().unwrap_or_default();
        let mechanisms: Vec<String> = extensions
            .iter()
            .filter_map(|e| e.strip_prefix("AUTH ").or_else(|| e.strip_prefix("AUTH=")))
            .flat_map(|m| m.split_whitespace().map(str::to_ascii_uppercase))
            .collect();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        if mechanisms.iter().any(|m| m == "PLAIN") {
            c.command(&format!("AUTH PLAIN {}", b64(&format!("\0{user}\0{pass}"))), 235).await?;
        } else if mechanisms.iter().any(|m| m == "LOGIN") {
            c.command("AUTH LOGIN", 334).await?;
            c.command(&b64(user), 334).await?;
            c.command(&b64(pass), 235).await?;
        } else {
            return Err("the SMTP server offers no authentication Myelin can use (PLAIN or LOGIN)".into());
        }
    }
    c.command(&format!("MAIL FROM:<{from}>"), 250).await?;
    c.command(&format!("RCPT TO:<{to}>"), 250).await?;
    c.command("DATA", 354).await?;
    let message = mail.to_message(helo_name);
    // Dot-stuffing: a line that starts with '.' gets another.
    let stuffed: String = message
        .split("\r\n")
        .map(|l| if l.starts_with('.') { format!(".{l}") } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\r\n");
    c.send(&format!("{}.", stuffed)).await?;
    c.expect("the message", 250).await?;
    let _ = c.command("QUIT", 221).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_canonical_as_synapse_makes_them() {
        assert_eq!(canonical_email("  Alice.B@Example.ORG ").unwrap(), "alice.b@example.org");
        assert!(canonical_email("no-at-sign").is_err());
        assert!(canonical_email("two@at@signs").is_err());
        assert!(canonical_email("@").is_err());
    }

    #[test]
    fn timestamps_format_as_python_strftime_does() {
        // 2026-12-07 21:24:30 UTC, a Monday.
        let ms = 1_796_678_670_000;
        assert_eq!(format_ts(ms, "%Y-%m-%d %H:%M:%S"), "2026-12-07 21:24:30");
        assert_eq!(format_ts(ms, "%a %d %b %I:%M %p %%"), "Mon 07 Dec 09:24 PM %");
        assert_eq!(format_ts(0, "%A %B %y"), "Thursday January 70");
    }

    #[test]
    fn from_headers_name_one_address() {
        assert_eq!(address_of("Matrix <noreply@example.org>"), Some("noreply@example.org"));
        assert_eq!(address_of("noreply@example.org"), Some("noreply@example.org"));
        assert_eq!(address_of("nobody"), None);
    }
}
