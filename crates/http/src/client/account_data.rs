//! Account data, room tags, filters and the push rules listing.

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/user/{user_id}/rooms/{room_id}/tags", get(tags))
        .route("/user/{user_id}/rooms/{room_id}/tags/{tag}", put(put_tag).delete(delete_tag))
        .route("/pushrules/", get(push_rules).put(crate::push::unrecognized))
        .route("/pushrules/global/", get(push_rules_global))
        .route("/user/{user_id}/filter", post(create_filter))
        .route("/user/{user_id}/filter/{filter_id}", get(get_filter))
        .route("/user/{user_id}/account_data/{kind}", get(get_account_data).put(set_account_data))
        .route(
            "/user/{user_id}/rooms/{room_id}/account_data/{kind}",
            get(get_room_account_data).put(set_room_account_data),
        )
}

pub(super) async fn create_filter(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    JsonBody(filter): JsonBody<Map<String, Value>>,
) -> Answer {
    let id = hs.create_filter(&me, &user_id, Value::Object(filter)).await?;
    Ok(axum::Json(json!({"filter_id": id})))
}

pub(super) async fn get_filter(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, id)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(hs.get_filter(&me, &user_id, &id).await?))
}

pub(super) async fn get_account_data(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, kind)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(hs.get_account_data(&me, &user_id, None, &kind).await?))
}

pub(super) async fn set_account_data(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, kind)): Path<(String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.set_account_data(&me, &user_id, None, &kind, Value::Object(content)).await?;
    Ok(axum::Json(json!({})))
}

pub(super) async fn get_room_account_data(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, room_id, kind)): Path<(String, String, String)>,
) -> Answer {
    Ok(axum::Json(hs.get_account_data(&me, &user_id, Some(&room_id), &kind).await?))
}

pub(super) async fn set_room_account_data(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, room_id, kind)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.set_account_data(&me, &user_id, Some(&room_id), &kind, Value::Object(content)).await?;
    Ok(axum::Json(json!({})))
}

pub(super) async fn push_rules(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(hs.push_rules(&me).await?))
}

pub(super) async fn push_rules_global(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(hs.push_rules(&me).await?["global"].clone()))
}

pub(super) async fn tags(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, room_id)): Path<(String, String)>,
) -> Answer {
    Ok(axum::Json(hs.room_tags(&me, &user_id, &room_id).await?))
}

pub(super) async fn put_tag(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
    JsonBody(info): JsonBody<Map<String, Value>>,
) -> Answer {
    if info.get("order").is_some_and(|o| !o.is_number()) {
        return Err(MatrixError::new(ErrorKind::BadJson, "order must be a number"));
    }
    hs.set_room_tag(&me, &user_id, &room_id, &tag, Some(Value::Object(info))).await?;
    Ok(axum::Json(json!({})))
}

pub(super) async fn delete_tag(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
) -> Answer {
    hs.set_room_tag(&me, &user_id, &room_id, &tag, None).await?;
    Ok(axum::Json(json!({})))
}
