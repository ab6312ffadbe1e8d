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

impl MediaStore for SqliteStore {
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
