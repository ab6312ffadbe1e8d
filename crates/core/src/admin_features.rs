//! Smaller parts of Synapse's admin API: per-user experimental features, letting a user replace
//! their cross-signing master key without user-interactive auth, account validity renewal (as
//! Synapse answers when account validity is off), the admin's `/context`, the largest rooms by
//! database size, and purging the cache of other servers' media.

use serde_json::{Map, Value, json};

use crate::rooms::{MessagesPage, Pagination};
use crate::server::now_ms;
use crate::visibility::Reader;
use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// Synapse's per-user experimental features (`ExperimentalFeature`).
const EXPERIMENTAL_FEATURES: &[&str] = &["msc3881", "msc3575", "msc4222"];
/// The `TransientStore` kind holding a user's experimental features (never expiring).
const EXPERIMENTAL_FEATURES_KIND: &str = "experimental_features";
/// The `TransientStore` kind of "may replace the master key without UIA until" marks.
pub(crate) const MASTER_KEY_REPLACEABLE: &str = "master_key_replaceable_without_uia";
/// How long that lasts (Synapse's `REPLACEMENT_PERIOD_MS`, 10 minutes).
const REPLACEMENT_PERIOD_MS: i64 = 10 * 60 * 1000;

impl Homeserver {
    async fn stored_features(&self, user: &str) -> Result<Map<String, Value>> {
        let u = user.to_owned();
        let stored = self.db(move |s| s.get_transient(EXPERIMENTAL_FEATURES_KIND, &u, now_ms())).await?;
        Ok(stored.and_then(|v| serde_json::from_str::<Map<String, Value>>(&v).ok()).unwrap_or_default())
    }

    /// `GET /_synapse/admin/v1/experimental_features/{userId}`: every feature, on or off.
    pub async fn admin_experimental_features(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let user = crate::admin::parse_local_user(
            self,
            user_id,
            "User must be local to check what experimental features are enabled.",
        )?;
        let stored = self.stored_features(user.as_str()).await?;
        let features: Map<String, Value> = EXPERIMENTAL_FEATURES
            .iter()
            .map(|f| ((*f).to_owned(), json!(stored.get(*f).and_then(Value::as_bool).unwrap_or(false))))
            .collect();
        Ok(json!({"features": features}))
    }

    /// `PUT /_synapse/admin/v1/experimental_features/{userId}` `{"features": {name: bool}}`.
    pub async fn admin_set_experimental_features(
        &self,
        requester: &Requester,
        user_id: &str,
        body: &Value,
    ) -> Result<()> {
        self.require_admin(requester)?;
        let user =
            crate::admin::parse_local_user(self, user_id, "User must be local to enable experimental features.")?;
        let features = match body.get("features") {
            Some(Value::Object(f)) if !f.is_empty() => f,
            _ => return Err(Error::new(ErrorKind::BadRequest, "You must provide features to set.")),
        };
        let mut stored = self.stored_features(user.as_str()).await?;
        for (name, enabled) in features {
            if !EXPERIMENTAL_FEATURES.contains(&name.as_str()) {
                return Err(Error::new(
                    ErrorKind::BadRequest,
                    format!("'{name}' is not recognised as a valid experimental feature."),
                ));
            }
            stored.insert(name.clone(), json!(enabled.as_bool().unwrap_or(false)));
        }
        let (u, value) = (user.to_string(), Value::Object(stored).to_string());
        self.db(move |s| s.put_transient(EXPERIMENTAL_FEATURES_KIND, &u, &value, i64::MAX)).await?;
        tracing::info!(target: "myelin::audit", admin = %requester.user_id, target_user = %user, "set experimental features");
        Ok(())
    }

    /// `POST /_synapse/admin/v1/users/{userId}/_allow_cross_signing_replacement_without_uia`:
    /// for ten minutes the user may upload a new master key without their password (Synapse's
    /// way for a user who lost it and logs in through SSO).
    pub async fn admin_allow_master_key_replacement(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let u = user_id.to_owned();
        let keys = self.db(move |s| s.cross_signing_keys(&u)).await?;
        if !keys.iter().any(|(kind, _)| kind == "master") {
            return Err(Error::not_found("User has no master cross-signing key"));
        }
        let until = now_ms() + REPLACEMENT_PERIOD_MS;
        let (u, value) = (user_id.to_owned(), until.to_string());
        self.db(move |s| s.put_transient(MASTER_KEY_REPLACEABLE, &u, &value, until)).await?;
        tracing::info!(target: "myelin::audit", admin = %requester.user_id, target_user = user_id, "allow master key replacement without UIA");
        Ok(json!({"updatable_without_uia_before_ms": until}))
    }

    /// Whether an admin let `user` replace their master key without UIA, and that time is not up.
    pub(crate) async fn master_key_replaceable_without_uia(&self, user: &str) -> Result<bool> {
        let u = user.to_owned();
        Ok(self.db(move |s| s.get_transient(MASTER_KEY_REPLACEABLE, &u, now_ms())).await?.is_some())
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/context/{eventId}`: `/context` without the
    /// membership and history-visibility checks.
    pub async fn admin_room_context(
        &self,
        requester: &Requester,
        room_id: &str,
        event_id: &str,
        limit: usize,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let room = ruma::OwnedRoomId::try_from(room_id).map_err(|_| Error::not_found("Room not found"))?;
        let event = self
            .client_events(vec![event_id.to_owned()])
            .await?
            .into_iter()
            .next()
            .filter(|e| e["room_id"] == room_id)
            .ok_or_else(|| Error::not_found("Event not found."))?;
        let id = event_id.to_owned();
        let pos =
            self.db(move |s| s.stream_of_event(&id)).await?.ok_or_else(|| Error::not_found("Event not found."))?;
        let limit = limit.min(100);
        let (before_limit, after_limit) = (limit / 2, limit - limit / 2);
        let from = format!("t{pos}");
        let user = requester.user_id.as_str();
        let room = &room;
        let side = |backwards: bool, n: usize| {
            let from = from.clone();
            async move {
                if n == 0 {
                    return Ok::<MessagesPage, Error>(MessagesPage {
                        chunk: Vec::new(),
                        start: from.clone(),
                        end: Some(from),
                        state: Vec::new(),
                    });
                }
                let page = Pagination { from: Some(&from), to: None, backwards, limit: n, filter: None };
                self.page_events(user, room, Reader::ADMIN, page).await
            }
        };
        let before = side(true, before_limit).await?;
        let after = side(false, after_limit).await?;
        let state = self.admin_room_state(requester, room_id).await?["state"].take();
        Ok(json!({
            "event": event,
            "events_before": before.chunk,
            "events_after": after.chunk,
            "start": before.end.unwrap_or_else(|| format!("t{pos}")),
            "end": after.end.unwrap_or_else(|| format!("t{}", *self.sync.stream.borrow())),
            "state": state,
        }))
    }

    /// `GET /_synapse/admin/v1/statistics/database/rooms`: the rooms taking the most database
    /// space. Synapse answers it only on PostgreSQL (400 on SQLite), and so does Myelin.
    pub async fn admin_largest_rooms(&self, requester: &Requester) -> Result<Value> {
        self.require_admin(requester)?;
        if !matches!(self.config.database, crate::config::Database::Postgres(_)) {
            return Err(Error::new(ErrorKind::BadRequest, "Endpoint requires using PostgreSQL"));
        }
        let rooms = self.db(|s| s.largest_rooms(10)).await?;
        let rooms: Vec<Value> =
            rooms.into_iter().map(|(room_id, size)| json!({"room_id": room_id, "estimated_size": size})).collect();
        Ok(json!({"rooms": rooms}))
    }

    /// `POST /_synapse/admin/v1/purge_media_cache?before_ts=`: other servers' files cached here
    /// and not served since `before_ts` are deleted (with their thumbnails); they are fetched
    /// again if asked for.
    pub async fn admin_purge_media_cache(&self, requester: &Requester, before_ts: Option<i64>) -> Result<Value> {
        self.require_admin(requester)?;
        let before_ts = crate::media_admin::before_ts_param(before_ts)?;
        let store = self.config.media_store_path.clone();
        let deleted = tokio::task::spawn_blocking(move || purge_remote_cache(&store, before_ts))
            .await
            .map_err(Error::internal)?;
        tracing::info!(target: "myelin::audit", admin = %requester.user_id, deleted, before_ts, "purge media cache");
        Ok(json!({"deleted": deleted}))
    }
}

/// Walks `remote_content`: each cached file whose metadata file was last touched (written, or
/// served: see `federation::media`) before `before_ts` goes, with its thumbnails.
fn purge_remote_cache(media_store: &std::path::Path, before_ts: i64) -> u64 {
    let mut deleted = 0;
    let mut dirs = vec![media_store.join("remote_content")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "meta") {
                continue;
            }
            let touched = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64);
            if touched >= before_ts {
                continue;
            }
            let meta: Value =
                std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
            if let Some(key) = meta["key"].as_str()
                && !key.is_empty()
            {
                let _ = std::fs::remove_dir_all(crate::media::local_thumbnails_dir(media_store, key));
            }
            let _ = std::fs::remove_file(path.with_extension(""));
            if std::fs::remove_file(&path).is_ok() {
                deleted += 1;
            }
        }
    }
    deleted
}
