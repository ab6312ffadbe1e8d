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

impl MediaStore for PostgresStore {
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
