//! Synapse's admin API, as far as Myelin implements it: shared-secret registration.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::MatrixError;
use crate::extract::JsonBody;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/_synapse/admin/v1/register", get(nonce).post(register))
}

async fn nonce(State(hs): State<AppState>) -> Result<axum::Json<Value>, MatrixError> {
    Ok(axum::Json(json!({"nonce": hs.registration_nonce()?})))
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
