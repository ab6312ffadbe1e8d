//! Push rules, pushers and notifications endpoints.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::MatrixError;
use crate::extract::{Auth, JsonBody, Path, Query};

type Answer = Result<axum::Json<Value>, MatrixError>;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/pushrules/{scope}/", get(rules_of_scope))
        // Paths that name no rule: Synapse's 400 `M_UNRECOGNIZED`, not a missing route.
        .route("/pushrules/{scope}", get(unrecognized).put(unrecognized))
        .route("/pushrules/{scope}/{kind}", get(unrecognized).put(unrecognized).delete(unrecognized))
        .route("/pushrules/{scope}/{kind}/", get(rules_of_kind).put(unrecognized).delete(unrecognized))
        .route("/pushrules/{scope}/{kind}/{rule_id}", get(get_rule).put(put_rule).delete(delete_rule))
        .route("/pushrules/{scope}/{kind}/{rule_id}/{attribute}", get(get_attribute).put(put_attribute))
        .route("/pushers", get(pushers))
        .route("/pushers/set", post(set_pusher))
        .route("/notifications", get(notifications))
}

fn unrecognized_request() -> MatrixError {
    MatrixError::new(
        myelin_core::ErrorKind::Module { status: 400, errcode: "M_UNRECOGNIZED".into() },
        "Unrecognized request",
    )
}

pub(crate) async fn unrecognized() -> Result<axum::Json<Value>, MatrixError> {
    Err(unrecognized_request())
}

/// `GET /pushrules/{scope}/`: only `global` is a scope.
async fn rules_of_scope(State(hs): State<AppState>, Auth(me): Auth, Path(scope): Path<String>) -> Answer {
    match hs.push_rules(&me).await?.get(&scope) {
        Some(rules) => Ok(axum::Json(rules.clone())),
        None => Err(unrecognized_request()),
    }
}

/// `GET /pushrules/global/{kind}/`: the rules of one kind, in order.
async fn rules_of_kind(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((scope, kind)): Path<(String, String)>,
) -> Answer {
    let rules = hs.push_rules(&me).await?;
    match rules.get(&scope).and_then(|s| s.get(&kind)) {
        Some(list @ Value::Array(_)) => Ok(axum::Json(list.clone())),
        // As Synapse: a kind that is not one is a 400, not a missing route.
        _ => Err(unrecognized_request()),
    }
}

async fn get_rule(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> Answer {
    Ok(axum::Json(hs.push_rule(&me, &scope, &kind, &rule_id).await?))
}

#[derive(Deserialize)]
struct Position {
    before: Option<String>,
    after: Option<String>,
}

async fn put_rule(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
    Query(pos): Query<Position>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.put_push_rule(&me, &scope, &kind, &rule_id, pos.before.as_deref(), pos.after.as_deref(), &body).await?;
    Ok(axum::Json(json!({})))
}

async fn delete_rule(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> Answer {
    hs.delete_push_rule(&me, &scope, &kind, &rule_id).await?;
    Ok(axum::Json(json!({})))
}

async fn get_attribute(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((scope, kind, rule_id, attribute)): Path<(String, String, String, String)>,
) -> Answer {
    Ok(axum::Json(hs.push_rule_attribute(&me, &scope, &kind, &rule_id, &attribute).await?))
}

async fn put_attribute(
    State(hs): State<AppState>,
    Auth(me): Auth,
    Path((scope, kind, rule_id, attribute)): Path<(String, String, String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.set_push_rule_attribute(&me, &scope, &kind, &rule_id, &attribute, &body).await?;
    Ok(axum::Json(json!({})))
}

async fn pushers(State(hs): State<AppState>, Auth(me): Auth) -> Answer {
    Ok(axum::Json(hs.pushers(&me).await?))
}

async fn set_pusher(
    State(hs): State<AppState>,
    Auth(me): Auth,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Answer {
    hs.set_pusher(&me, &body).await?;
    Ok(axum::Json(json!({})))
}

#[derive(Deserialize)]
struct NotificationsQuery {
    from: Option<String>,
    limit: Option<String>,
    only: Option<String>,
}

async fn notifications(State(hs): State<AppState>, Auth(me): Auth, Query(q): Query<NotificationsQuery>) -> Answer {
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| MatrixError::new(myelin_core::ErrorKind::InvalidParam, "limit must be an integer"))?
            .min(100),
    };
    let only_highlight = q.only.as_deref() == Some("highlight");
    Ok(axum::Json(hs.notifications(&me, q.from.as_deref(), limit, only_highlight).await?))
}
