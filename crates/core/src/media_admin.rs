//! Synapse's media admin API: media details, quarantine (by ID, by uploader, by room) and its
//! release, protection from quarantine, deletion (by ID, by age and size, by uploader), and a
//! user's uploads listed. Quarantined media is served to nobody (404, as Synapse), locally or
//! over federation; protected media is never quarantined. Every change is audited.

use serde_json::{Value, json};

use crate::admin::audit;
use crate::media::{local_content_path, local_thumbnails_dir, valid_media_id};
use crate::{Error, ErrorKind, Homeserver, Requester, Result};
use myelin_storage::QuarantineTarget;

/// A user's media listing's parameters (`GET /_synapse/admin/v1/users/{userId}/media`).
#[derive(Debug, Clone, Default)]
pub struct UserMediaParams {
    /// `from` (default 0).
    pub from: Option<i64>,
    /// `limit` (default 100).
    pub limit: Option<i64>,
    /// `order_by` (default `created_ts`, newest first when neither it nor `dir` is given).
    pub order_by: Option<String>,
    /// `f` or `b`.
    pub dir: Option<String>,
}

fn unknown_media() -> Error {
    Error::not_found("Unknown media")
}

/// The `mxc://server/id` URIs in an event's `content.url` and `content.info.thumbnail_url`
/// (what Synapse counts as a room's media).
fn event_media(json: &str) -> Vec<(String, String)> {
    let Ok(event) = serde_json::from_str::<Value>(json) else { return Vec::new() };
    let content = &event["content"];
    [&content["url"], &content["info"]["thumbnail_url"]]
        .into_iter()
        .filter_map(Value::as_str)
        .filter_map(|url| url.strip_prefix("mxc://")?.split_once('/'))
        .filter(|(server, id)| !server.is_empty() && !id.is_empty() && !id.contains('/'))
        .map(|(server, id)| (server.to_owned(), id.to_owned()))
        .collect()
}

impl Homeserver {
    /// The media index's key of `server`'s `media_id` (remote files are kept under their own
    /// keys); 404 for IDs Myelin would never have stored.
    pub(crate) fn media_key(&self, server: &str, media_id: &str) -> Result<String> {
        if !valid_media_id(media_id) {
            return Err(unknown_media());
        }
        Ok(if server == self.server_name() {
            media_id.to_owned()
        } else {
            crate::federation::media::remote_media_key(server, media_id)
        })
    }

    /// Whether an admin quarantined this media (so it is served to nobody).
    pub(crate) async fn is_quarantined(&self, key: &str) -> Result<bool> {
        let k = key.to_owned();
        Ok(self.db(move |s| s.media_moderation(&k)).await?.is_some_and(|m| m.quarantined_by.is_some()))
    }

    /// `GET /_synapse/admin/v1/media/{serverName}/{mediaId}`.
    pub async fn admin_media_info(&self, requester: &Requester, server: &str, media_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let key = self.media_key(server, media_id)?;
        let k = key.clone();
        let (row, moderation) = self.db(move |s| Ok((s.get_media(&k)?, s.media_moderation(&k)?))).await?;
        let (Some(row), Some(moderation)) = (row, moderation) else { return Err(unknown_media()) };
        let local = server == self.server_name();
        Ok(json!({"media_info": {
            "media_origin": if local { Value::Null } else { json!(server) },
            "user_id": if local { json!(row.user_id) } else { Value::Null },
            "media_id": media_id,
            "media_type": row.content_type,
            "media_length": row.length,
            "upload_name": row.upload_name,
            "created_ts": row.created_ts,
            "filesystem_id": if local { Value::Null } else { json!(media_id) },
            "url_cache": null,
            "last_access_ts": null,
            "quarantined_by": moderation.quarantined_by,
            "authenticated": null,
            "safe_from_quarantine": if local { json!(moderation.safe_from_quarantine) } else { Value::Null },
            "sha256": null,
        }}))
    }

    /// `POST /_synapse/admin/v1/media/quarantine|unquarantine/{serverName}/{mediaId}`: `{}`,
    /// whether or not the media is known (Synapse).
    pub async fn admin_quarantine_media(
        &self,
        requester: &Requester,
        server: &str,
        media_id: &str,
        quarantine: bool,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let Ok(key) = self.media_key(server, media_id) else { return Ok(json!({})) };
        let by = quarantine.then(|| requester.user_id.to_string());
        let target = QuarantineTarget {
            key,
            origin: (server != self.server_name()).then(|| server.to_owned()),
            media_id: media_id.to_owned(),
        };
        self.db(move |s| s.quarantine_media(&[target], by.as_deref())).await?;
        audit!(
            requester,
            if quarantine { "quarantine media" } else { "unquarantine media" },
            format!("{server}/{media_id}")
        );
        Ok(json!({}))
    }

    /// `GET /_synapse/admin/v1/media/quarantine_changes?from=`: the quarantine changes after
    /// `from`, a hundred at a time, with `next_batch` to go on from (Synapse's stream).
    pub async fn admin_quarantine_changes(&self, requester: &Requester, from: Option<i64>) -> Result<Value> {
        self.require_admin(requester)?;
        let from = from.unwrap_or(0);
        let (changes, max) = self.db(move |s| s.quarantine_changes(from, 100)).await?;
        if from > max {
            return Err(Error::invalid_param(
                "The `from` token is considered invalid because it includes stream positions greater than the \
                 furthest persisted position across all of the workers.",
            ));
        }
        let next_batch = changes.last().map_or(max, |c| c.stream_id);
        let me = self.server_name();
        let changes: Vec<Value> = changes
            .iter()
            .map(|c| json!({"origin": c.origin.as_deref().unwrap_or(me), "media_id": c.media_id, "quarantined": c.quarantined}))
            .collect();
        Ok(json!({"next_batch": next_batch, "changes": changes}))
    }

    /// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`: every upload of the user.
    pub async fn admin_quarantine_user_media(&self, requester: &Requester, user_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let (u, by) = (user_id.to_owned(), requester.user_id.to_string());
        let count = self
            .db(move |s| {
                let targets: Vec<QuarantineTarget> = s
                    .media_of_user(&u)?
                    .into_iter()
                    .map(|(m, _)| QuarantineTarget { key: m.media_id.clone(), origin: None, media_id: m.media_id })
                    .collect();
                s.quarantine_media(&targets, Some(&by))
            })
            .await?;
        audit!(requester, "quarantine user media", user_id);
        Ok(json!({"num_quarantined": count}))
    }

    /// Every `mxc://` URI a room's events name, local and remote, in order.
    async fn room_media(&self, room_id: &str) -> Result<(Vec<String>, Vec<(String, String)>)> {
        let r = room_id.to_owned();
        if self.db(move |s| s.get_room(&r)).await?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        let (mut local, mut remote) = (Vec::new(), Vec::new());
        let mut from = i64::MIN;
        loop {
            let r = room_id.to_owned();
            let page = self.db(move |s| s.room_events(&r, from, i64::MAX, false, 500)).await?;
            let Some(last) = page.last() else { break };
            from = last.stream_ordering;
            for event in &page {
                for (server, id) in event_media(&event.json) {
                    if server == self.server_name() {
                        if !local.contains(&id) {
                            local.push(id);
                        }
                    } else if !remote.contains(&(server.clone(), id.clone())) {
                        remote.push((server, id));
                    }
                }
            }
        }
        Ok((local, remote))
    }

    /// `GET /_synapse/admin/v1/room/{roomId}/media`: `{local, remote}` as `mxc://` URIs.
    pub async fn admin_list_room_media(&self, requester: &Requester, room_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let (local, remote) = self.room_media(room_id).await?;
        let me = self.server_name();
        Ok(json!({
            "local": local.iter().map(|id| format!("mxc://{me}/{id}")).collect::<Vec<_>>(),
            "remote": remote.iter().map(|(server, id)| format!("mxc://{server}/{id}")).collect::<Vec<_>>(),
        }))
    }

    /// `POST /_synapse/admin/v1/room/{roomId}/media/quarantine`: every file the room's events
    /// name (that this server keeps).
    pub async fn admin_quarantine_room_media(&self, requester: &Requester, room_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        let (local, remote) = self.room_media(room_id).await?;
        let mut keys: Vec<QuarantineTarget> = local
            .into_iter()
            .filter(|id| valid_media_id(id))
            .map(|id| QuarantineTarget { key: id.clone(), origin: None, media_id: id })
            .collect();
        keys.extend(remote.into_iter().filter(|(_, id)| valid_media_id(id)).map(|(server, id)| QuarantineTarget {
            key: crate::federation::media::remote_media_key(&server, &id),
            origin: Some(server),
            media_id: id,
        }));
        let by = requester.user_id.to_string();
        let count = self.db(move |s| s.quarantine_media(&keys, Some(&by))).await?;
        audit!(requester, "quarantine room media", room_id);
        Ok(json!({"num_quarantined": count}))
    }

    /// `POST /_synapse/admin/v1/media/protect|unprotect/{mediaId}`: `{}` (404 for unknown
    /// media).
    pub async fn admin_protect_media(&self, requester: &Requester, media_id: &str, protect: bool) -> Result<Value> {
        self.require_admin(requester)?;
        let id = media_id.to_owned();
        if !self.db(move |s| s.protect_media(&id, protect)).await? {
            return Err(unknown_media());
        }
        audit!(requester, if protect { "protect media" } else { "unprotect media" }, media_id);
        Ok(json!({}))
    }

    /// Deletes local media: files, thumbnails and index rows. Returns the IDs deleted.
    async fn delete_local_media(&self, ids: Vec<String>) -> Result<Vec<String>> {
        let mut deleted = Vec::new();
        for id in ids {
            if !valid_media_id(&id) {
                continue;
            }
            let _ = tokio::fs::remove_file(local_content_path(&self.config.media_store_path, &id)).await;
            let _ = tokio::fs::remove_dir_all(local_thumbnails_dir(&self.config.media_store_path, &id)).await;
            let i = id.clone();
            self.db(move |s| s.delete_media(&i)).await?;
            deleted.push(id);
        }
        Ok(deleted)
    }

    /// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`: local media only.
    pub async fn admin_delete_media(&self, requester: &Requester, server: &str, media_id: &str) -> Result<Value> {
        self.require_admin(requester)?;
        if server != self.server_name() {
            return Err(Error::new(ErrorKind::BadRequest, "Can only delete local media"));
        }
        let id = media_id.to_owned();
        if !valid_media_id(media_id) || self.db(move |s| s.get_media(&id)).await?.is_none() {
            return Err(unknown_media());
        }
        let deleted = self.delete_local_media(vec![media_id.to_owned()]).await?;
        audit!(requester, "delete media", media_id);
        Ok(json!({"deleted_media": deleted, "total": deleted.len()}))
    }

    /// `POST /_synapse/admin/v1/media/delete?before_ts=&size_gt=&keep_profiles=` (and the
    /// legacy `/media/{serverName}/delete`): local uploads older and larger than given, neither
    /// quarantined nor protected, and (with `keep_profiles`, the default) no user's avatar.
    pub async fn admin_delete_old_media(
        &self,
        requester: &Requester,
        server: Option<&str>,
        before_ts: Option<i64>,
        size_gt: Option<i64>,
        keep_profiles: bool,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let before_ts = before_ts_param(before_ts)?;
        let size_gt = size_gt.unwrap_or(0);
        if size_gt < 0 {
            return Err(Error::invalid_param(
                "Query parameter size_gt must be a string representing a positive integer.",
            ));
        }
        if server.is_some_and(|s| s != self.server_name()) {
            return Err(Error::new(ErrorKind::BadRequest, "Can only delete local media"));
        }
        let (candidates, avatars) =
            self.db(move |s| Ok((s.local_media_before(before_ts, size_gt)?, s.profile_avatar_urls()?))).await?;
        let me = self.server_name();
        let ids: Vec<String> = candidates
            .into_iter()
            .map(|m| m.media_id)
            .filter(|id| !keep_profiles || !avatars.iter().any(|a| *a == format!("mxc://{me}/{id}")))
            .collect();
        let deleted = self.delete_local_media(ids).await?;
        audit!(requester, "delete old media", format!("before {before_ts}, over {size_gt} bytes"));
        Ok(json!({"deleted_media": deleted, "total": deleted.len()}))
    }

    /// A local user's uploads, ordered and paged as Synapse's `get_local_media_by_user_paginate`.
    async fn user_media_page(&self, user_id: &str, params: &UserMediaParams) -> Result<(Vec<Value>, usize)> {
        let user = ruma::UserId::parse(user_id)
            .ok()
            .filter(|u| self.is_mine(u))
            .ok_or_else(|| Error::new(ErrorKind::BadRequest, "Can only look up local users"))?;
        let u = user.to_string();
        if self.db(move |s| s.get_user(&u)).await?.is_none() {
            return Err(Error::not_found("Unknown user"));
        }
        let from = params.from.unwrap_or(0);
        let limit = params.limit.unwrap_or(100);
        if from < 0 {
            return Err(Error::invalid_param("Query parameter from must be a string representing a positive integer."));
        }
        if limit < 0 {
            return Err(Error::invalid_param(
                "Query parameter limit must be a string representing a positive integer.",
            ));
        }
        // Newest first unless the caller chose an order (Synapse's backward compatibility).
        let (order_by, forwards) = match (&params.order_by, &params.dir) {
            (None, None) => ("created_ts".to_owned(), false),
            (order, dir) => (
                order.clone().unwrap_or_else(|| "created_ts".into()),
                match dir.as_deref() {
                    None | Some("f") => true,
                    Some("b") => false,
                    Some(other) => return Err(Error::invalid_param(format!("Unknown direction: {other}"))),
                },
            ),
        };
        let u = user.to_string();
        let rows = self.db(move |s| s.media_of_user(&u)).await?;
        let mut items = Vec::with_capacity(rows.len());
        for (row, moderation) in rows {
            items.push(json!({
                "media_id": row.media_id,
                "media_type": row.content_type,
                "media_length": row.length,
                "upload_name": row.upload_name,
                "created_ts": row.created_ts,
                "url_cache": null,
                "last_access_ts": null,
                "quarantined_by": moderation.quarantined_by,
                "safe_from_quarantine": moderation.safe_from_quarantine,
                "user_id": row.user_id,
                "authenticated": null,
                "sha256": null,
            }));
        }
        let key = match order_by.as_str() {
            "media_id"
            | "upload_name"
            | "created_ts"
            | "last_access_ts"
            | "media_length"
            | "media_type"
            | "quarantined_by"
            | "safe_from_quarantine" => order_by,
            other => return Err(Error::invalid_param(format!("Unknown value for order_by: {other}"))),
        };
        // Numbers and flags by value, text by text, nulls first; ties by media ID (Synapse's
        // query orders by the key, then the media ID).
        let sort_key = |v: &Value| {
            let field = &v[key.as_str()];
            let number = field.as_i64().or_else(|| field.as_bool().map(i64::from)).unwrap_or(i64::MIN);
            (number, field.as_str().unwrap_or("").to_owned(), v["media_id"].as_str().unwrap_or("").to_owned())
        };
        items.sort_by_key(sort_key);
        if !forwards {
            items.reverse();
        }
        let total = items.len();
        let page = items.into_iter().skip(from as usize).take(limit as usize).collect();
        Ok((page, total))
    }

    /// `GET /_synapse/admin/v1/users/{userId}/media`.
    pub async fn admin_user_media(
        &self,
        requester: &Requester,
        user_id: &str,
        params: UserMediaParams,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let (media, total) = self.user_media_page(user_id, &params).await?;
        let (from, limit) = (params.from.unwrap_or(0) as usize, params.limit.unwrap_or(100) as usize);
        let mut out = json!({"media": media, "total": total});
        if from + limit < total {
            out["next_token"] = json!(from + media.len());
        }
        Ok(out)
    }

    /// `DELETE /_synapse/admin/v1/users/{userId}/media`: the page the same query would list.
    pub async fn admin_delete_user_media(
        &self,
        requester: &Requester,
        user_id: &str,
        params: UserMediaParams,
    ) -> Result<Value> {
        self.require_admin(requester)?;
        let (media, _) = self.user_media_page(user_id, &params).await?;
        let ids = media.iter().filter_map(|m| m["media_id"].as_str().map(str::to_owned)).collect();
        let deleted = self.delete_local_media(ids).await?;
        audit!(requester, "delete user media", user_id);
        Ok(json!({"deleted_media": deleted, "total": deleted.len()}))
    }
}

/// `GET /_synapse/admin/v1/statistics/users/media`'s parameters, as given.
#[derive(Debug, Clone, Default)]
pub struct MediaStatisticsParams {
    /// `from` (default 0).
    pub from: Option<i64>,
    /// `limit` (default 100).
    pub limit: Option<i64>,
    /// `from_ts` (default 0) and `until_ts`: the uploads counted.
    pub from_ts: Option<i64>,
    /// See `from_ts`.
    pub until_ts: Option<i64>,
    /// `order_by`: `user_id` (default), `displayname`, `media_length`, `media_count`.
    pub order_by: Option<String>,
    /// `search_term`: part of the localpart or display name.
    pub search_term: Option<String>,
    /// `f` (default) or `b`.
    pub dir: Option<String>,
}

impl Homeserver {
    /// `GET /_synapse/admin/v1/statistics/users/media`: uploads and bytes per local uploader.
    pub async fn admin_media_statistics(&self, requester: &Requester, params: MediaStatisticsParams) -> Result<Value> {
        self.require_admin(requester)?;
        let (from, limit) = (params.from.unwrap_or(0), params.limit.unwrap_or(100));
        if from < 0 || limit < 0 {
            return Err(Error::invalid_param("Query parameters from and limit must be positive integers."));
        }
        let from_ts = params.from_ts.unwrap_or(0);
        let until_ts = params.until_ts.unwrap_or(i64::MAX);
        if params.until_ts.is_some() && until_ts <= from_ts {
            return Err(Error::invalid_param("Query parameter until_ts must be greater than from_ts."));
        }
        if params.search_term.as_deref() == Some("") {
            return Err(Error::invalid_param("Query parameter search_term cannot be an empty string."));
        }
        let order = params.order_by.clone().unwrap_or_else(|| "user_id".into());
        if !matches!(order.as_str(), "user_id" | "displayname" | "media_length" | "media_count") {
            return Err(Error::invalid_param(format!("Unknown value for order_by: {order}")));
        }
        let forwards = match params.dir.as_deref() {
            None | Some("f") => true,
            Some("b") => false,
            Some(other) => return Err(Error::invalid_param(format!("Unknown direction: {other}"))),
        };
        let usage = self.db(move |s| s.media_usage(from_ts, until_ts)).await?;
        let mut users = Vec::with_capacity(usage.len());
        for (user_id, count, length) in usage {
            let (displayname, _) = self.profile_of(&user_id).await?;
            if let Some(term) = &params.search_term {
                let localpart = user_id.trim_start_matches('@').split(':').next().unwrap_or_default();
                if !localpart.contains(term.as_str())
                    && !displayname.as_deref().is_some_and(|d| d.contains(term.as_str()))
                {
                    continue;
                }
            }
            users.push(
                json!({"user_id": user_id, "displayname": displayname, "media_count": count, "media_length": length}),
            );
        }
        let sort_key = |v: &Value| {
            let field = &v[order.as_str()];
            (
                field.as_i64().unwrap_or(0),
                field.as_str().unwrap_or("").to_owned(),
                v["user_id"].as_str().unwrap_or("").to_owned(),
            )
        };
        users.sort_by_key(sort_key);
        if !forwards {
            users.reverse();
        }
        let total = users.len();
        let page: Vec<Value> = users.into_iter().skip(from as usize).take(limit as usize).collect();
        let mut out = json!({"total": total});
        if (from + limit) < total as i64 {
            out["next_token"] = json!(from as usize + page.len());
        }
        out["users"] = json!(page);
        Ok(out)
    }
}

/// The media endpoints' `before_ts`, checked as Synapse checks it: required, in milliseconds
/// (a time in 1970 is taken for seconds and refused).
pub(crate) fn before_ts_param(before_ts: Option<i64>) -> Result<i64> {
    let Some(before_ts) = before_ts else {
        return Err(Error::new(ErrorKind::MissingParam, "Missing integer query parameter 'before_ts'"));
    };
    if before_ts < 0 {
        return Err(Error::invalid_param("Query parameter before_ts must be a positive integer."));
    }
    if before_ts < 30_000_000_000 {
        return Err(Error::invalid_param(
            "Query parameter before_ts you provided is from the year 1970. Double check that you are providing a \
             timestamp in milliseconds.",
        ));
    }
    Ok(before_ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooms_media_is_what_its_events_url_and_thumbnail_url_name() {
        let event = r#"{"content": {"url": "mxc://a.example/abc", "info": {"thumbnail_url": "mxc://b.example/def"}}}"#;
        assert_eq!(event_media(event), vec![("a.example".into(), "abc".into()), ("b.example".into(), "def".into())]);
        assert!(event_media(r#"{"content": {"url": "https://a.example/x", "body": "mxc://a.example/y"}}"#).is_empty());
        assert!(event_media(r#"{"content": {"url": "mxc://a.example/x/y"}}"#).is_empty());
        assert!(event_media("not json").is_empty());
    }
}
