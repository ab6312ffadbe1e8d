//! Sessions' tokens, as Synapse issues them: access tokens with the configured lifetimes,
//! refresh tokens (MSC2918: `refresh_token: true` on login and registration, `POST /refresh`),
//! and one-time login tokens (`POST /login/get_token`, MSC3882, spent by `m.login.token`).
//!
//! A refresh swaps the refresh token for a new pair. The old one stays good until the new pair
//! is put to use (so a client whose refresh answer was lost may repeat it); a session keeps its
//! last two refresh tokens (see `rotate_refresh_token` in storage).

use myelin_storage::{NewAccessToken, NewRefreshToken};

use super::*;

/// A new session's credentials, as login and registration answer them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The access token.
    pub access_token: String,
    /// The device.
    pub device_id: String,
    /// The refresh token, when the client asked for one and the server issues them.
    pub refresh_token: Option<String>,
    /// How long the access token lasts, when it expires.
    pub expires_in_ms: Option<i64>,
}

impl Session {
    /// The session's fields of a login or registration answer (`refresh_token` and
    /// `expires_in_ms` only when there are some, as Synapse).
    pub fn fields(&self) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("access_token".into(), json!(self.access_token));
        out.insert("device_id".into(), json!(self.device_id));
        if let Some(refresh) = &self.refresh_token {
            out.insert("refresh_token".into(), json!(refresh));
        }
        if let Some(ms) = self.expires_in_ms {
            out.insert("expires_in_ms".into(), json!(ms));
        }
        out
    }
}

/// How a new session's access token expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum TokenLife {
    /// As configured for sessions without a refresh token
    /// (`nonrefreshable_access_token_lifetime`, within `session_lifetime`).
    #[default]
    Configured,
    /// With a refresh token (`refreshable_access_token_lifetime`, within `session_lifetime`).
    Refreshable,
    /// Never: guests (Synapse has no lifetimes for them) and an admin's login as a user.
    Unlimited,
}

/// The device a new session logs in on.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewDevice {
    /// The device ID asked for (one is made up otherwise).
    pub device_id: Option<String>,
    /// `initial_device_display_name`.
    pub display_name: Option<String>,
    /// How its access token expires.
    pub life: TokenLife,
}

/// The `TransientStore` kind of one-time login tokens.
const LOGIN_TOKEN: &str = "login_token";

/// The earlier of two optional instants (`None` is "never").
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Homeserver {
    /// The token life a login or registration asking `refresh_token` gets: refreshable when it
    /// asks (`true`) and the server issues refresh tokens; 400 when it is not a boolean.
    pub(crate) fn token_life(&self, refresh_token: Option<&Value>) -> Result<TokenLife> {
        let asked = match refresh_token {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Error::new(ErrorKind::BadRequest, "`refresh_token` should be true or false.")),
        };
        let enabled = self.config.sessions.refreshable_access_token_lifetime.is_some();
        Ok(if asked && enabled { TokenLife::Refreshable } else { TokenLife::Configured })
    }

    /// A new session for `user_id` on `device` (created, or reused when it exists).
    pub(crate) async fn new_session(&self, user_id: &UserId, device: NewDevice) -> Result<Session> {
        let NewDevice { device_id, display_name, life } = device;
        let device_id = device_id.filter(|d| !d.is_empty()).unwrap_or_else(|| random_string(10).to_uppercase());
        let access_token = format!("myl_{}", random_string(40));
        let settings = self.config.sessions;
        let now = now_ms();
        let after = |lifetime: Option<i64>| lifetime.map(|l| now.saturating_add(l));
        let session_end = after(settings.session_lifetime);
        let (valid_until_ms, refresh) = match life {
            TokenLife::Unlimited => (None, None),
            TokenLife::Configured => {
                (earliest(after(settings.nonrefreshable_access_token_lifetime), session_end), None)
            }
            TokenLife::Refreshable => (
                earliest(after(settings.refreshable_access_token_lifetime), session_end),
                Some((
                    format!("myr_{}", random_string(40)),
                    earliest(after(settings.refresh_token_lifetime), session_end),
                )),
            ),
        };
        let (u, d, t) = (user_id.to_string(), device_id.clone(), access_token.clone());
        let refresh_token = refresh.as_ref().map(|(token, _)| token.clone());
        let is_new = self
            .db(move |s| {
                let is_new = !s.get_devices(&u)?.iter().any(|x| x.device_id == d);
                s.upsert_device(&u, &d, display_name.as_deref())?;
                let refresh_token_id = match &refresh {
                    Some((token, expiry_ts)) => Some(s.add_refresh_token(&NewRefreshToken {
                        token,
                        user_id: &u,
                        device_id: &d,
                        expiry_ts: *expiry_ts,
                        ultimate_session_expiry_ts: session_end,
                    })?),
                    None => None,
                };
                s.add_access_token(&NewAccessToken {
                    token: &t,
                    user_id: &u,
                    device_id: &d,
                    valid_until_ms,
                    refresh_token_id,
                })?;
                Ok(is_new)
            })
            .await?;
        if is_new {
            self.device_list_changed(user_id.as_str(), &device_id).await;
        }
        Ok(Session { access_token, device_id, refresh_token, expires_in_ms: valid_until_ms.map(|v| v - now) })
    }

    /// `POST /refresh`: a new access token and refresh token for a refresh token, as Synapse
    /// answers (401 for one it does not know, 403 for one used up or expired).
    pub async fn refresh_session(&self, body: &Value) -> Result<Value> {
        let token = match body.get("refresh_token") {
            None => return Err(Error::new(ErrorKind::MissingParam, "Missing params: ['refresh_token']")),
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err(Error::new(ErrorKind::InvalidParam, "Invalid param: refresh_token")),
        };
        let t = token.clone();
        let Some(old) = self.db(move |s| s.get_refresh_token(&t)).await? else {
            return Err(Error::new(ErrorKind::UnknownToken, "refresh token does not exist"));
        };
        if old.superseded {
            return Err(Error::forbidden("refresh token isn't valid anymore"));
        }
        let now = now_ms();
        if old.expiry_ts.is_some_and(|e| e < now) {
            return Err(Error::forbidden("The supplied refresh token has expired"));
        }
        if old.ultimate_session_expiry_ts.is_some_and(|e| e < now) {
            return Err(Error::forbidden("The session has expired and can no longer be refreshed"));
        }
        let settings = self.config.sessions;
        let after = |lifetime: Option<i64>| lifetime.map(|l| now.saturating_add(l));
        let session_end = old.ultimate_session_expiry_ts;
        let valid_until_ms = earliest(after(settings.refreshable_access_token_lifetime), session_end);
        let expiry_ts = earliest(after(settings.refresh_token_lifetime), session_end);
        let access_token = format!("myl_{}", random_string(40));
        let refresh_token = format!("myr_{}", random_string(40));
        let (a, r) = (access_token.clone(), refresh_token.clone());
        self.db(move |s| {
            let refresh = NewRefreshToken {
                token: &r,
                user_id: &old.user_id,
                device_id: &old.device_id,
                expiry_ts,
                ultimate_session_expiry_ts: session_end,
            };
            let access = NewAccessToken {
                token: &a,
                user_id: &old.user_id,
                device_id: &old.device_id,
                valid_until_ms,
                refresh_token_id: None,
            };
            s.rotate_refresh_token(old.id, &refresh, &access)
        })
        .await?;
        let mut out = json!({"access_token": access_token, "refresh_token": refresh_token});
        if let Some(until) = valid_until_ms {
            out["expires_in_ms"] = json!(until - now);
        }
        Ok(out)
    }

    /// `POST /login/get_token` (MSC3882, when `login_via_existing_session.enabled`): a one-time
    /// token another device logs in with (`m.login.token`), after the password is given again
    /// (`require_ui_auth`); once a minute per user.
    pub async fn request_login_token(&self, requester: &Requester, auth: Option<&Value>) -> Result<Value> {
        let settings = self.config.login_via_existing;
        if !settings.enabled {
            return Err(Error::new(ErrorKind::Unrecognized, "Unrecognized request"));
        }
        if settings.require_ui_auth {
            self.uia_password(requester, auth, "POST /login/get_token").await?;
        }
        self.limiters.login_token_request.check(&requester.user_id.as_str().to_lowercase())?;
        let token = format!("myt_{}", random_string(40));
        let (t, user) = (token.clone(), requester.user_id.to_string());
        let expires = now_ms() + settings.token_timeout;
        self.db(move |s| s.put_transient(LOGIN_TOKEN, &t, &user, expires)).await?;
        Ok(json!({
            "login_token": token,
            "expires_in": settings.token_timeout / 1000,
            "expires_in_ms": settings.token_timeout,
        }))
    }

    /// `ModuleApi.create_login_token`: a login token for a local user, valid `valid_ms`
    /// (`auth_provider_id` is accepted; Myelin's login tokens do not record it).
    pub(crate) async fn module_create_login_token(
        &self,
        user_id: &str,
        valid_ms: u64,
        _auth_provider_id: Option<String>,
    ) -> Result<String> {
        let user = UserId::parse(user_id).map_err(|_| Error::invalid_param(format!("Invalid user ID {user_id}")))?;
        if !self.is_mine(&user) {
            return Err(Error::invalid_param("Can only create login tokens for local users"));
        }
        let token = format!("myt_{}", random_string(40));
        let (t, u) = (token.clone(), user.to_string());
        let expires = now_ms() + valid_ms.min(i64::MAX as u64 / 2) as i64;
        self.db(move |s| s.put_transient(LOGIN_TOKEN, &t, &u, expires)).await?;
        Ok(token)
    }

    /// Spends a login token (once, before it expires): the user it logs in.
    pub(crate) async fn consume_login_token(&self, token: &str) -> Result<String> {
        let t = token.to_owned();
        self.db(move |s| s.take_transient(LOGIN_TOKEN, &t, now_ms()))
            .await?
            .ok_or_else(|| Error::forbidden("Invalid login token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_of_two_optional_instants() {
        assert_eq!(earliest(Some(3), Some(2)), Some(2));
        assert_eq!(earliest(None, Some(2)), Some(2));
        assert_eq!(earliest(Some(3), None), Some(3));
        assert_eq!(earliest(None, None), None);
    }

    #[test]
    fn a_session_answers_refresh_and_expiry_only_when_it_has_them() {
        let plain =
            Session { access_token: "a".into(), device_id: "D".into(), refresh_token: None, expires_in_ms: None };
        assert_eq!(Value::Object(plain.fields()), json!({"access_token": "a", "device_id": "D"}));
        let refreshable = Session { refresh_token: Some("r".into()), expires_in_ms: Some(300_000), ..plain };
        assert_eq!(
            Value::Object(refreshable.fields()),
            json!({"access_token": "a", "device_id": "D", "refresh_token": "r", "expires_in_ms": 300_000})
        );
    }
}
