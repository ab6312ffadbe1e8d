//! Aliases, the room directory and the user directory (`DirectoryStore`).

use super::*;

/// `term` lower-cased, with the `LIKE` wildcards (and the escape character) escaped, so that
/// user input matches literally.
fn like_literal(term: &str) -> String {
    term.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

impl DirectoryStore for PostgresStore {
    fn create_alias(&self, alias: &str, room_id: &str, creator: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)",
                &[&alias, &room_id, &creator],
            )?;
            Ok(())
        })
    }

    fn get_alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        self.read(|db| {
            let row = db.opt("SELECT room_id, creator FROM room_aliases WHERE alias = $1", &[&alias])?;
            Ok(row.map(|r| (r.get(0), r.get(1))))
        })
    }

    fn delete_alias(&self, alias: &str) -> Result<bool> {
        self.write(|tx| Ok(tx.exec("DELETE FROM room_aliases WHERE alias = $1", &[&alias])? > 0))
    }

    fn aliases_for_room(&self, room_id: &str) -> Result<Vec<String>> {
        self.read(|db| {
            let rows = db.rows("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias", &[&room_id])?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn move_aliases(&self, from: &str, to: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec("UPDATE room_aliases SET room_id = $2 WHERE room_id = $1", &[&from, &to])?;
            Ok(())
        })
    }

    fn set_room_public(&self, room_id: &str, public: bool) -> Result<()> {
        self.write(|tx| {
            tx.exec("UPDATE rooms SET is_public = $2 WHERE room_id = $1", &[&room_id, &public])?;
            Ok(())
        })
    }

    fn set_room_join_rule(&self, room_id: &str, join_rule: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec("UPDATE rooms SET join_rule = $2 WHERE room_id = $1", &[&room_id, &join_rule])?;
            Ok(())
        })
    }

    fn published_rooms(&self) -> Result<Vec<(String, i64)>> {
        self.read(|db| {
            let rows = db.rows(
                "SELECT r.room_id, (SELECT count(*) FROM current_state c WHERE c.room_id = r.room_id
                   AND c.type = 'm.room.member' AND c.membership = 'join') AS joined
                 FROM rooms r WHERE r.is_public ORDER BY joined DESC, r.room_id",
                &[],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn set_appservice_room_listed(&self, as_id: &str, network_id: &str, room_id: &str, listed: bool) -> Result<()> {
        let sql = if listed {
            "INSERT INTO appservice_room_list (as_id, network_id, room_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM appservice_room_list WHERE as_id = $1 AND network_id = $2 AND room_id = $3"
        };
        self.write(|tx| {
            tx.exec(sql, &[&as_id, &network_id, &room_id])?;
            Ok(())
        })
    }

    fn appservice_listed_rooms(&self, network: Option<(&str, &str)>) -> Result<Vec<(String, i64)>> {
        let (a, n) = network.unzip();
        self.read(|db| {
            let rows = db.rows(
                "SELECT DISTINCT l.room_id, (SELECT count(*) FROM current_state c WHERE c.room_id = l.room_id
                   AND c.type = 'm.room.member' AND c.membership = 'join') AS joined
                 FROM appservice_room_list l WHERE $1::TEXT IS NULL OR (l.as_id = $1 AND l.network_id = $2)
                 ORDER BY joined DESC, l.room_id",
                &[&a, &n],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
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
        //
        // Every term must be a prefix of the localpart or of a word of the display name, ignoring
        // ASCII case as SQLite's LIKE does: the terms come lower-cased and `lower(... COLLATE "C")`
        // folds ASCII only, whatever the database's locale, so both backends match the same
        // names. Sorting under "C" too compares bytes, as SQLite does.
        let terms: Vec<String> = terms.iter().map(|t| like_literal(t)).collect();
        self.read(|db| {
            let rows = db.rows(
                r#"SELECT p.user_id, p.displayname, p.avatar_url FROM profiles p JOIN users u ON u.user_id = p.user_id
                 WHERE NOT u.deactivated AND ($1 OR p.user_id IN (
                   SELECT m.state_key FROM current_state m WHERE m.type = 'm.room.member' AND m.membership = 'join'
                   AND ((m.state_key <> $2 AND m.room_id IN (SELECT room_id FROM current_state WHERE type = 'm.room.member'
                                                             AND state_key = $2 AND membership = 'join'))
                        OR m.room_id IN (SELECT room_id FROM rooms WHERE join_rule = 'public')
                        OR m.room_id IN (SELECT cs.room_id FROM current_state cs JOIN events e ON e.event_id = cs.event_id
                                         WHERE cs.type = 'm.room.history_visibility' AND cs.state_key = ''
                                         AND (e.json::jsonb -> 'content' ->> 'history_visibility') = 'world_readable'))))
                 AND NOT EXISTS (
                   SELECT 1 FROM unnest($3::TEXT[]) AS t (term)
                   WHERE NOT (lower(p.user_id COLLATE "C") LIKE '@' || t.term || '%' ESCAPE '\'
                              OR lower(coalesce(p.displayname, '') COLLATE "C") LIKE t.term || '%' ESCAPE '\'
                              OR lower(coalesce(p.displayname, '') COLLATE "C") LIKE '% ' || t.term || '%' ESCAPE '\'))
                 ORDER BY p.displayname IS NULL, lower(p.displayname COLLATE "C"), p.user_id COLLATE "C"
                 LIMIT $4"#,
                &[&search_all_users, &searcher, &terms, &int(limit)],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        })
    }
}
