//! Client-Server API handlers (https://spec.matrix.org/latest/client-server-api/).
//!
//! Each handler extracts, makes one `Homeserver` call and serialises. Served under both
//! `/_matrix/client/v3` and the legacy `/_matrix/client/r0`.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post, put};
use myelin_core::{ErrorKind, LoginRequest, RegisterRequest, SyncRequest};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::MatrixError;
use crate::extract::{Auth, AuthAllowExpired, ClientInfo, JsonBody, OptionalAuth, Path, Query};

mod account_data;
mod accounts;
mod directory;
mod rooms;
mod sync;

type Json = axum::Json<Value>;
type Answer = Result<Json, MatrixError>;

pub(crate) fn router() -> Router<AppState> {
    let api = Router::new()
        .merge(accounts::routes())
        .merge(rooms::routes())
        .merge(sync::routes())
        .merge(account_data::routes())
        .merge(directory::routes())
        .route("/capabilities", get(capabilities))
        .route("/voip/turnServer", get(turn_server))
        .route("/thirdparty/protocols", get(thirdparty_protocols))
        .merge(crate::keys::routes())
        .merge(crate::ephemeral::routes())
        .merge(crate::push::routes());
    Router::new()
        .route("/_matrix/client/versions", get(versions))
        .route("/_matrix/client/v1/register/m.login.registration_token/validity", get(accounts::token_validity))
        .nest("/_matrix/client/v1", rooms::v1_routes())
        .nest("/_matrix/client/v3", api.clone())
        .nest("/_matrix/client/r0", api)
}

async fn versions() -> Json {
    axum::Json(json!({
        "versions": ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"],
        "unstable_features": {}
    }))
}

async fn capabilities(State(hs): State<AppState>, Auth(_me): Auth) -> Json {
    let available: Map<String, Value> =
        myelin_core::config::SUPPORTED_ROOM_VERSIONS.iter().map(|v| (v.to_string(), json!("stable"))).collect();
    axum::Json(json!({"capabilities": {
        "m.change_password": {"enabled": true},
        "m.room_versions": {"default": hs.config.default_room_version, "available": available},
        "m.set_displayname": {"enabled": true},
        "m.set_avatar_url": {"enabled": true},
        "m.3pid_changes": {"enabled": false},
    }}))
}

/// No TURN server is configured: Synapse answers `{}` then, and clients fall back to STUN.
async fn turn_server(Auth(_me): Auth) -> Json {
    axum::Json(json!({}))
}

/// No application services bridge third-party networks here.
async fn thirdparty_protocols(Auth(_me): Auth) -> Json {
    axum::Json(json!({}))
}
