//! Accounts: login, logout, registration, passwords, deactivation, devices, profiles, OpenID tokens.

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_flows).post(login))
        .route("/refresh", post(refresh))
        .route("/logout", post(logout))
        .route("/logout/all", post(logout_all))
        .route("/register", post(register))
        .route("/register/available", get(register_available))
        .route("/account/whoami", get(whoami))
        .route("/account/password", post(change_password))
        .route("/account/deactivate", post(deactivate))
        .route("/devices", get(devices))
        .route("/delete_devices", post(delete_devices))
        .route("/devices/{device_id}", get(device).put(rename_device).delete(delete_device))
        .route("/profile/{user_id}", get(profile))
        .route("/profile/{user_id}/{field}", get(profile_field).put(set_profile_field).delete(delete_profile_field))
        .route("/account/3pid/bind", post(bind_threepid))
        .route("/account/3pid/unbind", post(remove_threepid))
        .route("/user/{user_id}/openid/request_token", post(openid_token))
        .route("/account_validity/renew", get(renew_account))
        .route("/account_validity/send_mail", post(send_renewal_mail))
}

/// `GET /account_validity/renew?token=`: the link of a renewal mail (an HTML page).
async fn renew_account(
    State(hs): State<AppState>,
    Query(q): Query<Map<String, Value>>,
) -> Result<axum::response::Response, MatrixError> {
    use axum::response::{Html, IntoResponse};
    let Some(token) = q.get("token").and_then(Value::as_str) else {
        return Err(MatrixError::new(ErrorKind::MissingParam, "Missing string query parameter 'token'"));
    };
    Ok(match hs.renew_account(token).await? {
        myelin_core::Renewal::Renewed(page) | myelin_core::Renewal::AlreadyRenewed(page) => Html(page).into_response(),
        myelin_core::Renewal::InvalidToken(page) => (axum::http::StatusCode::NOT_FOUND, Html(page)).into_response(),
    })
}

/// `POST /account_validity/send_mail`: a new renewal link by mail (an expired account may ask).
async fn send_renewal_mail(State(hs): State<AppState>, AuthAllowExpired(me): AuthAllowExpired) -> Answer {
    hs.send_renewal_mail_to(&me).await?;
    Ok(axum::Json(json!({})))
}

pub(super) async fn login_flows(State(hs): State<AppState>) -> Json {
    axum::Json(json!({"flows": hs.login_flows()}))
}

pub(super) async fn login(
    State(hs): State<AppState>,
    ClientInfo(info): ClientInfo,
    parts: axum::http::request::Parts,
    JsonBody(body): JsonBody<LoginRequest>,
) -> Answer {
    let r = if body.kind == "m.login.application_service" {
        hs.login_appservice_user(access_token(&parts)?.as_deref(), &info, body).await?
    } else {
        hs.login(body, &info).await?
    };
    let mut out = r.session.fields();
    out.insert("user_id".into(), json!(r.user_id));
    out.insert("home_server".into(), json!(hs.server_name()));
    out.extend(r.extra);
    Ok(axum::Json(Value::Object(out)))
}

/// `POST /refresh`: no access token (the old one may have expired), only the refresh token.
pub(super) async fn refresh(State(hs): State<AppState>, JsonBody(body): JsonBody<Value>) -> Answer {
    Ok(axum::Json(hs.refresh_session(&body).await?))
}

/// `POST /_matrix/client/v1/login/get_token` (MSC3882).
pub(super) async fn login_get_token(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(body): JsonBody<Value>,
) -> Answer {
    Ok(axum::Json(hs.request_login_token(&me, body.get("auth")).await?))
}

/// A registration's answer: the user, and the session unless `inhibit_login`.
fn registered(hs: &AppState, r: myelin_core::RegisterResponse) -> Json {
    let mut out = r.login.map(|session| session.fields()).unwrap_or_default();
    out.insert("user_id".into(), json!(r.user_id));
    out.insert("home_server".into(), json!(hs.server_name()));
    axum::Json(Value::Object(out))
}

pub(super) async fn logout(State(hs): State<AppState>, AuthAllowExpired(me): AuthAllowExpired) -> Answer {
    hs.logout(&me).await?;
    Ok(axum::Json(json!({})))
}

pub(super) async fn logout_all(State(hs): State<AppState>, AuthAllowExpired(me): AuthAllowExpired) -> Answer {
    hs.logout_all(&me).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct RegisterQuery {
    kind: Option<String>,
}

pub(super) async fn register(
    State(hs): State<AppState>,
    ClientInfo(info): ClientInfo,
    Query(q): Query<RegisterQuery>,
    parts: axum::http::request::Parts,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> Answer {
    let token = access_token(&parts)?;
    if body.kind.as_deref() == Some("m.login.application_service") {
        let r = hs.register_appservice_user(token.as_deref(), &info, body).await?;
        return Ok(registered(&hs, r));
    }
    if token.is_some() {
        return Err(MatrixError::new(
            ErrorKind::BadRequest,
            "An access token should not be provided on requests to /register (except if type is m.login.application_service)",
        ));
    }
    let r = match q.kind.as_deref() {
        Some("guest") => hs.register_guest(&info).await?,
        None | Some("user") => hs.register(body, &info).await?,
        Some(_) => return Err(MatrixError::new(ErrorKind::InvalidParam, "kind must be 'user' or 'guest'")),
    };
    Ok(registered(&hs, r))
}

#[derive(Deserialize)]
pub(super) struct AvailableQuery {
    username: String,
}

pub(super) async fn register_available(State(hs): State<AppState>, Query(q): Query<AvailableQuery>) -> Answer {
    hs.username_available(&q.username).await?;
    Ok(axum::Json(json!({"available": true})))
}

pub(super) async fn whoami(Auth(me): Auth) -> Json {
    let mut out = json!({"user_id": me.user_id, "is_guest": me.is_guest});
    // An appservice acting without a device has none (Synapse omits the key).
    if !me.device_id.is_empty() {
        out["device_id"] = json!(me.device_id);
    }
    axum::Json(out)
}

#[derive(Deserialize)]
pub(super) struct PasswordBody {
    new_password: Option<String>,
    #[serde(default = "yes")]
    logout_devices: bool,
    auth: Option<Value>,
}

pub(super) fn yes() -> bool {
    true
}

/// With an access token, the user proves who they are with their password; without one, a
/// forgotten password is reset by proving an e-mail address of the account.
pub(super) async fn change_password(
    State(hs): State<AppState>,
    OptionalAuth(me): OptionalAuth,
    JsonBody(b): JsonBody<PasswordBody>,
) -> Answer {
    // As Synapse's body model: at most 512 characters.
    if b.new_password.as_ref().is_some_and(|p| p.chars().count() > 512) {
        return Err(MatrixError::new(ErrorKind::BadJson, "new_password: String should have at most 512 characters"));
    }
    match me {
        Some(me) => {
            let new_password =
                b.new_password.ok_or_else(|| MatrixError::new(ErrorKind::MissingParam, "Missing params: password"))?;
            hs.change_password(&me, new_password, b.logout_devices, b.auth.as_ref()).await?
        }
        None => hs.reset_password_by_email(b.new_password, b.logout_devices, b.auth.as_ref()).await?,
    }
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct AuthOnly {
    auth: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct DeactivateRequest {
    auth: Option<Value>,
    id_server: Option<String>,
    #[serde(default)]
    erase: bool,
}

pub(super) async fn deactivate(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(b): JsonBody<DeactivateRequest>,
) -> Answer {
    let unbound = hs.deactivate(&me, b.auth.as_ref(), b.id_server.as_deref(), b.erase).await?;
    Ok(axum::Json(json!({"id_server_unbind_result": if unbound { "success" } else { "no-support" }})))
}

pub(super) async fn bind_threepid(State(hs): State<AppState>, Auth(me): Auth, JsonBody(b): JsonBody<Value>) -> Answer {
    Ok(axum::Json(hs.bind_threepid(&me, &b).await?))
}

pub(super) async fn remove_threepid(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(b): JsonBody<Value>,
) -> Answer {
    Ok(axum::Json(hs.remove_threepid(&me, &b).await?))
}

pub(super) async fn devices(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(json!({"devices": hs.devices(&me).await?})))
}

pub(super) async fn device(State(hs): State<AppState>, Auth(me): Auth, Path(device_id): Path<String>) -> Answer {
    hs.devices(&me)
        .await?
        .into_iter()
        .find(|d| d["device_id"] == json!(device_id))
        .map(axum::Json)
        .ok_or_else(|| MatrixError::new(ErrorKind::NotFound, "Unknown device"))
}

#[derive(Deserialize)]
pub(super) struct DeviceBody {
    display_name: Option<String>,
}

pub(super) async fn rename_device(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(device_id): Path<String>,
    JsonBody(b): JsonBody<DeviceBody>,
) -> Answer {
    hs.rename_device(&me, &device_id, b.display_name).await?;
    Ok(axum::Json(json!({})))
}

pub(super) async fn delete_device(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(device_id): Path<String>,
    JsonBody(b): JsonBody<AuthOnly>,
) -> Answer {
    hs.delete_device(&me, &device_id, b.auth.as_ref()).await?;
    Ok(axum::Json(json!({})))
}

pub(super) async fn profile(
    State(hs): State<AppState>,
    OptionalAuth(me): OptionalAuth,
    Path(user_id): Path<String>,
) -> Answer {
    Ok(axum::Json(Value::Object(hs.profile_for(me.as_ref(), &user_id).await?)))
}

pub(super) async fn profile_field(
    State(hs): State<AppState>,
    OptionalAuth(me): OptionalAuth,
    Path((user_id, field)): Path<(String, String)>,
) -> Answer {
    myelin_core::check_profile_field_name(&field)?;
    let p = hs.profile_for(me.as_ref(), &user_id).await?;
    match p.get(&field) {
        Some(v) => Ok(axum::Json(json!({ field: v }))),
        // As Synapse: an unset display name or avatar of a user who exists is `{}` (the spec
        // allows that or a 404); an unset custom field is a 404.
        None if field == "displayname" || field == "avatar_url" => Ok(axum::Json(json!({}))),
        None => Err(MatrixError::new(ErrorKind::NotFound, "Profile field not set")),
    }
}

pub(super) async fn set_profile_field(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, field)): Path<(String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.put_profile_field(&me, &user_id, &field, &body).await?;
    Ok(axum::Json(json!({})))
}

pub(super) async fn delete_profile_field(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, field)): Path<(String, String)>,
) -> Answer {
    hs.delete_profile_field(&me, &user_id, &field).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct DeleteDevicesBody {
    devices: Vec<String>,
    auth: Option<Value>,
}

pub(super) async fn delete_devices(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(b): JsonBody<DeleteDevicesBody>,
) -> Answer {
    hs.delete_devices(&me, b.devices, b.auth.as_ref()).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    token: String,
}

pub(super) async fn token_validity(
    State(hs): State<AppState>,
    ClientInfo(info): ClientInfo,
    Query(q): Query<TokenQuery>,
) -> Answer {
    Ok(axum::Json(json!({"valid": hs.check_registration_token_validity(&q.token, &info).await?})))
}

pub(super) async fn openid_token(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.openid_token(&me, &user_id).await?))
}
