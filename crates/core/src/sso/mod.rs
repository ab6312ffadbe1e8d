//! Single sign-on through OpenID Connect providers, as Synapse does it: `oidc_providers`
//! (and the older single `oidc_config`), `sso:`, `/login/sso/redirect[/{idpId}]`, the
//! provider's callback at `/_synapse/client/oidc/callback`, the identity-provider picker, the
//! username picker for new accounts, the confirmation page before a client gets its login
//! token, and re-authentication by SSO in user-interactive auth.
//!
//! The browser's state between the redirect and the callback travels in a cookie, as
//! Synapse's does: the state, nonce, PKCE verifier and where to send the browser back,
//! HMAC-signed with a key derived from the server's signing key, so every process of a
//! deployment can check it. Usernames being picked are kept in memory (Synapse does the same).

mod jwt;
pub(crate) mod oidc;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::ConfigError;
use crate::error::{Error, ErrorKind, Result};
use crate::server::{Homeserver, now_ms, random_string};
use oidc::{OidcError, OidcProvider, OidcProviderConfig, UserAttributes};

/// The `sso:` section and the providers, checked.
#[derive(Debug, Clone, Default)]
pub struct SsoSettings {
    /// `oidc_providers` then `oidc_config`, in that order.
    pub(crate) providers: Vec<OidcProviderConfig>,
    /// Client URLs sent back to at once, without the confirmation page (`sso.client_whitelist`,
    /// plus the server's own login fallback, as Synapse adds it).
    pub(crate) client_whitelist: Vec<String>,
    /// `sso.update_profile_information`: display names and avatars follow the provider at
    /// each login.
    pub(crate) update_profile_information: bool,
    /// Where page templates are looked up before Myelin's own.
    pub(crate) template_dirs: Vec<PathBuf>,
}

impl SsoSettings {
    /// Whether any identity provider is configured.
    pub fn enabled(&self) -> bool {
        !self.providers.is_empty()
    }

    /// Reads `oidc_providers`, `oidc_config` (when `enabled`) and `sso`.
    pub(crate) fn parse(
        root: &Map<String, Value>,
        resolve: &dyn Fn(String) -> PathBuf,
        public_baseurl: &str,
    ) -> std::result::Result<Self, ConfigError> {
        let mut providers = Vec::new();
        match root.get("oidc_providers") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let path = vec!["oidc_providers".to_owned(), format!("<item {i}>")];
                    let Some(map) = item.as_object() else {
                        return Err(ConfigError::at(&path, "expected a mapping"));
                    };
                    providers.push(OidcProviderConfig::parse(map, &path, true, resolve)?);
                }
            }
            Some(_) => return Err(ConfigError::at(&["oidc_providers".into()], "expected a list of providers")),
        }
        match root.get("oidc_config") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                if m.get("enabled").and_then(Value::as_bool).unwrap_or(false) {
                    providers.push(OidcProviderConfig::parse(m, &["oidc_config".to_owned()], false, resolve)?);
                }
            }
            Some(_) => return Err(ConfigError::at(&["oidc_config".into()], "expected a mapping")),
        }
        for (i, p) in providers.iter().enumerate() {
            if providers[..i].iter().any(|q| q.idp_id == p.idp_id) {
                return Err(ConfigError::at(&[], format!("Multiple OIDC providers have the idp_id {:?}.", p.idp_id)));
            }
        }
        let sso = match root.get("sso") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(ConfigError::at(&["sso".into()], "expected a mapping")),
        };
        let mut client_whitelist: Vec<String> = match sso.get("client_whitelist") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                a.iter().filter_map(Value::as_str).map(str::to_owned).collect()
            }
            Some(_) => {
                return Err(ConfigError::at(
                    &["sso".into(), "client_whitelist".into()],
                    "expected a list of URL prefixes",
                ));
            }
        };
        client_whitelist.push(format!("{public_baseurl}_matrix/static/client/login"));
        let update_profile_information = match sso.get("update_profile_information") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ConfigError::at(
                    &["sso".into(), "update_profile_information".into()],
                    "expected a boolean",
                ));
            }
        };
        let mut template_dirs = Vec::new();
        if let Some(d) = root.get("custom_template_directory").and_then(Value::as_str) {
            template_dirs.push(resolve(d.to_owned()));
        }
        if let Some(d) = sso.get("template_dir").and_then(Value::as_str) {
            tracing::warn!("sso.template_dir is deprecated: use custom_template_directory");
            template_dirs.push(resolve(d.to_owned()));
        }
        let settings = SsoSettings { providers, client_whitelist, update_profile_information, template_dirs };
        // A custom page that does not parse stops start-up, as Synapse's templates do.
        if settings.enabled() {
            let env = crate::mail::template_environment(settings.template_dirs.clone(), public_baseurl);
            for name in PAGES {
                env.get_template(name)
                    .map_err(|e| ConfigError::at(&["sso".into()], format!("template {name}: {e}")))?;
            }
        }
        Ok(settings)
    }
}

/// The SSO pages, by Synapse's file names.
const PAGES: [&str; 8] = [
    "sso_error.html",
    "sso_redirect_confirm.html",
    "sso_login_idp_picker.html",
    "sso_account_deactivated.html",
    "sso_auth_confirm.html",
    "sso_auth_success.html",
    "sso_auth_bad_user.html",
    "sso_auth_account_details.html",
];

/// Where the provider sends the browser back.
const CALLBACK_PATH: &str = "/_synapse/client/oidc/callback";
/// The cookie naming a username-picking session.
const MAPPING_COOKIE: &str = "username_mapping_session";
/// How long a browser may take at the provider (the session cookie's life: Synapse's hour).
const SESSION_LIFETIME_MS: i64 = 60 * 60 * 1000;
/// How long a username may take to be picked (Synapse's 15 minutes).
const MAPPING_SESSION_LIFETIME_MS: i64 = 15 * 60 * 1000;
/// A login token made by SSO lasts two minutes, as Synapse's.
const LOGIN_TOKEN_LIFETIME_MS: u64 = 2 * 60 * 1000;
/// How many localparts the mapping may suggest before giving up (Synapse's 1000).
const MAP_USERNAME_RETRIES: u32 = 1000;
/// The user-interactive auth stage SSO completes.
pub(crate) const SSO_STAGE: &str = "m.login.sso";

/// A browser-facing answer: a page, or a redirect, with cookies to set.
#[derive(Debug, Default)]
pub struct WebAnswer {
    /// The HTTP status.
    pub status: u16,
    /// Where a redirect goes.
    pub location: Option<String>,
    /// `Set-Cookie` header values.
    pub set_cookies: Vec<String>,
    /// The page (empty for a redirect).
    pub html: String,
}

impl WebAnswer {
    fn redirect(location: String) -> Self {
        WebAnswer { status: 302, location: Some(location), ..Default::default() }
    }

    fn with_cookies(mut self, cookies: Vec<String>) -> Self {
        self.set_cookies.extend(cookies);
        self
    }
}

/// What the session cookie carries from the redirect to the callback.
#[derive(Debug, Serialize, Deserialize)]
struct OidcSession {
    idp_id: String,
    state: String,
    nonce: String,
    client_redirect_url: String,
    #[serde(default)]
    ui_auth_session_id: String,
    #[serde(default)]
    code_verifier: String,
    expires_ms: i64,
}

/// A new user choosing their username (Synapse's `UsernameMappingSession`).
#[derive(Debug, Clone)]
struct MappingSession {
    idp_id: String,
    remote_user_id: String,
    display_name: Option<String>,
    /// The provider's picture URL, shown on the form.
    avatar_url: Option<String>,
    emails: Vec<String>,
    chosen_localpart: Option<String>,
    use_display_name: bool,
    use_avatar: bool,
    emails_to_use: Vec<String>,
    client_redirect_url: String,
    extra_attributes: Map<String, Value>,
    expires_ms: i64,
}

/// A login's `extra_attributes`, and when they were made (ms).
type PendingExtra = (i64, Map<String, Value>);

/// Runtime state: the providers, the pages, sessions in progress.
pub(crate) struct SsoState {
    providers: Vec<Arc<OidcProvider>>,
    pages: minijinja::Environment<'static>,
    cookie_key: ring::hmac::Key,
    mapping_sessions: Mutex<HashMap<String, MappingSession>>,
    /// `extra_attributes` waiting for the login token's use (two minutes, as Synapse).
    extra_attributes: Mutex<HashMap<String, PendingExtra>>,
    /// One mapping at a time, so two first logins of one person make one account.
    mapping_lock: tokio::sync::Mutex<()>,
}

impl SsoState {
    pub(crate) fn new(
        config: &crate::config::Config,
        key: &crate::events::SigningKey,
    ) -> std::result::Result<Self, String> {
        let sso = &config.sso;
        let http = oidc::provider_http_client(config.insecure_outbound_tls)?;
        let providers = sso.providers.iter().map(|p| Arc::new(OidcProvider::new(p.clone(), http.clone()))).collect();
        // Ed25519 signatures are deterministic: signing a fixed label gives a secret only this
        // deployment's processes (which share the signing key) can compute.
        let derived = ruma::signatures::KeyPair::sign(&key.pair, b"myelin: the key of SSO session cookies");
        let cookie_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_bytes());
        Ok(SsoState {
            providers,
            pages: crate::mail::template_environment(sso.template_dirs.clone(), &config.public_baseurl),
            cookie_key,
            mapping_sessions: Default::default(),
            extra_attributes: Default::default(),
            mapping_lock: Default::default(),
        })
    }

    fn provider(&self, idp_id: &str) -> Option<&Arc<OidcProvider>> {
        self.providers.iter().find(|p| p.config.idp_id == idp_id)
    }

    fn seal(&self, session: &OidcSession) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(session).unwrap_or_default());
        let mac = ring::hmac::sign(&self.cookie_key, body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()))
    }

    /// The cookie's session, if this server sealed it, for this `state`, and it is still valid.
    fn open(&self, cookie: &str, state: &str) -> std::result::Result<OidcSession, (&'static str, String)> {
        let (body, mac) =
            cookie.split_once('.').ok_or(("invalid_session", "The session cookie is malformed".into()))?;
        let mac =
            URL_SAFE_NO_PAD.decode(mac).map_err(|_| ("invalid_session", "The session cookie is malformed".into()))?;
        ring::hmac::verify(&self.cookie_key, body.as_bytes(), &mac)
            .map_err(|_| ("mismatching_session", "The session cookie's signature does not match".into()))?;
        let bytes =
            URL_SAFE_NO_PAD.decode(body).map_err(|_| ("invalid_session", "The session cookie is malformed".into()))?;
        let session: OidcSession = serde_json::from_slice(&bytes)
            .map_err(|_| ("invalid_session", "The session cookie is malformed".into()))?;
        if session.state != state {
            return Err(("mismatching_session", "The state parameter does not match the session".into()));
        }
        if session.expires_ms < now_ms() {
            return Err(("invalid_session", "The session has expired".into()));
        }
        Ok(session)
    }
}

/// A cookie of the SSO flow, set or (with an empty value) cleared. `Secure` only where the
/// server is served over HTTPS: a browser drops a secure cookie set over plain HTTP.
fn session_cookies(value: &str, secure: bool) -> Vec<String> {
    let secure = if secure { "; Secure" } else { "" };
    let life =
        if value.is_empty() { "Expires=Thu, 01 Jan 1970 00:00:00 GMT".to_owned() } else { "Max-Age=3600".to_owned() };
    vec![
        format!("oidc_session={value}; {life}; Path=/_synapse/client/oidc; HttpOnly{secure}; SameSite=None"),
        format!("oidc_session_no_samesite={value}; {life}; Path=/_synapse/client/oidc; HttpOnly{secure}"),
    ]
}

/// `url` with `name=value` appended to its query (Synapse's `add_query_param_to_url`).
fn add_query_param(url: &str, name: &str, value: &str) -> String {
    let encoded: String = form_urlencoded::Serializer::new(String::new()).append_pair(name, value).finish();
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, format!("#{f}")),
        None => (url, String::new()),
    };
    let joiner =
        if base.contains('?') { if base.ends_with('?') || base.ends_with('&') { "" } else { "&" } } else { "?" };
    format!("{base}{joiner}{encoded}{fragment}")
}

/// The localpart rules for new accounts (Synapse's `contains_invalid_mxid_characters`).
fn invalid_localpart(localpart: &str) -> bool {
    localpart.is_empty()
        || !localpart.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/+".contains(&b))
}

impl Homeserver {
    fn sso(&self) -> &SsoState {
        &self.sso
    }

    fn secure_cookies(&self) -> bool {
        self.config.public_baseurl.starts_with("https://")
    }

    fn callback_url(&self) -> String {
        format!("{}{}", self.config.public_baseurl.trim_end_matches('/'), CALLBACK_PATH)
    }

    /// Renders one of the SSO pages.
    fn sso_page(&self, status: u16, name: &str, vars: Value) -> WebAnswer {
        let html = self.sso().pages.get_template(name).and_then(|t| t.render(vars)).unwrap_or_else(|e| {
            tracing::error!(template = name, error = %e, "an SSO page failed to render");
            "<!DOCTYPE html><title>Error</title><p>Something went wrong.</p>".into()
        });
        WebAnswer { status, html, ..Default::default() }
    }

    /// Synapse's `render_error`: the error page, with an OAuth-style code and a description.
    fn sso_error(&self, status: u16, error: &str, description: &str) -> WebAnswer {
        self.sso_page(status, "sso_error.html", json!({"error": error, "error_description": description}))
    }

    /// The identity providers, as `/login` lists them in the `m.login.sso` flow.
    pub fn identity_providers(&self) -> Vec<Value> {
        self.config
            .sso
            .providers
            .iter()
            .map(|p| {
                let mut e = json!({"id": p.idp_id, "name": p.idp_name});
                if let Some(icon) = &p.idp_icon {
                    e["icon"] = json!(icon);
                }
                if let Some(brand) = &p.idp_brand {
                    e["brand"] = json!(brand);
                }
                e
            })
            .collect()
    }

    /// `GET /login/sso/redirect[/{idpId}]?redirectUrl=`: to the provider (the one named, or
    /// the only one), or to the picker when there are several.
    pub async fn sso_redirect(
        &self,
        idp_id: Option<&str>,
        redirect_url: Option<&str>,
        query: &[(String, String)],
    ) -> Result<WebAnswer> {
        if !self.config.sso.enabled() {
            return Err(Error::new(ErrorKind::Unrecognized, "Unrecognized request"));
        }
        let Some(redirect_url) = redirect_url else {
            return Err(Error::new(ErrorKind::MissingParam, "Missing string query parameter 'redirectUrl'"));
        };
        let provider = match idp_id {
            Some(id) => self.sso().provider(id).ok_or_else(|| Error::not_found("Unknown identity provider"))?,
            None if self.sso().providers.len() == 1 => &self.sso().providers[0],
            None => {
                let query =
                    form_urlencoded::Serializer::new(String::new()).append_pair("redirectUrl", redirect_url).finish();
                return Ok(WebAnswer::redirect(format!("/_synapse/client/pick_idp?{query}")));
            }
        };
        let passthrough: Vec<(String, String)> = provider
            .config
            .passthrough_authorization_parameters
            .iter()
            .filter_map(|name| query.iter().find(|(k, v)| k == name && !v.is_empty()).cloned())
            .collect();
        Ok(self.redirect_to_provider(provider, redirect_url, "", &passthrough).await)
    }

    /// The redirect to `provider`'s authorization endpoint, with the session cookie; the
    /// "unavailable" page when its metadata cannot be had.
    async fn redirect_to_provider(
        &self,
        provider: &OidcProvider,
        client_redirect_url: &str,
        ui_auth_session_id: &str,
        passthrough: &[(String, String)],
    ) -> WebAnswer {
        let state = random_string(24);
        let nonce = random_string(32);
        let (url, code_verifier) = match provider
            .authorization_url(&self.callback_url(), &state, &nonce, passthrough)
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(idp = provider.config.idp_id, error = %e, "login redirect failed: the identity provider is unavailable");
                return self.sso_error(
                    503,
                    "provider_unavailable",
                    "This login provider is currently unavailable on this homeserver.",
                );
            }
        };
        let session = OidcSession {
            idp_id: provider.config.idp_id.clone(),
            state,
            nonce,
            client_redirect_url: client_redirect_url.to_owned(),
            ui_auth_session_id: ui_auth_session_id.to_owned(),
            code_verifier,
            expires_ms: now_ms() + SESSION_LIFETIME_MS,
        };
        let cookie = self.sso().seal(&session);
        WebAnswer::redirect(url).with_cookies(session_cookies(&cookie, self.secure_cookies()))
    }

    /// `GET /_synapse/client/pick_idp`: the list of providers, or (with `idp`) on to one.
    pub fn sso_pick_idp(&self, redirect_url: Option<&str>, idp: Option<&str>) -> Result<WebAnswer> {
        let Some(redirect_url) = redirect_url else {
            return Err(Error::new(ErrorKind::MissingParam, "Missing string query parameter 'redirectUrl'"));
        };
        match idp.filter(|i| !i.is_empty()) {
            None => {
                let providers: Vec<Value> = self
                    .config
                    .sso
                    .providers
                    .iter()
                    .map(|p| json!({"idp_id": p.idp_id, "idp_name": p.idp_name, "idp_icon": p.idp_icon, "idp_brand": p.idp_brand}))
                    .collect();
                Ok(self.sso_page(
                    200,
                    "sso_login_idp_picker.html",
                    json!({"redirect_url": redirect_url, "server_name": self.server_name(), "providers": providers}),
                ))
            }
            Some(id) if self.sso().provider(id).is_none() => {
                Ok(self.sso_error(400, "unknown_idp", "Unknown identity provider ID"))
            }
            Some(id) => {
                let query =
                    form_urlencoded::Serializer::new(String::new()).append_pair("redirectUrl", redirect_url).finish();
                let path = form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>();
                Ok(WebAnswer::redirect(format!(
                    "{}_matrix/client/v3/login/sso/redirect/{path}?{query}",
                    self.config.public_baseurl
                )))
            }
        }
    }

    /// `GET|POST /_synapse/client/oidc/callback`: where the provider sends the browser back.
    /// Every failure is a page for the person at the browser, as on Synapse.
    pub async fn oidc_callback(
        &self,
        params: &HashMap<String, String>,
        cookie: Option<&str>,
        info: &crate::users::RequestInfo,
    ) -> WebAnswer {
        if let Some(error) = params.get("error") {
            let description = params.get("error_description").map(String::as_str).unwrap_or_default();
            if error == "access_denied" {
                tracing::info!(error, description, "OIDC callback with an error");
            } else {
                tracing::error!(error, description, "OIDC callback with an error");
            }
            return self.sso_error(400, error, description);
        }
        let Some(cookie) = cookie else {
            tracing::info!("OIDC callback with no session cookie");
            return self.sso_error(400, "missing_session", "No session cookie found");
        };
        // A failed callback would likely fail again with a spent code: the cookie goes now.
        let clear = session_cookies("", self.secure_cookies());
        let answer = self.oidc_callback_with_cookie(params, cookie, info).await;
        answer.with_cookies(clear)
    }

    async fn oidc_callback_with_cookie(
        &self,
        params: &HashMap<String, String>,
        cookie: &str,
        info: &crate::users::RequestInfo,
    ) -> WebAnswer {
        let Some(state) = params.get("state") else {
            return self.sso_error(400, "invalid_request", "State parameter is missing");
        };
        let session = match self.sso().open(cookie, state) {
            Ok(s) => s,
            Err((error, description)) => {
                tracing::warn!(error, description, "could not verify the session of an OIDC callback");
                return self.sso_error(400, error, &description);
            }
        };
        let Some(provider) = self.sso().provider(&session.idp_id).cloned() else {
            return self.sso_error(400, "unknown_idp", "Unknown IdP");
        };
        let Some(code) = params.get("code") else {
            return self.sso_error(400, "invalid_request", "Code parameter is missing");
        };
        let tokens = match provider.exchange_code(code, &session.code_verifier, &self.callback_url()).await {
            Ok(t) => t,
            Err(OidcError { error, description }) => {
                tracing::warn!(error, description, "could not exchange the OAuth2 code");
                return self.sso_error(400, &error, &description);
            }
        };
        let id_token = if tokens.get("id_token").is_some_and(|t| !t.is_null()) {
            match provider.id_token_claims(&tokens, &session.nonce).await {
                Ok(claims) => Some(claims),
                Err(e) => {
                    tracing::warn!(error = %e, "invalid id_token");
                    return self.sso_error(400, "invalid_token", &e);
                }
            }
        } else {
            None
        };
        let claims = if provider.config.uses_userinfo() {
            match provider.userinfo(&tokens).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "could not fetch userinfo");
                    return self.sso_error(400, "fetch_error", &e);
                }
            }
        } else if let Some(claims) = id_token {
            claims
        } else {
            return self.sso_error(400, "invalid_token", "Missing id_token in token response");
        };
        let remote_user_id = match provider.config.mapping.remote_user_id(&claims) {
            Ok(id) => id,
            Err(e) => {
                return self.sso_error(
                    400,
                    "mapping_error",
                    &format!("Failed to extract subject from OIDC response: {e}"),
                );
            }
        };
        if !session.ui_auth_session_id.is_empty() {
            return self
                .complete_sso_ui_auth(&provider.config.idp_id, &remote_user_id, &session.ui_auth_session_id)
                .await;
        }
        if !provider.config.attribute_requirements.iter().all(|r| r.met_by(&claims)) {
            tracing::info!(idp = provider.config.idp_id, "an SSO login did not meet attribute_requirements");
            return self.sso_error(400, "unauthorised", "You are not authorised to log in here.");
        }
        match self
            .complete_sso_login_request(&provider, &remote_user_id, &claims, &session.client_redirect_url, info)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, "could not map an SSO user");
                self.sso_error(400, "mapping_error", &e)
            }
        }
    }

    /// Synapse's `complete_sso_login_request`: the account this identity is (known, an
    /// existing one when `allow_existing_users`, or a new one), then the login.
    async fn complete_sso_login_request(
        &self,
        provider: &OidcProvider,
        remote_user_id: &str,
        claims: &Map<String, Value>,
        client_redirect_url: &str,
        info: &crate::users::RequestInfo,
    ) -> std::result::Result<WebAnswer, String> {
        let c = &provider.config;
        let extra = c.mapping.extra_attributes(claims);
        let guard = self.sso().mapping_lock.lock().await;
        let (idp, remote) = (c.idp_id.clone(), remote_user_id.to_owned());
        let mut user_id = self.db(move |s| s.user_by_external_id(&idp, &remote)).await.map_err(|e| e.to_string())?;
        if user_id.is_none() && c.allow_existing_users {
            let attributes = c.mapping.attributes(claims, 0)?;
            if let Some(localpart) = attributes.localpart
                && let Some(found) = self.account_named(&localpart).await.map_err(|e| e.to_string())?
            {
                let (idp, remote, uid) = (c.idp_id.clone(), remote_user_id.to_owned(), found.user_id.clone());
                self.db(move |s| s.record_external_id(&idp, &remote, &uid)).await.map_err(|e| e.to_string())?;
                user_id = Some(found.user_id);
            }
        }
        let mut new_user = false;
        let mut picture = None;
        let user_id = match user_id {
            None if !c.enable_registration => {
                tracing::info!(
                    idp = c.idp_id,
                    remote_user_id,
                    "no account and registration disabled for this provider"
                );
                return Err("User does not exist and registrations are disabled".into());
            }
            None => {
                let attributes = self.attributes_with_free_localpart(c, claims).await?;
                if attributes.localpart.is_none() || attributes.confirm_localpart {
                    drop(guard);
                    return Ok(self.start_username_picking(c, remote_user_id, attributes, client_redirect_url, extra));
                }
                new_user = true;
                let user_id = self.register_sso_user(&c.idp_id, remote_user_id, &attributes, info).await?;
                picture = attributes.picture;
                user_id
            }
            Some(user_id) => {
                if self.config.sso.update_profile_information {
                    let attributes = c.mapping.attributes(claims, 0)?;
                    if let Some(name) = &attributes.display_name {
                        self.sso_update_display_name(&user_id, name).await;
                    }
                    picture = attributes.picture;
                }
                user_id
            }
        };
        // The picture is fetched once the mapping lock is free: other logins need not wait.
        drop(guard);
        if let Some(url) = picture {
            self.sso_set_avatar(&user_id, &url).await;
        }
        self.complete_sso_login(&user_id, &c.idp_id, client_redirect_url, extra, new_user)
            .await
            .map_err(|e| e.to_string())
    }

    /// The local account whose localpart is `localpart` in any case (Synapse's
    /// `get_users_by_id_case_insensitive`, which its SSO mapping asks).
    async fn account_named(&self, localpart: &str) -> Result<Option<myelin_storage::UserRow>> {
        let user_id = format!("@{localpart}:{}", self.server_name());
        self.db(move |s| s.find_user_case_insensitive(&user_id)).await
    }

    /// The mapping's attributes, tried until their localpart is free (or absent).
    async fn attributes_with_free_localpart(
        &self,
        c: &OidcProviderConfig,
        claims: &Map<String, Value>,
    ) -> std::result::Result<UserAttributes, String> {
        for failures in 0..MAP_USERNAME_RETRIES {
            let attributes = c
                .mapping
                .attributes(claims, failures)
                .map_err(|_| "Could not extract user attributes from SSO response.")?;
            let Some(localpart) = &attributes.localpart else { return Ok(attributes) };
            if self.account_named(localpart).await.map_err(|e| e.to_string())?.is_none() {
                return Ok(attributes);
            }
        }
        Err("Unable to generate a Matrix ID from the SSO response".into())
    }

    /// Synapse's `_register_mapped_user`: the account, its identity at the provider, its
    /// addresses.
    async fn register_sso_user(
        &self,
        idp_id: &str,
        remote_user_id: &str,
        attributes: &UserAttributes,
        info: &crate::users::RequestInfo,
    ) -> std::result::Result<String, String> {
        let localpart = attributes.localpart.clone().unwrap_or_default();
        if invalid_localpart(&localpart) {
            return Err(format!("localpart is invalid: {localpart}"));
        }
        let user_id = self
            .create_account(Some(localpart.clone()), None, false, info, None)
            .await
            .map_err(|e| e.message)?
            .user_id
            .to_string();
        let display_name = attributes.display_name.clone().unwrap_or(localpart);
        let (u, d) = (user_id.clone(), display_name);
        self.db(move |s| s.set_profile_field(&u, myelin_storage::ProfileField::DisplayName, Some(&d)))
            .await
            .map_err(|e| e.to_string())?;
        let (idp, remote, uid) = (idp_id.to_owned(), remote_user_id.to_owned(), user_id.clone());
        self.db(move |s| s.record_external_id(&idp, &remote, &uid)).await.map_err(|e| e.to_string())?;
        for email in &attributes.emails {
            if let Err(e) = self.module_add_email(&user_id, email).await {
                tracing::warn!(user_id, error = %e, "could not add an SSO user's address");
            }
        }
        tracing::info!(user_id, idp = idp_id, "registered a user through SSO");
        Ok(user_id)
    }

    async fn sso_update_display_name(&self, user_id: &str, name: &str) {
        let Ok(user) = ruma::UserId::parse(user_id) else { return };
        let Ok(requester) = self.requester_for(&user).await else { return };
        if let Err(e) = self.set_profile_field(&requester, user_id, "displayname", Some(name.to_owned())).await {
            tracing::warn!(user_id, error = %e, "could not update a display name from SSO");
        }
    }

    /// Synapse's `set_avatar`: the provider's picture, fetched (through the outbound IP filter,
    /// at most `max_upload_size`, an image), stored as the user's media and made their avatar.
    /// The same picture again is not stored twice (its hash is its upload name). Failures are
    /// logged, never fatal to the login.
    async fn sso_set_avatar(&self, user_id: &str, url: &str) {
        if let Err(e) = self.try_sso_set_avatar(user_id, url).await {
            tracing::warn!(user_id, url, error = %e, "failed to save the user avatar");
        }
    }

    async fn try_sso_set_avatar(&self, user_id: &str, url: &str) -> std::result::Result<(), String> {
        use sha2::Digest;
        let filter = &self.config.federation.ip_filter;
        let client = filter
            .web_client_builder(self.config.insecure_outbound_tls)?
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        let response = filter.send(&client, client.get(url)).await?;
        if response.status() != 200 {
            return Err(format!("GET request to download sso avatar image returned {}", response.status()));
        }
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default();
        if !content_type.starts_with("image/") {
            return Err(format!("not an image: {content_type:?}"));
        }
        let limit = self.config.max_upload_size as usize;
        let mut body = Vec::new();
        let mut response = response;
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > limit {
                return Err(format!("the picture is over {limit} bytes"));
            }
        }
        let upload_name = format!("sso_avatar_{}", hex::encode(sha2::Sha256::digest(&body)));
        let current = self.profile_of(user_id).await.map_err(|e| e.message)?.1;
        if let Some(media_id) =
            current.as_deref().and_then(|mxc| mxc.strip_prefix(&format!("mxc://{}/", self.server_name())))
        {
            let id = media_id.to_owned();
            let existing = self.db(move |s| s.get_media(&id)).await.map_err(|e| e.message)?;
            if existing.is_some_and(|m| m.upload_name.as_deref() == Some(upload_name.as_str())) {
                tracing::info!(user_id, "skipping saving the user avatar: unchanged");
                return Ok(());
            }
        }
        let user = ruma::UserId::parse(user_id).map_err(|e| e.to_string())?;
        let requester = self.requester_for(&user).await.map_err(|e| e.message)?;
        let mut stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(body))]);
        let mxc = self
            .upload_media(&requester, None, Some(content_type), Some(upload_name), &mut stream)
            .await
            .map_err(|e| e.message)?;
        self.set_profile_field(&requester, user_id, "avatar_url", Some(mxc)).await.map_err(|e| e.message)?;
        tracing::info!(user_id, "saved the user avatar from SSO");
        Ok(())
    }

    /// Synapse's `complete_sso_login`: a login token for the client, sent straight back to a
    /// whitelisted client, else through the confirmation page. Also modules'
    /// `complete_sso_login_async`.
    pub(crate) async fn complete_sso_login(
        &self,
        user_id: &str,
        idp_id: &str,
        client_redirect_url: &str,
        extra: Map<String, Value>,
        new_user: bool,
    ) -> Result<WebAnswer> {
        let u = user_id.to_owned();
        let row = self.db(move |s| s.get_user(&u)).await?;
        if row.as_ref().is_none_or(|r| r.deactivated) {
            return Ok(self.sso_page(403, "sso_account_deactivated.html", json!({})));
        }
        if !extra.is_empty() {
            self.sso().extra_attributes.lock().unwrap().insert(user_id.to_owned(), (now_ms(), extra));
        }
        let token = self.module_create_login_token(user_id, LOGIN_TOKEN_LIFETIME_MS, Some(idp_id.to_owned())).await?;
        let redirect_url = add_query_param(client_redirect_url, "loginToken", &token);
        self.modules.on_user_login(user_id, Some(SSO_STAGE), Some(idp_id)).await?;
        if self.config.sso.client_whitelist.iter().any(|prefix| client_redirect_url.starts_with(prefix.as_str())) {
            return Ok(WebAnswer::redirect(redirect_url));
        }
        let display_url = match reqwest::Url::parse(client_redirect_url) {
            Ok(u) if u.scheme() == "https" => u.host_str().unwrap_or_default().to_owned(),
            Ok(mut u) => {
                u.set_query(None);
                u.set_fragment(None);
                u.to_string()
            }
            Err(_) => client_redirect_url.to_owned(),
        };
        let profile = self.profile_of(user_id).await?;
        Ok(self.sso_page(
            200,
            "sso_redirect_confirm.html",
            json!({
                "display_url": display_url,
                "redirect_url": redirect_url,
                "server_name": self.server_name(),
                "new_user": new_user,
                "user_id": user_id,
                "user_profile": {"display_name": profile.0, "avatar_url": profile.1},
            }),
        ))
    }

    /// The `extra_attributes` an SSO login left for the client's token login (once, within two
    /// minutes).
    pub(crate) fn take_sso_extra_attributes(&self, user_id: &str) -> Map<String, Value> {
        let mut pending = self.sso().extra_attributes.lock().unwrap();
        let cutoff = now_ms() - LOGIN_TOKEN_LIFETIME_MS as i64;
        pending.retain(|_, (created, _)| *created >= cutoff);
        pending.remove(user_id).map(|(_, extra)| extra).unwrap_or_default()
    }

    /// A new user without a usable localpart chooses one: the session, and the redirect to
    /// the username picker with its cookie.
    fn start_username_picking(
        &self,
        c: &OidcProviderConfig,
        remote_user_id: &str,
        attributes: UserAttributes,
        client_redirect_url: &str,
        extra: Map<String, Value>,
    ) -> WebAnswer {
        let id = random_string(16);
        let session = MappingSession {
            idp_id: c.idp_id.clone(),
            remote_user_id: remote_user_id.to_owned(),
            display_name: attributes.display_name,
            avatar_url: attributes.picture,
            emails: attributes.emails.clone(),
            chosen_localpart: attributes.localpart,
            use_display_name: false,
            use_avatar: false,
            emails_to_use: attributes.emails,
            client_redirect_url: client_redirect_url.to_owned(),
            extra_attributes: extra,
            expires_ms: now_ms() + MAPPING_SESSION_LIFETIME_MS,
        };
        let mut sessions = self.sso().mapping_sessions.lock().unwrap();
        sessions.retain(|_, s| s.expires_ms >= now_ms());
        sessions.insert(id.clone(), session);
        WebAnswer::redirect("/_synapse/client/pick_username/account_details".into())
            .with_cookies(vec![format!("{MAPPING_COOKIE}={id}; Path=/")])
    }

    fn mapping_session(&self, cookies: Option<&str>) -> std::result::Result<(String, MappingSession), (u16, String)> {
        let id = cookies
            .and_then(|c| cookie_value(c, MAPPING_COOKIE))
            .ok_or((400, format!("missing cookie {MAPPING_COOKIE}")))?;
        let sessions = self.sso().mapping_sessions.lock().unwrap();
        match sessions.get(&id) {
            Some(s) if s.expires_ms >= now_ms() => Ok((id, s.clone())),
            _ => Err((400, "unknown session".into())),
        }
    }

    /// `GET /_synapse/client/pick_username/account_details`: the form.
    pub fn sso_account_details_page(&self, cookies: Option<&str>) -> WebAnswer {
        let (_, session) = match self.mapping_session(cookies) {
            Ok(found) => found,
            Err((status, message)) => return self.sso_error(status, "bad_session", &message),
        };
        let idp = self.config.sso.providers.iter().find(|p| p.idp_id == session.idp_id);
        self.sso_page(
            200,
            "sso_auth_account_details.html",
            json!({
                "idp": idp.map(|p| json!({"idp_id": p.idp_id, "idp_name": p.idp_name, "idp_icon": p.idp_icon})),
                "user_attributes": {
                    "display_name": session.display_name,
                    "emails": session.emails,
                    "localpart": session.chosen_localpart.unwrap_or_default(),
                    "avatar_url": session.avatar_url,
                },
            }),
        )
    }

    /// `POST /_synapse/client/pick_username/account_details`: the choice, then on to
    /// registration (Synapse's `handle_submit_username_request`).
    pub fn sso_submit_account_details(&self, cookies: Option<&str>, form: &[(String, String)]) -> WebAnswer {
        let id = match self.mapping_session(cookies) {
            Ok((id, _)) => id,
            Err((status, message)) => return self.sso_error(status, "bad_session", &message),
        };
        let Some(localpart) = form.iter().find(|(k, _)| k == "username").map(|(_, v)| v.clone()) else {
            return self.sso_error(400, "bad_param", "Missing string query parameter 'username'");
        };
        let truthy = |key: &str| form.iter().any(|(k, v)| k == key && matches!(v.as_str(), "true" | "1" | "on"));
        let use_display_name = truthy("use_display_name");
        let use_avatar = truthy("use_avatar");
        let chosen_emails: Vec<String> =
            form.iter().filter(|(k, _)| k == "use_email").map(|(_, v)| v.clone()).collect();
        let mut sessions = self.sso().mapping_sessions.lock().unwrap();
        let Some(session) = sessions.get_mut(&id) else {
            return self.sso_error(400, "bad_session", "unknown session");
        };
        session.chosen_localpart = Some(localpart);
        session.use_display_name = use_display_name;
        session.use_avatar = use_avatar;
        // Only addresses the provider vouched for.
        session.emails_to_use = chosen_emails.into_iter().filter(|e| session.emails.contains(e)).collect();
        WebAnswer::redirect("/_synapse/client/sso_register".into())
    }

    /// `GET /_synapse/client/pick_username/check?username=`: whether a name is free.
    pub async fn sso_username_available(&self, cookies: Option<&str>, username: Option<&str>) -> Result<Value> {
        let Some(localpart) = username else {
            return Err(Error::new(ErrorKind::MissingParam, "Missing string query parameter 'username'"));
        };
        self.mapping_session(cookies).map_err(|(_, m)| Error::new(ErrorKind::BadRequest, m))?;
        if invalid_localpart(localpart) {
            return Err(Error::new(ErrorKind::BadRequest, format!("localpart is invalid: {localpart}")));
        }
        let taken = self.account_named(localpart).await?.is_some();
        Ok(json!({"available": !taken}))
    }

    /// `GET /_synapse/client/sso_register`: the account is made with the chosen name, then the
    /// login completes (Synapse's `register_sso_user`).
    pub async fn sso_register(&self, cookies: Option<&str>, info: &crate::users::RequestInfo) -> WebAnswer {
        let (id, session) = match self.mapping_session(cookies) {
            Ok(found) => found,
            Err((status, message)) => return self.sso_error(status, "bad_session", &message),
        };
        let Some(localpart) = session.chosen_localpart.clone() else {
            return WebAnswer::redirect("/_synapse/client/pick_username/account_details".into());
        };
        let attributes = UserAttributes {
            localpart: Some(localpart.clone()),
            display_name: if session.use_display_name { session.display_name.clone() } else { None },
            emails: session.emails_to_use.clone(),
            ..Default::default()
        };
        let guard = self.sso().mapping_lock.lock().await;
        match self.account_named(&localpart).await {
            Ok(Some(_)) => return self.sso_error(400, "M_USER_IN_USE", "User ID already taken."),
            Ok(None) => {}
            Err(e) => return self.sso_error(500, "server_error", &e.to_string()),
        }
        let user_id = match self.register_sso_user(&session.idp_id, &session.remote_user_id, &attributes, info).await {
            Ok(u) => u,
            Err(e) => return self.sso_error(400, "mapping_error", &e),
        };
        drop(guard);
        if let Some(url) = session.avatar_url.as_ref().filter(|_| session.use_avatar) {
            self.sso_set_avatar(&user_id, url).await;
        }
        self.sso().mapping_sessions.lock().unwrap().remove(&id);
        let clear = vec![format!("{MAPPING_COOKIE}=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/")];
        match self
            .complete_sso_login(&user_id, &session.idp_id, &session.client_redirect_url, session.extra_attributes, true)
            .await
        {
            Ok(answer) => answer.with_cookies(clear),
            Err(e) => self.sso_error(500, "server_error", &e.to_string()).with_cookies(clear),
        }
    }

    /// The providers at which `user_id` has an identity (Synapse's
    /// `get_identity_providers_for_user`), in configured order.
    pub(crate) async fn sso_providers_for_user(&self, user_id: &str) -> Result<Vec<String>> {
        if !self.config.sso.enabled() {
            return Ok(Vec::new());
        }
        let u = user_id.to_owned();
        let ids = self.db(move |s| s.external_ids(&u)).await?;
        Ok(self
            .config
            .sso
            .providers
            .iter()
            .filter(|p| ids.iter().any(|(idp, _)| *idp == p.idp_id))
            .map(|p| p.idp_id.clone())
            .collect())
    }

    /// `GET /auth/m.login.sso/fallback/web?session=`: the page that sends the user to their
    /// provider to prove it is them (Synapse's `start_sso_ui_auth`).
    pub async fn sso_ui_auth_start(&self, session_id: &str, preferred_idp: Option<&str>) -> Result<WebAnswer> {
        let record = self
            .uia_session(session_id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::BadRequest, format!("Unknown session ID: {session_id}")))?;
        let user_id = record.user_id.clone().unwrap_or_default();
        let idps = self.sso_providers_for_user(&user_id).await?;
        if idps.is_empty() {
            return Err(Error::new(ErrorKind::BadRequest, "User has no SSO identities"));
        }
        let idp_id = match preferred_idp {
            Some(p) if idps.iter().any(|i| i == p) => p.to_owned(),
            Some(p) => {
                return Err(Error::invalid_param(format!("Unknown preferred Identity Provider: '{p}'")));
            }
            None => idps[0].clone(),
        };
        let provider =
            self.sso().provider(&idp_id).cloned().ok_or_else(|| Error::not_found("Unknown identity provider"))?;
        let redirect = self.redirect_to_provider(&provider, "", session_id, &[]).await;
        let Some(location) = redirect.location.clone() else { return Ok(redirect) };
        let description = record.operation.clone().unwrap_or_default();
        let page = self.sso_page(
            200,
            "sso_auth_confirm.html",
            json!({
                "description": description,
                "redirect_url": location,
                "idp": {"idp_id": provider.config.idp_id, "idp_name": provider.config.idp_name},
            }),
        );
        Ok(page.with_cookies(redirect.set_cookies))
    }

    /// The callback of a re-authentication: the stage completes when the provider's identity
    /// is the session's user (Synapse's `complete_sso_ui_auth_request`).
    async fn complete_sso_ui_auth(&self, idp_id: &str, remote_user_id: &str, session_id: &str) -> WebAnswer {
        let (idp, remote) = (idp_id.to_owned(), remote_user_id.to_owned());
        let mapped = self.db(move |s| s.user_by_external_id(&idp, &remote)).await.ok().flatten();
        let Ok(Some(mut record)) = self.uia_session(session_id).await else {
            return self.sso_error(400, "invalid_session", &format!("Unknown session ID: {session_id}"));
        };
        let expected = record.user_id.clone().unwrap_or_default();
        if mapped.as_deref() == Some(expected.as_str()) {
            record.sso_user = Some(expected);
            if !record.completed.iter().any(|s| s == SSO_STAGE) {
                record.completed.push(SSO_STAGE.to_owned());
            }
            return match self.save_uia_session(session_id, &record).await {
                Ok(()) => self.sso_page(200, "sso_auth_success.html", json!({})),
                Err(e) => self.sso_error(500, "server_error", &e.to_string()),
            };
        }
        tracing::warn!(idp_id, remote_user_id, ?mapped, expected, "SSO re-authentication by another identity");
        self.sso_page(
            200,
            "sso_auth_bad_user.html",
            json!({"server_name": self.server_name(), "user_id_to_verify": expected}),
        )
    }
}

/// A cookie's value from a `Cookie` header.
pub fn cookie_value(header: &str, name: &str) -> Option<String> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_tokens_join_the_redirect_urls_query() {
        assert_eq!(add_query_param("https://c/x", "loginToken", "t"), "https://c/x?loginToken=t");
        assert_eq!(add_query_param("https://c/x?a=1", "loginToken", "t"), "https://c/x?a=1&loginToken=t");
        assert_eq!(add_query_param("https://c/x?a=1#frag", "loginToken", "t+"), "https://c/x?a=1&loginToken=t%2B#frag");
    }

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(cookie_value("a=1; oidc_session=xyz; b=2", "oidc_session").as_deref(), Some("xyz"));
        assert_eq!(cookie_value("oidc_session_no_samesite=q", "oidc_session"), None);
    }

    #[test]
    fn new_localparts_keep_to_the_modern_rules() {
        assert!(!invalid_localpart("alice.b-c_d=e/f+g"));
        assert!(invalid_localpart("Alice"));
        assert!(invalid_localpart(""));
        assert!(invalid_localpart("a b"));
    }
}
