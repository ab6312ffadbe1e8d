//! Synapse's admin API, as far as Myelin implements it: shared-secret registration and
//! registration tokens.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::MatrixError;
use crate::extract::{Auth, JsonBody};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/_synapse/admin/v1/register", get(nonce).post(register))
        .route("/_synapse/admin/v1/registration_tokens", get(list_tokens))
        .route("/_synapse/admin/v1/registration_tokens/new", axum::routing::post(new_token))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NewToken {
    token: Option<String>,
    uses_allowed: Option<i64>,
    expiry_time: Option<i64>,
}

async fn new_token(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(b): JsonBody<NewToken>,
) -> Result<axum::Json<Value>, MatrixError> {
    Ok(axum::Json(hs.create_registration_token(&me, b.token, b.uses_allowed, b.expiry_time).await?))
}

async fn list_tokens(State(hs): State<AppState>, Auth(me): Auth) -> Result<axum::Json<Value>, MatrixError> {
    Ok(axum::Json(hs.list_registration_tokens(&me).await?))
}

async fn nonce(State(hs): State<AppState>) -> Result<axum::Json<Value>, MatrixError> {
    Ok(axum::Json(json!({"nonce": hs.registration_nonce().await?})))
}

#[derive(Deserialize)]
struct SharedSecretBody {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    mac: String,
    displayname: Option<String>,
}

async fn register(
    State(hs): State<AppState>,
    JsonBody(b): JsonBody<SharedSecretBody>,
) -> Result<axum::Json<Value>, MatrixError> {
    let r = hs.register_with_shared_secret(&b.nonce, &b.username, &b.password, b.admin, &b.mac, b.displayname).await?;
    let (token, device) = r.login.unwrap_or_default();
    Ok(axum::Json(
        json!({"user_id": r.user_id, "access_token": token, "device_id": device, "home_server": hs.server_name()}),
    ))
}
