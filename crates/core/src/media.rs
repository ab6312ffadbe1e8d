//! The media repository: uploads streamed to disk, downloads, thumbnails.
//!
//! Files live under `media_store_path` at paths built only from media IDs that Myelin generated
//! and that pass [`valid_media_id`]; client input never becomes a path. Uploads are written to a
//! temporary file as they arrive (a 100 MB upload never sits in memory), checked by
//! `check_media_file_for_spam` (its one call site), then moved into place and indexed.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use myelin_module_api::spam::MediaFile;
use myelin_storage::MediaRow;
use tokio::io::AsyncWriteExt;

use crate::media_storage::{FileInfo, ThumbnailInfo};
use crate::server::{now_ms, random_string};
use crate::{Error, ErrorKind, Homeserver, Requester, Result};

/// A body being uploaded; the caller keeps it, so it can drain what is left after a refusal.
pub type UploadStream<'a> = &'a mut (dyn Stream<Item = std::io::Result<Bytes>> + Unpin + Send);

/// A stored file ready to be sent.
#[derive(Debug, Clone)]
pub struct StoredMedia {
    /// Where the bytes are.
    pub path: PathBuf,
    /// The content type to send.
    pub content_type: String,
    /// The original file name.
    pub upload_name: Option<String>,
    /// Size in bytes.
    pub length: u64,
}

/// Thumbnail sizes generated, as Synapse's defaults: `(width, height, method)`.
const THUMBNAIL_SIZES: &[(u32, u32, &str)] =
    &[(32, 32, "crop"), (96, 96, "crop"), (320, 240, "scale"), (640, 480, "scale"), (800, 600, "scale")];

/// Images with more pixels than this are not thumbnailed (decompression bombs).
const MAX_IMAGE_PIXELS: u64 = 32_000_000;

/// The page an upload over its quota points to when the quota names none (Synapse's
/// `MEDIA_UPLOAD_LIMIT_EXCEEDED_PATH`).
pub const UPLOAD_LIMIT_PAGE: &str = "/_synapse/client/media_upload_limit_exceeded";

/// How long a `/create` reservation lasts.
const PENDING_LIFETIME_MS: i64 = 24 * 3600 * 1000;

/// Media IDs Myelin generates are 24 alphanumerics; anything not shaped like one is unknown.
pub fn valid_media_id(id: &str) -> bool {
    id.len() >= 5 && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Where a local upload lives under `media_store` (Synapse's layout: `local_content/ab/cd/rest`);
/// `media_id` must be a [`valid_media_id`].
pub fn local_content_path(media_store: &Path, media_id: &str) -> PathBuf {
    media_store.join("local_content").join(&media_id[..2]).join(&media_id[2..4]).join(&media_id[4..])
}

/// The directory holding the thumbnails of a local file under `media_store`.
pub fn local_thumbnails_dir(media_store: &Path, media_id: &str) -> PathBuf {
    media_store.join("local_thumbnails").join(&media_id[..2]).join(&media_id[2..4]).join(&media_id[4..])
}

/// Where the thumbnail of a local file at one of the standard sizes lives under `media_store`.
pub fn local_thumbnail_path(media_store: &Path, media_id: &str, width: u32, height: u32, method: &str) -> PathBuf {
    local_thumbnails_dir(media_store, media_id).join(format!("{width}-{height}-{method}"))
}

/// A thumbnail Synapse stored for an image: `(width, height, content type, method)`.
pub type SynapseThumbnail = (u32, u32, String, String);

/// For `myelin import-synapse`: which of the thumbnails Synapse made of the image at `source`
/// serves each of Myelin's standard sizes, as `(width, height, method, index in stored)`.
/// Synapse made them for the same sizes (its defaults), storing each by the size it came out:
/// a crop at the size asked, a scale fitted into it without growing the image (its `aspect`).
/// Of several types, the image's own is preferred. Sizes none serves are made again on demand.
pub fn synapse_thumbnails_by_size(
    source: &Path,
    content_type: Option<&str>,
    stored: &[SynapseThumbnail],
) -> Vec<(u32, u32, &'static str, usize)> {
    let Ok((mw, mh)) = image::ImageReader::open(source)
        .and_then(|r| r.with_guessed_format())
        .map_err(|_| ())
        .and_then(|r| r.into_dimensions().map_err(|_| ()))
    else {
        return Vec::new();
    };
    let (mw, mh) = (u64::from(mw), u64::from(mh));
    let mut out = Vec::new();
    for &(sw, sh, method) in THUMBNAIL_SIZES {
        let (rw, rh) = (u64::from(sw), u64::from(sh));
        let made = if method == "crop" {
            (rw, rh)
        } else {
            let (tw, th) = if mh > 0 && mw > 0 && rw * mh < rh * mw {
                (rw, (rw * mh / mw).max(1))
            } else {
                ((rh * mw / mh.max(1)).max(1), rh)
            };
            (tw.min(mw), th.min(mh))
        };
        // A crop of the same size as a scale is not made twice (Synapse): the scale serves.
        let fits = |t: &SynapseThumbnail| {
            (u64::from(t.0), u64::from(t.1)) == made && (t.3 == method || (method == "crop" && t.3 == "scale"))
        };
        let best = stored
            .iter()
            .enumerate()
            .filter(|(_, t)| fits(t))
            .min_by_key(|(_, t)| (Some(t.2.as_str()) != content_type, t.3 != method));
        if let Some((index, _)) = best {
            out.push((sw, sh, method, index));
        }
    }
    out
}

/// Where a cached copy of another server's file lives under `media_store`: `(the file, its
/// metadata file, its key in the media index)`; `None` for a server name or media ID Myelin
/// would not fetch. (`myelin import-synapse` fills the cache from a Synapse's.)
pub fn remote_cache_paths(media_store: &Path, server: &str, media_id: &str) -> Option<(PathBuf, PathBuf, String)> {
    let dir = crate::federation::media::server_dir(server)?;
    if !valid_media_id(media_id) {
        return None;
    }
    let file =
        media_store.join("remote_content").join(dir).join(&media_id[..2]).join(&media_id[2..4]).join(&media_id[4..]);
    let meta = file.with_extension("meta");
    Some((file, meta, crate::federation::media::remote_media_key(server, media_id)))
}

fn not_found() -> Error {
    Error::not_found("Not found")
}

impl Homeserver {
    fn media_path(&self, media_id: &str) -> PathBuf {
        local_content_path(&self.config.media_store_path, media_id)
    }

    fn thumbnail_path(&self, media_id: &str, width: u32, height: u32, method: &str) -> PathBuf {
        local_thumbnail_path(&self.config.media_store_path, media_id, width, height, method)
    }

    /// `POST /_matrix/media/v1/create`: reserves a media ID; returns `(mxc, expires_at)`.
    pub async fn create_media(&self, requester: &Requester) -> Result<(String, i64)> {
        self.limit_user(&self.limiters.media_create, requester.user_id.as_str(), None).await?;
        let media_id = random_string(24);
        let row = MediaRow {
            media_id: media_id.clone(),
            user_id: requester.user_id.to_string(),
            content_type: None,
            upload_name: None,
            length: None,
            created_ts: now_ms(),
            pending: true,
        };
        self.db(move |s| s.insert_media(&row)).await?;
        Ok((format!("mxc://{}/{media_id}", self.server_name()), now_ms() + PENDING_LIFETIME_MS))
    }

    /// `GET /media/config`: a module's answer for this user (`get_media_config_for_user`),
    /// else the server's.
    pub async fn media_config(&self, requester: Option<&Requester>) -> Result<serde_json::Value> {
        if let Some(me) = requester
            && let Some(config) = self.modules.media_config_for_user(me.user_id.as_str()).await?
        {
            return Ok(serde_json::Value::Object(config));
        }
        Ok(serde_json::json!({"m.upload.size": self.config.max_upload_size}))
    }

    /// Stores an upload: a new media ID, or (`PUT`) one reserved by `/create`. Returns the MXC URI.
    /// A module may refuse it by its size (`is_user_allowed_to_upload_media_of_size`), asked
    /// once the size is known: after the body is read (Synapse asks from `Content-Length`
    /// before, and refuses uploads without one).
    pub async fn upload_media(
        &self,
        requester: &Requester,
        reserved: Option<(&str, &str)>,
        content_type: Option<String>,
        upload_name: Option<String>,
        body: UploadStream<'_>,
    ) -> Result<String> {
        let media_id = match reserved {
            Some((server, id)) => {
                if server != self.server_name() || !valid_media_id(id) {
                    return Err(not_found());
                }
                let i = id.to_owned();
                let row = self.db(move |s| s.get_media(&i)).await?.ok_or_else(not_found)?;
                if row.user_id != requester.user_id.as_str() {
                    return Err(Error::forbidden("You may not upload to this media ID"));
                }
                if !row.pending {
                    return Err(Error::new(
                        ErrorKind::Module { status: 409, errcode: "M_CANNOT_OVERWRITE_MEDIA".into() },
                        "Media ID already has content",
                    ));
                }
                if now_ms() > row.created_ts + PENDING_LIFETIME_MS {
                    return Err(Error::not_found("Media reservation expired"));
                }
                id.to_owned()
            }
            None => random_string(24),
        };
        let tmp_dir = self.config.media_store_path.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(Error::from_io)?;
        let tmp = tmp_dir.join(random_string(16));
        let written = write_limited(&tmp, body, self.config.max_upload_size).await;
        let length = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        match self.modules.may_upload_media_of_size(requester.user_id.as_str(), length).await {
            Ok(true) => {}
            refused => {
                let _ = tokio::fs::remove_file(&tmp).await;
                refused?;
                return Err(Error::new(ErrorKind::TooLarge, "Upload request body is too large"));
            }
        }
        if let Err(e) = self.check_upload_limits(requester.user_id.as_str(), length).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let file = MediaFile {
            path: tmp.clone(),
            media_id: media_id.clone(),
            server_name: None,
            content_type: content_type.clone(),
            length,
            thumbnail: false,
        };
        if let Err(e) = self.modules.check_media_file_for_spam(file).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let dest = self.media_path(&media_id);
        // The file is synced (`write_limited`); its new name must be too before the MXC URI is
        // handed out.
        let root = self.config.media_store_path.clone();
        let (from, to) = (tmp.clone(), dest.clone());
        let renamed = tokio::task::spawn_blocking(move || crate::durable::rename_into(&from, &to, &root))
            .await
            .map_err(Error::internal)
            .and_then(|r| r.map_err(Error::from_io));
        if let Err(e) = renamed {
            // Nothing of a failed upload is kept (a full disk most of all).
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let info = FileInfo { server_name: None, file_id: media_id.clone(), thumbnail: None };
        if let Err(e) = self.store_in_providers(&dest, info).await {
            let _ = tokio::fs::remove_file(&dest).await;
            return Err(e);
        }
        let row = MediaRow {
            media_id: media_id.clone(),
            user_id: requester.user_id.to_string(),
            content_type,
            upload_name,
            length: Some(length as i64),
            created_ts: now_ms(),
            pending: false,
        };
        if let Err(e) = self.db(move |s| s.insert_media(&row)).await {
            let _ = tokio::fs::remove_file(&dest).await;
            return Err(e);
        }
        Ok(format!("mxc://{}/{media_id}", self.server_name()))
    }

    /// Upload quotas (`media_upload_limits`, or a module's `get_media_upload_limits_for_user`),
    /// longest period first, as Synapse: the user's uploads in a period plus this one may not
    /// exceed its `max_bytes` (403 `M_USER_LIMIT_EXCEEDED` with `info_uri`, and `can_upgrade`
    /// when set), `on_media_upload_limit_exceeded` told first.
    async fn check_upload_limits(&self, user_id: &str, length: u64) -> Result<()> {
        let limits = match self.modules.media_upload_limits_for_user(user_id).await? {
            Some(limits) => limits,
            None => self.config.media_upload_limits.clone(),
        };
        // A longer period's total bounds a shorter one's: read again only when it could matter.
        let mut uploaded: Option<u64> = None;
        for limit in &limits {
            if uploaded.is_none_or(|u| u + length > limit.max_bytes) {
                let (u, since) = (user_id.to_owned(), now_ms().saturating_sub(limit.time_period_ms as i64));
                uploaded = Some(self.db(move |s| s.media_uploaded_since(&u, since)).await?.max(0) as u64);
            }
            let sent = uploaded.unwrap_or(0);
            if sent + length > limit.max_bytes {
                self.modules.on_media_upload_limit_exceeded(user_id, limit, sent, length).await?;
                let info_uri = limit.info_uri.clone().unwrap_or_else(|| {
                    format!("{}{}", self.config.public_baseurl, UPLOAD_LIMIT_PAGE.trim_start_matches('/'))
                });
                let mut fields = serde_json::Map::new();
                fields.insert("info_uri".into(), serde_json::json!(info_uri));
                if limit.can_upgrade {
                    fields.insert("can_upgrade".into(), serde_json::json!(true));
                }
                return Err(Error::new(
                    ErrorKind::Module { status: 403, errcode: "M_USER_LIMIT_EXCEEDED".into() },
                    "Media upload limit exceeded",
                )
                .with_fields(fields));
            }
        }
        Ok(())
    }

    /// A stored file for download.
    pub async fn media(&self, server: &str, media_id: &str) -> Result<StoredMedia> {
        if server != self.server_name() {
            return self.remote_media(server, media_id).await;
        }
        if !valid_media_id(media_id) {
            return Err(not_found());
        }
        let id = media_id.to_owned();
        let (row, moderation) = self.db(move |s| Ok((s.get_media(&id)?, s.media_moderation(&id)?))).await?;
        let row = row.ok_or_else(not_found)?;
        // Quarantined by an admin: served to nobody (Synapse answers as for unknown media).
        if moderation.is_some_and(|m| m.quarantined_by.is_some()) {
            return Err(not_found());
        }
        if row.pending {
            return Err(Error::new(
                ErrorKind::Module { status: 504, errcode: "M_NOT_YET_UPLOADED".into() },
                "Media has not been uploaded yet",
            ));
        }
        let path = self.media_path(media_id);
        if !path.exists() {
            // Gone from the media store (or never there: a store emptied after a move to S3).
            let info = FileInfo { server_name: None, file_id: media_id.to_owned(), thumbnail: None };
            self.fetch_from_providers(&path, info).await?;
        }
        Ok(StoredMedia {
            path,
            content_type: row.content_type.unwrap_or_else(|| "application/octet-stream".into()),
            upload_name: row.upload_name,
            length: row.length.unwrap_or_default() as u64,
        })
    }

    /// A thumbnail, generated once per standard size and cached.
    pub async fn thumbnail(
        &self,
        server: &str,
        media_id: &str,
        width: u32,
        height: u32,
        method: &str,
    ) -> Result<StoredMedia> {
        if width == 0 || height == 0 {
            return Err(Error::invalid_param("width and height must be positive"));
        }
        let method = match method {
            "crop" | "scale" => method,
            _ => return Err(Error::invalid_param("method must be 'crop' or 'scale'")),
        };
        let original = self.media(server, media_id).await?;
        let file_id = media_id.to_owned();
        // Remote files' thumbnails are kept apart from local ones (media IDs may collide).
        let key = self.media_key(server, media_id)?;
        let media_id = key.as_str();
        // The smallest standard size at least as big as asked for, else the biggest.
        let (tw, th, tm) = THUMBNAIL_SIZES
            .iter()
            .filter(|(w, h, m)| *m == method && *w >= width && *h >= height)
            .min_by_key(|(w, h, _)| w * h)
            .or_else(|| THUMBNAIL_SIZES.iter().filter(|(_, _, m)| *m == method).max_by_key(|(w, h, _)| w * h))
            .copied()
            .ok_or_else(|| Error::internal("no thumbnail sizes"))?;
        let path = self.thumbnail_path(media_id, tw, th, tm);
        let (id, m) = (media_id.to_owned(), tm.to_owned());
        if let Some((content_type, length)) = self.db(move |s| s.get_thumbnail(&id, tw, th, &m)).await?
            && path.exists()
        {
            return Ok(StoredMedia { path, content_type, upload_name: None, length: length as u64 });
        }
        let source = original.path.clone();
        let dest = path.clone();
        let crop = tm == "crop";
        let generated = tokio::task::spawn_blocking(move || make_thumbnail(&source, &dest, tw, th, crop))
            .await
            .map_err(Error::internal)??;
        let (content_type, length) = generated;
        let (id, m, ct) = (media_id.to_owned(), tm.to_owned(), content_type.clone());
        self.db(move |s| s.insert_thumbnail(&id, tw, th, &m, &ct, length as i64)).await?;
        let remote = (server != self.server_name()).then(|| server.to_owned());
        let info = FileInfo {
            server_name: remote,
            file_id,
            thumbnail: Some(ThumbnailInfo {
                width: tw,
                height: th,
                method: tm.to_owned(),
                content_type: content_type.clone(),
                length,
            }),
        };
        // A thumbnail can be made again from its file: a provider's failure is only logged.
        if let Err(e) = self.store_in_providers(&path, info).await {
            tracing::warn!("thumbnail not stored in a storage provider: {e}");
        }
        Ok(StoredMedia { path, content_type, upload_name: None, length })
    }
}

/// Writes the stream to `path`, refusing (413) once it exceeds `limit`.
async fn write_limited(path: &Path, body: UploadStream<'_>, limit: u64) -> Result<u64> {
    let mut file = tokio::fs::File::create(path).await.map_err(Error::from_io)?;
    let mut total = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::new(ErrorKind::BadRequest, format!("Upload interrupted: {e}")))?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(Error::new(ErrorKind::TooLarge, "Upload request body is too large"));
        }
        file.write_all(&chunk).await.map_err(Error::from_io)?;
    }
    file.flush().await.map_err(Error::from_io)?;
    file.sync_all().await.map_err(Error::from_io)?;
    Ok(total)
}

fn make_thumbnail(source: &Path, dest: &Path, width: u32, height: u32, crop: bool) -> Result<(String, u64)> {
    let cannot = || Error::new(ErrorKind::BadRequest, "Cannot generate a thumbnail for this media");
    let reader =
        image::ImageReader::open(source).map_err(Error::internal)?.with_guessed_format().map_err(|_| cannot())?;
    let format = reader.format().ok_or_else(cannot)?;
    let (w, h) = reader.into_dimensions().map_err(|_| cannot())?;
    if (w as u64) * (h as u64) > MAX_IMAGE_PIXELS {
        return Err(cannot());
    }
    let image = image::ImageReader::open(source)
        .map_err(Error::internal)?
        .with_guessed_format()
        .map_err(|_| cannot())?
        .decode()
        .map_err(|_| cannot())?;
    let thumb = if crop {
        image.resize_to_fill(width, height, image::imageops::FilterType::Triangle)
    } else if image.width() <= width && image.height() <= height {
        image
    } else {
        image.resize(width, height, image::imageops::FilterType::Triangle)
    };
    let (out_format, content_type) = match format {
        image::ImageFormat::Jpeg => (image::ImageFormat::Jpeg, "image/jpeg"),
        _ => (image::ImageFormat::Png, "image/png"),
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(Error::internal)?;
    }
    let thumb =
        if out_format == image::ImageFormat::Jpeg { image::DynamicImage::ImageRgb8(thumb.to_rgb8()) } else { thumb };
    thumb.save_with_format(dest, out_format).map_err(Error::internal)?;
    let length = std::fs::metadata(dest).map_err(Error::internal)?.len();
    Ok((content_type.to_owned(), length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synapse_thumbnails_serve_the_standard_sizes_they_were_made_for() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("picture");
        image::RgbImage::new(400, 300).save_with_format(&source, image::ImageFormat::Png).unwrap();
        let t = |w: u32, h: u32, ty: &str, m: &str| (w, h, ty.to_owned(), m.to_owned());
        let stored = vec![
            t(32, 32, "image/png", "crop"),
            t(96, 96, "image/jpeg", "crop"),
            t(96, 96, "image/png", "crop"),
            t(320, 240, "image/png", "scale"),
            // Fitted into 640x480 and 800x600 without growing: the image's own size, once.
            t(400, 300, "image/png", "scale"),
        ];
        let found = synapse_thumbnails_by_size(&source, Some("image/png"), &stored);
        assert_eq!(
            found,
            vec![
                (32, 32, "crop", 0),
                (96, 96, "crop", 2),
                (320, 240, "scale", 3),
                (640, 480, "scale", 4),
                (800, 600, "scale", 4)
            ]
        );
        // Not an image (or gone): none.
        assert!(synapse_thumbnails_by_size(&dir.path().join("missing"), None, &stored).is_empty());
    }
}
