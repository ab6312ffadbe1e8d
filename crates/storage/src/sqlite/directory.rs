//! Aliases, the room directory and the user directory (`DirectoryStore`).

use super::*;

impl DirectoryStore for SqliteStore {
    fn create_alias(&self, alias: &str, room_id: &str, creator: &str) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO room_aliases (alias, room_id, creator) VALUES (?1, ?2, ?3)",
                params![alias, room_id, creator],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn get_alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        self.reader()
            .row("SELECT room_id, creator FROM room_aliases WHERE alias = ?1", [alias], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(backend)
    }

    fn delete_alias(&self, alias: &str) -> Result<bool> {
        Ok(self.conn().exec("DELETE FROM room_aliases WHERE alias = ?1", [alias]).map_err(backend)? > 0)
    }

    fn aliases_for_room(&self, room_id: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT alias FROM room_aliases WHERE room_id = ?1 ORDER BY alias").map_err(backend)?;
        let rows = stmt.query_map([room_id], |r| r.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn move_aliases(&self, from: &str, to: &str) -> Result<()> {
        self.conn()
            .exec("UPDATE room_aliases SET room_id = ?2 WHERE room_id = ?1", params![from, to])
            .map(drop)
            .map_err(backend)
    }

    fn set_room_public(&self, room_id: &str, public: bool) -> Result<()> {
        self.conn()
            .exec("UPDATE rooms SET is_public = ?2 WHERE room_id = ?1", params![room_id, public])
            .map_err(backend)?;
        Ok(())
    }

    fn set_room_join_rule(&self, room_id: &str, join_rule: &str) -> Result<()> {
        self.conn()
            .exec("UPDATE rooms SET join_rule = ?2 WHERE room_id = ?1", params![room_id, join_rule])
            .map_err(backend)?;
        Ok(())
    }

    fn published_rooms(&self) -> Result<Vec<(String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.room_id, (SELECT count(*) FROM current_state c WHERE c.room_id = r.room_id
                   AND c.type = 'm.room.member' AND c.membership = 'join') AS joined
                 FROM rooms r WHERE r.is_public = 1 ORDER BY joined DESC, r.room_id",
            )
            .map_err(backend)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn set_appservice_room_listed(&self, as_id: &str, network_id: &str, room_id: &str, listed: bool) -> Result<()> {
        let sql = if listed {
            "INSERT INTO appservice_room_list (as_id, network_id, room_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM appservice_room_list WHERE as_id = ?1 AND network_id = ?2 AND room_id = ?3"
        };
        self.conn().exec(sql, params![as_id, network_id, room_id]).map_err(backend)?;
        Ok(())
    }

    fn appservice_listed_rooms(&self, network: Option<(&str, &str)>) -> Result<Vec<(String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT l.room_id, (SELECT count(*) FROM current_state c WHERE c.room_id = l.room_id
                   AND c.type = 'm.room.member' AND c.membership = 'join') AS joined
                 FROM appservice_room_list l WHERE ?1 IS NULL OR (l.as_id = ?1 AND l.network_id = ?2)
                 ORDER BY joined DESC, l.room_id",
            )
            .map_err(backend)?;
        let (a, n) = network.unzip();
        let rows = stmt.query_map(params![a, n], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn search_user_directory(
        &self,
        searcher: &str,
        terms: &[String],
        search_all_users: bool,
        limit: usize,
    ) -> Result<Vec<DirectoryUser>> {
        // Visible (as Synapse): other users sharing a joined room with the searcher, users
        // joined to a public room (join rule `public` or history `world_readable`), or
        // (search_all_users) every local user. The searcher finds themselves only in a public
        // room.
        let mut sql = String::from(
            "SELECT p.user_id, p.displayname, p.avatar_url FROM profiles p JOIN users u ON u.user_id = p.user_id
             WHERE u.deactivated = 0 AND (?1 OR p.user_id IN (
               SELECT m.state_key FROM current_state m WHERE m.type = 'm.room.member' AND m.membership = 'join'
               AND ((m.state_key <> ?2 AND m.room_id IN (SELECT room_id FROM current_state WHERE type = 'm.room.member'
                                                         AND state_key = ?2 AND membership = 'join'))
                    OR m.room_id IN (SELECT room_id FROM rooms WHERE join_rule = 'public')
                    OR m.room_id IN (SELECT cs.room_id FROM current_state cs JOIN events e ON e.event_id = cs.event_id
                                     WHERE cs.type = 'm.room.history_visibility' AND cs.state_key = ''
                                     AND json_extract(e.json, '$.content.history_visibility') = 'world_readable'))))",
        );
        let mut args: Vec<rusqlite::types::Value> = vec![search_all_users.into(), searcher.to_owned().into()];
        for term in terms {
            let n = args.len();
            sql.push_str(&format!(
                " AND (lower(p.user_id) LIKE ?{a} ESCAPE '\\' OR lower(coalesce(p.displayname, '')) LIKE ?{b} ESCAPE '\\'
                       OR lower(coalesce(p.displayname, '')) LIKE ?{c} ESCAPE '\\')",
                a = n + 1,
                b = n + 2,
                c = n + 3
            ));
            let escaped = term.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            args.push(format!("@{escaped}%").into());
            args.push(format!("{escaped}%").into());
            args.push(format!("% {escaped}%").into());
        }
        sql.push_str(&format!(" ORDER BY p.displayname IS NULL, lower(p.displayname), p.user_id LIMIT {}", limit));
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }
}
