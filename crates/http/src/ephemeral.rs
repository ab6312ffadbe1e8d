//! Receipts, read markers, typing and presence endpoints.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::MatrixError;
use crate::extract::{Auth, JsonBody, Path};

type Answer = Result<axum::Json<Value>, MatrixError>;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/rooms/{room_id}/receipt/{receipt_type}/{event_id}", post(receipt))
        .route("/rooms/{room_id}/read_markers", post(read_markers))
        .route("/rooms/{room_id}/typing/{user_id}", put(typing))
        .route("/presence/{user_id}/status", get(get_presence).put(set_presence))
}

async fn receipt(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room, receipt_type, event_id)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.send_receipt(&me, &room, &receipt_type, &event_id, &body).await?;
    Ok(axum::Json(json!({})))
}

async fn read_markers(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.set_read_markers(&me, &room, &body).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
struct TypingBody {
    typing: bool,
    timeout: Option<u64>,
}

async fn typing(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room, user_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<TypingBody>,
) -> Answer {
    hs.set_typing(&me, &room, &user_id, body.typing, body.timeout).await?;
    Ok(axum::Json(json!({})))
}

async fn get_presence(State(hs): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Answer {
    Ok(axum::Json(hs.get_presence(&me, &user_id).await?))
}

async fn set_presence(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.set_presence(&me, &user_id, &body).await?;
    Ok(axum::Json(json!({})))
}
