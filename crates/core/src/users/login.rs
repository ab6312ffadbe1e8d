//! Logging in and out, passwords, deactivation, OpenID tokens.

use super::*;

impl Homeserver {
    /// `POST /login` with `m.login.password`; `check_login_for_spam` runs here, before the
    /// device is created.
    ///
    /// Rate limits as Synapse: `rc_login.address` per client address on every attempt,
    /// `rc_login.failed_attempts` per account (checked first, counted on each failure) and
    /// `rc_login.account` per account once the login succeeds.
    pub async fn login(&self, request: LoginRequest, info: &RequestInfo) -> Result<LoginResponse> {
        if request.kind == "m.login.token" {
            return self.token_login(request, info).await;
        }
        let module_type = self.modules.handles_login_type(&request.kind);
        let password_login = request.kind == "m.login.password" && self.config.password.enabled;
        if !password_login && !module_type {
            return Err(Error::new(ErrorKind::BadRequest, "Unknown login type").with_fields(Map::new()));
        }
        self.limiters.login_address.check(&info.ip)?;
        let invalid = || Error::forbidden("Invalid username or password");
        // The legacy form names the identifier at the top level (`medium`, `address`).
        let mut identifier = match (&request.identifier, request.extra.get("medium"), request.extra.get("address")) {
            (Some(i), _, _) => i.clone(),
            (None, Some(medium), Some(address)) => {
                json!({"type": "m.id.thirdparty", "medium": medium, "address": address})
            }
            (None, _, _) => Value::Null,
        };
        let vouched = match identifier.get("type").and_then(Value::as_str) {
            // A third-party identifier: only password providers can vouch for it.
            // A third-party identifier: a password provider may vouch for it; else it names
            // the local account it was added to, whose password is then checked (Synapse).
            Some("m.id.thirdparty") => {
                let medium = identifier["medium"].as_str().unwrap_or_default();
                let address = identifier["address"].as_str().unwrap_or_default();
                let password = request.password.as_deref().unwrap_or_default();
                match self.modules.check_3pid_auth(medium, address, password).await {
                    Some(user) => Some(user),
                    None => {
                        let owner = self.user_by_threepid(medium, address).await?;
                        let Some(owner) = owner else {
                            tracing::info!(medium, "login with an unknown third-party identifier");
                            return Err(invalid());
                        };
                        identifier = json!({"type": "m.id.user", "user": owner});
                        None
                    }
                }
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
        let qualified = if user.starts_with('@') { user.clone() } else { format!("@{user}:{}", self.server_name()) };
        let account_key = qualified.to_lowercase();
        self.limiters.login_failed_attempts.peek(&account_key)?;
        let result = self.login_checked(request, info, vouched, &user, qualified).await;
        match &result {
            Err(e) if e.kind == ErrorKind::Forbidden => self.limiters.login_failed_attempts.record(&account_key),
            _ => {}
        }
        result
    }

    /// [`Self::login`] once the account is named and its rate limits allow an attempt.
    pub(super) async fn login_checked(
        &self,
        request: LoginRequest,
        info: &RequestInfo,
        vouched: Option<String>,
        given: &str,
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
                // As Synapse: the user as the client named them, qualified or not.
                self.modules.check_auth(given, &request.kind, &dict).await
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
        self.complete_login(row, request, info).await
    }

    /// `POST /login` with `m.login.token`: a token from `POST /login/get_token`, spent once.
    async fn token_login(&self, request: LoginRequest, info: &RequestInfo) -> Result<LoginResponse> {
        self.limiters.login_address.check(&info.ip)?;
        let Some(token) = request.extra.get("token").and_then(Value::as_str) else {
            return Err(Error::new(ErrorKind::BadRequest, "Missing JSON keys."));
        };
        let user = self.consume_login_token(token).await?;
        let row = self.db(move |s| s.get_user(&user)).await?.ok_or_else(|| Error::forbidden("Invalid login token"))?;
        let mut response = self.complete_login(row, request, info).await?;
        response.extra = self.take_sso_extra_attributes(response.user_id.as_str());
        Ok(response)
    }

    /// The end of every login once the account is known: refused when deactivated, then the
    /// spam check, the account's rate limit, the new session and `on_user_login`.
    async fn complete_login(&self, row: UserRow, request: LoginRequest, info: &RequestInfo) -> Result<LoginResponse> {
        if row.deactivated {
            return Err(Error::new(ErrorKind::UserDeactivated, "This account has been deactivated"));
        }
        let life = self.token_life(request.extra.get("refresh_token"))?;
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
        let device =
            NewDevice { device_id: request.device_id, display_name: request.initial_device_display_name, life };
        let session = self.new_session(&user_id, device).await?;
        self.modules.on_user_login(user_id.as_str(), Some(&request.kind), None).await?;
        Ok(LoginResponse { user_id, session, extra: Map::new() })
    }

    /// `POST /logout`; password providers' `on_logged_out` runs afterwards.
    pub async fn logout(&self, requester: &Requester) -> Result<()> {
        self.end_session(requester.user_id.as_str(), &requester.device_id, &requester.access_token).await
    }

    /// Ends one session: its device (and so its token) goes, then `on_logged_out` runs.
    async fn end_session(&self, user: &str, device: &str, token: &str) -> Result<()> {
        let (u, d) = (user.to_owned(), device.to_owned());
        self.db(move |s| s.delete_device(&u, &d).map(|_| ())).await?;
        self.remove_pushers_of_sessions(user, Some(vec![device.to_owned()]), None).await?;
        self.modules.on_logged_out(user, Some(device), token).await;
        Ok(())
    }

    /// `ModuleApi.invalidate_access_token`: the token's session ends as a logout ends it (its
    /// device goes; password providers' `on_logged_out` runs). An unknown token is no error.
    pub(crate) async fn module_invalidate_access_token(&self, token: &str) -> Result<()> {
        let t = token.to_owned();
        match self.db(move |s| s.get_access_token(&t)).await? {
            Some(session) => self.end_session(&session.user_id, &session.device_id, token).await,
            None => Ok(()),
        }
    }

    /// `GET /login`: SSO with its identity providers, login tokens, password login, the types
    /// modules handle, in Synapse's order.
    pub fn login_flows(&self) -> Vec<Value> {
        let mut types = Vec::new();
        if self.config.password.enabled {
            types.push("m.login.password".to_owned());
        }
        for t in self.modules.module_login_types() {
            if !types.contains(&t) {
                types.push(t);
            }
        }
        // Always offered, as on Synapse (only appservice tokens pass it).
        types.push("m.login.application_service".to_owned());
        let mut flows = Vec::new();
        if self.config.sso.enabled() {
            flows.push(json!({"type": crate::sso::SSO_STAGE, "identity_providers": self.identity_providers()}));
        }
        // Login tokens come from SSO or from an existing session.
        if self.config.login_via_existing.enabled {
            flows.push(json!({"type": "m.login.token", "get_login_token": true}));
        } else if self.config.sso.enabled() {
            flows.push(json!({"type": "m.login.token"}));
        }
        flows.extend(types.into_iter().map(|t| json!({"type": t})));
        flows
    }

    /// `POST /logout/all`.
    pub async fn logout_all(&self, requester: &Requester) -> Result<()> {
        let u = requester.user_id.to_string();
        self.db(move |s| s.delete_all_devices(&u, None)).await?;
        self.remove_pushers_of_sessions(requester.user_id.as_str(), None, None).await
    }

    /// `POST /account/password` (UIA with the old password).
    pub async fn change_password(
        &self,
        requester: &Requester,
        new_password: String,
        logout_devices: bool,
        auth: Option<&Value>,
    ) -> Result<()> {
        self.uia_password(requester, auth, "POST /account/password").await?;
        self.check_password_policy(&new_password)?;
        let hash = hash_password(new_password).await?;
        let (u, d) = (requester.user_id.to_string(), requester.device_id.clone());
        self.db(move |s| {
            s.set_password_hash(&u, Some(&hash))?;
            if logout_devices { s.delete_all_devices(&u, Some(&d)) } else { Ok(()) }
        })
        .await?;
        if logout_devices {
            self.remove_pushers_of_sessions(requester.user_id.as_str(), None, Some(&requester.device_id)).await?;
        }
        Ok(())
    }

    /// `POST /account/password` without an access token: a forgotten password, reset by
    /// proving an e-mail address of the account (UIA `m.login.email.identity`, after
    /// `/account/password/email/requestToken`). Every device is logged out unless
    /// `logout_devices` is false.
    pub async fn reset_password_by_email(
        &self,
        new_password: Option<String>,
        logout_devices: bool,
        auth: Option<&Value>,
    ) -> Result<()> {
        const STAGE: &str = "m.login.email.identity";
        if let Some(p) = &new_password {
            self.check_password_policy(p)?;
        }
        let auth = auth.and_then(Value::as_object);
        let session = auth.and_then(|a| a.get("session")).and_then(Value::as_str).map(str::to_owned);
        self.check_uia_session(session.as_deref()).await?;
        // The new password's hash waits in the session while the user reads their mail.
        let challenge = |error: Option<(String, String)>| {
            let (session, new_password) = (session.clone(), new_password.clone());
            async move {
                let mut e = self.uia_challenge(&[STAGE], session, error.as_ref().map(|(m, _)| m.as_str())).await;
                if let Some((_, errcode)) = &error {
                    e.fields.insert("errcode".into(), json!(errcode));
                }
                if let (Some(p), Some(id)) = (new_password, e.fields.get("session").and_then(Value::as_str)) {
                    let mut record = self.uia_session(id).await.ok().flatten().unwrap_or_default();
                    if record.password_hash.is_none() {
                        record.password_hash = hash_password(p).await.ok();
                        if let Err(failed) = self.save_uia_session(id, &record).await {
                            return failed;
                        }
                    }
                }
                e
            }
        };
        let Some(auth) = auth else { return Err(challenge(None).await) };
        if auth.get("type").and_then(Value::as_str) != Some(STAGE) {
            return Err(challenge(Some(("Unknown auth type".into(), "M_FORBIDDEN".into()))).await);
        }
        let threepid = match self.check_email_identity(auth).await {
            Ok(t) => t,
            Err(e) if matches!(e.kind, ErrorKind::Module { status: 401 | 400, .. }) => {
                return Err(challenge(Some((e.message.clone(), e.errcode().to_owned()))).await);
            }
            Err(e) => return Err(e),
        };
        let Some(user) = self.user_by_threepid(&threepid.medium, &threepid.address).await? else {
            return Err(Error::not_found("Email address not found"));
        };
        let stored = match &session {
            Some(id) => self.uia_session(id).await?.and_then(|r| r.password_hash),
            None => None,
        };
        let hash = match (new_password, stored) {
            (Some(p), _) => hash_password(p).await?,
            (None, Some(hash)) => hash,
            (None, None) => return Err(Error::new(ErrorKind::MissingParam, "Missing params: password")),
        };
        let u = user.clone();
        self.db(move |s| {
            s.set_password_hash(&u, Some(&hash))?;
            if logout_devices { s.delete_all_devices(&u, None) } else { Ok(()) }
        })
        .await?;
        if logout_devices {
            self.remove_pushers_of_sessions(&user, None, None).await?;
        }
        tracing::info!(user, "password reset by email");
        Ok(())
    }

    /// `POST /account/deactivate` (UIA): revokes every token and leaves every room.
    ///
    /// Answers whether every third-party identifier the user bound was unbound from its
    /// identity server (`id_server` if the client named one).
    ///
    /// With `erase`, the user's events are shown redacted to whoever was not in the room when
    /// they were sent (and to other servers), as Synapse's erasure.
    pub async fn deactivate(
        &self,
        requester: &Requester,
        auth: Option<&Value>,
        id_server: Option<&str>,
        erase: bool,
    ) -> Result<bool> {
        self.uia_password(requester, auth, "POST /account/deactivate").await?;
        self.deactivate_account(requester, false, id_server, erase).await
    }

    /// Deactivates the requester's account (`by_admin`: through the admin API): the modules may
    /// forbid it; every room is left, the password removed, every token revoked.
    /// Bound third-party identifiers are unbound first (from `id_server` if given), as Synapse:
    /// `true` when every identity server unbound them.
    pub(crate) async fn deactivate_account(
        &self,
        requester: &Requester,
        by_admin: bool,
        id_server: Option<&str>,
        erase: bool,
    ) -> Result<bool> {
        if !self.modules.check_can_deactivate_user(requester.user_id.as_str(), by_admin).await {
            return Err(Error::forbidden("Deactivation of this user is forbidden"));
        }
        let unbound = self.unbind_all_threepids(requester.user_id.as_str(), id_server).await?;
        self.delete_all_local_threepids(requester.user_id.as_str()).await?;
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
            s.delete_account_validity(&u)?;
            s.delete_all_devices(&u, None)
        })
        .await?;
        if erase {
            let u = requester.user_id.to_string();
            self.db(move |s| s.mark_user_erased(&u)).await?;
            self.note_erased(requester.user_id.as_str());
            if self.has_bus() {
                self.publish(format!("erased {}", requester.user_id));
            }
            tracing::info!(user = %requester.user_id, "user erased");
        }
        self.modules.on_user_deactivation_status_changed(requester.user_id.as_str(), true, by_admin).await;
        Ok(unbound)
    }

    /// `POST /user/{userId}/openid/request_token`: a token a third party can check with
    /// `/_matrix/federation/v1/openid/userinfo`; an hour long, as Synapse's.
    pub async fn openid_token(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        if user_id != requester.user_id.as_str() {
            return Err(Error::forbidden("Cannot request tokens for other users."));
        }
        let token = random_string(32);
        let (key, user) = (token.clone(), user_id.to_owned());
        self.db(move |s| s.put_transient(super::OPENID_TOKEN, &key, &user, now_ms() + 3_600_000)).await?;
        Ok(json!({
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": self.server_name(),
            "expires_in": 3600,
        }))
    }

    /// The user an OpenID token was issued to, while it lasts
    /// (`GET /_matrix/federation/v1/openid/userinfo`).
    pub async fn openid_user(&self, token: &str) -> Result<Option<String>> {
        let key = token.to_owned();
        self.db(move |s| s.get_transient(super::OPENID_TOKEN, &key, now_ms())).await
    }
}
