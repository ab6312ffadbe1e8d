//! The Server-Server API endpoints served so far: this server's keys and its version. Mounted on
//! listeners whose resources name `federation` (or `keys`, for the key endpoint alone), as on
//! Synapse.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::Value;

use crate::AppState;
use crate::error::MatrixError;
use crate::extract::{JsonBody, Path};

pub(crate) fn routes(resources: &[String]) -> Router<AppState> {
    let has = |name: &str| resources.iter().any(|r| r == name);
    let mut app = Router::new();
    if has("federation") || has("keys") {
        app = app
            .route("/_matrix/key/v2/server", get(server_keys))
            .route("/_matrix/key/v2/query", post(query_keys))
            .route("/_matrix/key/v2/query/{server_name}", get(query_server_keys));
    }
    if has("federation") {
        app = app.route("/_matrix/federation/v1/version", get(version));
    }
    app
}

async fn server_keys(State(hs): State<AppState>) -> Result<axum::Json<Value>, MatrixError> {
    Ok(axum::Json(hs.server_keys()?))
}

async fn query_keys(
    State(hs): State<AppState>,
    JsonBody(body): JsonBody<Value>,
) -> Result<axum::Json<Value>, MatrixError> {
    Ok(axum::Json(hs.query_server_keys(&body)?))
}

/// The GET form asks for all of one server's keys (`minimum_valid_until_ts` changes nothing
/// while only this server's own, current keys are served).
async fn query_server_keys(
    State(hs): State<AppState>,
    Path(server_name): Path<String>,
) -> Result<axum::Json<Value>, MatrixError> {
    let body = serde_json::json!({"server_keys": {server_name: {}}});
    Ok(axum::Json(hs.query_server_keys(&body)?))
}

async fn version() -> axum::Json<Value> {
    axum::Json(myelin_core::federation::version())
}
