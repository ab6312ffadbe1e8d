//! Media metadata and thumbnails (`MediaStore`).

use super::*;

pub(super) fn media_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MediaRow> {
    Ok(MediaRow {
        media_id: r.get(0)?,
        user_id: r.get(1)?,
        content_type: r.get(2)?,
        upload_name: r.get(3)?,
        length: r.get(4)?,
        created_ts: r.get(5)?,
        pending: r.get(6)?,
    })
}

const MEDIA_COLUMNS: &str = "media_id, user_id, content_type, upload_name, length, created_ts, pending";

impl MediaStore for SqliteStore {
    fn media_moderation(&self, media_id: &str) -> Result<Option<MediaModeration>> {
        self.reader()
            .row("SELECT quarantined_by, safe_from_quarantine FROM media WHERE media_id = ?1", [media_id], |r| {
                Ok(MediaModeration { quarantined_by: r.get(0)?, safe_from_quarantine: r.get(1)? })
            })
            .optional()
            .map_err(backend)
    }

    fn quarantine_media(&self, media: &[QuarantineTarget], by: Option<&str>) -> Result<u64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let mut changed = 0;
        for item in media {
            // The log records flips only (a second quarantine still counts, as on Synapse).
            let was: Option<bool> = tx
                .query_row("SELECT quarantined_by IS NOT NULL FROM media WHERE media_id = ?1", [&item.key], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(backend)?;
            let n = match by {
                Some(admin) => tx.exec(
                    "UPDATE media SET quarantined_by = ?2 WHERE media_id = ?1 AND safe_from_quarantine = 0",
                    params![item.key, admin],
                ),
                None => tx.exec("UPDATE media SET quarantined_by = NULL WHERE media_id = ?1", params![item.key]),
            }
            .map_err(backend)? as u64;
            if n > 0 && was == Some(by.is_none()) {
                tx.exec(
                    "INSERT INTO quarantine_changes (origin, media_id, quarantined) VALUES (?1, ?2, ?3)",
                    params![item.origin, item.media_id, by.is_some()],
                )
                .map_err(backend)?;
            }
            changed += n;
        }
        tx.commit().map_err(backend)?;
        Ok(changed)
    }

    fn quarantine_changes(&self, from: i64, limit: usize) -> Result<(Vec<QuarantineChange>, i64)> {
        let conn = self.reader();
        let max: i64 = conn
            .query_row("SELECT coalesce(max(stream_id), 0) FROM quarantine_changes", [], |r| r.get(0))
            .map_err(backend)?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT stream_id, origin, media_id, quarantined FROM quarantine_changes WHERE stream_id > ?1
                 ORDER BY stream_id LIMIT ?2",
            )
            .map_err(backend)?;
        let changes = stmt
            .query_map(params![from, limit as i64], |r| {
                Ok(QuarantineChange {
                    stream_id: r.get(0)?,
                    origin: r.get(1)?,
                    media_id: r.get(2)?,
                    quarantined: r.get(3)?,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(backend)?;
        Ok((changes, max))
    }

    fn protect_media(&self, media_id: &str, protected: bool) -> Result<bool> {
        Ok(self
            .conn()
            .exec("UPDATE media SET safe_from_quarantine = ?2 WHERE media_id = ?1", params![media_id, protected])
            .map_err(backend)?
            > 0)
    }

    fn media_of_user(&self, user_id: &str) -> Result<Vec<(MediaRow, MediaModeration)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {MEDIA_COLUMNS}, quarantined_by, safe_from_quarantine FROM media
                 WHERE user_id = ?1 AND NOT pending ORDER BY created_ts, media_id"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map([user_id], |r| {
                Ok((media_from_row(r)?, MediaModeration { quarantined_by: r.get(7)?, safe_from_quarantine: r.get(8)? }))
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn local_media_before(&self, before_ts: i64, size_gt: i64) -> Result<Vec<MediaRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {MEDIA_COLUMNS} FROM media WHERE user_id LIKE '@%' AND NOT pending AND created_ts < ?1
                 AND coalesce(length, 0) > ?2 AND quarantined_by IS NULL AND safe_from_quarantine = 0
                 ORDER BY created_ts, media_id"
            ))
            .map_err(backend)?;
        let rows = stmt.query_map(params![before_ts, size_gt], media_from_row).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn media_usage(&self, from_ts: i64, until_ts: i64) -> Result<Vec<(String, i64, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT user_id, count(*), coalesce(sum(length), 0) FROM media
                 WHERE user_id LIKE '@%' AND NOT pending AND created_ts >= ?1 AND created_ts <= ?2
                 GROUP BY user_id ORDER BY user_id",
            )
            .map_err(backend)?;
        let rows =
            stmt.query_map(params![from_ts, until_ts], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn media_uploaded_since(&self, user_id: &str, since_ts: i64) -> Result<i64> {
        self.reader()
            .row(
                "SELECT coalesce(sum(length), 0) FROM media WHERE user_id = ?1 AND created_ts > ?2",
                params![user_id, since_ts],
                |r| r.get(0),
            )
            .map_err(backend)
    }

    fn profile_avatar_urls(&self) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT DISTINCT avatar_url FROM profiles WHERE avatar_url IS NOT NULL")
            .map_err(backend)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn insert_media(&self, m: &MediaRow) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO media (media_id, user_id, content_type, upload_name, length, created_ts, pending)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (media_id) DO UPDATE SET content_type = excluded.content_type,
                   upload_name = excluded.upload_name, length = excluded.length, pending = excluded.pending",
                params![m.media_id, m.user_id, m.content_type, m.upload_name, m.length, m.created_ts, m.pending],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn get_media(&self, media_id: &str) -> Result<Option<MediaRow>> {
        self.reader()
            .row(
                "SELECT media_id, user_id, content_type, upload_name, length, created_ts, pending FROM media
                 WHERE media_id = ?1",
                [media_id],
                media_from_row,
            )
            .optional()
            .map_err(backend)
    }

    fn delete_media(&self, media_id: &str) -> Result<()> {
        // Its thumbnails go with it (they refer to it).
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec("DELETE FROM media_thumbnails WHERE media_id = ?1", [media_id]).map_err(backend)?;
        tx.exec("DELETE FROM media WHERE media_id = ?1", [media_id]).map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn get_thumbnail(&self, media_id: &str, width: u32, height: u32, method: &str) -> Result<Option<(String, i64)>> {
        self.reader()
            .row(
                "SELECT content_type, length FROM media_thumbnails WHERE media_id = ?1 AND width = ?2
                 AND height = ?3 AND method = ?4",
                params![media_id, width, height, method],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)
    }

    fn insert_thumbnail(
        &self,
        media_id: &str,
        width: u32,
        height: u32,
        method: &str,
        content_type: &str,
        length: i64,
    ) -> Result<()> {
        self.conn()
            .exec(
                "INSERT OR REPLACE INTO media_thumbnails (media_id, width, height, method, content_type, length)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![media_id, width, height, method, content_type, length],
            )
            .map_err(backend)?;
        Ok(())
    }
}
