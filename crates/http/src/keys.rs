//! End-to-end encryption endpoints: keys, cross-signing, to-device messages and key backup.
//! Nested under the Client-Server API roots by `client::router`.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::MatrixError;
use crate::extract::{Auth, JsonBody, Path, Query};

type Answer = Result<axum::Json<Value>, MatrixError>;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/keys/upload", post(upload))
        .route("/keys/query", post(query))
        .route("/keys/claim", post(claim))
        .route("/keys/changes", get(changes))
        .route("/keys/device_signing/upload", post(upload_signing))
        .route("/keys/signatures/upload", post(upload_signatures))
        .route("/sendToDevice/{event_type}/{txn_id}", put(send_to_device))
        .route("/room_keys/version", get(latest_version).post(create_version))
        .route("/room_keys/version/{version}", get(get_version).put(update_version).delete(delete_version))
        .route("/room_keys/keys", get(get_all_keys).put(put_all_keys).delete(delete_all_keys))
        .route("/room_keys/keys/{room_id}", get(get_room_keys).put(put_room_keys).delete(delete_room_keys))
        .route(
            "/room_keys/keys/{room_id}/{session_id}",
            get(get_session_key).put(put_session_key).delete(delete_session_key),
        )
}

fn ok(v: Value) -> Answer {
    Ok(axum::Json(v))
}

async fn upload(State(hs): State<AppState>, Auth(me): Auth, JsonBody(body): JsonBody<Value>) -> Answer {
    ok(hs.upload_keys(&me, body).await?)
}

async fn query(State(hs): State<AppState>, Auth(me): Auth, JsonBody(body): JsonBody<Value>) -> Answer {
    ok(hs.query_keys(&me, body).await?)
}

async fn claim(State(hs): State<AppState>, Auth(_me): Auth, JsonBody(body): JsonBody<Value>) -> Answer {
    ok(hs.claim_keys(body).await?)
}

#[derive(Deserialize)]
struct ChangesQuery {
    from: String,
    to: String,
}

async fn changes(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<ChangesQuery>) -> Answer {
    ok(hs.key_changes(&me, &q.from, &q.to).await?)
}

async fn upload_signing(State(hs): State<AppState>, Auth(me): Auth, JsonBody(body): JsonBody<Value>) -> Answer {
    ok(hs.upload_signing_keys(&me, body).await?)
}

async fn upload_signatures(State(hs): State<AppState>, Auth(me): Auth, JsonBody(body): JsonBody<Value>) -> Answer {
    ok(hs.upload_signatures(&me, body).await?)
}

async fn send_to_device(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((event_type, txn_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> Answer {
    hs.send_to_device(&me, &event_type, &txn_id, body).await?;
    ok(json!({}))
}

async fn latest_version(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    ok(hs.get_backup_version(&me, None).await?)
}

async fn create_version(State(hs): State<AppState>, Auth(me): Auth, JsonBody(body): JsonBody<Value>) -> Answer {
    ok(hs.create_backup_version(&me, body).await?)
}

async fn get_version(State(hs): State<AppState>, Auth(me): Auth, Path(version): Path<String>) -> Answer {
    ok(hs.get_backup_version(&me, Some(&version)).await?)
}

async fn update_version(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(version): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Answer {
    hs.update_backup_version(&me, &version, body).await?;
    ok(json!({}))
}

async fn delete_version(State(hs): State<AppState>, Auth(me): Auth, Path(version): Path<String>) -> Answer {
    hs.delete_backup_version(&me, &version).await?;
    ok(json!({}))
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<String>,
}

impl VersionQuery {
    /// The spec makes `version` required on every keys endpoint.
    fn required(&self) -> Result<&str, MatrixError> {
        self.version
            .as_deref()
            .ok_or_else(|| MatrixError::new(myelin_core::ErrorKind::MissingParam, "Missing version query parameter"))
    }
}

async fn get_all_keys(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<VersionQuery>) -> Answer {
    ok(hs.get_room_keys(&me, q.required()?, None, None).await?)
}

async fn put_all_keys(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<VersionQuery>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    ok(hs.put_room_keys(&me, q.required()?, None, None, Value::Object(body)).await?)
}

async fn delete_all_keys(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<VersionQuery>) -> Answer {
    ok(hs.delete_room_keys(&me, q.required()?, None, None).await?)
}

async fn get_room_keys(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Answer {
    ok(hs.get_room_keys(&me, q.required()?, Some(&room), None).await?)
}

async fn put_room_keys(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room): Path<String>,
    Query(q): Query<VersionQuery>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    ok(hs.put_room_keys(&me, q.required()?, Some(&room), None, Value::Object(body)).await?)
}

async fn delete_room_keys(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(room): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Answer {
    ok(hs.delete_room_keys(&me, q.required()?, Some(&room), None).await?)
}

async fn get_session_key(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room, session)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
) -> Answer {
    ok(hs.get_room_keys(&me, q.required()?, Some(&room), Some(&session)).await?)
}

async fn put_session_key(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room, session)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    ok(hs.put_room_keys(&me, q.required()?, Some(&room), Some(&session), Value::Object(body)).await?)
}

async fn delete_session_key(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((room, session)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
) -> Answer {
    ok(hs.delete_room_keys(&me, q.required()?, Some(&room), Some(&session)).await?)
}
