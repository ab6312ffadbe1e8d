//! Third-party identifiers on accounts, as Synapse keeps them: e-mail addresses a user proved
//! by following a link this server mailed them (validation sessions), added at registration
//! (`m.login.email.identity`), later (`/account/3pid/add`), used to reset a forgotten password
//! and to log in (`m.id.thirdparty`), and removed (`/account/3pid/delete`, deactivation).
//!
//! Phone numbers (`msisdn`) need an SMS provider Myelin does not have: their endpoints answer
//! as Synapse's do without `account_threepid_delegates.msisdn`.

use serde_json::{Map, Value, json};

use crate::config::ConfigError;
use crate::mail::{Mail, Template, canonical_email};
use crate::server::{now_ms, random_string};
use crate::{Error, ErrorKind, Homeserver, Result};
use myelin_storage::{ThreepidRow, ThreepidSessionRow};

/// Third-party identifier settings (Synapse's registration and server sections).
#[derive(Debug, Clone, Default)]
pub struct ThreepidSettings {
    /// `registrations_require_3pid`: registration must prove these media (`email`).
    pub registrations_require_3pid: Vec<String>,
    /// `enable_3pid_changes` (default true): users may add and remove identifiers.
    pub enable_3pid_changes: bool,
    /// `request_token_inhibit_3pid_errors`: `requestToken` never tells whether an address is
    /// in use (a fake `sid` after a random pause).
    pub request_token_inhibit_3pid_errors: bool,
    /// `next_link_domain_whitelist`: the hosts a `next_link` may point at (`None`: any).
    pub next_link_domain_whitelist: Option<Vec<String>>,
    /// `allowed_local_3pids`: `(medium, pattern)`; when non-empty, only matching identifiers.
    pub allowed_local_3pids: Vec<(String, regex::Regex)>,
}

impl ThreepidSettings {
    pub(crate) fn parse(root: &Map<String, Value>, email_configured: bool) -> Result<Self, ConfigError> {
        let at = |key: &str| vec![key.to_owned()];
        let boolean = |key: &str, default: bool| match root.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(ConfigError::at(&at(key), "expected a boolean")),
        };
        let strings = |key: &str| -> Result<Option<Vec<String>>, ConfigError> {
            match root.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| ConfigError::at(&at(key), "expected strings")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(ConfigError::at(&at(key), "expected a list")),
            }
        };
        let registrations_require_3pid = strings("registrations_require_3pid")?.unwrap_or_default();
        for medium in &registrations_require_3pid {
            match medium.as_str() {
                "email" if !email_configured => {
                    return Err(ConfigError::at(
                        &at("registrations_require_3pid"),
                        "Configuration requires email address at registration, but email validation is not configured",
                    ));
                }
                "email" => {}
                "msisdn" => {
                    return Err(ConfigError::at(
                        &at("registrations_require_3pid"),
                        "Configuration requires msisdn at registration, but msisdn validation is not configured",
                    ));
                }
                other => {
                    return Err(ConfigError::at(
                        &at("registrations_require_3pid"),
                        format!("unknown medium '{other}'"),
                    ));
                }
            }
        }
        let mut allowed_local_3pids = Vec::new();
        match root.get("allowed_local_3pids") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let here = vec!["allowed_local_3pids".to_owned(), format!("<item {i}>")];
                    let (Some(medium), Some(pattern)) = (item["medium"].as_str(), item["pattern"].as_str()) else {
                        return Err(ConfigError::at(&here, "expected a mapping with 'medium' and 'pattern'"));
                    };
                    // Python's re.match: anchored at the start only.
                    let regex = regex::Regex::new(&format!("^(?:{pattern})"))
                        .map_err(|e| ConfigError::at(&here, format!("invalid pattern: {e}")))?;
                    allowed_local_3pids.push((medium.to_owned(), regex));
                }
            }
            Some(_) => return Err(ConfigError::at(&at("allowed_local_3pids"), "expected a list")),
        }
        Ok(ThreepidSettings {
            registrations_require_3pid,
            enable_3pid_changes: boolean("enable_3pid_changes", true)?,
            request_token_inhibit_3pid_errors: boolean("request_token_inhibit_3pid_errors", false)?,
            next_link_domain_whitelist: strings("next_link_domain_whitelist")?,
            allowed_local_3pids,
        })
    }

    /// Synapse's `check_3pid_allowed` (its configured part).
    pub(crate) fn allows(&self, medium: &str, address: &str) -> bool {
        self.allowed_local_3pids.is_empty()
            || self.allowed_local_3pids.iter().any(|(m, pattern)| m == medium && pattern.is_match(address))
    }
}

/// Why an e-mail validation token is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    /// `/register/email/requestToken`.
    Registration,
    /// `/account/password/email/requestToken`.
    PasswordReset,
    /// `/account/3pid/email/requestToken`.
    AddThreepid,
}

/// Which link of a validation mail was followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitPage {
    /// `/_matrix/client/unstable/registration/email/submit_token`.
    Registration,
    /// `/_matrix/client/unstable/add_threepid/email/submit_token`.
    AddThreepid,
    /// `/_synapse/client/password_reset/email/submit_token` (after its confirmation page).
    PasswordReset,
}

/// What following a validation link shows: a page, or a redirect to the client's `next_link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// An HTML page with this status.
    Page(u16, String),
    /// A 302 to this URL.
    Redirect(String),
}

/// A validated third-party identifier from a validation session (a UIA stage's result).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub(crate) struct ValidatedThreepid {
    pub medium: String,
    pub address: String,
    pub validated_at: i64,
}

fn coded(status: u16, errcode: &str, message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Module { status, errcode: errcode.into() }, message)
}

/// Synapse's `assert_valid_client_secret`.
pub(crate) fn check_client_secret(secret: &str) -> Result<()> {
    let ok = !secret.is_empty()
        && secret.len() <= 255
        && secret.chars().all(|c| c.is_ascii_alphanumeric() || ".=_-".contains(c));
    if ok { Ok(()) } else { Err(Error::invalid_param("Invalid client_secret parameter")) }
}

/// A field of a `requestToken` body, typed as Synapse's models check it.
fn field<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

fn required_string<'a>(body: &'a Value, key: &str) -> Result<&'a str> {
    match field(body, key) {
        None => Err(Error::new(ErrorKind::MissingParam, format!("Missing params: ['{key}']"))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Error::bad_json(format!("{key}: Input should be a valid string"))),
    }
}

/// The parts of an e-mail `requestToken` body.
struct TokenRequest {
    client_secret: String,
    email: String,
    send_attempt: i64,
    next_link: Option<String>,
}

impl TokenRequest {
    fn parse(body: &Value, purpose: TokenPurpose) -> Result<TokenRequest> {
        if !body.is_object() {
            return Err(Error::bad_json("Content not JSON."));
        }
        // Registration's servlet checks presence first and answers a bad address with
        // M_UNKNOWN; the others validate a model (bad address: M_INVALID_PARAM).
        let missing: Vec<&str> =
            ["client_secret", "email", "send_attempt"].into_iter().filter(|k| field(body, k).is_none()).collect();
        if !missing.is_empty() {
            return Err(Error::new(ErrorKind::MissingParam, format!("Missing params: {missing:?}")));
        }
        let client_secret = required_string(body, "client_secret")?.to_owned();
        check_client_secret(&client_secret)?;
        let email = required_string(body, "email")?;
        let email = canonical_email(email).map_err(|why| match purpose {
            TokenPurpose::Registration => Error::new(ErrorKind::BadRequest, why),
            _ => Error::invalid_param(why),
        })?;
        let send_attempt = match field(body, "send_attempt") {
            Some(Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or_default(),
            _ => return Err(Error::bad_json("send_attempt: Input should be a valid integer")),
        };
        let next_link = match field(body, "next_link") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(Error::bad_json("next_link: Input should be a valid string")),
        };
        if field(body, "id_server").is_some() && field(body, "id_access_token").is_none() {
            return Err(Error::invalid_param("id_access_token is required if an id_server is supplied."));
        }
        Ok(TokenRequest { client_secret, email, send_attempt, next_link })
    }
}

impl Homeserver {
    /// The e-mail settings, or the error the endpoint gives without them.
    fn email_or(&self, error: Error) -> Result<&crate::mail::EmailSettings> {
        self.config.email.as_ref().ok_or(error)
    }

    /// `POST .../email/requestToken` for registration, password reset or adding an address:
    /// mails a validation link and answers the session ID (`sid`).
    pub async fn request_email_token(&self, purpose: TokenPurpose, body: &Value, ip: &str) -> Result<Value> {
        match purpose {
            TokenPurpose::Registration => {
                self.email_or(Error::new(
                    ErrorKind::BadRequest,
                    "Email-based registration has been disabled on this server",
                ))?;
                if !self.config.enable_registration {
                    return Err(Error::forbidden("Registration is disabled on this homeserver"));
                }
            }
            TokenPurpose::PasswordReset => {
                self.email_or(Error::new(
                    ErrorKind::BadRequest,
                    "Email-based password resets have been disabled on this server",
                ))?;
            }
            TokenPurpose::AddThreepid => {
                self.require_3pid_changes()?;
                self.email_or(coded(
                    400,
                    "M_THREEPID_MEDIUM_NOT_SUPPORTED",
                    "Adding an email to your account is disabled on this server",
                ))?;
            }
        }
        let request = TokenRequest::parse(body, purpose)?;
        if purpose != TokenPurpose::PasswordReset
            && !self.threepid_allowed("email", &request.email, purpose == TokenPurpose::Registration).await?
        {
            let message = match purpose {
                TokenPurpose::Registration => "Your email domain is not authorized to register on this server",
                _ => "Your email domain is not authorized on this server",
            };
            return Err(coded(403, "M_THREEPID_DENIED", message));
        }
        if purpose != TokenPurpose::Registration
            && let Some(link) = &request.next_link
        {
            self.check_next_link(link)?;
        }
        // `rc_3pid_validation`, per client address and per address mailed.
        self.limiters.three_pid_validation.check(&format!("email {ip}"))?;
        self.limiters.three_pid_validation.check(&format!("email {}", request.email))?;
        let email = request.email.clone();
        let owner = self.db(move |s| s.user_by_threepid("email", &email)).await?;
        let inhibit = self.config.threepids.request_token_inhibit_3pid_errors;
        let refuse = match (purpose, &owner) {
            (TokenPurpose::PasswordReset, None) => Some(coded(400, "M_THREEPID_NOT_FOUND", "Email not found")),
            (TokenPurpose::Registration | TokenPurpose::AddThreepid, Some(_)) => {
                Some(coded(400, "M_THREEPID_IN_USE", "Email is already in use"))
            }
            _ => None,
        };
        if let Some(refusal) = refuse {
            if !inhibit {
                return Err(refusal);
            }
            // Look as if a mail went out; a registration still warns the address's owner.
            if purpose == TokenPurpose::Registration {
                let vars = Map::new();
                if let Err(why) =
                    self.mail(&request.email, "email_already_in_use", Template::AlreadyInUseHtml, vars).await
                {
                    tracing::warn!(reason = %why, "could not send the already-in-use mail");
                }
            }
            use rand::Rng;
            let pause = rand::thread_rng().gen_range(100..=1000);
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            return Ok(json!({"sid": random_string(16)}));
        }
        let sid = self.send_validation_mail(purpose, request).await?;
        Ok(json!({"sid": sid}))
    }

    /// 400 `M_FORBIDDEN` unless `enable_3pid_changes`.
    fn require_3pid_changes(&self) -> Result<()> {
        if self.config.threepids.enable_3pid_changes {
            Ok(())
        } else {
            Err(coded(400, "M_FORBIDDEN", "3PID changes are disabled on this server"))
        }
    }

    /// Synapse's `check_3pid_allowed`: the modules' `is_3pid_allowed`, then
    /// `allowed_local_3pids`.
    pub(crate) async fn threepid_allowed(&self, medium: &str, address: &str, registration: bool) -> Result<bool> {
        Ok(self.modules.is_3pid_allowed(medium, address, registration).await?
            && self.config.threepids.allows(medium, address))
    }

    /// Synapse's `assert_valid_next_link`: not a `file:` URL, and on a listed host if
    /// `next_link_domain_whitelist` is set.
    fn check_next_link(&self, link: &str) -> Result<()> {
        let parsed = reqwest::Url::parse(link).ok();
        let scheme_ok = parsed.as_ref().is_none_or(|u| u.scheme() != "file");
        let host_ok = match &self.config.threepids.next_link_domain_whitelist {
            None => true,
            Some(hosts) => parsed.as_ref().and_then(|u| u.host_str()).is_some_and(|h| hosts.iter().any(|a| a == h)),
        };
        if scheme_ok && host_ok {
            Ok(())
        } else {
            Err(Error::invalid_param("'next_link' domain not included in whitelist, or not http(s)"))
        }
    }

    /// Synapse's `send_threepid_validation`: a repeated `send_attempt` of the same session
    /// sends nothing; otherwise a new token is mailed, valid for `validation_token_lifetime`.
    async fn send_validation_mail(&self, purpose: TokenPurpose, request: TokenRequest) -> Result<String> {
        let email_settings = self.config.email.as_ref().ok_or_else(|| Error::internal("no email config"))?;
        let (secret, address) = (request.client_secret.clone(), request.email.clone());
        let existing = self.db(move |s| s.unvalidated_threepid_session("email", &secret, &address)).await?;
        let session_id = match &existing {
            Some(session) if request.send_attempt <= session.last_send_attempt => {
                return Ok(session.session_id.clone());
            }
            Some(session) => session.session_id.clone(),
            None => random_string(16),
        };
        // The link in the mail comes back with the session ID the client only learns from
        // this answer.
        let next_link = request.next_link.as_ref().map(|link| {
            let joiner = if link.contains('?') { '&' } else { '?' };
            format!("{link}{joiner}sid={}", crate::server::url_encode(&session_id))
        });
        let token = random_string(32);
        let query = format!(
            "token={}&client_secret={}&sid={}",
            crate::server::url_encode(&token),
            crate::server::url_encode(&request.client_secret),
            crate::server::url_encode(&session_id)
        );
        let base = &self.config.public_baseurl;
        let (path, subject, template) = match purpose {
            TokenPurpose::PasswordReset => {
                ("_synapse/client/password_reset/email/submit_token", "password_reset", Template::PasswordResetHtml)
            }
            TokenPurpose::Registration => (
                "_matrix/client/unstable/registration/email/submit_token",
                "email_validation",
                Template::RegistrationHtml,
            ),
            TokenPurpose::AddThreepid => (
                "_matrix/client/unstable/add_threepid/email/submit_token",
                "email_validation",
                Template::AddThreepidHtml,
            ),
        };
        let mut vars = Map::new();
        vars.insert("link".into(), json!(format!("{base}{path}?{query}")));
        if let Err(why) = self.mail(&request.email, subject, template, vars).await {
            tracing::error!(reason = %why, "error sending a threepid validation email");
            return Err(Error::new(
                ErrorKind::Module { status: 500, errcode: "M_UNKNOWN".into() },
                "An error was encountered when sending the email",
            ));
        }
        let expires = now_ms() + email_settings.validation_token_lifetime.as_millis() as i64;
        let session = ThreepidSessionRow {
            session_id: session_id.clone(),
            medium: "email".into(),
            address: request.email,
            client_secret: request.client_secret,
            last_send_attempt: request.send_attempt,
            validated_at: None,
        };
        self.db(move |s| s.save_threepid_token(&session, &token, next_link.as_deref(), expires)).await?;
        Ok(session_id)
    }

    /// Renders a mail from its HTML template (the text one is its pair) and sends it.
    async fn mail(
        &self,
        to: &str,
        subject_key: &str,
        html: Template,
        mut vars: Map<String, Value>,
    ) -> Result<(), String> {
        let settings = self.config.email.as_ref().ok_or("no email config")?;
        let text = match html {
            Template::PasswordResetHtml => Template::PasswordResetText,
            Template::RegistrationHtml => Template::RegistrationText,
            Template::AlreadyInUseHtml => Template::AlreadyInUseText,
            Template::AddThreepidHtml => Template::AddThreepidText,
            other => return Err(format!("{other:?} is not a mail")),
        };
        vars.insert("app_name".into(), json!(settings.app_name));
        vars.insert("server_name".into(), json!(self.server_name()));
        let mail = Mail {
            from: settings.from_header(),
            to: to.to_owned(),
            subject: settings.subject(subject_key, &[("server_name", self.server_name()), ("app", &settings.app_name)]),
            text: settings.templates.render(text, &vars)?,
            html: settings.templates.render(html, &vars)?,
            headers: Vec::new(),
        };
        tracing::info!(to, subject = %mail.subject, "sending email");
        crate::mail::send(&settings.smtp, self.config.insecure_outbound_tls, self.server_name(), &mail).await
    }

    /// Following a validation link: marks the session validated, as Synapse's
    /// `validate_threepid_session`, and answers the page (or the client's `next_link`).
    pub async fn submit_email_token(&self, page: SubmitPage, query: &Map<String, Value>) -> Result<SubmitOutcome> {
        let settings = match (page, self.config.email.as_ref()) {
            (_, Some(s)) => s,
            (SubmitPage::Registration, None) => {
                return Err(Error::new(ErrorKind::BadRequest, "Email-based registration is disabled on this server"));
            }
            (_, None) => {
                return Err(coded(
                    400,
                    "M_THREEPID_MEDIUM_NOT_SUPPORTED",
                    "Adding an email to your account is disabled on this server",
                ));
            }
        };
        let param =
            |key: &str| -> Result<String> {
                query.get(key).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| {
                    Error::new(ErrorKind::MissingParam, format!("Missing string query parameter '{key}'"))
                })
            };
        let (sid, client_secret, token) = (param("sid")?, param("client_secret")?, param("token")?);
        check_client_secret(&client_secret)?;
        let (failure, success) = match page {
            SubmitPage::Registration => (Template::RegistrationFailure, Template::RegistrationSuccess),
            SubmitPage::AddThreepid => (Template::AddThreepidFailure, Template::AddThreepidSuccess),
            SubmitPage::PasswordReset => (Template::PasswordResetFailure, Template::PasswordResetSuccess),
        };
        let render = |which: Template, vars: Map<String, Value>| {
            settings.templates.render(which, &vars).map_err(Error::internal)
        };
        match self.validate_threepid_token(&sid, &client_secret, &token).await? {
            Ok(Some(link)) if !link.starts_with("file:///") => Ok(SubmitOutcome::Redirect(link)),
            Ok(_) => Ok(SubmitOutcome::Page(200, render(success, Map::new())?)),
            Err(reason) => {
                let mut vars = Map::new();
                vars.insert("failure_reason".into(), json!(reason));
                Ok(SubmitOutcome::Page(400, render(failure, vars)?))
            }
        }
    }

    /// The password reset link's first page: a button confirming the reset (so that a mail
    /// scanner following links does not reset anything).
    pub fn password_reset_confirmation(&self, query: &Map<String, Value>) -> Result<String> {
        let settings = self.config.email.as_ref().ok_or_else(|| Error::not_found("Not found"))?;
        let mut vars = Map::new();
        for key in ["sid", "token", "client_secret"] {
            let value = query.get(key).and_then(Value::as_str).ok_or_else(|| {
                Error::new(ErrorKind::MissingParam, format!("Missing string query parameter '{key}'"))
            })?;
            vars.insert(key.into(), json!(value));
        }
        check_client_secret(vars["client_secret"].as_str().unwrap_or_default())?;
        settings.templates.render(Template::PasswordResetConfirmation, &vars).map_err(Error::internal)
    }

    /// Synapse's store `validate_threepid_session`, with its reasons for refusing.
    async fn validate_threepid_token(
        &self,
        sid: &str,
        client_secret: &str,
        token: &str,
    ) -> Result<std::result::Result<Option<String>, &'static str>> {
        let id = sid.to_owned();
        let Some(session) = self.db(move |s| s.threepid_session(&id)).await? else {
            return Ok(Err("Unknown session_id"));
        };
        let (id, t) = (sid.to_owned(), token.to_owned());
        let Some((expires, next_link)) = self.db(move |s| s.threepid_token(&id, &t)).await? else {
            return Ok(Err("Validation token not found or has expired"));
        };
        if session.client_secret != client_secret {
            return Ok(Err("This client_secret does not match the provided session_id"));
        }
        if session.validated_at.is_some() {
            return Ok(Ok(next_link));
        }
        let now = now_ms();
        if expires <= now {
            return Ok(Err("This token has expired. Please request a new one"));
        }
        let id = sid.to_owned();
        self.db(move |s| s.validate_threepid_session(&id, now)).await?;
        tracing::info!(medium = %session.medium, "third-party identifier validated");
        Ok(Ok(next_link))
    }

    /// The validated identifier of a client's session (`client_secret` and `sid`), if any.
    async fn validated_session(&self, client_secret: &str, sid: &str) -> Result<Option<ValidatedThreepid>> {
        if self.config.email.is_none() {
            return Ok(None);
        }
        let id = sid.to_owned();
        let session = self.db(move |s| s.threepid_session(&id)).await?;
        Ok(session.filter(|s| s.client_secret == client_secret && s.medium == "email").and_then(|s| {
            s.validated_at.map(|at| ValidatedThreepid { medium: s.medium, address: s.address, validated_at: at })
        }))
    }

    /// The `m.login.email.identity` UIA stage: the identifier its `threepid_creds` validated.
    /// The session is spent (deleted), as Synapse's checker does.
    pub(crate) async fn check_email_identity(&self, auth: &Map<String, Value>) -> Result<ValidatedThreepid> {
        let failed = |message: &str, errcode: &str| coded(401, errcode, message);
        let Some(creds) = auth.get("threepid_creds").or_else(|| auth.get("threepidCreds")) else {
            return Err(coded(400, "M_MISSING_PARAM", "Missing threepid_creds"));
        };
        if self.config.email.is_none() {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "Email address verification is not enabled on this homeserver",
            ));
        }
        let secret = creds.get("client_secret").or_else(|| creds.get("clientSecret")).and_then(Value::as_str);
        let sid = creds.get("sid").and_then(Value::as_str);
        let (Some(secret), Some(sid)) = (secret, sid) else {
            return Err(failed("Unable to get validated threepid", "M_UNAUTHORIZED"));
        };
        let found = self.validated_session(secret, sid).await?;
        let Some(threepid) = found else {
            return Err(failed("Unable to get validated threepid", "M_UNAUTHORIZED"));
        };
        let id = sid.to_owned();
        self.db(move |s| s.delete_threepid_session(&id)).await?;
        Ok(threepid)
    }

    /// `GET /account/3pid`.
    pub async fn threepids(&self, user: &str) -> Result<Value> {
        let u = user.to_owned();
        let rows = self.db(move |s| s.user_threepids(&u)).await?;
        Ok(json!({"threepids": rows.iter().map(threepid_json).collect::<Vec<_>>()}))
    }

    /// `POST /account/3pid/add` (after UIA) and the deprecated `POST /account/3pid`: adds the
    /// identifier a validated session proved.
    pub async fn add_threepid_from_session(&self, user: &str, client_secret: &str, sid: &str) -> Result<()> {
        self.require_3pid_changes()?;
        check_client_secret(client_secret)?;
        let Some(threepid) = self.validated_session(client_secret, sid).await? else {
            return Err(coded(400, "M_THREEPID_AUTH_FAILED", "No validated 3pid session found"));
        };
        self.add_threepid(user, &threepid).await
    }

    /// `ModuleApi.register_user(emails=...)`: the address joins the account as validated now,
    /// with its notification pusher as at registration.
    pub(crate) async fn module_add_email(&self, user: &str, email: &str) -> Result<()> {
        let threepid = ValidatedThreepid { medium: "email".into(), address: email.to_owned(), validated_at: now_ms() };
        self.add_threepid(user, &threepid).await?;
        let address = canonical_email(email).map_err(|why| Error::new(ErrorKind::BadRequest, why))?;
        self.add_email_pusher_if_wanted(user, &address).await
    }

    /// `POST /account/3pid/add`: the user's password (UIA), then the session's address.
    pub async fn add_threepid_with_auth(
        &self,
        requester: &crate::Requester,
        auth: Option<&Value>,
        client_secret: &str,
        sid: &str,
    ) -> Result<()> {
        self.require_3pid_changes()?;
        check_client_secret(client_secret)?;
        self.uia_password(requester, auth, "POST /account/3pid/add").await?;
        self.add_threepid_from_session(requester.user_id.as_str(), client_secret, sid).await
    }

    /// Adds an identifier to an account (Synapse's `add_threepid`); another account's is
    /// refused.
    pub(crate) async fn add_threepid(&self, user: &str, threepid: &ValidatedThreepid) -> Result<()> {
        if !["email", "msisdn"].contains(&threepid.medium.as_str()) {
            return Err(Error::invalid_param(format!("'{}' is not a valid value for 'medium'", threepid.medium)));
        }
        let address = match threepid.medium.as_str() {
            "email" => canonical_email(&threepid.address).map_err(|why| Error::new(ErrorKind::BadRequest, why))?,
            _ => threepid.address.clone(),
        };
        let row = ThreepidRow {
            medium: threepid.medium.clone(),
            address,
            validated_at: threepid.validated_at,
            added_at: now_ms(),
        };
        let (u, added) = (user.to_owned(), row.clone());
        if !self.db(move |s| s.add_user_threepid(&u, &added)).await? {
            return Err(coded(400, "M_THREEPID_IN_USE", format!("{} is already in use", threepid.medium)));
        }
        tracing::info!(user, medium = %threepid.medium, "third-party identifier added");
        self.modules.on_threepid_added(user, &row.medium, &row.address).await;
        Ok(())
    }

    /// `POST /account/3pid/delete`: unbinds it from identity servers, then removes it from
    /// the account.
    pub async fn delete_threepid(&self, user: &str, body: &Value) -> Result<Value> {
        self.require_3pid_changes()?;
        let medium = required_string(body, "medium")?;
        if !["email", "msisdn"].contains(&medium) {
            return Err(Error::invalid_param("medium: Input should be 'email' or 'msisdn'"));
        }
        let address = required_string(body, "address")?;
        let id_server = match field(body, "id_server") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(Error::bad_json("id_server: Input should be a valid string")),
        };
        let unbound = self.unbind_threepid(user, medium, address, id_server).await?;
        self.delete_local_threepid(user, medium, address).await?;
        Ok(json!({"id_server_unbind_result": if unbound { "success" } else { "no-support" }}))
    }

    /// Removes an identifier from an account (Synapse's `delete_local_threepid`).
    pub(crate) async fn delete_local_threepid(&self, user: &str, medium: &str, address: &str) -> Result<()> {
        let address = match medium {
            "email" => canonical_email(address).unwrap_or_else(|_| address.to_owned()),
            _ => address.to_owned(),
        };
        let (u, m, a) = (user.to_owned(), medium.to_owned(), address.clone());
        if self.db(move |s| s.remove_user_threepid(&u, &m, &a)).await? {
            tracing::info!(user, medium, "third-party identifier removed");
        }
        // Called whether or not the account had it, as Synapse does.
        self.modules.on_threepid_removed(user, medium, &address).await;
        if medium == "email" {
            let (u, a) = (user.to_owned(), address.clone());
            self.db(move |s| s.delete_pusher(&u, crate::email_notifs::EMAIL_APP_ID, &a)).await?;
            self.pushers_changed();
        }
        Ok(())
    }

    /// At deactivation: every identifier leaves the account.
    pub(crate) async fn delete_all_local_threepids(&self, user: &str) -> Result<()> {
        let u = user.to_owned();
        for row in self.db(move |s| s.user_threepids(&u)).await? {
            self.delete_local_threepid(user, &row.medium, &row.address).await?;
        }
        Ok(())
    }

    /// The local account an identifier belongs to (`m.id.thirdparty` logins, password resets).
    pub(crate) async fn user_by_threepid(&self, medium: &str, address: &str) -> Result<Option<String>> {
        let address = match medium {
            "email" => match canonical_email(address) {
                Ok(a) => a,
                Err(_) => return Ok(None),
            },
            _ => address.to_owned(),
        };
        let m = medium.to_owned();
        self.db(move |s| s.user_by_threepid(&m, &address)).await
    }

    /// `POST /register/msisdn/requestToken` and `/account/3pid/msisdn/requestToken`: phone
    /// numbers need an SMS provider (Synapse's `account_threepid_delegates.msisdn`), which
    /// Myelin does not have; the body is still checked first, as Synapse does.
    pub fn request_msisdn_token(&self, registration: bool, body: &Value) -> Result<Value> {
        if !registration {
            return Err(coded(
                400,
                "M_THREEPID_MEDIUM_NOT_SUPPORTED",
                "Adding phone numbers to user account is not supported by this homeserver",
            ));
        }
        let missing: Vec<&str> = ["client_secret", "country", "phone_number", "send_attempt"]
            .into_iter()
            .filter(|k| body.get(k).is_none_or(Value::is_null))
            .collect();
        if !missing.is_empty() {
            return Err(Error::new(ErrorKind::MissingParam, format!("Missing params: {missing:?}")));
        }
        check_client_secret(body["client_secret"].as_str().unwrap_or_default())?;
        Err(Error::new(ErrorKind::BadRequest, "Registration by phone number is not supported on this homeserver"))
    }

    /// The registration flows: the dummy one unless a 3PID is required, and e-mail when mail
    /// is configured (Synapse's `_calculate_registration_flows`, without phone numbers).
    pub(crate) fn registration_stages(&self) -> Vec<&'static str> {
        let mut stages = Vec::new();
        if self.config.threepids.registrations_require_3pid.is_empty() {
            stages.push("m.login.dummy");
        }
        if self.config.email.is_some() {
            stages.push("m.login.email.identity");
        }
        stages
    }
}

/// An identifier as `GET /account/3pid` and the admin API show it.
pub(crate) fn threepid_json(row: &ThreepidRow) -> Value {
    json!({"medium": row.medium, "address": row.address, "validated_at": row.validated_at, "added_at": row.added_at})
}
