//! The Server-Server API endpoints served so far: this server's keys and its version. Mounted on
//! listeners whose resources name `federation` (or `keys`, for the key endpoint alone), as on
//! Synapse.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::Value;

use crate::AppState;
use crate::error::MatrixError;

pub(crate) fn routes(resources: &[String]) -> Router<AppState> {
    let has = |name: &str| resources.iter().any(|r| r == name);
    let mut app = Router::new();
    if has("federation") || has("keys") {
        app = app.route("/_matrix/key/v2/server", get(server_keys));
    }
    if has("federation") {
        app = app.route("/_matrix/federation/v1/version", get(version));
    }
    app
}

async fn server_keys(State(hs): State<AppState>) -> Result<axum::Json<Value>, MatrixError> {
    Ok(axum::Json(hs.server_keys()?))
}

async fn version() -> axum::Json<Value> {
    axum::Json(myelin_core::federation::version())
}
