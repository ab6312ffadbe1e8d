//! The embedded SQLite backend.
//!
//! One connection behind a `std::sync::Mutex`: SQLite allows one writer at a time anyway, every
//! call is a short blocking function (never held across an `.await`), and a single connection
//! makes stream positions strictly ordered with their commits, which `/sync` relies on (a
//! reader that sees position N sees everything before N).
//!
//! WAL checkpoints, the only step that writes the database file and fsyncs, run on a thread of
//! their own with a second connection (`Checkpointer`), so no request ever pays for one and
//! callers can run storage calls inline.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;

use crate::*;

/// Migrations, applied in order; the schema version is the number applied. Never edit a
/// released one: append.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_directory_media.sql"),
    include_str!("migrations/0003_registration_tokens.sql"),
    include_str!("migrations/0004_e2ee_ephemeral.sql"),
    include_str!("migrations/0005_search.sql"),
    include_str!("migrations/0006_sync_indexes.sql"),
    include_str!("migrations/0007_federation.sql"),
    include_str!("migrations/0008_ratelimit_override.sql"),
    include_str!("migrations/0009_relations.sql"),
    include_str!("migrations/0010_txn_by_event.sql"),
];

/// A full state snapshot is written after this many deltas, bounding the walk to read a
/// group's state while keeping each event's state write small.
pub const MAX_STATE_DELTA_CHAIN: i64 = 64;

/// Statements through the connection's prepared-statement cache: parsing SQL was a visible
/// share of each `/send` before.
trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P: rusqlite::Params, F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P: rusqlite::Params, F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Read connections per store: more than the runtime's workers, so a reader is nearly always free.
const READERS: usize = 4;

/// How many access tokens [`SqliteStore`] keeps in memory.
const MAX_CACHED_TOKENS: usize = 100_000;

#[derive(Default)]
struct UserCache {
    rows: HashMap<String, UserRow>,
    /// Bumped by every write to `users`.
    generation: u64,
}

/// The SQLite store.
pub struct SqliteStore {
    /// The one connection that writes (SQLite allows one writer at a time anyway).
    conn: Mutex<Connection>,
    /// Read-only connections for queries, so that reads neither wait for a write in progress
    /// nor block a runtime worker behind one (in WAL mode they read the last commit). Empty for
    /// an in-memory database, which reads through `conn`.
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    /// Access token -> (user, device): every authenticated request looks its token up, and
    /// tokens are only ever added or deleted, so this is emptied on any deletion.
    tokens: Mutex<HashMap<String, (String, String)>>,
    /// Account rows, read by every authenticated request and written rarely.
    users: Mutex<UserCache>,
    /// Set on drop, to stop the checkpoint thread.
    stop: Option<Arc<AtomicBool>>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// How often the checkpoint thread copies the WAL into the database file.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Indexes events written since the last pass for search (one transaction for the batch: an
/// FTS5 insert per message commit would cost every send a segment write).
fn index_search_backlog(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         INSERT INTO event_search (value, key, event_id, room_id, stream_ordering)
         SELECT v, k, event_id, room_id, stream_ordering FROM (
             SELECT CASE type WHEN 'm.room.message' THEN json_extract(json, '$.content.body')
                              WHEN 'm.room.name' THEN json_extract(json, '$.content.name')
                              ELSE json_extract(json, '$.content.topic') END AS v,
                    CASE type WHEN 'm.room.message' THEN 'content.body'
                              WHEN 'm.room.name' THEN 'content.name' ELSE 'content.topic' END AS k,
                    event_id, room_id, stream_ordering
             FROM events WHERE stream_ordering > (SELECT position FROM search_position) AND rejected = 0
               AND type IN ('m.room.message', 'm.room.name', 'm.room.topic')
         ) WHERE typeof(v) = 'text';
         UPDATE search_position SET position = (SELECT coalesce(max(stream_ordering), 0) FROM events);
         COMMIT;",
    )
    .map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        backend(e)
    })
}

/// Moves committed WAL frames into the database file from its own connection and thread, and
/// indexes new events for search.
///
/// PASSIVE checkpoints never block the writer; with auto-checkpointing off on the main
/// connection, this is the one place the database file is written and synced.
fn spawn_checkpointer(path: &Path, stop: Arc<AtomicBool>) -> Result<()> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(CHECKPOINT_INTERVAL);
                if let Err(e) = index_search_backlog(&conn) {
                    tracing::warn!(error = %e, "search indexing failed");
                }
                // (busy, WAL frames, frames checkpointed); a busy result just means next time.
                if let Err(e) = conn.row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0)) {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
            // A last full pass, so a clean shutdown leaves a small WAL.
            let _ = conn.row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0));
        })
        .map_err(|e| StorageError::Backend(e.to_string()))?;
    Ok(())
}

fn backend(e: rusqlite::Error) -> StorageError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.code == rusqlite::ErrorCode::ConstraintViolation
    {
        return StorageError::Conflict;
    }
    StorageError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::Backend(e.to_string()))?;
        }
        let mut store = Self::setup(Connection::open(path).map_err(backend)?)?;
        store.conn().execute_batch("PRAGMA wal_autocheckpoint = 0;").map_err(backend)?;
        for _ in 0..READERS {
            let reader = Connection::open(path).map_err(backend)?;
            reader.execute_batch("PRAGMA query_only = ON;").map_err(backend)?;
            reader.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
            reader.set_prepared_statement_cache_capacity(256);
            store.readers.push(Mutex::new(reader));
        }
        let stop = Arc::new(AtomicBool::new(false));
        spawn_checkpointer(path, stop.clone())?;
        store.stop = Some(stop);
        Ok(store)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory().map_err(backend)?)
    }

    fn setup(mut conn: Connection) -> Result<Self> {
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(256);
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            readers: Vec::new(),
            next_reader: Default::default(),
            tokens: Mutex::new(HashMap::new()),
            users: Mutex::new(UserCache::default()),
            stop: None,
        })
    }

    fn user_cache(&self) -> MutexGuard<'_, UserCache> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a committed write to `users`: cached rows go, and reads begun before it keep
    /// nothing.
    fn users_changed(&self) {
        let mut cache = self.user_cache();
        cache.generation += 1;
        cache.rows.clear();
    }

    fn token_cache(&self) -> MutexGuard<'_, HashMap<String, (String, String)>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free read connection (or, if all are busy, the next in turn).
    fn reader(&self) -> MutexGuard<'_, Connection> {
        if self.readers.is_empty() {
            return self.conn();
        }
        let first = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.readers.len() {
            match self.readers[(first + i) % self.readers.len()].try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        self.readers[first % self.readers.len()].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied transaction (rusqlite rolls
        // back on drop), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The schema version this build writes.
    pub fn supported_schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)").map_err(backend)?;
    let found: Option<i64> =
        conn.row("SELECT version FROM schema_version", [], |r| r.get(0)).optional().map_err(backend)?;
    let current = found.unwrap_or(0);
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(StorageError::SchemaTooNew { found: current, supported });
    }
    let tx = conn.transaction().map_err(backend)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(|e| StorageError::Backend(format!("migration {}: {e}", i + 1)))?;
    }
    tx.exec("DELETE FROM schema_version", []).map_err(backend)?;
    tx.exec("INSERT INTO schema_version (version) VALUES (?1)", [supported]).map_err(backend)?;
    tx.commit().map_err(backend)
}

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        user_id: r.get(0)?,
        password_hash: r.get(1)?,
        is_admin: r.get(2)?,
        is_guest: r.get(3)?,
        deactivated: r.get(4)?,
        shadow_banned: r.get(5)?,
        creation_ts: r.get(6)?,
    })
}

const USER_COLUMNS: &str = "user_id, password_hash, is_admin, is_guest, deactivated, shadow_banned, creation_ts";

impl UserStore for SqliteStore {
    fn create_user(&self, u: &UserRow, displayname: Option<&str>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec(
            &format!("INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![u.user_id, u.password_hash, u.is_admin, u.is_guest, u.deactivated, u.shadow_banned, u.creation_ts],
        )
        .map_err(backend)?;
        tx.exec("INSERT INTO profiles (user_id, displayname) VALUES (?1, ?2)", params![u.user_id, displayname])
            .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn get_user(&self, user_id: &str) -> Result<Option<UserRow>> {
        let generation = {
            let cache = self.user_cache();
            if let Some(user) = cache.rows.get(user_id) {
                return Ok(Some(user.clone()));
            }
            cache.generation
        };
        let found = self
            .reader()
            .row(&format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = ?1"), [user_id], user_from_row)
            .optional()
            .map_err(backend)?;
        let mut cache = self.user_cache();
        // A write since the read began may have changed the row: keep it only if none did.
        if let Some(user) = &found
            && cache.generation == generation
        {
            if cache.rows.len() >= MAX_CACHED_TOKENS {
                cache.rows.clear();
            }
            cache.rows.insert(user_id.to_owned(), user.clone());
        }
        Ok(found)
    }

    fn find_user_case_insensitive(&self, user_id: &str) -> Result<Option<UserRow>> {
        self.reader()
            .row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE lower(user_id) = lower(?1) LIMIT 1"),
                [user_id],
                user_from_row,
            )
            .optional()
            .map_err(backend)
    }

    fn set_password_hash(&self, user_id: &str, hash: Option<&str>) -> Result<()> {
        self.conn()
            .exec("UPDATE users SET password_hash = ?2 WHERE user_id = ?1", params![user_id, hash])
            .map_err(backend)?;
        self.users_changed();
        Ok(())
    }

    fn set_user_flag(&self, user_id: &str, flag: UserFlag, value: bool) -> Result<()> {
        let column = match flag {
            UserFlag::Admin => "is_admin",
            UserFlag::Deactivated => "deactivated",
            UserFlag::ShadowBanned => "shadow_banned",
        };
        self.conn()
            .exec(&format!("UPDATE users SET {column} = ?2 WHERE user_id = ?1"), params![user_id, value])
            .map_err(backend)?;
        self.users_changed();
        Ok(())
    }

    fn upsert_device(&self, user_id: &str, device_id: &str, name: Option<&str>) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO devices (user_id, device_id, display_name) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, device_id) DO UPDATE SET
                   display_name = coalesce(excluded.display_name, display_name)",
                params![user_id, device_id, name],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn get_devices(&self, user_id: &str) -> Result<Vec<DeviceRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices
                 WHERE user_id = ?1 ORDER BY device_id",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([user_id], |r| {
                Ok(DeviceRow {
                    device_id: r.get(0)?,
                    display_name: r.get(1)?,
                    last_seen_ts: r.get(2)?,
                    last_seen_ip: r.get(3)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn rename_device(&self, user_id: &str, device_id: &str, name: Option<&str>) -> Result<bool> {
        let n = self
            .conn()
            .exec(
                "UPDATE devices SET display_name = ?3 WHERE user_id = ?1 AND device_id = ?2",
                params![user_id, device_id, name],
            )
            .map_err(backend)?;
        Ok(n > 0)
    }

    fn delete_device(&self, user_id: &str, device_id: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec("DELETE FROM access_tokens WHERE user_id = ?1 AND device_id = ?2", params![user_id, device_id])
            .map_err(backend)?;
        // Under the connection's lock, which every cache fill holds too.
        self.token_cache().clear();
        let n = tx
            .exec("DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2", params![user_id, device_id])
            .map_err(backend)?;
        delete_device_crypto(&tx, user_id, Some(device_id), None)?;
        tx.commit().map_err(backend)?;
        Ok(n > 0)
    }

    fn add_access_token(&self, token: &str, user_id: &str, device_id: &str) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO access_tokens (token, user_id, device_id) VALUES (?1, ?2, ?3)",
                params![token, user_id, device_id],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn get_access_token(&self, token: &str) -> Result<Option<(String, String)>> {
        if let Some(found) = self.token_cache().get(token) {
            return Ok(Some(found.clone()));
        }
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT user_id, device_id FROM access_tokens WHERE token = ?1").map_err(backend)?;
        let found: Option<(String, String)> =
            stmt.query_row([token], |r| Ok((r.get(0)?, r.get(1)?))).optional().map_err(backend)?;
        if let Some(found) = &found {
            let mut cache = self.token_cache();
            if cache.len() >= MAX_CACHED_TOKENS {
                cache.clear();
            }
            cache.insert(token.to_owned(), found.clone());
        }
        Ok(found)
    }

    fn touch_device(&self, user_id: &str, device_id: &str, ip: &str, ts: i64) -> Result<()> {
        self.conn()
            .exec(
                "UPDATE devices SET last_seen_ts = ?3, last_seen_ip = ?4 WHERE user_id = ?1 AND device_id = ?2",
                params![user_id, device_id, ts, ip],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn delete_access_token(&self, token: &str) -> Result<()> {
        let conn = self.conn();
        conn.exec("DELETE FROM access_tokens WHERE token = ?1", [token]).map_err(backend)?;
        // Under the connection's lock, which every cache fill holds too.
        self.token_cache().clear();
        Ok(())
    }

    fn delete_all_devices(&self, user_id: &str, keep: Option<&str>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let keep = keep.unwrap_or("");
        tx.exec("DELETE FROM access_tokens WHERE user_id = ?1 AND device_id != ?2", params![user_id, keep])
            .map_err(backend)?;
        // Under the connection's lock, which every cache fill holds too.
        self.token_cache().clear();
        tx.exec("DELETE FROM devices WHERE user_id = ?1 AND device_id != ?2", params![user_id, keep])
            .map_err(backend)?;
        delete_device_crypto(&tx, user_id, None, Some(keep))?;
        tx.commit().map_err(backend)
    }

    fn get_ratelimit_override(&self, user_id: &str) -> Result<Option<(Option<f64>, Option<i64>)>> {
        self.reader()
            .row("SELECT messages_per_second, burst_count FROM ratelimit_override WHERE user_id = ?1", [user_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(backend)
    }

    fn get_profile(&self, user_id: &str) -> Result<Option<(Option<String>, Option<String>)>> {
        self.reader()
            .row("SELECT displayname, avatar_url FROM profiles WHERE user_id = ?1", [user_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(backend)
    }

    fn set_profile_field(&self, user_id: &str, field: ProfileField, value: Option<&str>) -> Result<()> {
        let column = match field {
            ProfileField::DisplayName => "displayname",
            ProfileField::AvatarUrl => "avatar_url",
        };
        self.conn()
            .exec(
                &format!(
                    "INSERT INTO profiles (user_id, {column}) VALUES (?1, ?2)
                     ON CONFLICT (user_id) DO UPDATE SET {column} = excluded.{column}"
                ),
                params![user_id, value],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn count_users(&self) -> Result<i64> {
        self.reader().row("SELECT count(*) FROM users", [], |r| r.get(0)).map_err(backend)
    }
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        stream_ordering: r.get(0)?,
        json: r.get(1)?,
        state_group: r.get(2)?,
        rejected: r.get(3)?,
        soft_failed: r.get(4)?,
    })
}

const EVENT_COLUMNS: &str = "stream_ordering, json, state_group, rejected, soft_failed";

/// Claims the next position of the one stream that events and account data share, so that a
/// single sync token orders both. Called inside the writing transaction, so positions commit in
/// order.
/// The rows of one event, inside the caller's transaction.
fn write_event(tx: &Connection, ev: &NewEvent<'_>) -> Result<(i64, i64)> {
    let group = write_state_group(tx, ev.room_id, &ev.state)?;
    let stream = next_stream_position(tx)?;
    tx.exec(
        "INSERT INTO events (event_id, room_id, type, state_key, sender, membership, json,
                             state_group, rejected, soft_failed, stream_ordering)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            ev.event_id,
            ev.room_id,
            ev.event_type,
            ev.state_key,
            ev.sender,
            ev.membership,
            ev.json,
            group,
            ev.rejected,
            ev.soft_failed,
            stream
        ],
    )
    .map_err(backend)?;
    if !ev.rejected && !ev.soft_failed {
        // A relation (edit, thread reply, reference, annotation) is indexed by its parent.
        tx.exec(
            "INSERT OR IGNORE INTO event_relations (event_id, relates_to, rel_type, room_id, type, sender, stream_ordering)
             SELECT event_id, json_extract(json, '$.content.\"m.relates_to\".event_id'),
                    json_extract(json, '$.content.\"m.relates_to\".rel_type'), room_id, type, sender, stream_ordering
             FROM events WHERE stream_ordering = ?1
               AND json_type(json, '$.content.\"m.relates_to\".event_id') = 'text'
               AND json_type(json, '$.content.\"m.relates_to\".rel_type') = 'text'",
            params![stream],
        )
        .map_err(backend)?;
        // Only what changes: the parents leave, the event joins (a busy room can have many).
        for id in ev.prev_events {
            tx.exec("DELETE FROM forward_extremities WHERE room_id = ?1 AND event_id = ?2", params![ev.room_id, id])
                .map_err(backend)?;
        }
        tx.exec(
            "INSERT INTO forward_extremities (room_id, event_id) VALUES (?1, ?2)",
            params![ev.room_id, ev.event_id],
        )
        .map_err(backend)?;
    }
    if let Some(state) = ev.current_state {
        tx.exec("DELETE FROM current_state WHERE room_id = ?1", [ev.room_id]).map_err(backend)?;
        // The membership column comes from the events themselves (this one is stored above).
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO current_state (room_id, type, state_key, event_id, membership)
                 SELECT ?1, ?2, ?3, ?4, (SELECT membership FROM events WHERE event_id = ?4)",
            )
            .map_err(backend)?;
        for e in state {
            stmt.execute(params![ev.room_id, e.event_type, e.state_key, e.event_id]).map_err(backend)?;
        }
    } else if ev.updates_current_state
        && let Some(key) = ev.state_key
    {
        tx.exec(
            "INSERT OR REPLACE INTO current_state (room_id, type, state_key, event_id, membership)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![ev.room_id, ev.event_type, key, ev.event_id, ev.membership],
        )
        .map_err(backend)?;
    }
    if let Some((user, device, txn)) = ev.txn {
        tx.exec(
            "INSERT INTO event_txn_ids (user_id, device_id, txn_id, event_id) VALUES (?1, ?2, ?3, ?4)",
            params![user, device, txn, ev.event_id],
        )
        .map_err(backend)?;
    }
    if let Some((target, redacted_json)) = ev.redaction {
        tx.exec("UPDATE events SET json = ?2 WHERE event_id = ?1", params![target, redacted_json]).map_err(backend)?;
    }
    for destination in ev.destinations {
        tx.exec(
            "INSERT INTO federation_outbox (destination, kind, body) VALUES (?1, 'pdu', ?2)",
            params![destination, ev.event_id],
        )
        .map_err(backend)?;
    }
    Ok((stream, group))
}

fn next_stream_position(tx: &Connection) -> Result<i64> {
    tx.row("UPDATE stream_position SET position = position + 1 RETURNING position", [], |r| r.get(0)).map_err(backend)
}

fn write_state_group(tx: &Connection, room_id: &str, change: &StateChange) -> Result<i64> {
    match change {
        StateChange::Same(group) => Ok(*group),
        StateChange::New { prev, delta } => {
            tx.exec("INSERT INTO state_groups (room_id, prev_group) VALUES (?1, ?2)", params![room_id, prev])
                .map_err(backend)?;
            let group = tx.last_insert_rowid();
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO state_group_entries (state_group, type, state_key, event_id)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(backend)?;
            for e in delta {
                stmt.execute(params![group, e.event_type, e.state_key, e.event_id]).map_err(backend)?;
            }
            Ok(group)
        }
    }
}

impl RoomStore for SqliteStore {
    fn create_room(&self, room: &RoomRow) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO rooms (room_id, room_version, creator, is_public) VALUES (?1, ?2, ?3, ?4)",
                params![room.room_id, room.room_version, room.creator, room.is_public],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn get_room(&self, room_id: &str) -> Result<Option<RoomRow>> {
        self.reader()
            .row("SELECT room_id, room_version, creator, is_public FROM rooms WHERE room_id = ?1", [room_id], |r| {
                Ok(RoomRow { room_id: r.get(0)?, room_version: r.get(1)?, creator: r.get(2)?, is_public: r.get(3)? })
            })
            .optional()
            .map_err(backend)
    }

    fn persist_event(&self, ev: &NewEvent<'_>) -> Result<(i64, i64)> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let written = write_event(&tx, ev)?;
        tx.commit().map_err(backend)?;
        Ok(written)
    }

    fn persist_events(&self, events: &[NewEvent<'_>]) -> Vec<Result<(i64, i64)>> {
        let mut conn = self.conn();
        let failed = |e: &StorageError| events.iter().map(|_| Err(StorageError::Backend(e.to_string()))).collect();
        let mut tx = match conn.transaction().map_err(backend) {
            Ok(tx) => tx,
            Err(e) => return failed(&e),
        };
        // Each event in its own savepoint: one that fails (a repeated transaction ID) is
        // undone alone and the others still commit.
        let mut results = Vec::with_capacity(events.len());
        for ev in events {
            let result = tx.savepoint().map_err(backend).and_then(|sp| {
                let written = write_event(&sp, ev)?;
                sp.commit().map_err(backend)?;
                Ok(written)
            });
            results.push(result);
        }
        match tx.commit().map_err(backend) {
            Ok(()) => results,
            Err(e) => failed(&e),
        }
    }

    fn get_event(&self, event_id: &str) -> Result<Option<EventRow>> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ?1")).map_err(backend)?;
        stmt.query_row([event_id], event_from_row).optional().map_err(backend)
    }

    fn get_state_group(&self, group: i64) -> Result<Vec<StateEntry>> {
        // Walk from the group back to its snapshot; the newest entry for a key wins.
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "WITH RECURSIVE chain(g, depth) AS (
                   SELECT ?1, 0
                   UNION ALL
                   SELECT s.prev_group, chain.depth + 1 FROM state_groups s JOIN chain ON s.id = chain.g
                   WHERE s.prev_group IS NOT NULL
                 )
                 SELECT e.type, e.state_key, e.event_id FROM state_group_entries e
                 JOIN chain ON e.state_group = chain.g ORDER BY chain.depth DESC",
            )
            .map_err(backend)?;
        let mut map = std::collections::HashMap::new();
        let rows = stmt
            .query_map([group], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(backend)?;
        for row in rows {
            let (t, k, e) = row.map_err(backend)?;
            map.insert((t, k), e);
        }
        Ok(map
            .into_iter()
            .map(|((event_type, state_key), event_id)| StateEntry { event_type, state_key, event_id })
            .collect())
    }

    fn state_group_entry(&self, group: i64, event_type: &str, state_key: &str) -> Result<Option<String>> {
        self.reader()
            .row(
                "WITH RECURSIVE chain(g, depth) AS (
                   SELECT ?1, 0
                   UNION ALL
                   SELECT s.prev_group, chain.depth + 1 FROM state_groups s JOIN chain ON s.id = chain.g
                   WHERE s.prev_group IS NOT NULL
                 )
                 SELECT e.event_id FROM chain JOIN state_group_entries e
                   ON e.state_group = chain.g AND e.type = ?2 AND e.state_key = ?3
                 ORDER BY chain.depth LIMIT 1",
                rusqlite::params![group, event_type, state_key],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
    }

    fn state_group_chain_length(&self, group: i64) -> Result<i64> {
        self.reader()
            .row(
                "WITH RECURSIVE chain(g, n) AS (
                   SELECT ?1, 0
                   UNION ALL
                   SELECT s.prev_group, chain.n + 1 FROM state_groups s JOIN chain ON s.id = chain.g
                   WHERE s.prev_group IS NOT NULL
                 ) SELECT max(n) FROM chain",
                [group],
                |r| r.get(0),
            )
            .map_err(backend)
    }

    fn get_current_state(&self, room_id: &str) -> Result<Vec<StateEntry>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT type, state_key, event_id FROM current_state WHERE room_id = ?1")
            .map_err(backend)?;
        let rows = stmt
            .query_map([room_id], |r| {
                Ok(StateEntry { event_type: r.get(0)?, state_key: r.get(1)?, event_id: r.get(2)? })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn get_forward_extremities(&self, room_id: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT event_id FROM forward_extremities WHERE room_id = ?1 ORDER BY event_id")
            .map_err(backend)?;
        let rows = stmt.query_map([room_id], |r| r.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn recent_txn_ids(&self, limit: usize) -> Result<Vec<(String, String, String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT user_id, device_id, txn_id, event_id FROM event_txn_ids ORDER BY rowid DESC LIMIT ?1",
            )
            .map_err(backend)?;
        stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .and_then(|r| r.collect())
            .map_err(backend)
    }

    fn txn_ids_of_events(&self, user_id: &str, device_id: &str, event_ids: &[String]) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT event_id, txn_id FROM event_txn_ids WHERE event_id = ?1 AND user_id = ?2 AND device_id = ?3",
            )
            .map_err(backend)?;
        let mut out = Vec::new();
        for id in event_ids {
            if let Some(txn) =
                stmt.query_row(params![id, user_id, device_id], |r| r.get(1)).optional().map_err(backend)?
            {
                out.push((id.clone(), txn));
            }
        }
        Ok(out)
    }

    fn get_txn_event(&self, user_id: &str, device_id: &str, txn_id: &str) -> Result<Option<String>> {
        self.reader()
            .row(
                "SELECT event_id FROM event_txn_ids WHERE user_id = ?1 AND device_id = ?2 AND txn_id = ?3",
                params![user_id, device_id, txn_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
    }

    fn rooms_for_user(&self, user_id: &str, membership: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = ?1
                 AND membership = ?2 ORDER BY room_id",
            )
            .map_err(backend)?;
        let rows = stmt.query_map([user_id, membership], |r| r.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn room_memberships(&self, room_id: &str) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT state_key, membership FROM current_state WHERE room_id = ?1 AND type = 'm.room.member'
                 ORDER BY state_key",
            )
            .map_err(backend)?;
        let rows = stmt.query_map([room_id], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn relations(&self, query: &RelationQuery<'_>) -> Result<Vec<EventRow>> {
        let order = if query.backwards { "DESC" } else { "ASC" };
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT e.stream_ordering, e.json, e.state_group, e.rejected, e.soft_failed
                 FROM event_relations r JOIN events e ON e.event_id = r.event_id
                 WHERE r.relates_to = ?1 AND (?2 IS NULL OR r.rel_type = ?2) AND (?3 IS NULL OR r.type = ?3)
                   AND r.stream_ordering > ?4 AND r.stream_ordering < ?5
                 ORDER BY r.stream_ordering {order} LIMIT ?6"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(
                params![query.parent, query.rel_type, query.event_type, query.after, query.before, query.limit as i64],
                event_from_row,
            )
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn relation_summaries(&self, parents: &[String]) -> Result<Vec<RelationRow>> {
        // One query for the whole page: the parents go in as a JSON array.
        let list = serde_json::to_string(parents).map_err(|e| StorageError::Backend(e.to_string()))?;
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.relates_to, r.rel_type, r.event_id, r.sender, r.stream_ordering
                 FROM event_relations r
                 WHERE r.relates_to IN (SELECT value FROM json_each(?1))
                   AND r.rel_type IN ('m.replace', 'm.thread', 'm.reference')
                 ORDER BY r.stream_ordering",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([list], |r| {
                Ok(RelationRow {
                    parent: r.get(0)?,
                    rel_type: r.get(1)?,
                    event_id: r.get(2)?,
                    sender: r.get(3)?,
                    stream_ordering: r.get(4)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn events_by_timestamp(&self, room_id: &str, ts: i64, forwards: bool, limit: usize) -> Result<Vec<EventRow>> {
        // A scan of the room's events in time order (no index on the timestamp: this endpoint is
        // rare and rooms are read newest first otherwise).
        let (cmp, order) = if forwards { (">=", "ASC") } else { ("<=", "DESC") };
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = ?1 AND rejected = 0 AND soft_failed = 0
                   AND stream_ordering > 0 AND json_extract(json, '$.origin_server_ts') {cmp} ?2
                 ORDER BY json_extract(json, '$.origin_server_ts') {order}, stream_ordering {order} LIMIT ?3"
            ))
            .map_err(backend)?;
        let rows = stmt.query_map(params![room_id, ts, limit as i64], event_from_row).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn thread_roots(
        &self,
        room_id: &str,
        participant: Option<&str>,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>> {
        // A thread's position is its latest reply; threads come newest first.
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT relates_to, max(stream_ordering) AS latest FROM event_relations
                 WHERE room_id = ?1 AND rel_type = 'm.thread'
                 GROUP BY relates_to
                 HAVING latest < ?3 AND (?2 IS NULL OR max(sender = ?2) = 1
                        OR EXISTS (SELECT 1 FROM events e WHERE e.event_id = relates_to AND e.sender = ?2))
                 ORDER BY latest DESC LIMIT ?4",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![room_id, participant, before, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn room_events(&self, room_id: &str, from: i64, to: i64, backwards: bool, limit: usize) -> Result<Vec<EventRow>> {
        let order = if backwards { "DESC" } else { "ASC" };
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = ?1 AND stream_ordering > ?2
                 AND stream_ordering <= ?3 AND rejected = 0 AND soft_failed = 0
                 ORDER BY stream_ordering {order} LIMIT ?4"
            ))
            .map_err(backend)?;
        let rows = stmt.query_map(params![room_id, from, to, limit as i64], event_from_row).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn events_between(&self, from: i64, to: i64, limit: usize) -> Result<Vec<(String, EventRow)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS}, room_id FROM events WHERE stream_ordering > ?1 AND stream_ordering <= ?2
                 AND rejected = 0 AND soft_failed = 0 ORDER BY stream_ordering LIMIT ?3"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![from, to, limit as i64], |r| Ok((r.get(5)?, event_from_row(r)?)))
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn current_state_events(&self, room_id: &str) -> Result<Vec<EventRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT e.stream_ordering, e.json, e.state_group, e.rejected, e.soft_failed
                 FROM current_state c JOIN events e ON e.event_id = c.event_id WHERE c.room_id = ?1",
            )
            .map_err(backend)?;
        stmt.query_map([room_id], event_from_row).and_then(|r| r.collect()).map_err(backend)
    }

    fn rooms_with_events_between(&self, rooms: &[String], from: i64, to: i64) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT room_id FROM events WHERE stream_ordering > ?1 AND stream_ordering <= ?2
                 AND rejected = 0 AND soft_failed = 0",
            )
            .map_err(backend)?;
        let rows = stmt.query_map(params![from, to], |r| r.get::<_, String>(0)).map_err(backend)?;
        let changed: std::collections::HashSet<String> = rows.collect::<rusqlite::Result<_>>().map_err(backend)?;
        Ok(rooms.iter().filter(|r| changed.contains(*r)).cloned().collect())
    }

    fn max_stream_ordering(&self) -> Result<i64> {
        self.reader().row("SELECT position FROM stream_position", [], |r| r.get(0)).map_err(backend)
    }

    fn stream_of_event(&self, event_id: &str) -> Result<Option<i64>> {
        self.reader()
            .row("SELECT stream_ordering FROM events WHERE event_id = ?1", [event_id], |r| r.get(0))
            .optional()
            .map_err(backend)
    }

    fn state_group_at(&self, room_id: &str, stream: i64) -> Result<Option<i64>> {
        self.reader()
            .row(
                "SELECT state_group FROM events WHERE room_id = ?1 AND stream_ordering <= ?2 AND rejected = 0
                 AND soft_failed = 0 ORDER BY stream_ordering DESC LIMIT 1",
                params![room_id, stream],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
            .map(Option::flatten)
    }

    fn membership_changes(&self, user_id: &str, from: i64, to: i64) -> Result<Vec<(String, String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, membership, max(stream_ordering) FROM events
                 WHERE type = 'm.room.member' AND state_key = ?1 AND stream_ordering > ?2
                 AND stream_ordering <= ?3 AND rejected = 0 AND soft_failed = 0
                 GROUP BY room_id",
            )
            .map_err(backend)?;
        let rows =
            stmt.query_map(params![user_id, from, to], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }
}

impl ClientDataStore for SqliteStore {
    fn set_account_data(&self, user_id: &str, room_id: &str, data_type: &str, content: &Value) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let pos = next_stream_position(&tx)?;
        tx.exec(
            "INSERT OR REPLACE INTO account_data (user_id, room_id, type, content, stream_ordering)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![user_id, room_id, data_type, content.to_string(), pos],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn get_account_data(&self, user_id: &str, room_id: &str, data_type: &str) -> Result<Option<Value>> {
        let s: Option<String> = self
            .conn()
            .row(
                "SELECT content FROM account_data WHERE user_id = ?1 AND room_id = ?2 AND type = ?3",
                params![user_id, room_id, data_type],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
    }

    fn account_data_since(&self, user_id: &str, from: i64, to: i64) -> Result<Vec<(String, String, Value)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, type, content FROM account_data WHERE user_id = ?1
                 AND stream_ordering > ?2 AND stream_ordering <= ?3 ORDER BY stream_ordering",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![user_id, from, to], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (room, t, c) = row.map_err(backend)?;
            out.push((room, t, serde_json::from_str(&c).unwrap_or(Value::Null)));
        }
        Ok(out)
    }

    fn create_filter(&self, user_id: &str, filter: &Value) -> Result<i64> {
        let conn = self.conn();
        conn.exec("INSERT INTO filters (user_id, filter_json) VALUES (?1, ?2)", params![user_id, filter.to_string()])
            .map_err(backend)?;
        Ok(conn.last_insert_rowid())
    }

    fn get_filter(&self, user_id: &str, filter_id: i64) -> Result<Option<Value>> {
        let s: Option<String> = self
            .conn()
            .row(
                "SELECT filter_json FROM filters WHERE user_id = ?1 AND filter_id = ?2",
                params![user_id, filter_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
    }
}

fn media_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MediaRow> {
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

    fn search_user_directory(
        &self,
        searcher: &str,
        terms: &[String],
        search_all_users: bool,
        limit: usize,
    ) -> Result<Vec<DirectoryUser>> {
        // Visible: users sharing a joined room with the searcher, users joined to a room whose
        // join rule is public, or (search_all_users) every local user.
        let mut sql = String::from(
            "SELECT p.user_id, p.displayname, p.avatar_url FROM profiles p JOIN users u ON u.user_id = p.user_id
             WHERE u.deactivated = 0 AND (?1 OR p.user_id IN (
               SELECT m.state_key FROM current_state m WHERE m.type = 'm.room.member' AND m.membership = 'join'
               AND (m.room_id IN (SELECT room_id FROM current_state WHERE type = 'm.room.member'
                                  AND state_key = ?2 AND membership = 'join')
                    OR m.room_id IN (SELECT room_id FROM rooms WHERE join_rule = 'public'))))",
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

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RegistrationToken> {
    Ok(RegistrationToken {
        token: r.get(0)?,
        uses_allowed: r.get(1)?,
        pending: r.get(2)?,
        completed: r.get(3)?,
        expiry_time: r.get(4)?,
    })
}

impl RegistrationTokenStore for SqliteStore {
    fn create_registration_token(&self, t: &RegistrationToken) -> Result<()> {
        self.conn()
            .exec(
                "INSERT INTO registration_tokens (token, uses_allowed, pending, completed, expiry_time)
                 VALUES (?1, ?2, 0, 0, ?3)",
                params![t.token, t.uses_allowed, t.expiry_time],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn get_registration_token(&self, token: &str) -> Result<Option<RegistrationToken>> {
        self.reader()
            .row(
                "SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens WHERE token = ?1",
                [token],
                token_from_row,
            )
            .optional()
            .map_err(backend)
    }

    fn list_registration_tokens(&self) -> Result<Vec<RegistrationToken>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT token, uses_allowed, pending, completed, expiry_time FROM registration_tokens ORDER BY token",
            )
            .map_err(backend)?;
        let rows = stmt.query_map([], token_from_row).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn use_registration_token(&self, token: &str) -> Result<()> {
        self.conn()
            .exec("UPDATE registration_tokens SET completed = completed + 1 WHERE token = ?1", [token])
            .map_err(backend)?;
        Ok(())
    }
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
        self.conn().exec("DELETE FROM media WHERE media_id = ?1", [media_id]).map_err(backend)?;
        Ok(())
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

/// Drops a device's keys and pending messages (one device, or all but `keep`), and records a
/// device-list change if it had identity keys.
fn delete_device_crypto(tx: &Transaction<'_>, user_id: &str, device: Option<&str>, keep: Option<&str>) -> Result<()> {
    let (clause, arg) = match (device, keep) {
        (Some(d), _) => ("device_id = ?2", d),
        (None, k) => ("device_id != ?2", k.unwrap_or("")),
    };
    let had_keys = tx
        .exec(&format!("DELETE FROM device_keys WHERE user_id = ?1 AND {clause}"), params![user_id, arg])
        .map_err(backend)?;
    for table in ["one_time_keys", "fallback_keys", "to_device_messages"] {
        tx.exec(&format!("DELETE FROM {table} WHERE user_id = ?1 AND {clause}"), params![user_id, arg])
            .map_err(backend)?;
    }
    if had_keys > 0 {
        record_device_change(tx, user_id)?;
    }
    Ok(())
}

fn record_device_change(tx: &Transaction<'_>, user_id: &str) -> Result<i64> {
    let pos = next_stream_position(tx)?;
    tx.exec("INSERT INTO device_list_changes (stream_ordering, user_id) VALUES (?1, ?2)", params![pos, user_id])
        .map_err(backend)?;
    Ok(pos)
}

/// A backup version's keys changed: clients compare etags to know.
fn bump_backup_etag(tx: &Transaction<'_>, user_id: &str, version: i64) -> Result<()> {
    tx.exec(
        "UPDATE room_key_versions SET etag = etag + 1 WHERE user_id = ?1 AND version = ?2",
        params![user_id, version],
    )
    .map(drop)
    .map_err(backend)
}

fn strings(rows: rusqlite::Result<Vec<String>>) -> Result<Vec<String>> {
    rows.map_err(backend)
}

impl KeyStore for SqliteStore {
    fn upload_keys(
        &self,
        user_id: &str,
        device_id: &str,
        device_keys: Option<&str>,
        one_time_keys: &[(String, String, String)],
        fallback_keys: &[(String, String, String)],
    ) -> Result<Option<i64>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let mut changed = None;
        if let Some(json) = device_keys {
            let old: Option<String> = tx
                .row(
                    "SELECT key_json FROM device_keys WHERE user_id = ?1 AND device_id = ?2",
                    params![user_id, device_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if old.as_deref() != Some(json) {
                tx.exec(
                    "INSERT INTO device_keys (user_id, device_id, key_json) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
                    params![user_id, device_id, json],
                )
                .map_err(backend)?;
                changed = Some(record_device_change(&tx, user_id)?);
            }
        }
        for (algorithm, key_id, json) in one_time_keys {
            tx.exec(
                "INSERT OR IGNORE INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![user_id, device_id, algorithm, key_id, json],
            )
            .map_err(backend)?;
        }
        for (algorithm, key_id, json) in fallback_keys {
            tx.exec(
                "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0)
                 ON CONFLICT (user_id, device_id, algorithm) DO UPDATE
                 SET key_id = excluded.key_id, key_json = excluded.key_json, used = 0",
                params![user_id, device_id, algorithm, key_id, json],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(changed)
    }

    fn one_time_key_counts(&self, user_id: &str, device_id: &str) -> Result<Vec<(String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT algorithm, count(*) FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 GROUP BY algorithm",
            )
            .map_err(backend)?;
        stmt.query_map(params![user_id, device_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(backend)
    }

    fn unused_fallback_key_types(&self, user_id: &str, device_id: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT algorithm FROM fallback_keys WHERE user_id = ?1 AND device_id = ?2 AND used = 0 ORDER BY algorithm",
            )
            .map_err(backend)?;
        strings(stmt.query_map(params![user_id, device_id], |r| r.get(0)).and_then(|rows| rows.collect()))
    }

    fn device_keys(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT device_id, key_json FROM device_keys WHERE user_id = ?1 ORDER BY device_id")
            .map_err(backend)?;
        stmt.query_map([user_id], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|rows| rows.collect()).map_err(backend)
    }

    fn set_device_keys(&self, user_id: &str, device_id: &str, json: &str) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec(
            "UPDATE device_keys SET key_json = ?3 WHERE user_id = ?1 AND device_id = ?2",
            params![user_id, device_id, json],
        )
        .map_err(backend)?;
        let pos = record_device_change(&tx, user_id)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn claim_key(&self, user_id: &str, device_id: &str, algorithm: &str) -> Result<Option<(String, String)>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let otk: Option<(String, String)> = tx
            .row(
                "DELETE FROM one_time_keys WHERE rowid = (SELECT rowid FROM one_time_keys
                 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 ORDER BY key_id LIMIT 1)
                 RETURNING key_id, key_json",
                params![user_id, device_id, algorithm],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        let found = match otk {
            Some(k) => Some(k),
            None => tx
                .row(
                    "UPDATE fallback_keys SET used = 1 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3
                     RETURNING key_id, key_json",
                    params![user_id, device_id, algorithm],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?,
        };
        tx.commit().map_err(backend)?;
        Ok(found)
    }

    fn cross_signing_keys(&self, user_id: &str) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT key_type, key_json FROM cross_signing_keys WHERE user_id = ?1 ORDER BY key_type")
            .map_err(backend)?;
        stmt.query_map([user_id], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|rows| rows.collect()).map_err(backend)
    }

    fn set_cross_signing_keys(&self, user_id: &str, keys: &[(String, String)]) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        for (kind, json) in keys {
            tx.exec(
                "INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
                params![user_id, kind, json],
            )
            .map_err(backend)?;
        }
        let pos = record_device_change(&tx, user_id)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn device_list_changes(&self, from: i64, to: i64) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT user_id FROM device_list_changes WHERE stream_ordering > ?1 AND stream_ordering <= ?2",
            )
            .map_err(backend)?;
        strings(stmt.query_map(params![from, to], |r| r.get(0)).and_then(|rows| rows.collect()))
    }

    fn users_sharing_rooms(&self, user_id: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT DISTINCT b.state_key FROM current_state a JOIN current_state b ON a.room_id = b.room_id
                 WHERE a.type = 'm.room.member' AND a.state_key = ?1 AND a.membership = 'join'
                   AND b.type = 'm.room.member' AND b.membership IN ('join', 'invite')",
            )
            .map_err(backend)?;
        let mut users = strings(stmt.query_map([user_id], |r| r.get(0)).and_then(|rows| rows.collect()))?;
        if !users.iter().any(|u| u == user_id) {
            users.push(user_id.to_owned());
        }
        Ok(users)
    }

    fn queue_to_device(
        &self,
        sender: &str,
        sender_device: &str,
        txn_id: &str,
        messages: &[(String, String, String)],
    ) -> Result<Option<i64>> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let fresh = tx
            .exec(
                "INSERT OR IGNORE INTO to_device_txns (user_id, device_id, txn_id) VALUES (?1, ?2, ?3)",
                params![sender, sender_device, txn_id],
            )
            .map_err(backend)?;
        if fresh == 0 {
            return Ok(None);
        }
        let pos = next_stream_position(&tx)?;
        for (user, device, json) in messages {
            tx.exec(
                "INSERT INTO to_device_messages (stream_ordering, user_id, device_id, message_json) VALUES (?1, ?2, ?3, ?4)",
                params![pos, user, device, json],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(Some(pos))
    }

    fn to_device_messages(&self, user_id: &str, device_id: &str, to: i64) -> Result<Vec<(i64, String)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT stream_ordering, message_json FROM to_device_messages
                 WHERE user_id = ?1 AND device_id = ?2 AND stream_ordering <= ?3 ORDER BY stream_ordering, rowid",
            )
            .map_err(backend)?;
        stmt.query_map(params![user_id, device_id, to], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(backend)
    }

    fn delete_to_device(&self, user_id: &str, device_id: &str, upto: i64) -> Result<()> {
        self.conn()
            .exec(
                "DELETE FROM to_device_messages WHERE user_id = ?1 AND device_id = ?2 AND stream_ordering <= ?3",
                params![user_id, device_id, upto],
            )
            .map(drop)
            .map_err(backend)
    }

    fn create_backup_version(&self, user_id: &str, algorithm: &str, auth_data: &str) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let next: i64 = tx
            .row("SELECT coalesce(max(version), 0) + 1 FROM room_key_versions WHERE user_id = ?1", [user_id], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        tx.exec(
            "INSERT INTO room_key_versions (user_id, version, algorithm, auth_data) VALUES (?1, ?2, ?3, ?4)",
            params![user_id, next, algorithm, auth_data],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(next)
    }

    fn backup_version(&self, user_id: &str, version: Option<i64>) -> Result<Option<BackupVersion>> {
        let map = |r: &rusqlite::Row<'_>| {
            Ok(BackupVersion { version: r.get(0)?, algorithm: r.get(1)?, auth_data: r.get(2)?, etag: r.get(3)? })
        };
        let conn = self.reader();
        match version {
            Some(v) => conn.row(
                "SELECT version, algorithm, auth_data, etag FROM room_key_versions
                 WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
                params![user_id, v],
                map,
            ),
            None => conn.row(
                "SELECT version, algorithm, auth_data, etag FROM room_key_versions
                 WHERE user_id = ?1 AND deleted = 0 ORDER BY version DESC LIMIT 1",
                [user_id],
                map,
            ),
        }
        .optional()
        .map_err(backend)
    }

    fn update_backup_version(&self, user_id: &str, version: i64, algorithm: &str, auth_data: &str) -> Result<bool> {
        let n = self
            .conn()
            .exec(
                "UPDATE room_key_versions SET algorithm = ?3, auth_data = ?4
                 WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
                params![user_id, version, algorithm, auth_data],
            )
            .map_err(backend)?;
        Ok(n > 0)
    }

    fn delete_backup_version(&self, user_id: &str, version: i64) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let n = tx
            .exec(
                "UPDATE room_key_versions SET deleted = 1 WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
                params![user_id, version],
            )
            .map_err(backend)?;
        tx.exec("DELETE FROM room_keys WHERE user_id = ?1 AND version = ?2", params![user_id, version])
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(n > 0)
    }

    fn backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<(String, String, String)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, session_id, key_json FROM room_keys WHERE user_id = ?1 AND version = ?2
                 AND (?3 IS NULL OR room_id = ?3) AND (?4 IS NULL OR session_id = ?4) ORDER BY room_id, session_id",
            )
            .map_err(backend)?;
        stmt.query_map(params![user_id, version, room_id, session_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(backend)
    }

    fn put_backup_keys(&self, user_id: &str, version: i64, keys: &[(String, String, String)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        for (room, session, json) in keys {
            tx.exec(
                "INSERT INTO room_keys (user_id, version, room_id, session_id, key_json) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET key_json = excluded.key_json",
                params![user_id, version, room, session, json],
            )
            .map_err(backend)?;
        }
        bump_backup_etag(&tx, user_id, version)?;
        tx.commit().map_err(backend)
    }

    fn delete_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec(
            "DELETE FROM room_keys WHERE user_id = ?1 AND version = ?2
             AND (?3 IS NULL OR room_id = ?3) AND (?4 IS NULL OR session_id = ?4)",
            params![user_id, version, room_id, session_id],
        )
        .map_err(backend)?;
        bump_backup_etag(&tx, user_id, version)?;
        tx.commit().map_err(backend)
    }

    fn count_backup_keys(&self, user_id: &str, version: i64) -> Result<i64> {
        self.reader()
            .row("SELECT count(*) FROM room_keys WHERE user_id = ?1 AND version = ?2", params![user_id, version], |r| {
                r.get(0)
            })
            .map_err(backend)
    }
}

fn receipt_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReceiptRow> {
    Ok(ReceiptRow {
        room_id: r.get(0)?,
        receipt_type: r.get(1)?,
        user_id: r.get(2)?,
        thread_id: r.get(3)?,
        event_id: r.get(4)?,
        ts: r.get(5)?,
    })
}

fn presence_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PresenceRow> {
    Ok(PresenceRow { user_id: r.get(0)?, state: r.get(1)?, status_msg: r.get(2)?, last_active_ts: r.get(3)? })
}

impl EphemeralStore for SqliteStore {
    fn set_receipt(&self, receipt: &ReceiptRow) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let pos = next_stream_position(&tx)?;
        tx.exec(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream_ordering)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE
             SET event_id = excluded.event_id, ts = excluded.ts, stream_ordering = excluded.stream_ordering",
            params![
                receipt.room_id,
                receipt.receipt_type,
                receipt.user_id,
                receipt.thread_id,
                receipt.event_id,
                receipt.ts,
                pos
            ],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn receipts_between(&self, rooms: &[String], from: i64, to: i64) -> Result<Vec<ReceiptRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts
                 WHERE room_id = ?1 AND stream_ordering > ?2 AND stream_ordering <= ?3 ORDER BY stream_ordering",
            )
            .map_err(backend)?;
        // One read transaction for all the rooms, not one per statement (each takes and
        // releases the WAL's read lock).
        conn.execute_batch("BEGIN").map_err(backend)?;
        let mut out = Vec::new();
        let mut read = || -> Result<()> {
            for room in rooms {
                let rows: Vec<ReceiptRow> = stmt
                    .query_map(params![room, from, to], receipt_from_row)
                    .and_then(|r| r.collect())
                    .map_err(backend)?;
                out.extend(rows);
            }
            Ok(())
        };
        let result = read();
        conn.execute_batch("COMMIT").map_err(backend)?;
        result.map(|()| out)
    }

    fn receipts_since(&self, from: i64, to: i64) -> Result<Vec<ReceiptRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts
                 WHERE stream_ordering > ?1 AND stream_ordering <= ?2 ORDER BY stream_ordering",
            )
            .map_err(backend)?;
        stmt.query_map(params![from, to], receipt_from_row).and_then(|r| r.collect()).map_err(backend)
    }

    fn read_position(&self, room_id: &str, user_id: &str) -> Result<i64> {
        self.reader()
            .row(
                "SELECT coalesce(max(e.stream_ordering), 0) FROM receipts r JOIN events e ON e.event_id = r.event_id
                 WHERE r.room_id = ?1 AND r.user_id = ?2 AND r.receipt_type IN ('m.read', 'm.read.private')
                   AND r.thread_id IN ('', 'main')",
                params![room_id, user_id],
                |r| r.get(0),
            )
            .map_err(backend)
    }

    fn read_positions(&self, user_id: &str) -> Result<Vec<(String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT r.room_id, max(e.stream_ordering) FROM receipts r JOIN events e ON e.event_id = r.event_id
                 WHERE r.user_id = ?1 AND r.receipt_type IN ('m.read', 'm.read.private')
                   AND r.thread_id IN ('', 'main')
                 GROUP BY r.room_id",
            )
            .map_err(backend)?;
        stmt.query_map(params![user_id], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|r| r.collect()).map_err(backend)
    }

    fn join_positions(&self, user_id: &str) -> Result<Vec<(String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT room_id, membership, stream_ordering FROM events
                 WHERE type = 'm.room.member' AND state_key = ?1 AND rejected = 0 AND soft_failed = 0
                 ORDER BY stream_ordering",
            )
            .map_err(backend)?;
        let rows: Vec<(String, String, i64)> = stmt
            .query_map(params![user_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|r| r.collect())
            .map_err(backend)?;
        // A join after a profile change is the same stay; one after a leave starts a new one.
        let mut since: HashMap<String, Option<i64>> = HashMap::new();
        for (room, membership, position) in rows {
            let entry = since.entry(room).or_default();
            match (membership == "join", *entry) {
                (true, None) => *entry = Some(position),
                (true, Some(_)) => {}
                (false, _) => *entry = None,
            }
        }
        Ok(since.into_iter().filter_map(|(room, p)| p.map(|p| (room, p))).collect())
    }

    fn set_presence(&self, presence: &PresenceRow) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let pos = next_stream_position(&tx)?;
        tx.exec(
            "INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream_ordering) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,
             last_active_ts = excluded.last_active_ts, stream_ordering = excluded.stream_ordering",
            params![presence.user_id, presence.state, presence.status_msg, presence.last_active_ts, pos],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn get_presence(&self, user_id: &str) -> Result<Option<PresenceRow>> {
        self.reader()
            .row(
                "SELECT user_id, state, status_msg, last_active_ts FROM presence WHERE user_id = ?1",
                [user_id],
                presence_from_row,
            )
            .optional()
            .map_err(backend)
    }

    fn presence_since(&self, from: i64, to: i64) -> Result<Vec<PresenceRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT user_id, state, status_msg, last_active_ts FROM presence
                 WHERE stream_ordering > ?1 AND stream_ordering <= ?2",
            )
            .map_err(backend)?;
        stmt.query_map(params![from, to], presence_from_row).and_then(|r| r.collect()).map_err(backend)
    }

    fn presence_between(&self, users: &[String], from: i64, to: i64) -> Result<Vec<PresenceRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT user_id, state, status_msg, last_active_ts FROM presence
                 WHERE user_id = ?1 AND stream_ordering > ?2 AND stream_ordering <= ?3",
            )
            .map_err(backend)?;
        let mut out = Vec::new();
        for user in users {
            if let Some(row) = stmt.query_row(params![user, from, to], presence_from_row).optional().map_err(backend)? {
                out.push(row);
            }
        }
        Ok(out)
    }

    fn pushers(&self, user_id: &str) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT pusher_json FROM pushers WHERE user_id = ?1 ORDER BY app_id, pushkey")
            .map_err(backend)?;
        strings(stmt.query_map([user_id], |r| r.get(0)).and_then(|rows| rows.collect()))
    }

    fn all_pushers(&self) -> Result<Vec<(String, String)>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT user_id, pusher_json FROM pushers").map_err(backend)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|r| r.collect()).map_err(backend)
    }

    fn set_pusher(&self, user_id: &str, app_id: &str, pushkey: &str, json: &str, append: bool) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        if !append {
            tx.exec(
                "DELETE FROM pushers WHERE app_id = ?1 AND pushkey = ?2 AND user_id != ?3",
                params![app_id, pushkey, user_id],
            )
            .map_err(backend)?;
        }
        tx.exec(
            "INSERT INTO pushers (user_id, app_id, pushkey, pusher_json) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET pusher_json = excluded.pusher_json",
            params![user_id, app_id, pushkey, json],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> Result<()> {
        self.conn()
            .exec(
                "DELETE FROM pushers WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3",
                params![user_id, app_id, pushkey],
            )
            .map(drop)
            .map_err(backend)
    }

    fn allocate_stream_position(&self) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let pos = next_stream_position(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }
}

impl SearchStore for SqliteStore {
    fn search_events(
        &self,
        rooms: &[String],
        words: &[String],
        keys: &[String],
        newest_first: bool,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<SearchHit>)> {
        if words.is_empty() || rooms.is_empty() {
            return Ok((0, Vec::new()));
        }
        // Each word quoted (so FTS syntax in user input is literal) and prefix-matched.
        let query = words.iter().map(|w| format!("\"{}\"*", w.replace('"', "\"\""))).collect::<Vec<_>>().join(" ");
        let rooms_json = serde_json::to_string(rooms).map_err(|e| StorageError::Backend(e.to_string()))?;
        let keys_json = serde_json::to_string(keys).map_err(|e| StorageError::Backend(e.to_string()))?;
        // What was sent a moment ago is found too: the backlog first.
        index_search_backlog(&self.conn())?;
        let filter = "event_search MATCH ?1
             AND room_id IN (SELECT value FROM json_each(?2)) AND key IN (SELECT value FROM json_each(?3))";
        let conn = self.conn();
        let count: i64 = conn
            .row(
                &format!("SELECT count(*) FROM event_search WHERE {filter}"),
                params![query, rooms_json, keys_json],
                |r| r.get(0),
            )
            .map_err(backend)?;
        let order = if newest_first { "stream_ordering DESC" } else { "bm25(event_search), stream_ordering DESC" };
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT event_id, room_id, -bm25(event_search) FROM event_search WHERE {filter}
                 ORDER BY {order} LIMIT ?4 OFFSET ?5"
            ))
            .map_err(backend)?;
        let hits = stmt
            .query_map(params![query, rooms_json, keys_json, limit as i64, offset as i64], |r| {
                Ok(SearchHit { event_id: r.get(0)?, room_id: r.get(1)?, rank: r.get(2)? })
            })
            .and_then(|rows| rows.collect())
            .map_err(backend)?;
        Ok((count as usize, hits))
    }
}

impl FederationStore for SqliteStore {
    fn server_keys(&self, server_name: &str) -> Result<Vec<(String, String, i64)>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached("SELECT key_id, public_key, valid_until_ts FROM server_keys WHERE server_name = ?1")
            .map_err(backend)?;
        let rows = stmt.query_map([server_name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn server_key_response(&self, server_name: &str) -> Result<Option<(String, i64)>> {
        self.reader()
            .row(
                "SELECT response, valid_until_ts FROM server_key_responses WHERE server_name = ?1",
                [server_name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)
    }

    fn store_server_keys(
        &self,
        server_name: &str,
        keys: &[(String, String, i64)],
        response: (&str, i64),
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        tx.exec(
            "INSERT OR REPLACE INTO server_key_responses (server_name, response, valid_until_ts) VALUES (?1, ?2, ?3)",
            params![server_name, response.0, response.1],
        )
        .map_err(backend)?;
        for (key_id, key, valid_until) in keys {
            tx.exec(
                "INSERT OR REPLACE INTO server_keys (server_name, key_id, public_key, valid_until_ts)
                 VALUES (?1, ?2, ?3, ?4)",
                params![server_name, key_id, key, valid_until],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn queue_edus(&self, edus: &[(String, String)]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        for (destination, edu) in edus {
            tx.exec(
                "INSERT INTO federation_outbox (destination, kind, body) VALUES (?1, 'edu', ?2)",
                params![destination, edu],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn outbox(&self, destination: &str, limit: usize) -> Result<Vec<OutboxRow>> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, kind, body FROM (
                   SELECT id, kind, body FROM federation_outbox WHERE destination = ?1 AND kind = 'pdu'
                   ORDER BY id LIMIT ?2)
                 UNION ALL
                 SELECT id, kind, body FROM (
                   SELECT id, kind, body FROM federation_outbox WHERE destination = ?1 AND kind = 'edu'
                   ORDER BY id LIMIT ?2)
                 ORDER BY id",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![destination, limit as i64], |r| {
                Ok(OutboxRow { id: r.get(0)?, kind: r.get(1)?, body: r.get(2)? })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn outbox_sent(&self, destination: &str, ids: &[i64]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        for id in ids {
            tx.exec("DELETE FROM federation_outbox WHERE destination = ?1 AND id = ?2", params![destination, id])
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn outbox_destinations(&self) -> Result<Vec<String>> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT DISTINCT destination FROM federation_outbox").map_err(backend)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn note_device_list_change(&self, user_id: &str) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let pos = record_device_change(&tx, user_id)?;
        tx.commit().map_err(backend)?;
        Ok(pos)
    }

    fn persist_outliers(&self, events: &[OutlierEvent]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        // Outliers take negative stream positions: every timeline and sync query reads
        // positions above a token (never below zero), so they never show there.
        let mut next: i64 = tx
            .row("SELECT min(coalesce(min(stream_ordering), 0), 0) - 1 FROM events", [], |r| r.get(0))
            .map_err(backend)?;
        for ev in events {
            let inserted = tx
                .exec(
                    "INSERT OR IGNORE INTO events (event_id, room_id, type, state_key, sender, membership, json,
                                                   state_group, rejected, soft_failed, stream_ordering)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, 0, ?9)",
                    params![
                        ev.event_id,
                        ev.room_id,
                        ev.event_type,
                        ev.state_key,
                        ev.sender,
                        ev.membership,
                        ev.json,
                        ev.rejected,
                        next
                    ],
                )
                .map_err(backend)?;
            if inserted > 0 {
                next -= 1;
            }
        }
        tx.commit().map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.exec("UPDATE schema_version SET version = 999", []).unwrap();
        drop(conn);
        match SqliteStore::open(&path) {
            Err(StorageError::SchemaTooNew { found: 999, .. }) => {}
            other => panic!("expected SchemaTooNew, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn account_data_and_events_share_one_increasing_stream() {
        let store = SqliteStore::open_in_memory().unwrap();
        let a = store.set_account_data("@a:x", "", "t", &serde_json::json!({})).unwrap();
        let b = store.set_account_data("@a:x", "", "t", &serde_json::json!({"v": 1})).unwrap();
        assert!(b > a);
        assert_eq!(store.max_stream_ordering().unwrap(), b);
    }
}
