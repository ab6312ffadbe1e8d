//! Other servers' users' device lists, cached while they share a room with a local user, as
//! Synapse's `DeviceListUpdater` keeps them: the first time a client asks for such a user's
//! keys (or their server announces a change) the whole list is fetched with
//! `GET /_matrix/federation/v1/user/devices/{userId}`; later `m.device_list_update` EDUs apply
//! on top of it when their `prev_id` names the cached stream ID, and trigger a fresh fetch
//! when it does not (an update went missing). `/keys/query` answers from the cache, so keys
//! stay available while the other server is down. The cache of a user is dropped once no
//! local user shares a joined room with them any more: their server stops sending updates.

use std::collections::{BTreeMap, HashSet};

use futures::StreamExt;
use myelin_storage::{RemoteDevice, RemoteDeviceList};
use serde_json::{Map, Value, json};

use super::remote_keys::REMOTE_TIMEOUT;
use crate::Homeserver;
use crate::server::url_encode;

/// More devices than this and the list is not cached (Synapse's limit): each change would
/// rewrite it, and clients of such a user would flood every room's members with updates.
const MAX_CACHED_DEVICES: usize = 1000;

/// How many users' lists one `/keys/query` fetches at once.
const CONCURRENT_RESYNCS: usize = 16;

/// What the cache can say about one remote user for `/keys/query`.
enum CachedAnswer {
    /// The cached (or just fetched) list.
    List(RemoteDeviceList),
    /// The user shares a room with a local user, but their server could not be reached.
    Unreachable(String),
    /// Not tracked (no shared room): ask their server's `/user/keys/query` as for anyone.
    NotTracked,
}

impl Homeserver {
    /// Answers what it can of a `/keys/query` for remote users (`server -> {user: devices}`)
    /// from the device-list cache, into `out`; returns the users it could not answer, to be
    /// asked with `/user/keys/query`.
    pub(crate) async fn answer_from_device_list_cache(
        &self,
        wanted: BTreeMap<String, Map<String, Value>>,
        out: &mut Value,
    ) -> BTreeMap<String, Map<String, Value>> {
        let users: Vec<(String, String, Value)> = wanted
            .into_iter()
            .flat_map(|(server, users)| users.into_iter().map(move |(u, d)| (server.clone(), u, d)))
            .collect();
        let answers: Vec<_> = futures::stream::iter(users)
            .map(|(server, user, devices)| async move {
                let answer = self.cached_device_list(&user).await;
                (server, user, devices, answer)
            })
            .buffer_unordered(CONCURRENT_RESYNCS)
            .collect()
            .await;
        let mut rest: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for (server, user, devices, answer) in answers {
            match answer {
                CachedAnswer::List(list) => {
                    let only: HashSet<&str> =
                        devices.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    write_query_answer(&user, &list, &only, out);
                }
                CachedAnswer::Unreachable(message) => {
                    out["failures"][&server] = json!({"status": 503, "message": message});
                }
                CachedAnswer::NotTracked => {
                    rest.entry(server).or_default().insert(user, devices);
                }
            }
        }
        rest
    }

    /// A remote user's device list: cached, or fetched now if they share a room with a local
    /// user and none is cached.
    async fn cached_device_list(&self, user: &str) -> CachedAnswer {
        let u = user.to_owned();
        match self.db(move |s| s.remote_device_list(&u)).await {
            Ok(Some(list)) => return CachedAnswer::List(list),
            Ok(None) => {}
            Err(e) => return CachedAnswer::Unreachable(e.message),
        }
        if !self.shares_room_with_local_user(user).await {
            return CachedAnswer::NotTracked;
        }
        match self.resync_device_list(user).await {
            Ok(Some(list)) => CachedAnswer::List(list),
            Ok(None) => CachedAnswer::NotTracked,
            Err(message) => CachedAnswer::Unreachable(message),
        }
    }

    /// Whether a local user is in a joined room with `user`: then `user`'s server tells this
    /// one of their device changes, which keeps a cached list current.
    async fn shares_room_with_local_user(&self, user: &str) -> bool {
        let u = user.to_owned();
        let sharing = self.db(move |s| s.users_sharing_rooms(&u)).await.unwrap_or_default();
        let local = format!(":{}", self.server_name());
        sharing.iter().any(|u| u.ends_with(&local))
    }

    /// Fetches a remote user's whole device list from their server and caches it (local users
    /// sharing a room with them hear of the change). `Ok(None)`: fetched but too big to cache.
    async fn resync_device_list(&self, user: &str) -> std::result::Result<Option<RemoteDeviceList>, String> {
        let Some((_, server)) = user.split_once(':') else { return Err(format!("Invalid user ID: {user}")) };
        let path = format!("/_matrix/federation/v1/user/devices/{}", url_encode(user));
        let answer = self
            .federation
            .client
            .request(&self.key, self.server_name(), server, "GET", &path, None, REMOTE_TIMEOUT)
            .await
            .map_err(|e| e.into_error(&path).message)?;
        let Some(list) = parse_user_devices(user, &answer) else {
            tracing::info!(user, devices = answer["devices"].as_array().map(Vec::len), "device list not cached");
            return Ok(None);
        };
        let (u, cached) = (user.to_owned(), list.clone());
        let position = self.db(move |s| s.replace_remote_device_list(&u, &cached)).await.map_err(|e| e.message)?;
        self.advance_stream(position);
        Ok(Some(list))
    }

    /// `m.device_list_update` from `origin` about one of its users: applied to the cached
    /// list when it follows on from it, else the list is fetched again (in the background: the
    /// transaction is not held up by a request back to its sender). Local users sharing a room
    /// with the user see them under `device_lists.changed` either way.
    pub(crate) async fn receive_device_list_update(&self, origin: &str, content: &Value) {
        let (Some(user), Some(device_id)) = (content["user_id"].as_str(), content["device_id"].as_str()) else {
            return;
        };
        if user.split_once(':').map(|(_, s)| s) != Some(origin) || !self.shares_room_with_local_user(user).await {
            return;
        }
        let stream_id = parse_stream_id(&content["stream_id"]);
        let prev_ids: Vec<Option<i64>> =
            content["prev_id"].as_array().into_iter().flatten().map(parse_stream_id).collect();
        let u = user.to_owned();
        let cached = self.db(move |s| s.remote_device_list(&u)).await.ok().flatten();
        // Synapse's rule: a change with no `prev_id`, or one naming a change this server has
        // not seen, means the cached list may have missed something.
        let follows_on = match (&cached, stream_id) {
            (Some(list), Some(_)) => !prev_ids.is_empty() && prev_ids.iter().all(|p| *p == Some(list.stream_id)),
            _ => false,
        };
        if follows_on && let Some(stream_id) = stream_id {
            let device = RemoteDevice {
                device_id: device_id.to_owned(),
                keys: content.get("keys").filter(|k| k.is_object()).map(Value::to_string),
                display_name: content["device_display_name"].as_str().map(str::to_owned),
            };
            let deleted = content["deleted"].as_bool().unwrap_or(false);
            let u = user.to_owned();
            if let Ok(Some(position)) = self.db(move |s| s.update_remote_device(&u, &device, deleted, stream_id)).await
            {
                return self.advance_stream(position);
            }
        }
        self.note_remote_device_change(user).await;
        if let Some(hs) = self.arc() {
            let user = user.to_owned();
            tokio::spawn(async move {
                if let Err(e) = hs.resync_device_list(&user).await {
                    tracing::info!(user, error = %e, "device list resync failed");
                }
            });
        }
    }

    /// `m.signing_key_update` from `origin`: a user's new master or self-signing key, kept
    /// with their cached device list; local users sharing a room query the keys again.
    pub(crate) async fn receive_signing_key_update(&self, origin: &str, content: &Value) {
        let Some(user) = content["user_id"].as_str() else { return };
        if user.split_once(':').map(|(_, s)| s) != Some(origin) {
            return;
        }
        let keys: Vec<(String, String)> = [("master", "master_key"), ("self_signing", "self_signing_key")]
            .into_iter()
            .filter_map(|(kind, field)| {
                content.get(field).filter(|k| k.is_object()).map(|k| (kind.into(), k.to_string()))
            })
            .collect();
        let u = user.to_owned();
        match self.db(move |s| s.update_remote_cross_signing(&u, &keys)).await {
            Ok(Some(position)) => self.advance_stream(position),
            _ => self.note_remote_device_change(user).await,
        }
    }

    /// A remote user's keys changed in a way the cache cannot follow: local clients are told
    /// to query them again.
    async fn note_remote_device_change(&self, user: &str) {
        let u = user.to_owned();
        if let Ok(position) = self.db(move |s| s.note_device_list_change(&u)).await {
            self.advance_stream(position);
        }
    }

    /// After a membership change in `room_id` that can end a sharing (a leave, kick or ban):
    /// the cached device lists of members nobody here shares a room with any more are dropped,
    /// as their server stops sending updates; a later query fetches them again.
    pub(crate) async fn forget_unshared_device_lists(&self, room_id: &str) {
        let room = room_id.to_owned();
        if let Ok(users) = self.db(move |s| s.forget_unshared_remote_device_lists(&room)).await
            && !users.is_empty()
        {
            tracing::debug!(room_id, ?users, "remote device lists no longer tracked");
        }
    }
}

/// A stream ID as servers send it: a number, or (Synapse stores them as text) a numeric string.
fn parse_stream_id(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// A `GET /user/devices` answer as a list to cache; `None` when it has too many devices.
fn parse_user_devices(user: &str, answer: &Value) -> Option<RemoteDeviceList> {
    let devices = answer["devices"].as_array().map(Vec::as_slice).unwrap_or_default();
    if devices.len() > MAX_CACHED_DEVICES {
        return None;
    }
    let devices = devices
        .iter()
        .filter_map(|d| {
            Some(RemoteDevice {
                device_id: d["device_id"].as_str()?.to_owned(),
                keys: d.get("keys").filter(|k| k.is_object()).map(Value::to_string),
                display_name: d["device_display_name"].as_str().map(str::to_owned),
            })
        })
        .collect();
    let cross_signing = [("master", "master_key"), ("self_signing", "self_signing_key")]
        .into_iter()
        .filter_map(|(kind, field)| {
            let key = answer.get(field).filter(|k| k.is_object())?;
            // Only the user's own keys: a server answers for its users and nobody else.
            (key["user_id"].as_str().is_none_or(|u| u == user)).then(|| (kind.to_owned(), key.to_string()))
        })
        .collect();
    Some(RemoteDeviceList { stream_id: parse_stream_id(&answer["stream_id"]).unwrap_or(0), devices, cross_signing })
}

/// Writes a cached list into a `/keys/query` answer: the devices asked for (all when `only`
/// is empty) that have keys, their names under `unsigned`, and the cross-signing keys.
fn write_query_answer(user: &str, list: &RemoteDeviceList, only: &HashSet<&str>, out: &mut Value) {
    let mut devices = Map::new();
    for d in &list.devices {
        if !only.is_empty() && !only.contains(d.device_id.as_str()) {
            continue;
        }
        let Some(Ok(Value::Object(mut keys))) = d.keys.as_deref().map(serde_json::from_str::<Value>) else {
            continue;
        };
        let unsigned = keys.entry("unsigned").or_insert_with(|| json!({}));
        if let (Some(name), Some(unsigned)) = (&d.display_name, unsigned.as_object_mut()) {
            unsigned.insert("device_display_name".into(), json!(name));
        }
        devices.insert(d.device_id.clone(), Value::Object(keys));
    }
    out["device_keys"][user] = Value::Object(devices);
    for (kind, json) in &list.cross_signing {
        let section = match kind.as_str() {
            "master" => "master_keys",
            "self_signing" => "self_signing_keys",
            _ => continue,
        };
        if let Ok(key) = serde_json::from_str::<Value>(json) {
            out[section][user] = key;
        }
    }
}
