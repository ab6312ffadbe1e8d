//! Media across servers: remote files fetched into the local cache (through the
//! authenticated `/_matrix/federation/v1/media/download`, falling back to the older
//! `/_matrix/media/v3/download` for servers without it), checked by
//! `check_media_file_for_spam` before they are kept, and this server's files served to others.
//!
//! Cached files live under `media_store_path/remote_content/<server>/ab/cd/<rest>` with a
//! `.meta` file beside each (content type, name, length) written last, so a file without one is
//! fetched again. A `Location` redirect in a multipart answer is not followed.

use myelin_module_api::spam::MediaFile;
use serde_json::{Value, json};

use super::client::FederationFailure;
use crate::media::StoredMedia;
use crate::server::random_string;
use crate::{Error, Homeserver, Result};

fn not_found() -> Error {
    Error::not_found("Not found")
}

/// A server name as one path segment (`:` is not safe everywhere).
pub(crate) fn server_dir(server: &str) -> Option<String> {
    ruma::ServerName::parse(server).ok()?;
    Some(server.replace([':', '[', ']'], "_"))
}

/// How a remote file is named in the media index (and its thumbnails): local media IDs are
/// alphanumeric, so this cannot collide with one.
pub(crate) fn remote_media_key(server: &str, media_id: &str) -> String {
    format!("remote_{}_{media_id}", server.replace([':', '[', ']', '.'], "_"))
}

/// The media part of a `multipart/mixed` federation answer: `(content type, file name, bytes)`.
fn media_part(content_type: &str, body: &[u8]) -> Option<(String, Option<String>, bytes::Bytes)> {
    let boundary =
        content_type.split(';').filter_map(|p| p.trim().strip_prefix("boundary=")).next()?.trim_matches('"').to_owned();
    let delimiter = format!("--{boundary}").into_bytes();
    let find = |from: usize| -> Option<usize> {
        body.get(from..)?.windows(delimiter.len()).position(|w| w == delimiter.as_slice()).map(|p| p + from)
    };
    let first = find(0)?;
    let second = find(first + delimiter.len())?;
    let third = find(second + delimiter.len())?;
    let part = &body[second + delimiter.len()..third];
    let part = part.strip_prefix(b"\r\n").unwrap_or(part);
    let split = part.windows(4).position(|w| w == b"\r\n\r\n")?;
    let headers = std::str::from_utf8(&part[..split]).ok()?;
    let content = &part[split + 4..];
    let content = content.strip_suffix(b"\r\n").unwrap_or(content);
    let mut part_type = "application/octet-stream".to_owned();
    let mut name = None;
    for line in headers.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else { continue };
        match k.trim().to_ascii_lowercase().as_str() {
            "content-type" => part_type = v.trim().to_owned(),
            "content-disposition" => {
                name = v
                    .split(';')
                    .filter_map(|p| p.trim().strip_prefix("filename="))
                    .next()
                    .map(|n| n.trim_matches('"').to_owned());
            }
            "location" => return None,
            _ => {}
        }
    }
    Some((part_type, name, bytes::Bytes::copy_from_slice(content)))
}

impl Homeserver {
    /// A remote file, from the cache or fetched into it.
    pub(crate) async fn remote_media(&self, server: &str, media_id: &str) -> Result<StoredMedia> {
        let (path, meta_path, key) =
            crate::media::remote_cache_paths(&self.config.media_store_path, server, media_id).ok_or_else(not_found)?;
        if self.is_quarantined(&key).await? {
            return Err(not_found());
        }
        let cached = match tokio::fs::read_to_string(&meta_path).await {
            Ok(text) => serde_json::from_str::<Value>(&text).ok(),
            Err(_) => None,
        };
        let info = crate::media_storage::FileInfo {
            server_name: Some(server.to_owned()),
            file_id: media_id.to_owned(),
            thumbnail: None,
        };
        if let Some(meta) = cached
            && (path.exists() || self.fetch_from_providers(&path, info.clone()).await?)
        {
            touch_if_stale(&meta_path);
            return Ok(StoredMedia {
                path,
                content_type: meta["content_type"].as_str().unwrap_or("application/octet-stream").to_owned(),
                upload_name: meta["upload_name"].as_str().map(str::to_owned),
                length: meta["length"].as_u64().unwrap_or_default(),
            });
        }
        let limit = self.config.max_upload_size;
        let timeout = std::time::Duration::from_secs(60);
        let authenticated = self
            .federation
            .client
            .request_bytes(
                Some(&self.key),
                self.server_name(),
                server,
                &format!("/_matrix/federation/v1/media/download/{media_id}"),
                limit,
                timeout,
            )
            .await;
        let (content_type, name, bytes) = match authenticated {
            Ok((ct, body)) => media_part(&ct, &body).ok_or_else(|| {
                tracing::info!(server, media_id, "remote media came in a form Myelin does not read");
                not_found()
            })?,
            // Servers without the authenticated endpoint: the older, open one.
            Err(FederationFailure::Refused(e))
                if e.status == 404 && e.body["errcode"] == "M_UNRECOGNIZED" || e.status == 405 || e.status == 400 =>
            {
                let path = format!("/_matrix/media/v3/download/{server}/{media_id}?allow_remote=false");
                let (ct, body) = self
                    .federation
                    .client
                    .request_bytes(None, self.server_name(), server, &path, limit, timeout)
                    .await
                    .map_err(|e| remote_media_error(e, media_id))?;
                (ct, None, body)
            }
            Err(e) => return Err(remote_media_error(e, media_id)),
        };

        let tmp_dir = self.config.media_store_path.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(Error::internal)?;
        let tmp = tmp_dir.join(random_string(16));
        tokio::fs::write(&tmp, &bytes).await.map_err(Error::internal)?;
        let file = MediaFile {
            path: tmp.clone(),
            media_id: media_id.to_owned(),
            server_name: Some(server.to_owned()),
            content_type: Some(content_type.clone()),
            length: bytes.len() as u64,
            thumbnail: false,
        };
        if let Err(e) = self.modules.check_remote_media_file_for_spam(file).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(Error::internal)?;
        }
        tokio::fs::rename(&tmp, &path).await.map_err(Error::internal)?;
        if let Err(e) = self.store_in_providers(&path, info).await {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        let row = myelin_storage::MediaRow {
            media_id: remote_media_key(server, media_id),
            user_id: server.to_owned(),
            content_type: Some(content_type.clone()),
            upload_name: name.clone(),
            length: Some(bytes.len() as i64),
            created_ts: crate::server::now_ms(),
            pending: false,
        };
        self.db(move |s| s.insert_media(&row)).await?;
        let meta = json!({"content_type": content_type, "upload_name": name, "length": bytes.len(), "key": key});
        let meta_tmp = tmp_dir.join(random_string(16));
        tokio::fs::write(&meta_tmp, meta.to_string()).await.map_err(Error::internal)?;
        tokio::fs::rename(&meta_tmp, &meta_path).await.map_err(Error::internal)?;
        Ok(StoredMedia { path, content_type, upload_name: name, length: bytes.len() as u64 })
    }

    /// `GET /_matrix/federation/v1/media/download/{mediaId}`: a file of this server.
    pub async fn federation_media(&self, media_id: &str) -> Result<StoredMedia> {
        let server = self.server_name().to_owned();
        self.media(&server, media_id).await
    }
}

fn remote_media_error(e: FederationFailure, media_id: &str) -> Error {
    match e {
        FederationFailure::Refused(r) if r.status == 404 => Error::not_found("Not found"),
        FederationFailure::Refused(r) if r.status == 413 => {
            Error::new(crate::ErrorKind::TooLarge, format!("Remote media {media_id} is larger than max_upload_size"))
        }
        other => other.into_error("remote media"),
    }
}

/// Marks a cached file as served now (its metadata file's modification time, which
/// `purge_media_cache` reads as the last access), at most once a minute per file.
fn touch_if_stale(meta_path: &std::path::Path) {
    let now = std::time::SystemTime::now();
    let stale = std::fs::metadata(meta_path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > std::time::Duration::from_secs(60)));
    if stale && let Ok(file) = std::fs::File::options().append(true).open(meta_path) {
        let _ = file.set_modified(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_media_part_of_a_multipart_answer_is_found() {
        let body = b"--abc\r\nContent-Type: application/json\r\n\r\n{}\r\n--abc\r\nContent-Type: image/png\r\nContent-Disposition: inline; filename=\"cat.png\"\r\n\r\n\x89PNG\r\n--abc--\r\n";
        let (ct, name, bytes) = media_part("multipart/mixed; boundary=abc", body).unwrap();
        assert_eq!(ct, "image/png");
        assert_eq!(name.as_deref(), Some("cat.png"));
        assert_eq!(&bytes[..], b"\x89PNG");
        let redirect =
            b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\nLocation: https://x/y\r\n\r\n\r\n--b--\r\n";
        assert!(media_part("multipart/mixed; boundary=\"b\"", redirect).is_none());
        assert!(media_part("multipart/mixed", body).is_none());
        assert!(media_part("multipart/mixed; boundary=zzz", body).is_none());
    }
}
