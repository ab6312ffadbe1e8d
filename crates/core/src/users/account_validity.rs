//! Account validity as Synapse's built-in ("legacy") implementation: with `account_validity:
//! {enabled: true, period: ...}` every account expires `period` after it was registered (or
//! renewed), an expired account's requests answer 403 `ORG_MATRIX_EXPIRED_ACCOUNT`, and with
//! `renew_at` its owner is mailed a renewal link that long before the date.
//!
//! Modules' `is_user_expired` callbacks are asked first; this decides only when none of them
//! does (as Synapse). Renewal: `GET /account_validity/renew?token=` (the link), `POST
//! /account_validity/send_mail` (a new link, for an expired account too), and the admin API's
//! `POST /_synapse/admin/v1/account_validity/validity`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use myelin_storage::AccountValidity;
use serde_json::{Map, Value, json};

use crate::config::{ConfigError, parse_duration};
use crate::error::{Error, ErrorKind, Result};
use crate::server::{Homeserver, Requester, now_ms, random_string};

/// How often accounts about to expire are looked for (Synapse's 30 minutes).
const RENEWAL_MAIL_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// The `account_validity:` section, when enabled.
#[derive(Debug, Clone)]
pub struct AccountValiditySettings {
    /// `period`: how long an account lasts from registration or renewal.
    pub period: Duration,
    /// `renew_at`: how long before the date the renewal mail goes out (None: no mails).
    pub renew_at: Option<Duration>,
    /// `renew_email_subject`, `%(app)s` filled in when sent.
    pub renew_email_subject: String,
    /// The renewal page's file (`account_renewed_html_path`).
    account_renewed: String,
    /// The bad-link page's file (`invalid_token_html_path`).
    invalid_token: String,
    /// The mail's files (`email.expiry_template_html`, `email.expiry_template_text`).
    expiry_html: String,
    expiry_text: String,
    pages: Arc<minijinja::Environment<'static>>,
}

impl AccountValiditySettings {
    /// Reads `account_validity:`; None when it is absent or not enabled.
    pub(crate) fn parse(
        root: &Map<String, Value>,
        resolve: &dyn Fn(String) -> PathBuf,
        public_baseurl: &str,
        warnings: &mut Vec<String>,
    ) -> std::result::Result<Option<Self>, ConfigError> {
        let at = |key: &str| vec!["account_validity".to_owned(), key.to_owned()];
        let section = match root.get("account_validity") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(ConfigError::at(&["account_validity".into()], "expected a mapping")),
        };
        let string = |section: &Map<String, Value>, key: &str, path: Vec<String>| match section.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ConfigError::at(&path, "expected a string")),
        };
        match section.get("enabled") {
            Some(Value::Bool(true)) => {}
            None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
            Some(_) => return Err(ConfigError::at(&at("enabled"), "expected a boolean")),
        }
        let duration = |key: &str| match section.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => parse_duration(v)
                .filter(|d| !d.is_zero())
                .map(Some)
                .ok_or_else(|| ConfigError::at(&at(key), "expected a duration such as 6w")),
        };
        let period = duration("period")?
            .ok_or_else(|| ConfigError::at(&[], "'period' is required when using account validity"))?;
        let renew_at = duration("renew_at")?;
        let renew_email_subject = string(section, "renew_email_subject", at("renew_email_subject"))?
            .unwrap_or("Renew your %(app)s account".into());
        let email = root.get("email").and_then(Value::as_object);
        if renew_at.is_some() && email.is_none() {
            warnings.push(
                "account_validity.renew_at is set but there is no email section: no renewal mails are sent".into(),
            );
        }
        let mut template_dirs = Vec::new();
        if let Some(dir) = string(root, "custom_template_directory", vec!["custom_template_directory".into()])? {
            template_dirs.push(resolve(dir));
        }
        if let Some(dir) = string(section, "template_dir", at("template_dir"))? {
            warnings.push(
                "account_validity.template_dir is deprecated: use custom_template_directory (as Synapse says)".into(),
            );
            template_dirs.push(resolve(dir));
        }
        let email_key = |key: &str, default: &str| -> std::result::Result<String, ConfigError> {
            match email {
                Some(e) => Ok(string(e, key, vec!["email".into(), key.into()])?.unwrap_or(default.into())),
                None => Ok(default.into()),
            }
        };
        if let Some(dir) = email.map(|e| string(e, "template_dir", vec!["email".into(), "template_dir".into()])) {
            template_dirs.extend(dir?.map(&resolve));
        }
        let settings = AccountValiditySettings {
            period,
            renew_at,
            renew_email_subject,
            account_renewed: string(section, "account_renewed_html_path", at("account_renewed_html_path"))?
                .unwrap_or("account_renewed.html".into()),
            invalid_token: string(section, "invalid_token_html_path", at("invalid_token_html_path"))?
                .unwrap_or("invalid_token.html".into()),
            expiry_html: email_key("expiry_template_html", "notice_expiry.html")?,
            expiry_text: email_key("expiry_template_text", "notice_expiry.txt")?,
            pages: Arc::new(crate::mail::template_environment(template_dirs, public_baseurl)),
        };
        // Missing or broken templates stop start-up, as on Synapse.
        let mut names = vec![&settings.account_renewed, &settings.invalid_token];
        let previously = "account_previously_renewed.html".to_owned();
        names.push(&previously);
        if settings.renew_at.is_some() {
            names.extend([&settings.expiry_html, &settings.expiry_text]);
        }
        for name in names {
            if let Err(e) = settings.pages.get_template(name) {
                return Err(ConfigError::at(&[], format!("template {name}: {e}")));
            }
        }
        Ok(Some(settings))
    }

    fn render(&self, name: &str, vars: Value) -> std::result::Result<String, String> {
        let template = self.pages.get_template(name).map_err(|e| format!("template {name}: {e}"))?;
        template.render(vars).map_err(|e| format!("template {name}: {e}"))
    }
}

/// What a renewal link led to.
pub enum Renewal {
    /// Renewed: the page, with 200.
    Renewed(String),
    /// The link was used already: the page, with 200.
    AlreadyRenewed(String),
    /// No account has this token: the page, with 404.
    InvalidToken(String),
}

impl Homeserver {
    /// Whether `user_id`'s account has expired: modules' `is_user_expired` first, then, if
    /// none of them decides, the built-in account validity (when enabled).
    pub(crate) async fn account_expired(&self, user_id: &str) -> Result<bool> {
        if self.modules.has_is_user_expired()
            && let Some(expired) = self.modules.is_user_expired(user_id).await?
        {
            return Ok(expired);
        }
        if self.config.account_validity.is_none() {
            return Ok(false);
        }
        let u = user_id.to_owned();
        let validity = self.db(move |s| s.account_validity(&u)).await?;
        Ok(validity.is_some_and(|v| now_ms() >= v.expiration_ts))
    }

    /// A new account's expiration date: `period` from now.
    pub(crate) async fn start_account_validity(&self, user_id: &str) -> Result<()> {
        let Some(settings) = &self.config.account_validity else { return Ok(()) };
        let validity = AccountValidity {
            user_id: user_id.to_owned(),
            expiration_ts: now_ms() + settings.period.as_millis() as i64,
            email_sent: false,
            renewal_token: None,
            token_used_ts: None,
        };
        self.db(move |s| s.set_account_validity(&validity)).await
    }

    /// Pushes an account's expiration date back: to `expiration_ts`, or `period` from now.
    /// `email_sent` says no renewal mail should go out for this period; `renewal_token`, the
    /// token that renewed it, is kept so that a second click says "already renewed".
    async fn renew_account_for_user(
        &self,
        user_id: &str,
        expiration_ts: Option<i64>,
        email_sent: bool,
        renewal_token: Option<String>,
    ) -> Result<i64> {
        let settings = self.config.account_validity.as_ref();
        let now = now_ms();
        let expiration_ts = match (expiration_ts, settings) {
            (Some(ts), _) => ts,
            (None, Some(settings)) => now + settings.period.as_millis() as i64,
            (None, None) => return Err(not_enabled()),
        };
        let validity = AccountValidity {
            user_id: user_id.to_owned(),
            expiration_ts,
            email_sent,
            renewal_token,
            token_used_ts: Some(now),
        };
        self.db(move |s| s.set_account_validity(&validity)).await?;
        Ok(expiration_ts)
    }

    /// `GET /account_validity/renew?token=`: the renewal link (a module's `on_legacy_renew`
    /// decides instead of the built-in account validity when one is registered).
    pub async fn renew_account(&self, token: &str) -> Result<Renewal> {
        // The pages: the configured ones, or (a module renewing without the section) the
        // default names looked up in custom_template_directory, then Myelin's own.
        let (pages, renewed, invalid) = match &self.config.account_validity {
            Some(s) => (s.pages.clone(), s.account_renewed.clone(), s.invalid_token.clone()),
            None => (
                Arc::new(crate::mail::template_environment(
                    self.config.custom_template_directory.iter().cloned().collect(),
                    &self.config.public_baseurl,
                )),
                "account_renewed.html".to_owned(),
                "invalid_token.html".to_owned(),
            ),
        };
        let page = |name: &str, expiration_ts: i64| {
            pages
                .get_template(name)
                .and_then(|t| t.render(json!({"expiration_ts": expiration_ts})))
                .map_err(|e| Error::internal(format!("template {name}: {e}")))
        };
        let previously = "account_previously_renewed.html";
        if let Some(answer) = self.modules.legacy_renew(token).await {
            let (valid, stale, expiration_ts) = answer?;
            return Ok(match (valid, stale) {
                (true, _) => Renewal::Renewed(page(&renewed, expiration_ts)?),
                (false, true) => Renewal::AlreadyRenewed(page(previously, expiration_ts)?),
                (false, false) => Renewal::InvalidToken(page(&invalid, expiration_ts)?),
            });
        }
        if self.config.account_validity.is_none() {
            return Ok(Renewal::InvalidToken(page(&invalid, 0)?));
        }
        let t = token.to_owned();
        let Some(validity) = self.db(move |s| s.account_validity_by_token(&t)).await? else {
            return Ok(Renewal::InvalidToken(page(&invalid, 0)?));
        };
        if validity.token_used_ts.is_some() {
            tracing::info!(user = %validity.user_id, "a used renewal link was followed again");
            return Ok(Renewal::AlreadyRenewed(page(previously, validity.expiration_ts)?));
        }
        let expiration_ts =
            self.renew_account_for_user(&validity.user_id, None, false, validity.renewal_token.clone()).await?;
        tracing::info!(user = %validity.user_id, expiration_ts, "account renewed through its link");
        Ok(Renewal::Renewed(page(&renewed, expiration_ts)?))
    }

    /// `POST /account_validity/send_mail`: a new renewal link to the requester's addresses.
    pub async fn send_renewal_mail_to(&self, requester: &Requester) -> Result<()> {
        let user = requester.user_id.to_string();
        if let Some(sent) = self.modules.legacy_send_mail(&user).await {
            return sent;
        }
        let Some(settings) = self.config.account_validity.as_ref().filter(|s| s.renew_at.is_some()) else {
            return Err(Error::forbidden("Account renewal via email is disabled on this server."));
        };
        let u = user.clone();
        let Some(validity) = self.db(move |s| s.account_validity(&u)).await? else {
            return Err(Error::new(ErrorKind::BadRequest, format!("User has no expiration time: {user}")));
        };
        self.send_renewal_mail(settings, validity).await
    }

    /// `POST /_synapse/admin/v1/account_validity/validity`: sets (or renews by `period`) an
    /// account's expiration date; `enable_renewal_emails: false` means no mail this period.
    pub async fn admin_account_validity(&self, requester: &Requester, body: &Value) -> Result<Value> {
        self.require_admin(requester)?;
        if let Value::Object(fields) = body
            && let Some(answer) = self.modules.legacy_admin_request(fields).await
        {
            return Ok(json!({"expiration_ts": answer?}));
        }
        let Some(user) = body.get("user_id") else {
            return Err(Error::new(ErrorKind::BadRequest, "Missing property 'user_id' in the request body"));
        };
        let user = user.as_str().ok_or_else(|| Error::new(ErrorKind::BadRequest, "user_id must be a string"))?;
        let expiration_ts = match body.get("expiration_ts") {
            None | Some(Value::Null) => None,
            Some(v) => {
                Some(v.as_i64().ok_or_else(|| Error::new(ErrorKind::BadRequest, "expiration_ts must be an integer"))?)
            }
        };
        if expiration_ts.is_none() && self.config.account_validity.is_none() {
            return Err(not_enabled());
        }
        let renewal_emails = match body.get("enable_renewal_emails") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Error::new(ErrorKind::BadRequest, "enable_renewal_emails must be a boolean")),
        };
        let u = user.to_owned();
        if self.db(move |s| s.get_user(&u)).await?.is_none() {
            return Err(Error::not_found("User not found"));
        }
        let expiration_ts = self.renew_account_for_user(user, expiration_ts, !renewal_emails, None).await?;
        Ok(json!({"expiration_ts": expiration_ts}))
    }

    /// Background work, on the process that runs background tasks: accounts registered
    /// before validity was enabled get a date (spread over the last tenth of a period, as
    /// Synapse's, so they do not all expire at once), and every 30 minutes the accounts
    /// within `renew_at` of their date are mailed a renewal link (the first look right away).
    pub fn start_account_validity_tasks(self: &Arc<Self>) {
        let Some(settings) = self.config.account_validity.clone() else { return };
        let hs = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(server) = hs.upgrade()
                && let Err(e) = server.give_accounts_expiration_dates(&settings).await
            {
                tracing::warn!(error = %e, "could not give existing accounts an expiration date");
            }
            let Some(renew_at) = settings.renew_at else { return };
            loop {
                let Some(server) = hs.upgrade() else { return };
                if let Err(e) = server.send_due_renewal_mails(&settings, renew_at).await {
                    tracing::warn!(error = %e, "could not send renewal mails");
                }
                drop(server);
                tokio::time::sleep(RENEWAL_MAIL_INTERVAL).await;
            }
        });
    }

    async fn give_accounts_expiration_dates(&self, settings: &AccountValiditySettings) -> Result<()> {
        use rand::Rng;
        let users = self.db(|s| s.accounts_without_validity()).await?;
        let period = settings.period.as_millis() as i64;
        let spread = (period / 10).max(1);
        for user_id in users {
            let expiration_ts = now_ms() + period - rand::thread_rng().gen_range(0..spread);
            let validity =
                AccountValidity { user_id, expiration_ts, email_sent: false, renewal_token: None, token_used_ts: None };
            self.db(move |s| s.set_account_validity(&validity)).await?;
        }
        Ok(())
    }

    async fn send_due_renewal_mails(&self, settings: &AccountValiditySettings, renew_at: Duration) -> Result<()> {
        let by = now_ms() + renew_at.as_millis() as i64;
        for validity in self.db(move |s| s.accounts_expiring_by(by)).await? {
            let user = validity.user_id.clone();
            if let Err(e) = self.send_renewal_mail(settings, validity).await {
                tracing::warn!(%user, error = %e, "could not send a renewal mail");
            }
        }
        Ok(())
    }

    /// Mails a fresh renewal link to each of the account's e-mail addresses, then marks the
    /// mail sent for this period. Without an address nothing is sent (the admin renews).
    async fn send_renewal_mail(&self, settings: &AccountValiditySettings, validity: AccountValidity) -> Result<()> {
        let Some(email) = self.config.email.as_ref() else { return Ok(()) };
        let u = validity.user_id.clone();
        let addresses: Vec<String> = self
            .db(move |s| s.user_threepids(&u))
            .await?
            .into_iter()
            .filter(|t| t.medium == "email")
            .map(|t| t.address)
            .collect();
        if addresses.is_empty() {
            return Ok(());
        }
        let u = validity.user_id.clone();
        let display_name = self
            .db(move |s| s.get_profile(&u))
            .await?
            .and_then(|(name, _)| name)
            .unwrap_or_else(|| validity.user_id.clone());
        // A new token for each mail (32 random characters: no two accounts draw the same).
        let renewal = AccountValidity { token_used_ts: None, renewal_token: Some(random_string(32)), ..validity };
        let row = renewal.clone();
        self.db(move |s| s.set_account_validity(&row)).await?;
        let url = format!(
            "{}_matrix/client/unstable/account_validity/renew?token={}",
            self.config.public_baseurl,
            renewal.renewal_token.as_deref().unwrap_or_default()
        );
        let vars = json!({"display_name": display_name, "expiration_ts": renewal.expiration_ts, "url": url});
        let render = |name: &str| settings.render(name, vars.clone()).map_err(Error::internal);
        let (html, text) = (render(&settings.expiry_html)?, render(&settings.expiry_text)?);
        for address in addresses {
            let mail = crate::mail::Mail {
                from: email.from_header(),
                to: address.clone(),
                subject: settings.renew_email_subject.replace("%(app)s", &email.app_name),
                text: text.clone(),
                html: html.clone(),
                headers: Vec::new(),
            };
            tracing::info!(to = %address, user = %renewal.user_id, "sending a renewal mail");
            crate::mail::send(&email.smtp, self.config.insecure_outbound_tls, self.server_name(), &mail)
                .await
                .map_err(|e| Error::internal(format!("Could not send the renewal mail: {e}")))?;
        }
        let sent = AccountValidity { email_sent: true, ..renewal };
        self.db(move |s| s.set_account_validity(&sent)).await
    }
}

fn not_enabled() -> Error {
    Error::new(ErrorKind::BadRequest, "Account validity is not enabled on this server")
}
