//! Registration: UIA-driven, guests, shared-secret and module registration, registration tokens, the password policy.

use super::*;

impl Homeserver {
    /// `GET /register/available`.
    pub async fn username_available(&self, username: &str) -> Result<()> {
        validate_localpart(username, self.server_name())?;
        let user_id = format!("@{username}:{}", self.server_name());
        self.check_user_not_exclusive(&user_id, None)?;
        if self.db(move |s| s.find_user_case_insensitive(&user_id)).await?.is_some() {
            return Err(Error::new(ErrorKind::UserInUse, "User ID already taken."));
        }
        Ok(())
    }

    /// `POST /register` for a normal account: UIA (`m.login.dummy`), the registration spam
    /// check (its one call site for client registration), then the account and a login.
    pub async fn register(&self, request: RegisterRequest, info: &RequestInfo) -> Result<RegisterResponse> {
        if !self.config.enable_registration {
            return Err(Error::forbidden("Registration has been disabled"));
        }
        // `rc_registration` per address: asked now, counted when an account is made.
        self.limiters.registration.peek(&info.ip)?;
        let auth = request.auth.clone();
        let auth = auth.as_ref().and_then(Value::as_object);
        let session = auth.and_then(|a| a.get("session")).and_then(Value::as_str).map(str::to_owned);
        self.check_uia_session(session.as_deref()).await?;
        let mut record = match &session {
            Some(id) => self.uia_session(id).await?.unwrap_or_default(),
            None => UiaSession::default(),
        };
        // A request naming only its session stands for the session's first one (Synapse keeps
        // the client's parameters with the session); one with parameters replaces them.
        let mut request = request;
        let mut password_hash = None;
        if request.is_only_auth() {
            if let Some(stored) = record.registration.clone() {
                request = RegisterRequest { auth: request.auth, ..stored };
            }
            password_hash = record.password_hash.clone();
        }
        // A guest registering under its own (numeric) ID upgrades that account; a guest token
        // is no licence to take anyone else's.
        let upgrading = match (&request.username, &request.guest_access_token) {
            (Some(username), Some(token)) => {
                let guest = self.authenticate(Some(token), info, false).await.ok().filter(|g| g.is_guest);
                match guest {
                    Some(g) if g.user_id.localpart() == username.to_lowercase() => Some(g.user_id),
                    _ => {
                        return Err(Error::forbidden(
                            "Cannot register taken user ID without valid guest credentials for that user.",
                        ));
                    }
                }
            }
            _ => None,
        };
        // A session that already made its account has nothing left to check.
        if let (Some(username), None, None) = (&request.username, &upgrading, &record.registered_user_id) {
            self.username_available(&username.to_lowercase()).await?;
        }
        if let Some(p) = &request.password
            && p.len() > 512
        {
            return Err(Error::bad_json("Password too long"));
        }
        if let Some(password) = &request.password {
            self.check_password_policy(password)?;
        }
        let stages = if self.config.registration_requires_token {
            vec!["m.login.registration_token"]
        } else {
            self.registration_stages()
        };
        let mut used_token = None;
        let challenge = |error: Option<&str>| {
            let (request, session, stages, error) = (&request, session.clone(), &stages, error.map(str::to_owned));
            async move {
                let e = self.uia_challenge(stages, session, error.as_deref()).await;
                // The parameters are kept with the session, the password only as its hash.
                if !request.is_only_auth()
                    && let Some(id) = e.fields.get("session").and_then(Value::as_str)
                {
                    let mut record = self.uia_session(id).await.ok().flatten().unwrap_or_default();
                    record.password_hash = match &request.password {
                        Some(p) => hash_password(p.clone()).await.ok(),
                        None => None,
                    };
                    record.registration = Some(RegisterRequest { auth: None, password: None, ..request.clone() });
                    if let Err(failed) = self.save_uia_session(id, &record).await {
                        return failed;
                    }
                }
                e
            }
        };
        let offered = |t: &str| stages.contains(&t);
        let stage = match auth.and_then(|a| a.get("type")).and_then(Value::as_str) {
            // An address proved earlier in this session stays proved (its validation session
            // was spent then).
            _ if record.threepid.is_some() => "m.login.email.identity",
            Some("m.login.dummy") if offered("m.login.dummy") => "m.login.dummy",
            Some("m.login.registration_token") if offered("m.login.registration_token") => {
                let token = auth.and_then(|a| a.get("token")).and_then(Value::as_str).unwrap_or_default().to_owned();
                if !self.registration_token_valid(&token).await? {
                    return Err(challenge(Some("Invalid registration token")).await);
                }
                used_token = Some(token);
                "m.login.registration_token"
            }
            Some("m.login.email.identity") if offered("m.login.email.identity") => {
                let auth = auth.cloned().unwrap_or_default();
                match self.check_email_identity(&auth).await {
                    Ok(threepid) => {
                        if !self.threepid_allowed(&threepid.medium, &threepid.address, true).await? {
                            return Err(Error::new(
                                ErrorKind::Module { status: 403, errcode: "M_THREEPID_DENIED".into() },
                                "Third party identifiers (email/phone numbers) are not authorized on this server",
                            ));
                        }
                        record.threepid = Some(threepid);
                        if let Some(id) = &session {
                            let mut stored = self.uia_session(id).await?.unwrap_or_default();
                            stored.threepid = record.threepid.clone();
                            self.save_uia_session(id, &stored).await?;
                        }
                        "m.login.email.identity"
                    }
                    // A stage that failed: the challenge again, with the reason (Synapse
                    // merges the checker's error into the 401).
                    Err(e) if matches!(e.kind, ErrorKind::Module { status: 401 | 400, .. }) => {
                        let mut again = challenge(Some(&e.message)).await;
                        again.fields.insert("errcode".into(), json!(e.errcode()));
                        return Err(again);
                    }
                    Err(e) => return Err(e),
                }
            }
            Some(_) => return Err(challenge(Some("Unknown auth type")).await),
            None => return Err(challenge(None).await),
        };
        // The proved address must still be free.
        if let Some(threepid) = &record.threepid
            && record.registered_user_id.is_none()
            && self.user_by_threepid(&threepid.medium, &threepid.address).await?.is_some()
        {
            return Err(Error::new(
                ErrorKind::Module { status: 400, errcode: "M_THREEPID_IN_USE".into() },
                format!("{} is already in use", threepid.medium),
            ));
        }
        // The session's account exists: a repeat logs in again (Synapse's idempotent
        // registration), making nothing new.
        if let Some(user_id) = &record.registered_user_id {
            let user_id = OwnedUserId::try_from(user_id.as_str()).map_err(Error::internal)?;
            let login = match request.inhibit_login {
                false => Some(self.new_session(&user_id, self.registration_device(&request)?).await?),
                true => None,
            };
            return Ok(RegisterResponse { user_id, login });
        }
        self.limiters.registration.check(&info.ip)?;
        let finish = |user_id: &OwnedUserId| {
            let (session, mut record) = (session.clone(), record.clone());
            let user_id = user_id.to_string();
            async move {
                if let Some(id) = session {
                    record.registered_user_id = Some(user_id);
                    self.save_uia_session(&id, &record).await?;
                }
                Ok::<(), Error>(())
            }
        };
        // Password auth providers may choose the localpart and display name (Synapse asks once
        // the user-interactive auth is complete, with its results and the request body).
        let (mut username, mut display_name) = (request.username.clone(), None);
        if self.modules.has_registration_hooks() {
            let mut uia = Map::new();
            let result = match (&used_token, &record.threepid) {
                (Some(token), _) => json!(token),
                (None, Some(threepid)) => json!(threepid),
                (None, None) => json!(true),
            };
            uia.insert(stage.to_owned(), result);
            let mut params = Map::new();
            for (key, value) in [
                ("username", json!(request.username)),
                ("device_id", json!(request.device_id)),
                ("initial_device_display_name", json!(request.initial_device_display_name)),
                ("inhibit_login", json!(request.inhibit_login)),
            ] {
                if !value.is_null() {
                    params.insert(key.into(), value);
                }
            }
            if let Some(chosen) = self.modules.username_for_registration(&uia, &params).await {
                username = Some(chosen);
            }
            display_name = self.modules.displayname_for_registration(&uia, &params).await;
        }
        if let Some(user_id) = upgrading {
            let upgraded = self.upgrade_guest(user_id, request).await?;
            finish(&upgraded.user_id).await?;
            return Ok(upgraded);
        }
        let password_hash = match (&request.password, password_hash) {
            (Some(p), _) => Some(hash_password(p.clone()).await?),
            (None, stored) => stored,
        };
        let registered = self
            .create_account_hashed(
                username.map(|u| u.to_lowercase()),
                password_hash,
                false,
                info,
                (!request.inhibit_login).then(|| self.registration_device(&request)).transpose()?,
                record.threepid.as_ref().map(|t| json!(t)),
            )
            .await?;
        finish(&registered.user_id).await?;
        if let Some(threepid) = &record.threepid {
            self.add_threepid(registered.user_id.as_str(), threepid).await?;
            if threepid.medium == "email" {
                self.add_email_pusher_if_wanted(registered.user_id.as_str(), &threepid.address).await?;
            }
        }
        if let Some(name) = display_name {
            let user = registered.user_id.to_string();
            self.db(move |s| s.set_profile_field(&user, ProfileField::DisplayName, Some(&name))).await?;
        }
        if let Some(token) = used_token {
            self.db(move |s| s.use_registration_token(&token)).await?;
        }
        Ok(registered)
    }

    /// The device a registration logs in on, with the token life its `refresh_token` asks for.
    fn registration_device(&self, request: &RegisterRequest) -> Result<NewDevice> {
        Ok(NewDevice {
            device_id: request.device_id.clone(),
            display_name: request.initial_device_display_name.clone(),
            life: self.token_life(request.refresh_token.as_ref())?,
        })
    }

    /// A guest becomes a full account under the same ID (Synapse's `was_guest`): its password
    /// set, the guest flag cleared, and a new session unless `inhibit_login`.
    async fn upgrade_guest(&self, user_id: OwnedUserId, request: RegisterRequest) -> Result<RegisterResponse> {
        let password_hash = match request.password.clone() {
            Some(p) => Some(hash_password(p).await?),
            None => None,
        };
        let u = user_id.to_string();
        self.db(move |s| {
            s.set_password_hash(&u, password_hash.as_deref())?;
            s.set_user_flag(&u, UserFlag::Guest, false)
        })
        .await?;
        tracing::info!(user = %user_id, "guest upgraded to a full account");
        let login = match request.inhibit_login {
            false => Some(self.new_session(&user_id, self.registration_device(&request)?).await?),
            true => None,
        };
        Ok(RegisterResponse { user_id, login })
    }

    /// `GET /register/m.login.registration_token/validity`, limited per address by
    /// `rc_registration_token_validity`.
    pub async fn check_registration_token_validity(&self, token: &str, info: &RequestInfo) -> Result<bool> {
        self.limiters.registration_token_validity.check(&info.ip)?;
        self.registration_token_valid(token).await
    }

    /// Whether a password meets `password_config.policy`: 400 with Synapse's errcodes.
    pub(crate) fn check_password_policy(&self, password: &str) -> Result<()> {
        let Some(policy) = &self.config.password.policy else { return Ok(()) };
        let refuse = |errcode: &str, message: String| {
            Err(Error::new(ErrorKind::Module { status: 400, errcode: errcode.to_owned() }, message))
        };
        if password.chars().count() < policy.minimum_length {
            return refuse(
                "M_PASSWORD_TOO_SHORT",
                format!("The password must be at least {} characters long", policy.minimum_length),
            );
        }
        if policy.require_digit && !password.chars().any(|c| c.is_ascii_digit()) {
            return refuse("M_PASSWORD_NO_DIGIT", "The password must include at least one digit".into());
        }
        if policy.require_symbol && password.chars().all(|c| c.is_ascii_alphanumeric()) {
            return refuse("M_PASSWORD_NO_SYMBOL", "The password must include at least one symbol".into());
        }
        if policy.require_uppercase && !password.chars().any(|c| c.is_ascii_uppercase()) {
            return refuse("M_PASSWORD_NO_UPPERCASE", "The password must include at least one uppercase letter".into());
        }
        if policy.require_lowercase && !password.chars().any(|c| c.is_ascii_lowercase()) {
            return refuse("M_PASSWORD_NO_LOWERCASE", "The password must include at least one lowercase letter".into());
        }
        Ok(())
    }

    /// Whether a registration token exists, has not expired and has uses left.
    pub async fn registration_token_valid(&self, token: &str) -> Result<bool> {
        let t = token.to_owned();
        let found = self.db(move |s| s.get_registration_token(&t)).await?;
        Ok(found.is_some_and(|t| {
            t.expiry_time.is_none_or(|e| e > now_ms()) && t.uses_allowed.is_none_or(|n| t.pending + t.completed < n)
        }))
    }

    /// `POST /_synapse/admin/v1/registration_tokens/new` (admins only).
    pub async fn create_registration_token(
        &self,
        requester: &Requester,
        token: Option<String>,
        length: Option<i64>,
        uses_allowed: Option<i64>,
        expiry_time: Option<i64>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let length = length.unwrap_or(16);
        if !(1..=64).contains(&length) {
            return Err(Error::invalid_param("length must be an integer between 1 and 64"));
        }
        let token = token.unwrap_or_else(|| random_string(length as usize));
        if token.is_empty()
            || token.len() > 64
            || !token.chars().all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c))
        {
            return Err(Error::invalid_param(
                "token must consist only of characters matched by [A-Za-z0-9._~-] and be at most 64 long",
            ));
        }
        if uses_allowed.is_some_and(|n| n < 0) {
            return Err(Error::invalid_param("uses_allowed must be a non-negative integer or null"));
        }
        if expiry_time.is_some_and(|t| t < now_ms()) {
            return Err(Error::invalid_param("expiry_time must not be in the past"));
        }
        let row = myelin_storage::RegistrationToken {
            token: token.clone(),
            uses_allowed,
            pending: 0,
            completed: 0,
            expiry_time,
        };
        match self.db(move |s| s.create_registration_token(&row)).await {
            Err(e) if e.kind == ErrorKind::Internal => {
                return Err(Error::invalid_param(format!("Token already exists: {token}")));
            }
            other => other?,
        }
        tracing::info!(target: "myelin::audit", admin = %requester.user_id, action = "create registration token", target = %token, "admin action");
        Ok(
            json!({"token": token, "uses_allowed": uses_allowed, "pending": 0, "completed": 0, "expiry_time": expiry_time}),
        )
    }

    /// `GET /_synapse/admin/v1/registration_tokens` (admins only).
    /// `valid`: only tokens that can still be used (`Some(true)`) or only those that cannot.
    pub async fn list_registration_tokens(&self, requester: &Requester, valid: Option<bool>) -> Result<Value> {
        self.require_admin(requester)?;
        let tokens = self.db(|s| s.list_registration_tokens()).await?;
        let now = now_ms();
        let list: Vec<Value> = tokens
            .into_iter()
            .filter(|t| {
                let usable =
                    t.uses_allowed.is_none_or(|n| t.pending + t.completed < n) && t.expiry_time.is_none_or(|e| e > now);
                valid.is_none_or(|v| v == usable)
            })
            .map(|t| token_json(&t))
            .collect();
        Ok(json!({"registration_tokens": list}))
    }

    /// `GET /_synapse/admin/v1/registration_tokens/{token}`.
    pub async fn registration_token(&self, requester: &Requester, token: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let t = token.to_owned();
        match self.db(move |s| s.get_registration_token(&t)).await? {
            Some(row) => Ok(token_json(&row)),
            None => Err(Error::not_found(format!("No such registration token: {token}"))),
        }
    }

    /// `PUT /_synapse/admin/v1/registration_tokens/{token}`: the fields given replace the
    /// token's (`null` lifts a limit); the others stay.
    pub async fn update_registration_token(
        &self,
        requester: &Requester,
        token: &str,
        body: &Map<String, Value>,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let t = token.to_owned();
        let Some(current) = self.db(move |s| s.get_registration_token(&t)).await? else {
            return Err(Error::not_found(format!("No such registration token: {token}")));
        };
        let uses_allowed = match body.get("uses_allowed") {
            None => current.uses_allowed,
            Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| Error::invalid_param("uses_allowed must be a non-negative integer or null"))?,
            ),
        };
        let expiry_time = match body.get("expiry_time") {
            None => current.expiry_time,
            Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(t) if t >= now_ms() => Some(t),
                Some(_) => return Err(Error::invalid_param("expiry_time must not be in the past")),
                None => return Err(Error::invalid_param("expiry_time must be an integer or null")),
            },
        };
        let t = token.to_owned();
        self.db(move |s| s.set_registration_token_limits(&t, uses_allowed, expiry_time)).await?;
        tracing::info!(target: "myelin::audit", admin = %requester.user_id, action = "update registration token", target = %token, "admin action");
        Ok(token_json(&myelin_storage::RegistrationToken { uses_allowed, expiry_time, ..current }))
    }

    /// `DELETE /_synapse/admin/v1/registration_tokens/{token}`.
    pub async fn delete_registration_token(&self, requester: &Requester, token: &str) -> Result<()> {
        self.require_admin(requester)?;
        let t = token.to_owned();
        if !self.db(move |s| s.delete_registration_token(&t)).await? {
            return Err(Error::not_found(format!("No such registration token: {token}")));
        }
        tracing::info!(target: "myelin::audit", admin = %requester.user_id, action = "delete registration token", target = %token, "admin action");
        Ok(())
    }

    /// `POST /register?kind=guest`.
    pub async fn register_guest(&self, info: &RequestInfo) -> Result<RegisterResponse> {
        if !self.config.allow_guest_access {
            return Err(Error::forbidden("Guest access is disabled"));
        }
        self.limiters.registration.check(&info.ip)?;
        use rand::Rng;
        let localpart = rand::thread_rng().gen_range(100_000_000u64..999_999_999).to_string();
        let user_id = OwnedUserId::try_from(format!("@{localpart}:{}", self.server_name())).map_err(Error::internal)?;
        let row = UserRow {
            user_id: user_id.to_string(),
            password_hash: None,
            is_admin: false,
            is_guest: true,
            deactivated: false,
            shadow_banned: false,
            creation_ts: now_ms(),
            locked: false,
            suspended: false,
        };
        self.db(move |s| s.create_user(&row, None)).await?;
        // Guests' tokens never expire, as on Synapse.
        let login =
            Some(self.new_session(&user_id, NewDevice { life: TokenLife::Unlimited, ..NewDevice::default() }).await?);
        Ok(RegisterResponse { user_id, login })
    }

    /// Creates an account (client registration, shared-secret and command-line paths).
    pub(crate) async fn create_account(
        &self,
        localpart: Option<String>,
        password: Option<String>,
        admin: bool,
        info: &RequestInfo,
        login: Option<NewDevice>,
    ) -> Result<RegisterResponse> {
        let password_hash = match password {
            Some(p) => Some(hash_password(p).await?),
            None => None,
        };
        self.create_account_hashed(localpart, password_hash, admin, info, login, None).await
    }

    /// [`Homeserver::create_account`] with the password already hashed.
    async fn create_account_hashed(
        &self,
        localpart: Option<String>,
        password_hash: Option<String>,
        admin: bool,
        info: &RequestInfo,
        login: Option<NewDevice>,
        email_threepid: Option<Value>,
    ) -> Result<RegisterResponse> {
        let behaviour = self
            .modules
            .check_registration_for_spam(
                email_threepid,
                localpart.as_deref(),
                vec![(info.user_agent.clone(), info.ip.clone())],
                None,
            )
            .await?;
        if behaviour == RegistrationBehaviour::Deny {
            return Err(Error::new(ErrorKind::RegistrationDenied, "Rate limited"));
        }
        let localpart = match localpart {
            Some(l) => {
                validate_localpart(&l, self.server_name())?;
                l
            }
            None => random_string(12).to_lowercase(),
        };
        let user_id = OwnedUserId::try_from(format!("@{localpart}:{}", self.server_name()))
            .map_err(|_| Error::new(ErrorKind::InvalidUsername, "Invalid user ID"))?;
        // Whoever chose the name (the client, a password provider, an admin), an appservice's
        // exclusive namespace is its own.
        self.check_user_not_exclusive(user_id.as_str(), None)?;
        let row = UserRow {
            user_id: user_id.to_string(),
            password_hash,
            is_admin: admin,
            is_guest: false,
            deactivated: false,
            shadow_banned: behaviour == RegistrationBehaviour::ShadowBan,
            creation_ts: now_ms(),
            locked: false,
            suspended: false,
        };
        let lp = localpart.clone();
        match self.db(move |s| s.create_user(&row, Some(&lp))).await {
            Err(e) if e.kind == ErrorKind::Internal => {
                // A race with another registration of the same name hits the primary key.
                let uid = user_id.to_string();
                if self.db(move |s| s.get_user(&uid)).await?.is_some() {
                    return Err(Error::new(ErrorKind::UserInUse, "User ID already taken."));
                }
                return Err(e);
            }
            other => other?,
        }
        // Every new account gets `user_types.default_user_type` (a caller naming a type sets
        // it afterwards, as Synapse's registration does).
        if let Some(default) = self.config.user_types.default_user_type.clone() {
            let u = user_id.to_string();
            self.db(move |s| s.set_user_type(&u, Some(&default))).await?;
        }
        self.start_account_validity(user_id.as_str()).await?;
        self.modules.on_user_registration(user_id.as_str()).await;
        let login = match login {
            Some(device) => Some(self.new_session(&user_id, device).await?),
            None => None,
        };
        Ok(RegisterResponse { user_id, login })
    }

    /// `GET /_synapse/admin/v1/register`: a single-use nonce for shared-secret registration.
    pub async fn registration_nonce(&self) -> Result<String> {
        if self.config.registration_shared_secret.is_none() {
            return Err(Error::new(ErrorKind::BadRequest, "Shared secret registration is not enabled"));
        }
        let nonce = random_string(32);
        let key = nonce.clone();
        // Nonces live a minute, as in Synapse; in the database, so any process accepts them.
        self.db(move |s| s.put_transient(super::REGISTRATION_NONCE, &key, "", now_ms() + 60_000)).await?;
        Ok(nonce)
    }

    /// `POST /_synapse/admin/v1/register`: Synapse's HMAC-SHA1 scheme over
    /// `nonce \0 username \0 password \0 admin|notadmin`, then `\0 user_type` when one is
    /// given.
    #[allow(clippy::too_many_arguments)]
    pub async fn register_with_shared_secret(
        &self,
        nonce: &str,
        username: &str,
        password: &str,
        admin: bool,
        mac: &str,
        displayname: Option<String>,
        user_type: Option<&Value>,
    ) -> Result<RegisterResponse> {
        use hmac::Mac;
        let Some(secret) = &self.config.registration_shared_secret else {
            return Err(Error::new(ErrorKind::BadRequest, "Shared secret registration is not enabled"));
        };
        let key = nonce.to_owned();
        let issued = self.db(move |s| s.take_transient(super::REGISTRATION_NONCE, &key, now_ms())).await?;
        if issued.is_none() {
            return Err(Error::new(ErrorKind::BadRequest, "unrecognised nonce"));
        }
        let user_type = self.config.user_types.check(user_type)?;
        let mut hmac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).map_err(Error::internal)?;
        let admin_part = if admin { "admin" } else { "notadmin" };
        for (i, part) in [nonce, username, password, admin_part].into_iter().chain(user_type.as_deref()).enumerate() {
            if i > 0 {
                hmac.update(b"\x00");
            }
            hmac.update(part.as_bytes());
        }
        let expected = hex::decode(mac).map_err(|_| Error::forbidden("HMAC incorrect"))?;
        hmac.verify_slice(&expected).map_err(|_| Error::forbidden("HMAC incorrect"))?;
        let localpart = username.to_lowercase();
        self.username_available(&localpart).await?;
        let info = RequestInfo::default();
        let r = self
            .create_account(Some(localpart), Some(password.to_owned()), admin, &info, Some(NewDevice::default()))
            .await?;
        if let Some(d) = displayname {
            let u = r.user_id.to_string();
            self.db(move |s| s.set_profile_field(&u, ProfileField::DisplayName, Some(&d))).await?;
        }
        if let Some(t) = user_type {
            let u = r.user_id.to_string();
            self.db(move |s| s.set_user_type(&u, Some(&t))).await?;
        }
        Ok(r)
    }

    /// Creates a user from the command line or the shared-secret admin API.
    pub async fn register_local_user(&self, localpart: &str, password: &str, admin: bool) -> Result<OwnedUserId> {
        let info = RequestInfo::default();
        let localpart = localpart.to_lowercase();
        self.username_available(&localpart).await?;
        Ok(self.create_account(Some(localpart), Some(password.to_owned()), admin, &info, None).await?.user_id)
    }

    /// `ModuleApi.register_user`: a local user with no password, its display name defaulting
    /// to the localpart (Synapse's registration handler does the same).
    pub(crate) async fn module_register_user(
        &self,
        localpart: &str,
        displayname: Option<String>,
        admin: bool,
    ) -> Result<OwnedUserId> {
        let localpart = localpart.to_lowercase();
        self.username_available(&localpart).await?;
        let user_id =
            self.create_account(Some(localpart.clone()), None, admin, &RequestInfo::default(), None).await?.user_id;
        let (u, d) = (user_id.to_string(), displayname.unwrap_or(localpart));
        self.db(move |s| s.set_profile_field(&u, ProfileField::DisplayName, Some(&d))).await?;
        Ok(user_id)
    }

    /// `ModuleApi.register_device`: a new access token on `device_id` (generated if absent).
    pub(crate) async fn module_register_device(
        &self,
        user_id: &UserId,
        device_id: Option<String>,
        display_name: Option<String>,
    ) -> Result<(String, String)> {
        let session = self.new_session(user_id, NewDevice { device_id, display_name, ..NewDevice::default() }).await?;
        Ok((session.access_token, session.device_id))
    }

    /// Marks a user as admin (or not).
    pub async fn set_admin(&self, user_id: &str, admin: bool) -> Result<()> {
        let u = user_id.to_owned();
        self.db(move |s| s.set_user_flag(&u, UserFlag::Admin, admin)).await
    }
}

/// A registration token as the admin API shows it.
fn token_json(t: &myelin_storage::RegistrationToken) -> Value {
    json!({"token": t.token, "uses_allowed": t.uses_allowed, "pending": t.pending, "completed": t.completed, "expiry_time": t.expiry_time})
}
