//! The [`Host`] the module API calls into, backed by the homeserver's services.
//!
//! It holds a weak reference: modules' callbacks live inside the homeserver's registry, so a
//! strong one would be a cycle.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use myelin_module_api::spam::SpamCheckerCallbacks;
use myelin_module_api::web::WebResource;
use myelin_module_api::{EventView, Host, ModuleError, ProfileInfo, UserInfo};
use serde_json::{Map, Value};

use crate::{Error, Homeserver, Requester};

pub(crate) struct HostHandle {
    pub(crate) hs: Weak<Homeserver>,
    /// Shared by every module: pooled connections, a 60 s timeout (Synapse's default).
    pub(crate) http: reqwest::Client,
    /// Module requests reach only what `ip_range_blacklist`/`ip_range_whitelist` allow.
    pub(crate) ip_filter: crate::outbound::IpFilter,
    /// Copied at start-up so `server_name` needs no upgrade.
    pub(crate) server_name: String,
}

fn gone() -> ModuleError {
    ModuleError::other("the homeserver is shutting down")
}

fn to_module_error(e: Error) -> ModuleError {
    let status = match &e.kind {
        crate::ErrorKind::Module { status, .. } => *status,
        crate::ErrorKind::Forbidden | crate::ErrorKind::Denied(_) => 403,
        crate::ErrorKind::NotFound => 404,
        crate::ErrorKind::MissingToken | crate::ErrorKind::UnknownToken => 401,
        crate::ErrorKind::Internal => 500,
        _ => 400,
    };
    ModuleError::Matrix { status, errcode: e.errcode().to_owned(), message: e.message, fields: e.fields }
}

fn event_view(json: &str) -> Result<EventView, ModuleError> {
    serde_json::from_str::<Map<String, Value>>(json).map(EventView::new).map_err(ModuleError::other)
}

impl HostHandle {
    fn hs(&self) -> Result<Arc<Homeserver>, ModuleError> {
        self.hs.upgrade().ok_or_else(gone)
    }
}

/// A requester for actions a module takes as a local user: no admin exemption, no shadow-ban.
async fn local_requester(hs: &Homeserver, user_id: &str) -> Result<Requester, ModuleError> {
    let user =
        ruma::OwnedUserId::try_from(user_id).map_err(|_| ModuleError::other(format!("invalid user ID {user_id}")))?;
    if !hs.is_mine(&user) {
        return Err(ModuleError::other(format!("{user_id} is not a local user")));
    }
    hs.requester_for(&user).await.map_err(to_module_error)
}

impl Host for HostHandle {
    fn server_name(&self) -> &str {
        &self.server_name
    }

    fn server_facts(&self) -> myelin_module_api::ServerFacts {
        let Ok(hs) = self.hs() else { return Default::default() };
        myelin_module_api::ServerFacts {
            public_baseurl: hs.config.public_baseurl.clone(),
            email_app_name: hs.config.email.as_ref().map_or_else(|| "Matrix".to_owned(), |e| e.app_name.clone()),
            custom_template_directory: hs
                .config
                .custom_template_directory
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
        }
    }

    fn complete_sso_login(
        &self,
        user_id: String,
        client_redirect_url: String,
        new_user: bool,
        auth_provider_id: String,
    ) -> BoxFuture<'static, Result<myelin_module_api::SsoLoginPage, ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            let page = hs?
                .complete_sso_login(&user_id, &auth_provider_id, &client_redirect_url, Default::default(), new_user)
                .await
                .map_err(to_module_error)?;
            Ok(myelin_module_api::SsoLoginPage {
                status: page.status,
                location: page.location,
                set_cookies: page.set_cookies,
                html: page.html,
            })
        })
    }

    fn send_mail(&self, mail: myelin_module_api::OutgoingMail) -> BoxFuture<'static, Result<(), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move { hs?.module_send_mail(mail).await.map_err(to_module_error) })
    }

    fn register_spam_checker_callbacks(
        &self,
        module: &str,
        callbacks: SpamCheckerCallbacks,
    ) -> Result<(), ModuleError> {
        self.hs()?.modules.register_spam(module, callbacks)
    }

    fn register_third_party_rules_callbacks(
        &self,
        module: &str,
        callbacks: myelin_module_api::third_party::ThirdPartyRulesCallbacks,
    ) -> Result<(), ModuleError> {
        self.hs()?.modules.register_third_party(module, callbacks)
    }

    fn register_password_auth_provider_callbacks(
        &self,
        module: &str,
        callbacks: myelin_module_api::auth::PasswordAuthProviderCallbacks,
    ) -> Result<(), ModuleError> {
        self.hs()?.modules.register_password_auth(module, callbacks)
    }

    fn register_account_validity_callbacks(
        &self,
        module: &str,
        callbacks: myelin_module_api::third_party::AccountValidityCallbacks,
    ) -> Result<(), ModuleError> {
        self.hs()?.modules.register_account_validity(module, callbacks)
    }

    fn register_federation_callbacks(
        &self,
        module: &str,
        callbacks: myelin_module_api::federation::FederationCallbacks,
    ) -> Result<(), ModuleError> {
        self.hs()?.modules.register_federation(module, callbacks)
    }

    fn register_account_data_callbacks(
        &self,
        module: &str,
        callbacks: myelin_module_api::repository::AccountDataCallbacks,
    ) -> Result<(), ModuleError> {
        self.hs()?.modules.register_account_data(module, callbacks)
    }

    fn register_media_repository_callbacks(
        &self,
        module: &str,
        callbacks: myelin_module_api::repository::MediaRepositoryCallbacks,
    ) -> Result<(), ModuleError> {
        self.hs()?.modules.register_media_repository(module, callbacks)
    }

    fn register_ratelimit_callbacks(
        &self,
        module: &str,
        callbacks: myelin_module_api::repository::RatelimitCallbacks,
    ) -> Result<(), ModuleError> {
        self.hs()?.modules.register_ratelimit(module, callbacks)
    }

    fn register_presence_router_callbacks(
        &self,
        module: &str,
        callbacks: myelin_module_api::presence::PresenceRouterCallbacks,
    ) -> Result<(), ModuleError> {
        self.hs()?.modules.register_presence_router(module, callbacks)
    }

    fn register_unsigned_callbacks(
        &self,
        module: &str,
        callbacks: myelin_module_api::presence::UnsignedCallbacks,
    ) -> Result<(), ModuleError> {
        self.hs()?.modules.register_unsigned(module, callbacks)
    }

    fn register_web_resource(
        &self,
        module: &str,
        path: &str,
        resource: Arc<dyn WebResource>,
    ) -> Result<(), ModuleError> {
        self.hs()?.modules.register_web(module, path, resource)
    }

    fn get_userinfo_by_id(&self, user_id: String) -> BoxFuture<'static, Option<UserInfo>> {
        let hs = self.hs.upgrade();
        Box::pin(async move { hs?.user_info(&user_id).await.ok().flatten() })
    }

    fn get_profile_for_user(&self, user: String) -> BoxFuture<'static, Option<ProfileInfo>> {
        let hs = self.hs.upgrade();
        Box::pin(async move {
            let hs = hs?;
            let user_id = if user.starts_with('@') { user } else { format!("@{user}:{}", hs.server_name()) };
            hs.user_info(&user_id).await.ok().flatten()?;
            let (display_name, avatar_url) = hs.profile_of(&user_id).await.ok()?;
            Some(ProfileInfo { display_name, avatar_url })
        })
    }

    fn create_and_send_event_into_room(
        &self,
        event: Map<String, Value>,
    ) -> BoxFuture<'static, Result<EventView, ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            let json = hs?.module_send_event(event).await.map_err(to_module_error)?;
            event_view(&json)
        })
    }

    fn update_room_membership(
        &self,
        sender: String,
        target: String,
        room_id: String,
        membership: String,
    ) -> BoxFuture<'static, Result<EventView, ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            let hs = hs?;
            let requester = local_requester(&hs, &sender).await?;
            let target = ruma::OwnedUserId::try_from(target).map_err(ModuleError::other)?;
            let room = ruma::OwnedRoomId::try_from(room_id).map_err(ModuleError::other)?;
            let ev = hs
                .update_membership_unlimited(&requester, &room, &target, &membership, None, Map::new())
                .await
                .map_err(to_module_error)?;
            Ok(EventView::new(ev.as_object().cloned().unwrap_or_default()))
        })
    }

    fn create_room(
        &self,
        user_id: String,
        config: Map<String, Value>,
    ) -> BoxFuture<'static, Result<(String, Option<String>), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            let hs = hs?;
            let requester = local_requester(&hs, &user_id).await?;
            let (room, alias) = hs.create_room(&requester, config).await.map_err(to_module_error)?;
            Ok((room.to_string(), alias))
        })
    }

    fn sleep(&self, duration: std::time::Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        tokio::spawn(task);
    }

    fn register_user(
        &self,
        localpart: String,
        displayname: Option<String>,
        admin: bool,
    ) -> BoxFuture<'static, Result<String, ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            hs?.module_register_user(&localpart, displayname, admin)
                .await
                .map(|u| u.to_string())
                .map_err(to_module_error)
        })
    }

    fn get_threepids_for_user(
        &self,
        user_id: String,
    ) -> BoxFuture<'static, Result<Vec<myelin_module_api::ThreepidInfo>, ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            let hs = hs?;
            let rows = hs.db(move |s| s.user_threepids(&user_id)).await.map_err(to_module_error)?;
            Ok(rows.into_iter().map(|t| (t.medium, t.address, t.validated_at, t.added_at)).collect())
        })
    }

    fn add_email_to_user(&self, user_id: String, email: String) -> BoxFuture<'static, Result<(), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move { hs?.module_add_email(&user_id, &email).await.map_err(to_module_error) })
    }

    fn register_device(
        &self,
        user_id: String,
        device_id: Option<String>,
        display_name: Option<String>,
    ) -> BoxFuture<'static, Result<(String, String), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            let hs = hs?;
            let requester = local_requester(&hs, &user_id).await?;
            if hs.user_info(&user_id).await.map_err(to_module_error)?.is_none() {
                return Err(to_module_error(Error::not_found(format!("User {user_id} does not exist"))));
            }
            let (token, device) = hs
                .module_register_device(&requester.user_id, device_id, display_name)
                .await
                .map_err(to_module_error)?;
            Ok((device, token))
        })
    }

    fn set_user_admin(&self, user_id: String, admin: bool) -> BoxFuture<'static, Result<(), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            let hs = hs?;
            local_requester(&hs, &user_id).await?;
            if hs.user_info(&user_id).await.map_err(to_module_error)?.is_none() {
                return Err(to_module_error(Error::not_found(format!("User {user_id} does not exist"))));
            }
            hs.set_admin(&user_id, admin).await.map_err(to_module_error)
        })
    }

    fn set_displayname(&self, user_id: String, displayname: String) -> BoxFuture<'static, Result<(), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            let hs = hs?;
            let requester = local_requester(&hs, &user_id).await?;
            hs.set_profile_field(&requester, &user_id, "displayname", Some(displayname)).await.map_err(to_module_error)
        })
    }

    fn get_room_state(&self, room_id: String) -> BoxFuture<'static, Result<Vec<EventView>, ModuleError>> {
        let hs = self.hs();
        Box::pin(async move { hs?.module_room_state(&room_id).await.map_err(to_module_error) })
    }

    fn get_user_ip_and_agents(
        &self,
        user_id: String,
        since_ts: i64,
    ) -> BoxFuture<'static, Result<Vec<myelin_module_api::UserIpAndAgent>, ModuleError>> {
        let hs = self.hs();
        Box::pin(async move { hs?.module_user_ips(&user_id, since_ts).await.map_err(to_module_error) })
    }

    fn set_presence_for_users(
        &self,
        users: Vec<(String, String, Option<String>)>,
    ) -> BoxFuture<'static, Result<(), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move { hs?.module_set_presence(users).await.map_err(to_module_error) })
    }

    fn record_user_external_id(
        &self,
        auth_provider: String,
        external_id: String,
        user_id: String,
    ) -> BoxFuture<'static, Result<(), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            hs?.module_record_external_id(&auth_provider, &external_id, &user_id).await.map_err(to_module_error)
        })
    }

    fn send_local_online_presence_to(&self, users: Vec<String>) -> BoxFuture<'static, Result<(), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move { hs?.module_send_online_presence_to(users).await.map_err(to_module_error) })
    }

    fn delete_room(&self, room_id: String) -> Result<(), ModuleError> {
        self.hs()?.module_delete_room(&room_id).map_err(to_module_error)
    }

    fn create_login_token(
        &self,
        user_id: String,
        valid_ms: u64,
        auth_provider_id: Option<String>,
    ) -> BoxFuture<'static, Result<String, ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            hs?.module_create_login_token(&user_id, valid_ms, auth_provider_id).await.map_err(to_module_error)
        })
    }

    fn set_push_rule_action(
        &self,
        user_id: String,
        kind: String,
        rule_id: String,
        actions: Value,
    ) -> BoxFuture<'static, Result<(), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            hs?.module_set_push_rule_actions(&user_id, &kind, &rule_id, actions).await.map_err(to_module_error)
        })
    }

    fn invalidate_access_token(&self, token: String) -> BoxFuture<'static, Result<(), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move { hs?.module_invalidate_access_token(&token).await.map_err(to_module_error) })
    }

    fn get_global_account_data(
        &self,
        user_id: String,
        data_type: String,
    ) -> BoxFuture<'static, Result<Option<Value>, ModuleError>> {
        let hs = self.hs();
        Box::pin(async move { hs?.module_get_global_account_data(&user_id, &data_type).await.map_err(to_module_error) })
    }

    fn put_global_account_data(
        &self,
        user_id: String,
        data_type: String,
        content: Map<String, Value>,
    ) -> BoxFuture<'static, Result<(), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            hs?.module_put_global_account_data(&user_id, &data_type, content).await.map_err(to_module_error)
        })
    }

    fn get_user_by_access_token(
        &self,
        token: String,
        allow_expired: bool,
    ) -> BoxFuture<'static, Result<String, ModuleError>> {
        let hs = self.hs();
        Box::pin(async move {
            let info = crate::RequestInfo::default();
            let requester = hs?
                .authenticate(Some(&token).filter(|t| !t.is_empty()).map(|t| t.as_str()), &info, allow_expired)
                .await;
            requester.map(|r| r.user_id.to_string()).map_err(to_module_error)
        })
    }

    fn http_request(
        &self,
        request: myelin_module_api::http::HttpRequest,
    ) -> BoxFuture<'static, Result<myelin_module_api::http::HttpResponse, myelin_module_api::http::HttpError>> {
        use myelin_module_api::http::{HttpError, HttpResponse};
        let client = self.http.clone();
        let filter = self.ip_filter.clone();
        Box::pin(async move {
            let method = reqwest::Method::from_bytes(request.method.as_bytes())
                .map_err(|e| HttpError::Transport(e.to_string()))?;
            let mut builder = client.request(method, &request.url).body(request.body);
            for (k, v) in &request.headers {
                builder = builder.header(k, v);
            }
            let resp = filter.send(&client, builder).await.map_err(HttpError::Transport)?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(|e| HttpError::Transport(e.to_string()))?.to_vec();
            Ok(HttpResponse { status, body })
        })
    }

    fn room_is_in_public_room_list(&self, room_id: String) -> BoxFuture<'static, Result<bool, ModuleError>> {
        let hs = self.hs();
        Box::pin(async move { Ok(hs?.room_visibility(&room_id).await.map_err(to_module_error)? == "public") })
    }

    fn set_room_in_public_room_list(
        &self,
        room_id: String,
        public: bool,
    ) -> BoxFuture<'static, Result<(), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move { hs?.publish_room_unchecked(&room_id, public).await.map_err(to_module_error) })
    }

    fn lookup_room_alias(&self, alias: String) -> BoxFuture<'static, Result<(String, Vec<String>), ModuleError>> {
        let hs = self.hs();
        Box::pin(async move { hs?.resolve_alias(&alias).await.map_err(to_module_error) })
    }
}
