//! One OpenID Connect provider: its config (Synapse's `oidc_providers` keys), its metadata
//! and keys (discovered once, kept, fetched again when a token names a key not yet known),
//! the code exchange, the ID token's checks, userinfo, and the default Jinja mapping of the
//! provider's claims to a Matrix account.

use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::Digest;

use super::jwt;
use crate::config::ConfigError;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuthMethod {
    /// HTTP Basic with the client ID and secret (the default with a secret).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
    /// A public client: only `client_id`.
    None,
}

/// When to use PKCE (RFC 7636).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PkceMethod {
    /// When the provider's metadata lists `code_challenge_methods_supported`.
    Auto,
    Always,
    Never,
}

/// One of `attribute_requirements`: the claim must exist, and equal `value` or one of `one_of`
/// when those are given.
#[derive(Debug, Clone)]
pub(crate) struct AttributeRequirement {
    pub(crate) attribute: String,
    pub(crate) value: Option<String>,
    pub(crate) one_of: Option<Vec<String>>,
}

impl AttributeRequirement {
    /// Whether the claims meet it (a claim that is not a list counts as a list of one).
    pub(crate) fn met_by(&self, claims: &Map<String, Value>) -> bool {
        let Some(found) = claims.get(&self.attribute) else { return false };
        if self.value.is_none() && self.one_of.is_none() {
            return true;
        }
        let values: Vec<&Value> = match found {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        let has = |wanted: &str| values.iter().any(|v| v.as_str() == Some(wanted));
        self.value.as_deref().is_some_and(has) || self.one_of.iter().flatten().any(|w| has(w))
    }
}

/// The default user mapping provider's templates (Synapse's `JinjaOidcMappingProvider`).
#[derive(Debug, Clone)]
pub(crate) struct JinjaMapping {
    pub(crate) subject_template: String,
    pub(crate) picture_template: String,
    pub(crate) localpart_template: Option<String>,
    pub(crate) display_name_template: Option<String>,
    pub(crate) email_template: Option<String>,
    pub(crate) extra_attributes: Vec<(String, String)>,
    pub(crate) confirm_localpart: bool,
}

/// What the mapping makes of a user's claims.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserAttributes {
    pub(crate) localpart: Option<String>,
    pub(crate) confirm_localpart: bool,
    pub(crate) display_name: Option<String>,
    pub(crate) picture: Option<String>,
    pub(crate) emails: Vec<String>,
}

/// The template environment of the mappings: `None` renders as nothing (Synapse's
/// `jinja_finalize`), and Synapse's `localpart_from_email` filter exists.
fn mapping_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_formatter(|out, state, value| {
        if value.is_none() || value.is_undefined() { Ok(()) } else { minijinja::escape_formatter(out, state, value) }
    });
    env.add_filter("localpart_from_email", |email: String| {
        email.rsplit_once('@').map(|(local, _)| local.to_owned()).unwrap_or(email)
    });
    env
}

fn render(template: &str, claims: &Map<String, Value>) -> Result<String, String> {
    mapping_env()
        .render_str(template, minijinja::context! { user => claims })
        .map(|s| s.trim().to_owned())
        .map_err(|e| e.to_string())
}

impl JinjaMapping {
    fn parse(config: &Map<String, Value>, at: &dyn Fn(&[&str]) -> Vec<String>) -> Result<Self, ConfigError> {
        let check = |template: String, path: &[&str]| -> Result<String, ConfigError> {
            mapping_env()
                .template_from_str(&template)
                .map(|_| ())
                .map_err(|_| ConfigError::at(&at(path), "invalid jinja template"))?;
            Ok(template)
        };
        let with_claim = |option: &str, default_claim: &str| -> Result<String, ConfigError> {
            let key = format!("{option}_template");
            match config.get(&key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                Some(t) => check(t.to_owned(), &[&key]),
                None => {
                    let claim = config.get(&format!("{option}_claim")).and_then(Value::as_str).unwrap_or(default_claim);
                    check(format!("{{{{ user.{claim} }}}}"), &[&key])
                }
            }
        };
        let optional = |key: &str| -> Result<Option<String>, ConfigError> {
            match config.get(key) {
                None => Ok(None),
                Some(Value::String(t)) => check(t.clone(), &[key]).map(Some),
                Some(_) => Err(ConfigError::at(&at(&[key]), "invalid jinja template")),
            }
        };
        let mut extra_attributes = Vec::new();
        match config.get("extra_attributes") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (key, value) in m {
                    let Some(t) = value.as_str() else {
                        return Err(ConfigError::at(&at(&["extra_attributes", key]), "invalid jinja template"));
                    };
                    extra_attributes.push((key.clone(), check(t.to_owned(), &["extra_attributes", key])?));
                }
            }
            Some(_) => return Err(ConfigError::at(&at(&["extra_attributes"]), "must be a dict")),
        }
        let confirm_localpart = match config.get("confirm_localpart") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(_) => return Err(ConfigError::at(&at(&["confirm_localpart"]), "must be a bool")),
        };
        Ok(JinjaMapping {
            subject_template: with_claim("subject", "sub")?,
            picture_template: with_claim("picture", "picture")?,
            localpart_template: optional("localpart_template")?,
            display_name_template: optional("display_name_template")?,
            email_template: optional("email_template")?,
            extra_attributes,
            confirm_localpart,
        })
    }

    /// The user's ID at the provider (Synapse's `get_remote_user_id`).
    pub(crate) fn remote_user_id(&self, claims: &Map<String, Value>) -> Result<String, String> {
        let id = render(&self.subject_template, claims)?;
        if id.is_empty() { Err("the subject claim is empty".into()) } else { Ok(id) }
    }

    /// Synapse's `map_user_attributes`: `failures` earlier attempts found the localpart taken,
    /// so that many is appended to it.
    pub(crate) fn attributes(&self, claims: &Map<String, Value>, failures: u32) -> Result<UserAttributes, String> {
        let field = |t: &Option<String>| -> Result<Option<String>, String> {
            t.as_deref().map(|t| render(t, claims)).transpose().map(|s| s.filter(|s| !s.is_empty()))
        };
        let localpart = match &self.localpart_template {
            Some(t) => {
                let mut l = map_username_to_mxid_localpart(&render(t, claims)?);
                if failures > 0 {
                    l.push_str(&failures.to_string());
                }
                Some(l)
            }
            None => None,
        };
        Ok(UserAttributes {
            localpart,
            confirm_localpart: self.confirm_localpart,
            display_name: field(&self.display_name_template)?,
            picture: Some(render(&self.picture_template, claims)?).filter(|p| !p.is_empty()),
            emails: field(&self.email_template)?.into_iter().collect(),
        })
    }

    /// `extra_attributes`, rendered; one that fails is left out (and logged), as Synapse.
    pub(crate) fn extra_attributes(&self, claims: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        for (key, template) in &self.extra_attributes {
            match render(template, claims) {
                Ok(v) => {
                    out.insert(key.clone(), json!(v));
                }
                Err(e) => tracing::error!(key, error = %e, "failed to render an OIDC extra attribute"),
            }
        }
        out
    }
}

/// The spec's mapping from other character sets (Synapse's `map_username_to_mxid_localpart`):
/// lower-cased, every byte outside `a-z 0-9 . _ - / +` as `=xx`, a leading `_` as `=5f`.
pub(crate) fn map_username_to_mxid_localpart(name: &str) -> String {
    let mut out = String::new();
    for byte in name.to_lowercase().bytes() {
        match byte {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/' | b'+' => out.push(byte as char),
            other => out.push_str(&format!("={other:02x}")),
        }
    }
    if let Some(rest) = out.strip_prefix('_') {
        out = format!("=5f{rest}");
    }
    out
}

/// One `oidc_providers` entry, checked.
#[derive(Debug, Clone)]
pub(crate) struct OidcProviderConfig {
    /// `oidc`, or `oidc-<idp_id>` as Synapse prefixes it.
    pub(crate) idp_id: String,
    pub(crate) idp_name: String,
    pub(crate) idp_icon: Option<String>,
    pub(crate) idp_brand: Option<String>,
    pub(crate) discover: bool,
    pub(crate) issuer: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<String>,
    pub(crate) client_auth_method: ClientAuthMethod,
    pub(crate) pkce_method: PkceMethod,
    pub(crate) id_token_signing_alg_values_supported: Option<Vec<String>>,
    pub(crate) scopes: Vec<String>,
    pub(crate) authorization_endpoint: Option<String>,
    pub(crate) token_endpoint: Option<String>,
    pub(crate) userinfo_endpoint: Option<String>,
    pub(crate) jwks_uri: Option<String>,
    pub(crate) skip_verification: bool,
    /// `user_profile_method: userinfo_endpoint`.
    pub(crate) profile_from_userinfo: bool,
    pub(crate) redirect_uri: Option<String>,
    pub(crate) allow_existing_users: bool,
    pub(crate) enable_registration: bool,
    pub(crate) attribute_requirements: Vec<AttributeRequirement>,
    pub(crate) additional_authorization_parameters: Vec<(String, String)>,
    pub(crate) passthrough_authorization_parameters: Vec<String>,
    pub(crate) mapping: JinjaMapping,
}

impl OidcProviderConfig {
    /// Reads one provider at `path` (`oidc_providers`, `<item 0>`, or `oidc_config`).
    pub(crate) fn parse(
        config: &Map<String, Value>,
        path: &[String],
        named: bool,
        resolve: &dyn Fn(String) -> std::path::PathBuf,
    ) -> Result<Self, ConfigError> {
        let at = |keys: &[&str]| {
            let mut p = path.to_vec();
            p.extend(keys.iter().map(|k| (*k).to_owned()));
            p
        };
        let string = |key: &str| -> Result<Option<String>, ConfigError> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ConfigError::at(&at(&[key]), format!("{key}: expected a string"))),
            }
        };
        let boolean = |key: &str, default: bool| -> Result<bool, ConfigError> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(ConfigError::at(&at(&[key]), format!("{key}: expected a boolean"))),
            }
        };
        let strings = |key: &str| -> Result<Option<Vec<String>>, ConfigError> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .map(Some)
                    .ok_or_else(|| ConfigError::at(&at(&[key]), format!("{key}: expected a list of strings"))),
                Some(_) => Err(ConfigError::at(&at(&[key]), format!("{key}: expected a list of strings"))),
            }
        };
        let required = |key: &str| -> Result<String, ConfigError> {
            string(key)?.ok_or_else(|| ConfigError::at(path, format!("'{key}' is a required property")))
        };
        if named {
            required("idp_id")?;
            required("idp_name")?;
        }
        let issuer = required("issuer")?;
        let client_id = required("client_id")?;
        let idp_id = match string("idp_id")? {
            None => "oidc".to_owned(),
            Some(id) => {
                let valid = !id.is_empty()
                    && id.len() <= 250
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b));
                if !valid {
                    return Err(ConfigError::at(
                        &at(&["idp_id"]),
                        format!("'{id}' does not match '^[A-Za-z0-9._~-]+$'"),
                    ));
                }
                // Synapse prefixes every named provider, so its IDs cannot clash with other
                // kinds of SSO.
                if id == "oidc" { id } else { format!("oidc-{id}") }
            }
        };
        let idp_icon = string("idp_icon")?;
        if let Some(icon) = &idp_icon
            && !icon
                .strip_prefix("mxc://")
                .is_some_and(|rest| rest.split_once('/').is_some_and(|(s, m)| !s.is_empty() && !m.is_empty()))
        {
            return Err(ConfigError::at(&at(&["idp_icon"]), "idp_icon must be a valid MXC URI"));
        }
        let idp_brand = string("idp_brand")?;
        if let Some(brand) = &idp_brand {
            let valid = brand.len() <= 255
                && brand.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && brand.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
            if !valid {
                return Err(ConfigError::at(
                    &at(&["idp_brand"]),
                    format!("'{brand}' does not match '^[a-z][a-z0-9_.-]*$'"),
                ));
            }
        }
        if config.get("client_secret_jwt_key").is_some_and(|v| !v.is_null()) {
            return Err(ConfigError::at(
                &at(&["client_secret_jwt_key"]),
                "client_secret_jwt_key is not supported by Myelin yet: use client_secret",
            ));
        }
        let mut client_secret = string("client_secret")?;
        if let Some(file) = string("client_secret_path")? {
            if client_secret.is_some() {
                return Err(ConfigError::at(
                    &at(&["client_secret"]),
                    "Cannot specify both client_secret and client_secret_path",
                ));
            }
            let text = std::fs::read_to_string(resolve(file.clone())).map_err(|e| {
                ConfigError::at(&at(&["client_secret_path"]), format!("Error accessing file '{file}': {e}"))
            })?;
            client_secret = Some(text.trim_end_matches('\n').to_owned());
        }
        // A string that must be one of `allowed` (Synapse's schema message otherwise).
        let one_of = |key: &str, allowed: &[&str]| -> Result<Option<String>, ConfigError> {
            match string(key)? {
                Some(v) if !allowed.contains(&v.as_str()) => {
                    let listed: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
                    Err(ConfigError::at(&at(&[key]), format!("'{v}' is not one of [{}]", listed.join(", "))))
                }
                other => Ok(other),
            }
        };
        let client_auth_method =
            match one_of("client_auth_method", &["client_secret_basic", "client_secret_post", "none"])?.as_deref() {
                None if client_secret.is_none() => ClientAuthMethod::None,
                Some("client_secret_post") => ClientAuthMethod::Post,
                Some("none") => ClientAuthMethod::None,
                _ => ClientAuthMethod::Basic,
            };
        if client_secret.is_none() && client_auth_method != ClientAuthMethod::None {
            return Err(ConfigError::at(
                &[],
                "No 'client_secret' is set in OIDC config, and 'client_auth_method' is not set to 'none'",
            ));
        }
        let pkce_method = match one_of("pkce_method", &["auto", "always", "never"])?.as_deref() {
            Some("always") => PkceMethod::Always,
            Some("never") => PkceMethod::Never,
            _ => PkceMethod::Auto,
        };
        let profile_from_userinfo =
            one_of("user_profile_method", &["auto", "userinfo_endpoint"])?.as_deref() == Some("userinfo_endpoint");
        let mut attribute_requirements = Vec::new();
        if let Some(list) = config.get("attribute_requirements").filter(|v| !v.is_null()) {
            let Some(items) = list.as_array() else {
                return Err(ConfigError::at(&at(&["attribute_requirements"]), "expected a list"));
            };
            for (i, item) in items.iter().enumerate() {
                let item_at = || at(&["attribute_requirements", &format!("<item {i}>")]);
                let Some(attribute) = item.get("attribute").and_then(Value::as_str) else {
                    return Err(ConfigError::at(&item_at(), "'attribute' is a required property"));
                };
                let value = match item.get("value") {
                    None => None,
                    Some(Value::String(v)) => Some(v.clone()),
                    Some(_) => return Err(ConfigError::at(&item_at(), "'value' must be a string")),
                };
                let one_of = match item.get("one_of") {
                    None => None,
                    Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                        Some(a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    }
                    Some(_) => return Err(ConfigError::at(&item_at(), "'one_of' must be a list of strings")),
                };
                attribute_requirements.push(AttributeRequirement { attribute: attribute.to_owned(), value, one_of });
            }
        }
        let additional_authorization_parameters = match config.get("additional_authorization_parameters") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect::<Option<_>>()
                .ok_or_else(|| ConfigError::at(&at(&["additional_authorization_parameters"]), "expected strings"))?,
            Some(_) => {
                return Err(ConfigError::at(&at(&["additional_authorization_parameters"]), "expected a mapping"));
            }
        };
        let mapping_config = match config.get("user_mapping_provider") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => {
                let module = m.get("module").and_then(Value::as_str).unwrap_or(DEFAULT_MAPPING_PROVIDER);
                if module != DEFAULT_MAPPING_PROVIDER && module != LEGACY_MAPPING_PROVIDER {
                    return Err(ConfigError::at(
                        &at(&["user_mapping_provider", "module"]),
                        format!(
                            "user mapping provider {module} is not supported by Myelin yet: only Synapse's default, {DEFAULT_MAPPING_PROVIDER}"
                        ),
                    ));
                }
                match m.get("config") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(c)) => c.clone(),
                    Some(_) => {
                        return Err(ConfigError::at(&at(&["user_mapping_provider", "config"]), "expected a mapping"));
                    }
                }
            }
            Some(_) => return Err(ConfigError::at(&at(&["user_mapping_provider"]), "expected a mapping")),
        };
        let mapping = JinjaMapping::parse(&mapping_config, &|keys: &[&str]| {
            let mut p = at(&["user_mapping_provider", "config"]);
            p.extend(keys.iter().map(|k| (*k).to_owned()));
            p
        })?;
        if boolean("backchannel_logout_enabled", false)? {
            tracing::warn!(
                issuer,
                "backchannel_logout_enabled: OIDC back-channel logout is not supported by Myelin yet"
            );
        }
        Ok(OidcProviderConfig {
            idp_name: string("idp_name")?.unwrap_or_else(|| "OIDC".into()),
            idp_id,
            idp_icon,
            idp_brand,
            discover: boolean("discover", true)?,
            issuer,
            client_id,
            client_secret,
            client_auth_method,
            pkce_method,
            id_token_signing_alg_values_supported: strings("id_token_signing_alg_values_supported")?,
            scopes: strings("scopes")?.unwrap_or_else(|| vec!["openid".into()]),
            authorization_endpoint: string("authorization_endpoint")?,
            token_endpoint: string("token_endpoint")?,
            userinfo_endpoint: string("userinfo_endpoint")?,
            jwks_uri: string("jwks_uri")?,
            skip_verification: boolean("skip_verification", false)?,
            profile_from_userinfo,
            redirect_uri: string("redirect_uri")?,
            allow_existing_users: boolean("allow_existing_users", false)?,
            enable_registration: boolean("enable_registration", true)?,
            attribute_requirements,
            additional_authorization_parameters,
            passthrough_authorization_parameters: strings("passthrough_authorization_parameters")?.unwrap_or_default(),
            mapping,
        })
    }

    /// Whether the user's claims come from the userinfo endpoint rather than the ID token
    /// (no `openid` scope, or `user_profile_method: userinfo_endpoint`).
    pub(crate) fn uses_userinfo(&self) -> bool {
        !self.scopes.iter().any(|s| s == "openid") || self.profile_from_userinfo
    }
}

const DEFAULT_MAPPING_PROVIDER: &str = "synapse.handlers.oidc.JinjaOidcMappingProvider";
const LEGACY_MAPPING_PROVIDER: &str = "synapse.handlers.oidc_handler.JinjaOidcMappingProvider";

/// Why talking to a provider failed: an OAuth error code and its description, shown on the
/// error page as Synapse shows them.
#[derive(Debug)]
pub(crate) struct OidcError {
    pub(crate) error: String,
    pub(crate) description: String,
}

impl OidcError {
    pub(crate) fn new(error: &str, description: impl Into<String>) -> Self {
        OidcError { error: error.to_owned(), description: description.into() }
    }
}

/// A provider in use: its config, and its metadata and keys once fetched.
pub(crate) struct OidcProvider {
    pub(crate) config: OidcProviderConfig,
    http: reqwest::Client,
    metadata: tokio::sync::Mutex<Option<Map<String, Value>>>,
    jwks: tokio::sync::Mutex<Option<Vec<Value>>>,
}

impl OidcProvider {
    pub(crate) fn new(config: OidcProviderConfig, http: reqwest::Client) -> Self {
        OidcProvider { config, http, metadata: Default::default(), jwks: Default::default() }
    }

    /// The provider's metadata: the configured endpoints over what discovery found, checked as
    /// Synapse checks them. Kept once it loads; a failure is tried again next time.
    pub(crate) async fn metadata(&self) -> Result<Map<String, Value>, String> {
        let mut cached = self.metadata.lock().await;
        if let Some(m) = cached.as_ref() {
            return Ok(m.clone());
        }
        let c = &self.config;
        let mut m = Map::new();
        m.insert("issuer".into(), json!(c.issuer));
        if c.discover {
            let url = format!("{}/.well-known/openid-configuration", c.issuer.trim_end_matches('/'));
            let found = self.get_json(&url).await.map_err(|e| format!("discovery at {url} failed: {e}"))?;
            m.extend(found);
        }
        let overrides = [
            ("authorization_endpoint", &c.authorization_endpoint),
            ("token_endpoint", &c.token_endpoint),
            ("userinfo_endpoint", &c.userinfo_endpoint),
            ("jwks_uri", &c.jwks_uri),
        ];
        for (key, value) in overrides {
            if let Some(v) = value {
                m.insert(key.into(), json!(v));
            }
        }
        if let Some(algs) = &c.id_token_signing_alg_values_supported {
            m.insert("id_token_signing_alg_values_supported".into(), json!(algs));
        }
        if c.pkce_method == PkceMethod::Always {
            m.insert("code_challenge_methods_supported".into(), json!(["S256"]));
        } else if c.pkce_method == PkceMethod::Never {
            m.remove("code_challenge_methods_supported");
        }
        self.validate(&m)?;
        *cached = Some(m.clone());
        Ok(m)
    }

    /// Synapse's `_validate_metadata` (skipped with `skip_verification`).
    fn validate(&self, m: &Map<String, Value>) -> Result<(), String> {
        if self.config.skip_verification {
            return Ok(());
        }
        let https_url = |key: &str| -> Result<(), String> {
            match m.get(key).and_then(Value::as_str) {
                Some(u) if u.starts_with("https://") => Ok(()),
                Some(_) => Err(format!("\"{key}\" MUST use \"https\" scheme")),
                None => Err(format!("\"{key}\" is required")),
            }
        };
        https_url("issuer")?;
        https_url("authorization_endpoint")?;
        https_url("token_endpoint")?;
        let list = |key: &str| {
            m.get(key).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        };
        if let Some(methods) = list("token_endpoint_auth_methods_supported") {
            let mine = match self.config.client_auth_method {
                ClientAuthMethod::Basic => "client_secret_basic",
                ClientAuthMethod::Post => "client_secret_post",
                ClientAuthMethod::None => "none",
            };
            if !methods.contains(&mine) {
                return Err(format!("\"{mine}\" not in \"token_endpoint_auth_methods_supported\" ({methods:?})"));
            }
        }
        if let Some(methods) = list("code_challenge_methods_supported")
            && !methods.contains(&"S256")
        {
            return Err(format!("\"S256\" not in \"code_challenge_methods_supported\" ({methods:?})"));
        }
        if let Some(types) = list("response_types_supported")
            && !types.contains(&"code")
        {
            return Err(format!("\"code\" not in \"response_types_supported\" ({types:?})"));
        }
        if self.config.uses_userinfo() {
            if m.get("userinfo_endpoint").is_none() {
                return Err("provider has no \"userinfo_endpoint\", even though it is required".into());
            }
        } else {
            https_url("jwks_uri")?;
        }
        Ok(())
    }

    /// The provider's signing keys, fetched once, or again when `refresh` (a token named a key
    /// not in the kept set: the provider rotated its keys).
    async fn keys(&self, refresh: bool) -> Result<Vec<Value>, String> {
        let mut cached = self.jwks.lock().await;
        if !refresh && let Some(k) = cached.as_ref() {
            return Ok(k.clone());
        }
        let metadata = self.metadata().await?;
        let Some(uri) = metadata.get("jwks_uri").and_then(Value::as_str) else {
            return Err("Missing \"jwks_uri\" in metadata".into());
        };
        let set = self.get_json(uri).await.map_err(|e| format!("fetching {uri}: {e}"))?;
        let keys = set.get("keys").and_then(Value::as_array).cloned().unwrap_or_default();
        *cached = Some(keys.clone());
        Ok(keys)
    }

    async fn get_json(&self, url: &str) -> Result<Map<String, Value>, String> {
        let response =
            self.http.get(url).header("Accept", "application/json").send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{status}"));
        }
        match response.json::<Value>().await {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err("not a JSON object".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The authorization URL the browser is sent to, and the PKCE verifier to keep (empty
    /// without PKCE).
    pub(crate) async fn authorization_url(
        &self,
        callback_url: &str,
        state: &str,
        nonce: &str,
        passthrough: &[(String, String)],
    ) -> Result<(String, String), String> {
        let metadata = self.metadata().await?;
        let endpoint = metadata
            .get("authorization_endpoint")
            .and_then(Value::as_str)
            .ok_or("the provider has no authorization_endpoint")?;
        let mut url = reqwest::Url::parse(endpoint).map_err(|e| format!("authorization_endpoint: {e}"))?;
        let mut verifier = String::new();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.config.client_id)
                .append_pair("redirect_uri", self.config.redirect_uri.as_deref().unwrap_or(callback_url))
                .append_pair("scope", &self.config.scopes.join(" "))
                .append_pair("state", state)
                .append_pair("nonce", nonce);
            for (k, v) in &self.config.additional_authorization_parameters {
                q.append_pair(k, v);
            }
            if metadata.get("code_challenge_methods_supported").is_some_and(|v| !v.is_null()) {
                verifier = crate::server::random_string(48);
                let challenge = base64::Engine::encode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    sha2::Sha256::digest(verifier.as_bytes()),
                );
                q.append_pair("code_challenge_method", "S256").append_pair("code_challenge", &challenge);
            }
            for (k, v) in passthrough {
                q.append_pair(k, v);
            }
        }
        Ok((url.to_string(), verifier))
    }

    /// Exchanges the authorization code for tokens at the token endpoint, with Synapse's
    /// reading of error answers.
    pub(crate) async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        callback_url: &str,
    ) -> Result<Map<String, Value>, OidcError> {
        let metadata = self.metadata().await.map_err(|e| OidcError::new("server_error", e))?;
        let endpoint = metadata
            .get("token_endpoint")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcError::new("server_error", "the provider has no token_endpoint"))?;
        let redirect_uri = self.config.redirect_uri.as_deref().unwrap_or(callback_url);
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", redirect_uri.to_owned()),
        ];
        if !verifier.is_empty() {
            form.push(("code_verifier", verifier.to_owned()));
        }
        let c = &self.config;
        let mut request = self.http.post(endpoint).header("Accept", "application/json");
        match c.client_auth_method {
            ClientAuthMethod::Basic => {
                // RFC 6749 section 2.3.1: both parts form-encoded before Basic's base64.
                let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", enc(&c.client_id), enc(c.client_secret.as_deref().unwrap_or_default()));
                let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pair);
                request = request.header("Authorization", format!("Basic {basic}"));
            }
            ClientAuthMethod::Post => {
                form.push(("client_id", c.client_id.clone()));
                form.push(("client_secret", c.client_secret.clone().unwrap_or_default()));
            }
            ClientAuthMethod::None => form.push(("client_id", c.client_id.clone())),
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()))
            .collect::<Vec<_>>()
            .join("&");
        let response = request
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| OidcError::new("server_error", format!("Could not reach the token endpoint: {e}")))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let parsed: Option<Map<String, Value>> = serde_json::from_str(&text).ok();
        let error_of = |m: &Map<String, Value>| {
            m.get("error").and_then(Value::as_str).map(|e| {
                let description = m.get("error_description").and_then(Value::as_str).unwrap_or(e);
                OidcError::new(e, description)
            })
        };
        if status.is_server_error() {
            return Err(parsed.as_ref().and_then(error_of).unwrap_or_else(|| {
                OidcError::new(
                    "server_error",
                    format!("Authorization server responded with a \"{status}\" error while exchanging the authorization code."),
                )
            }));
        }
        let Some(tokens) = parsed else {
            return Err(OidcError::new("server_error", "the token endpoint's answer is not a JSON object"));
        };
        if let Some(e) = error_of(&tokens) {
            return Err(e);
        }
        if status.is_client_error() {
            return Err(OidcError::new(
                "server_error",
                format!(
                    "Authorization server responded with a \"{status}\" error but did not include an \"error\" field in its response."
                ),
            ));
        }
        Ok(tokens)
    }

    /// Checks the ID token in `tokens` (signature, then claims): its claims.
    pub(crate) async fn id_token_claims(
        &self,
        tokens: &Map<String, Value>,
        nonce: &str,
    ) -> Result<Map<String, Value>, String> {
        let id_token = tokens.get("id_token").and_then(Value::as_str).ok_or("Missing id_token in token response")?;
        let metadata = self.metadata().await?;
        let algs = signing_algorithms(&metadata);
        let secret = self.config.client_secret.as_deref();
        let verified = match jwt::verify(id_token, &self.keys(false).await?, &algs, secret) {
            Ok(v) => v,
            Err(first) => {
                tracing::info!(error = %first, "reloading the provider's keys after a token did not verify");
                jwt::verify(id_token, &self.keys(true).await?, &algs, secret)?
            }
        };
        let issuer = metadata.get("issuer").and_then(Value::as_str).unwrap_or(&self.config.issuer).to_owned();
        let access_token = tokens.get("access_token").and_then(Value::as_str).filter(|_| self.config.uses_userinfo());
        jwt::check_id_token(
            &verified,
            &jwt::IdTokenExpectations {
                issuer: &issuer,
                client_id: &self.config.client_id,
                nonce,
                access_token,
                now_secs: crate::server::now_ms() / 1000,
            },
        )?;
        Ok(verified.claims)
    }

    /// The user's claims from the userinfo endpoint (plain JSON, or a signed JWT).
    pub(crate) async fn userinfo(&self, tokens: &Map<String, Value>) -> Result<Map<String, Value>, String> {
        let metadata = self.metadata().await?;
        let endpoint = metadata.get("userinfo_endpoint").and_then(Value::as_str).ok_or("no userinfo_endpoint")?;
        let access_token =
            tokens.get("access_token").and_then(Value::as_str).ok_or("no access_token to fetch userinfo with")?;
        let response = self.http.get(endpoint).bearer_auth(access_token).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("userinfo endpoint answered {}", response.status()));
        }
        let is_jwt = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/jwt"));
        let body = response.text().await.map_err(|e| e.to_string())?;
        if is_jwt {
            let algs = signing_algorithms(&metadata);
            return Ok(jwt::verify(
                body.trim(),
                &self.keys(false).await?,
                &algs,
                self.config.client_secret.as_deref(),
            )?
            .claims);
        }
        match serde_json::from_str(&body) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err("the userinfo answer is not a JSON object".into()),
        }
    }
}

/// The algorithms the provider signs ID tokens and userinfo with (RS256 when its metadata does
/// not say, as Synapse assumes).
fn signing_algorithms(metadata: &Map<String, Value>) -> Vec<String> {
    metadata
        .get("id_token_signing_alg_values_supported")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_else(|| vec!["RS256".into()])
}

/// The HTTP client for providers: their addresses are the admin's choice, so the outbound IP
/// blocklist does not apply (Synapse uses its unfiltered client for OIDC too).
pub(crate) fn provider_http_client(insecure: bool) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_preconfigured_tls(crate::federation::client::web_tls_config(insecure)?)
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("Myelin/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn names_map_to_localparts_as_the_spec_says() {
        assert_eq!(map_username_to_mxid_localpart("Alice"), "alice");
        assert_eq!(map_username_to_mxid_localpart("_bob"), "=5fbob");
        assert_eq!(map_username_to_mxid_localpart("a b=c"), "a=20b=3dc");
        assert_eq!(map_username_to_mxid_localpart("zoë"), "zo=c3=ab");
    }

    #[test]
    fn the_default_mapping_renders_templates_over_the_claims() {
        let mut config = Map::new();
        config.insert("localpart_template".into(), json!("{{ user.email | localpart_from_email }}"));
        config.insert("display_name_template".into(), json!("{{ user.name }}"));
        config.insert("email_template".into(), json!("{{ user.email }}"));
        config.insert("extra_attributes".into(), json!({"team": "{{ user.team }}"}));
        let mapping = JinjaMapping::parse(&config, &|k: &[&str]| k.iter().map(|s| s.to_string()).collect()).unwrap();
        let user = claims(json!({"sub": 42, "email": "Jo.Doe@example.org", "name": null, "team": "red"}));
        assert_eq!(mapping.remote_user_id(&user).unwrap(), "42");
        let a = mapping.attributes(&user, 0).unwrap();
        assert_eq!(a.localpart.as_deref(), Some("jo.doe"));
        assert_eq!(a.display_name, None, "a null claim renders as nothing");
        assert_eq!(a.emails, vec!["Jo.Doe@example.org"]);
        assert_eq!(a.picture, None);
        assert_eq!(mapping.attributes(&user, 2).unwrap().localpart.as_deref(), Some("jo.doe2"));
        assert_eq!(mapping.extra_attributes(&user)["team"], "red");
        assert!(mapping.remote_user_id(&claims(json!({}))).is_err());
    }

    #[test]
    fn broken_templates_and_wrong_types_are_config_errors() {
        let parse = |c: Value| JinjaMapping::parse(&claims(c), &|k: &[&str]| k.iter().map(|s| s.to_string()).collect());
        assert_eq!(parse(json!({"localpart_template": "{{ user.x "})).unwrap_err().path, vec!["localpart_template"]);
        assert_eq!(parse(json!({"confirm_localpart": "yes"})).unwrap_err().path, vec!["confirm_localpart"]);
        assert_eq!(parse(json!({"extra_attributes": []})).unwrap_err().path, vec!["extra_attributes"]);
    }

    #[test]
    fn attribute_requirements_match_values_or_lists() {
        let req = |value: Option<&str>, one_of: Option<Vec<&str>>| AttributeRequirement {
            attribute: "groups".into(),
            value: value.map(str::to_owned),
            one_of: one_of.map(|v| v.into_iter().map(str::to_owned).collect()),
        };
        let staff = claims(json!({"groups": ["staff", "x"]}));
        let single = claims(json!({"groups": "staff"}));
        assert!(req(None, None).met_by(&staff));
        assert!(!req(None, None).met_by(&claims(json!({}))));
        assert!(req(Some("staff"), None).met_by(&staff));
        assert!(req(Some("staff"), None).met_by(&single));
        assert!(!req(Some("admin"), None).met_by(&staff));
        assert!(req(None, Some(vec!["admin", "x"])).met_by(&staff));
        assert!(!req(None, Some(vec!["admin"])).met_by(&staff));
    }
}
