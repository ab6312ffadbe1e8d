//! Media metadata and thumbnails (`MediaStore`).

use super::*;

fn media(row: &Row) -> MediaRow {
    MediaRow {
        media_id: row.get(0),
        user_id: row.get(1),
        content_type: row.get(2),
        upload_name: row.get(3),
        length: row.get(4),
        created_ts: row.get(5),
        pending: row.get(6),
    }
}

const MEDIA_COLUMNS: &str = "media_id, user_id, content_type, upload_name, length, created_ts, pending";

impl MediaStore for PostgresStore {
    fn media_moderation(&self, media_id: &str) -> Result<Option<MediaModeration>> {
        self.read(|db| {
            Ok(db
                .opt("SELECT quarantined_by, safe_from_quarantine FROM media WHERE media_id = $1", &[&media_id])?
                .map(|r| MediaModeration { quarantined_by: r.get(0), safe_from_quarantine: r.get(1) }))
        })
    }

    fn quarantine_media(&self, media: &[QuarantineTarget], by: Option<&str>) -> Result<u64> {
        self.write(|tx| {
            let mut changed = 0;
            for item in media {
                // The log records flips only (a second quarantine still counts, as on Synapse).
                let was: Option<bool> = tx
                    .opt("SELECT quarantined_by IS NOT NULL FROM media WHERE media_id = $1", &[&item.key])?
                    .map(|r| r.get(0));
                let n = match by {
                    Some(admin) => tx.exec(
                        "UPDATE media SET quarantined_by = $2 WHERE media_id = $1 AND NOT safe_from_quarantine",
                        &[&item.key, &admin],
                    )?,
                    None => tx.exec("UPDATE media SET quarantined_by = NULL WHERE media_id = $1", &[&item.key])?,
                };
                if n > 0 && was == Some(by.is_none()) {
                    tx.exec(
                        "INSERT INTO quarantine_changes (origin, media_id, quarantined) VALUES ($1, $2, $3)",
                        &[&item.origin, &item.media_id, &by.is_some()],
                    )?;
                }
                changed += n;
            }
            Ok(changed)
        })
    }

    fn quarantine_changes(&self, from: i64, limit: usize) -> Result<(Vec<QuarantineChange>, i64)> {
        self.read(|db| {
            let max: i64 = db.one("SELECT coalesce(max(stream_id), 0)::BIGINT FROM quarantine_changes", &[])?.get(0);
            let rows = db.rows(
                "SELECT stream_id, origin, media_id, quarantined FROM quarantine_changes WHERE stream_id > $1
                 ORDER BY stream_id LIMIT $2",
                &[&from, &(limit as i64)],
            )?;
            let changes = rows
                .iter()
                .map(|r| QuarantineChange {
                    stream_id: r.get(0),
                    origin: r.get(1),
                    media_id: r.get(2),
                    quarantined: r.get(3),
                })
                .collect();
            Ok((changes, max))
        })
    }

    fn protect_media(&self, media_id: &str, protected: bool) -> Result<bool> {
        self.write(|tx| {
            Ok(tx.exec("UPDATE media SET safe_from_quarantine = $2 WHERE media_id = $1", &[&media_id, &protected])? > 0)
        })
    }

    fn media_of_user(&self, user_id: &str) -> Result<Vec<(MediaRow, MediaModeration)>> {
        self.read(|db| {
            let rows = db.rows(
                &format!(
                    "SELECT {MEDIA_COLUMNS}, quarantined_by, safe_from_quarantine FROM media
                     WHERE user_id = $1 AND NOT pending ORDER BY created_ts, media_id"
                ),
                &[&user_id],
            )?;
            Ok(rows
                .iter()
                .map(|r| (media(r), MediaModeration { quarantined_by: r.get(7), safe_from_quarantine: r.get(8) }))
                .collect())
        })
    }

    fn local_media_before(&self, before_ts: i64, size_gt: i64) -> Result<Vec<MediaRow>> {
        self.read(|db| {
            let rows = db.rows(
                &format!(
                    "SELECT {MEDIA_COLUMNS} FROM media WHERE user_id LIKE '@%' AND NOT pending AND created_ts < $1
                     AND coalesce(length, 0) > $2 AND quarantined_by IS NULL AND NOT safe_from_quarantine
                     ORDER BY created_ts, media_id"
                ),
                &[&before_ts, &size_gt],
            )?;
            Ok(rows.iter().map(media).collect())
        })
    }

    fn media_usage(&self, from_ts: i64, until_ts: i64) -> Result<Vec<(String, i64, i64)>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT user_id, count(*), coalesce(sum(length), 0)::BIGINT FROM media
                 WHERE user_id LIKE '@%' AND NOT pending AND created_ts >= $1 AND created_ts <= $2
                 GROUP BY user_id ORDER BY user_id",
                &[&from_ts, &until_ts],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        })
    }

    fn media_uploaded_since(&self, user_id: &str, since_ts: i64) -> Result<i64> {
        self.read(|db| {
            let row = db.opt(
                "SELECT coalesce(sum(length), 0)::BIGINT FROM media WHERE user_id = $1 AND created_ts > $2",
                &[&user_id, &since_ts],
            )?;
            Ok(row.map(|r| r.get(0)).unwrap_or(0))
        })
    }

    fn profile_avatar_urls(&self) -> Result<Vec<String>> {
        self.read(|db| {
            let rows = db.rows("SELECT DISTINCT avatar_url FROM profiles WHERE avatar_url IS NOT NULL", &[])?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn insert_media(&self, m: &MediaRow) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO media (media_id, user_id, content_type, upload_name, length, created_ts, pending)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (media_id) DO UPDATE SET content_type = excluded.content_type,
                   upload_name = excluded.upload_name, length = excluded.length, pending = excluded.pending",
                &[&m.media_id, &m.user_id, &m.content_type, &m.upload_name, &m.length, &m.created_ts, &m.pending],
            )?;
            Ok(())
        })
    }

    fn get_media(&self, media_id: &str) -> Result<Option<MediaRow>> {
        self.read(|db| {
            let row = db.opt(
                "SELECT media_id, user_id, content_type, upload_name, length, created_ts, pending FROM media
                 WHERE media_id = $1",
                &[&media_id],
            )?;
            Ok(row.as_ref().map(media))
        })
    }

    fn delete_media(&self, media_id: &str) -> Result<()> {
        // Its thumbnails go with it (they refer to it).
        self.write(|tx| {
            tx.exec("DELETE FROM media_thumbnails WHERE media_id = $1", &[&media_id])?;
            tx.exec("DELETE FROM media WHERE media_id = $1", &[&media_id])?;
            Ok(())
        })
    }

    fn get_thumbnail(&self, media_id: &str, width: u32, height: u32, method: &str) -> Result<Option<(String, i64)>> {
        self.read(|db| {
            let row = db.opt(
                "SELECT content_type, length FROM media_thumbnails WHERE media_id = $1 AND width = $2
                 AND height = $3 AND method = $4",
                &[&media_id, &i64::from(width), &i64::from(height), &method],
            )?;
            Ok(row.map(|r| (r.get(0), r.get(1))))
        })
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
        self.write(|tx| {
            tx.exec(
                "INSERT INTO media_thumbnails (media_id, width, height, method, content_type, length)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (media_id, width, height, method) DO UPDATE
                 SET content_type = excluded.content_type, length = excluded.length",
                &[&media_id, &i64::from(width), &i64::from(height), &method, &content_type, &length],
            )?;
            Ok(())
        })
    }
}
