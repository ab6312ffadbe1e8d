//! Queries between servers: profiles, room aliases, device lists and end-to-end keys, both
//! as the server asked (`/_matrix/federation/v1/query/*`, `/user/*`) and as the client-facing
//! side that asks another server for its users and aliases.

use std::collections::BTreeMap;
use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::remote_keys::REMOTE_TIMEOUT;
use crate::server::url_encode;
use crate::{Error, Homeserver, Result};

/// A user ID of this server, or 400/404.
fn local(hs: &Homeserver, user_id: &str) -> Result<ruma::OwnedUserId> {
    let user = ruma::OwnedUserId::try_from(user_id)
        .map_err(|_| Error::invalid_param(format!("Invalid user ID: {user_id}")))?;
    if !hs.is_mine(&user) {
        return Err(Error::invalid_param(format!("{user_id} is not a user of this server")));
    }
    Ok(user)
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').filter_map(|p| p.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| percent_decode(v))
}

/// Decodes `%XX` escapes (and `+`) of a query value; bytes that do not decode stay as they are.
pub fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Homeserver {
    /// `GET /_matrix/federation/v1/query/profile?user_id=..&field=..`.
    pub async fn federation_profile(&self, query: &str) -> Result<Value> {
        let user_id = query_value(query, "user_id")
            .ok_or_else(|| Error::new(crate::ErrorKind::MissingParam, "Missing user_id"))?;
        local(self, &user_id)?;
        let mut profile = self.get_profile(&user_id).await?;
        if let Some(field) = query_value(query, "field") {
            profile.retain(|k, _| *k == field);
        }
        Ok(Value::Object(profile))
    }

    /// `GET /_matrix/federation/v1/query/directory?room_alias=..`.
    pub async fn federation_directory(&self, query: &str) -> Result<Value> {
        let alias = query_value(query, "room_alias")
            .ok_or_else(|| Error::new(crate::ErrorKind::MissingParam, "Missing room_alias"))?;
        if !alias.ends_with(&format!(":{}", self.server_name())) {
            return Err(Error::not_found("Room alias not found"));
        }
        let (room_id, servers) = self.resolve_alias(&alias).await?;
        Ok(json!({"room_id": room_id, "servers": servers}))
    }

    /// `GET /_matrix/federation/v1/user/devices/{userId}`.
    pub async fn federation_user_devices(&self, user_id: &str) -> Result<Value> {
        let user = local(self, user_id)?;
        let u = user.to_string();
        let (keys, devices, cross) =
            self.db(move |s| Ok((s.device_keys(&u)?, s.get_devices(&u)?, s.cross_signing_keys(&u)?))).await?;
        let list: Vec<Value> = devices
            .iter()
            .map(|d| {
                let mut entry = json!({"device_id": d.device_id});
                if let Some(k) = keys
                    .iter()
                    .find(|(id, _)| *id == d.device_id)
                    .and_then(|(_, j)| serde_json::from_str::<Value>(j).ok())
                {
                    entry["keys"] = k;
                }
                if let Some(name) = &d.display_name {
                    entry["device_display_name"] = json!(name);
                }
                entry
            })
            .collect();
        // The user's latest change: the `prev_id` the next `m.device_list_update` will name.
        let u = user.to_string();
        let stream_id = self.db(move |s| s.device_list_change_before(&u, i64::MAX)).await?.unwrap_or(0);
        let mut out = json!({"user_id": user, "stream_id": stream_id, "devices": list});
        for (kind, json) in cross {
            let Ok(key) = serde_json::from_str::<Value>(&json) else { continue };
            match kind.as_str() {
                "master" => out["master_key"] = key,
                "self_signing" => out["self_signing_key"] = key,
                _ => {}
            }
        }
        Ok(out)
    }

    /// `POST /_matrix/federation/v1/user/keys/query`: local users' device and cross-signing keys
    /// (never the user-signing key).
    pub async fn federation_keys_query(&self, body: &Value) -> Result<Value> {
        let wanted = body["device_keys"].as_object().ok_or_else(|| Error::bad_json("device_keys must be an object"))?;
        let mut device_keys = Map::new();
        let (mut master, mut self_signing) = (Map::new(), Map::new());
        for (user_id, devices) in wanted {
            if local(self, user_id).is_err() {
                continue;
            }
            let only: HashSet<String> = devices
                .as_array()
                .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            device_keys.insert(user_id.clone(), Value::Object(self.user_device_keys(user_id, &only).await?));
            let u = user_id.clone();
            for (kind, json) in self.db(move |s| s.cross_signing_keys(&u)).await? {
                let Ok(key) = serde_json::from_str::<Value>(&json) else { continue };
                match kind.as_str() {
                    "master" => master.insert(user_id.clone(), key),
                    "self_signing" => self_signing.insert(user_id.clone(), key),
                    _ => None,
                };
            }
        }
        Ok(json!({"device_keys": device_keys, "master_keys": master, "self_signing_keys": self_signing}))
    }

    /// `POST /_matrix/federation/v1/user/keys/claim`.
    pub async fn federation_keys_claim(&self, body: &Value) -> Result<Value> {
        let wanted =
            body["one_time_keys"].as_object().ok_or_else(|| Error::bad_json("one_time_keys must be an object"))?;
        let local_only: Map<String, Value> =
            wanted.iter().filter(|(u, _)| local(self, u).is_ok()).map(|(u, d)| (u.clone(), d.clone())).collect();
        let claimed = self.claim_keys(json!({"one_time_keys": local_only})).await?;
        Ok(json!({"one_time_keys": claimed["one_time_keys"]}))
    }

    /// A remote user's profile, from their server.
    pub(crate) async fn remote_profile(&self, user_id: &str) -> Result<Map<String, Value>> {
        let user = ruma::OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
        let path = format!("/_matrix/federation/v1/query/profile?user_id={}", url_encode(user.as_str()));
        let answer = self
            .federation
            .client
            .request(&self.key, self.server_name(), user.server_name().as_str(), "GET", &path, None, REMOTE_TIMEOUT)
            .await
            .map_err(|e| e.into_error("profile query"))?;
        let mut out = Map::new();
        for key in ["displayname", "avatar_url"] {
            if let Some(v @ Value::String(_)) = answer.get(key) {
                out.insert(key.to_owned(), v.clone());
            }
        }
        Ok(out)
    }

    /// A remote alias, from its server: `(room_id, servers)`.
    pub(crate) async fn remote_alias(&self, alias: &str, server: &str) -> Result<(String, Vec<String>)> {
        let path = format!("/_matrix/federation/v1/query/directory?room_alias={}", url_encode(alias));
        let answer = self
            .federation
            .client
            .request(&self.key, self.server_name(), server, "GET", &path, None, REMOTE_TIMEOUT)
            .await
            .map_err(|e| e.into_error("alias query"))?;
        let room_id = answer["room_id"].as_str().ok_or_else(|| Error::not_found("Room alias not found"))?.to_owned();
        let servers = answer["servers"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        Ok((room_id, servers))
    }

    /// Keys of remote users, server by server (`wanted`: user -> devices, grouped by server).
    /// Each server's answer is merged into `into` (`device_keys`, `master_keys`,
    /// `self_signing_keys`); a server that fails is listed under `failures`.
    pub(crate) async fn remote_keys_query(&self, wanted: BTreeMap<String, Map<String, Value>>, into: &mut Value) {
        let sections = ["device_keys", "master_keys", "self_signing_keys"];
        self.ask_each_server(wanted, "/_matrix/federation/v1/user/keys/query", "device_keys", &sections, into).await
    }

    /// One-time keys of remote users' devices, server by server, merged as
    /// [`Homeserver::remote_keys_query`] does.
    pub(crate) async fn remote_keys_claim(&self, wanted: BTreeMap<String, Map<String, Value>>, into: &mut Value) {
        let path = "/_matrix/federation/v1/user/keys/claim";
        self.ask_each_server(wanted, path, "one_time_keys", &["one_time_keys"], into).await
    }

    /// POSTs `{field: users}` to each server at once and merges the `sections` of each answer
    /// into `into`, keeping only that server's users; failures go under `failures`.
    async fn ask_each_server(
        &self,
        wanted: BTreeMap<String, Map<String, Value>>,
        path: &str,
        field: &str,
        sections: &[&str],
        into: &mut Value,
    ) {
        let calls = wanted.into_iter().map(|(server, users)| async move {
            let body = json!({ field: users });
            let answer = self
                .federation
                .client
                .request(&self.key, self.server_name(), &server, "POST", path, Some(&body), REMOTE_TIMEOUT)
                .await;
            (server, answer)
        });
        for (server, answer) in futures::future::join_all(calls).await {
            match answer {
                Ok(a) => {
                    for section in sections {
                        for (user, v) in a[*section].as_object().into_iter().flatten() {
                            if user.ends_with(&format!(":{server}")) {
                                into[*section][user] = v.clone();
                            }
                        }
                    }
                }
                Err(e) => {
                    into["failures"][&server] = json!({"status": 503, "message": e.into_error(path).message});
                }
            }
        }
    }
}

impl Homeserver {
    /// The other servers sharing a room with `user`.
    pub(crate) async fn servers_sharing_rooms(&self, user: &str) -> Result<Vec<String>> {
        let u = user.to_owned();
        let users = self.db(move |s| s.users_sharing_rooms(&u)).await?;
        let servers: std::collections::BTreeSet<String> = users
            .iter()
            .filter_map(|u| u.split_once(':').map(|(_, s)| s.to_owned()))
            .filter(|s| s != self.server_name())
            .collect();
        Ok(servers.into_iter().collect())
    }

    /// A local user's device list changed (keys uploaded, signed or deleted): servers sharing a
    /// room with them hear of it (`m.device_list_update`) and ask again for the keys.
    pub(crate) async fn announce_device_change(&self, user: &str, device: &str, stream_id: i64) {
        let Ok(servers) = self.servers_sharing_rooms(user).await else { return };
        if servers.is_empty() {
            return;
        }
        let u = user.to_owned();
        let keys = self
            .db(move |s| s.device_keys(&u))
            .await
            .ok()
            .and_then(|k| k.into_iter().find(|(d, _)| d == device))
            .and_then(|(_, j)| serde_json::from_str::<Value>(&j).ok());
        // `prev_id`: the user's change before this one, so a server that missed it resyncs.
        let u = user.to_owned();
        let previous = self.db(move |s| s.device_list_change_before(&u, stream_id)).await.ok().flatten();
        let mut content = json!({
            "user_id": user, "device_id": device, "stream_id": stream_id,
            "prev_id": previous.into_iter().collect::<Vec<i64>>(), "deleted": keys.is_none(),
        });
        if let Some(k) = keys {
            content["keys"] = k;
        }
        self.queue_edu(servers, json!({"edu_type": "m.device_list_update", "content": content})).await;
    }

    /// To-device messages for users of other servers: one `m.direct_to_device` EDU per server.
    pub(crate) async fn send_remote_to_device(
        &self,
        sender: &str,
        event_type: &str,
        message_id: &str,
        by_server: BTreeMap<String, Map<String, Value>>,
    ) {
        for (server, messages) in by_server {
            let edu = json!({"edu_type": "m.direct_to_device", "content": {
                "sender": sender, "type": event_type, "message_id": message_id, "messages": messages,
            }});
            self.queue_edu(vec![server], edu).await;
        }
    }

    /// An `m.direct_to_device` EDU from `origin`: queued for the local devices it names (`*`
    /// for all of a user's), once per message ID.
    pub(crate) async fn receive_to_device(&self, origin: &str, content: &Value) {
        let (Some(sender), Some(kind), Some(messages)) =
            (content["sender"].as_str(), content["type"].as_str(), content["messages"].as_object())
        else {
            return;
        };
        if sender.split_once(':').map(|(_, s)| s) != Some(origin) {
            return;
        }
        let mut queued = Vec::new();
        for (user_id, by_device) in messages {
            let Ok(user) = ruma::OwnedUserId::try_from(user_id.as_str()) else { continue };
            let Some(by_device) = by_device.as_object() else { continue };
            if !self.is_mine(&user) {
                continue;
            }
            let u = user_id.clone();
            let devices: Vec<String> = self
                .db(move |s| s.get_devices(&u))
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|d| d.device_id)
                .collect();
            for (device, message) in by_device {
                let event = json!({"type": kind, "sender": sender, "content": message}).to_string();
                for d in devices.iter().filter(|d| device == "*" || *d == device) {
                    queued.push((user_id.clone(), d.clone(), event.clone()));
                }
            }
        }
        let message_id = content["message_id"].as_str().unwrap_or_default().to_owned();
        let (u, d) = (sender.to_owned(), format!("federation:{origin}"));
        if let Ok(Some(pos)) = self.db(move |s| s.queue_to_device(&u, &d, &message_id, &queued)).await {
            self.advance_stream(pos);
        }
    }
}
