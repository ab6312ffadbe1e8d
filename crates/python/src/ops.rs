//! The `ModuleApi` operations Python modules call, run on the Rust side.

use base64::Engine;
use myelin_module_api::{ModuleApi, ModuleError};
use serde_json::{Value, json};

pub(crate) fn ok_or_error(r: Result<Value, ModuleError>) -> Value {
    match r {
        Ok(v) => json!({"ok": v}),
        Err(ModuleError::Matrix { status, errcode, message, fields }) => {
            json!({"error": {"status": status, "errcode": errcode, "message": message, "fields": fields}})
        }
        Err(e) => json!({"error": {"status": 500, "errcode": "M_UNKNOWN", "message": e.to_string()}}),
    }
}

pub(crate) async fn run_op(api: &ModuleApi, op: &str, a: &Value) -> Value {
    let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
    match op {
        "get_userinfo_by_id" => json!({"ok": api.get_userinfo_by_id(&s("user_id")).await.map(|u| json!({
            "user_id": u.user_id, "is_admin": u.is_admin, "is_guest": u.is_guest,
            "is_deactivated": u.is_deactivated, "is_shadow_banned": u.is_shadow_banned, "creation_ts": u.creation_ts,
            "appservice_id": u.appservice_id}))}),
        "get_profile_for_user" => json!({"ok": api.get_profile_for_user(&s("user")).await.map(|p| json!({
            "display_name": p.display_name, "avatar_url": p.avatar_url}))}),
        "create_and_send_event_into_room" => ok_or_error(
            api.create_and_send_event_into_room(a["event"].as_object().cloned().unwrap_or_default())
                .await
                .map(|e| Value::Object(e.as_json().clone())),
        ),
        "update_room_membership" => ok_or_error(
            api.update_room_membership(&s("sender"), &s("target"), &s("room_id"), &s("membership"))
                .await
                .map(|e| Value::Object(e.as_json().clone())),
        ),
        "create_room" => ok_or_error(
            api.create_room(&s("user_id"), a["config"].as_object().cloned().unwrap_or_default())
                .await
                .map(|(r, al)| json!([r, al])),
        ),
        "lookup_room_alias" => {
            ok_or_error(api.lookup_room_alias(&s("alias")).await.map(|(r, servers)| json!([r, servers])))
        }
        "get_room_state" => ok_or_error(
            api.get_room_state(&s("room_id"))
                .await
                .map(|evs| Value::Array(evs.into_iter().map(|e| Value::Object(e.as_json().clone())).collect())),
        ),
        "get_user_ip_and_agents" => {
            ok_or_error(api.get_user_ip_and_agents(&s("user_id"), a["since_ts"].as_i64().unwrap_or(0)).await.map(
                |rows| json!(rows.into_iter().map(|r| json!([r.ip, r.user_agent, r.last_seen])).collect::<Vec<_>>()),
            ))
        }
        "set_presence_for_users" => {
            let users = a["users"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| {
                    (
                        u[0].as_str().unwrap_or_default().to_owned(),
                        u[1].as_str().unwrap_or_default().to_owned(),
                        u[2].as_str().map(str::to_owned),
                    )
                })
                .collect();
            ok_or_error(api.set_presence_for_users(users).await.map(|()| Value::Null))
        }
        "set_push_rule_action" => ok_or_error(
            api.set_push_rule_action(&s("user_id"), &s("kind"), &s("rule_id"), a["actions"].clone())
                .await
                .map(|()| Value::Null),
        ),
        "invalidate_access_token" => ok_or_error(api.invalidate_access_token(&s("token")).await.map(|()| Value::Null)),
        "record_user_external_id" => ok_or_error(
            api.record_user_external_id(&s("auth_provider_id"), &s("remote_user_id"), &s("registered_user_id"))
                .await
                .map(|()| Value::Null),
        ),
        "send_local_online_presence_to" => ok_or_error(
            api.send_local_online_presence_to(
                &a["users"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect::<Vec<_>>(),
            )
            .await
            .map(|()| Value::Null),
        ),
        "delete_room" => ok_or_error(api.delete_room(&s("room_id")).map(|()| Value::Null)),
        "complete_sso_login" => ok_or_error(
            api.complete_sso_login(
                &s("user_id"),
                &s("client_redirect_url"),
                a["new_user"].as_bool().unwrap_or(false),
                a["auth_provider_id"].as_str().unwrap_or("<unknown>"),
            )
            .await
            .map(|page| {
                serde_json::json!({"status": page.status, "location": page.location,
                                   "set_cookies": page.set_cookies, "html": page.html})
            }),
        ),
        "create_login_token" => ok_or_error(
            api.create_login_token(
                &s("user_id"),
                a["duration_in_ms"].as_u64().unwrap_or(120_000),
                a["auth_provider_id"].as_str(),
            )
            .await
            .map(Value::String),
        ),
        "get_global_account_data" => {
            ok_or_error(api.get_global_account_data(&s("user_id"), &s("type")).await.map(|v| v.unwrap_or(Value::Null)))
        }
        "put_global_account_data" => ok_or_error(
            api.put_global_account_data(
                &s("user_id"),
                &s("type"),
                a["content"].as_object().cloned().unwrap_or_default(),
            )
            .await
            .map(|_| Value::Null),
        ),
        "get_user_by_req" => ok_or_error(
            api.get_user_by_access_token(&s("token"), a["allow_expired"].as_bool().unwrap_or(false))
                .await
                .map(Value::String),
        ),
        "register_user" => ok_or_error(
            api.register_user(&s("localpart"), a["displayname"].as_str(), a["admin"].as_bool().unwrap_or(false))
                .await
                .map(Value::String),
        ),
        "send_mail" => ok_or_error(
            api.send_mail(myelin_module_api::OutgoingMail {
                recipient: s("recipient"),
                subject: s("subject"),
                html: s("html"),
                text: s("text"),
            })
            .await
            .map(|_| Value::Null),
        ),
        "get_threepids_for_user" => ok_or_error(api.get_threepids_for_user(&s("user_id")).await.map(|rows| {
            json!(
                rows.into_iter()
                    .map(|(medium, address, validated_at, added_at)| json!({"medium": medium, "address": address,
                    "validated_at": validated_at, "added_at": added_at}))
                    .collect::<Vec<_>>()
            )
        })),
        "add_email_to_user" => {
            ok_or_error(api.add_email_to_user(&s("user_id"), &s("email")).await.map(|_| Value::Null))
        }
        "register_device" => ok_or_error(
            api.register_device(&s("user_id"), a["device_id"].as_str(), a["display_name"].as_str())
                .await
                .map(|(d, t)| json!([d, t])),
        ),
        "set_user_admin" => ok_or_error(
            api.set_user_admin(&s("user_id"), a["admin"].as_bool().unwrap_or(false)).await.map(|_| Value::Null),
        ),
        "set_displayname" => {
            ok_or_error(api.set_displayname(&s("user_id"), &s("displayname")).await.map(|_| Value::Null))
        }
        "room_is_public" => ok_or_error(
            api.public_room_list_manager().room_is_in_public_room_list(&s("room_id")).await.map(Value::Bool),
        ),
        "set_room_public" => {
            let m = api.public_room_list_manager();
            let r = if a["public"].as_bool().unwrap_or(false) {
                m.add_room_to_public_room_list(&s("room_id")).await
            } else {
                m.remove_room_from_public_room_list(&s("room_id")).await
            };
            ok_or_error(r.map(|_| Value::Null))
        }
        "http" => {
            let body = if a.get("body").is_some() { a["body"].to_string().into_bytes() } else { Vec::new() };
            let mut headers: Vec<(String, String)> = a["headers"]
                .as_array()
                .map(|h| {
                    h.iter().filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned()))).collect()
                })
                .unwrap_or_default();
            if !body.is_empty() {
                headers.push(("Content-Type".into(), "application/json".into()));
            }
            let request = myelin_module_api::http::HttpRequest { method: s("method"), url: s("url"), headers, body };
            match api.http_client().request(request).await {
                Ok(r) if (200..300).contains(&r.status) => match serde_json::from_slice::<Value>(&r.body) {
                    Ok(v) => json!({"ok": v}),
                    Err(e) => json!({"exception": format!("invalid JSON in response: {e}")}),
                },
                Ok(r) => {
                    json!({"http_status": r.status, "body": base64::engine::general_purpose::STANDARD.encode(&r.body)})
                }
                Err(e) => json!({"exception": e.to_string()}),
            }
        }
        other => {
            json!({"error": {"status": 500, "errcode": "M_UNKNOWN", "message": format!("unknown operation {other}")}})
        }
    }
}
