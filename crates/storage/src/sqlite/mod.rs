//! The embedded SQLite backend.
//!
//! One connection behind a `std::sync::Mutex`: SQLite allows one writer at a time anyway, every
//! call is a short blocking function (never held across an `.await`), and a single connection
//! makes stream positions strictly ordered with their commits, which `/sync` relies on (a
//! reader that sees position N sees everything before N).
//!
//! Durability: `synchronous = FULL` by default (SQLite's own default, and Synapse's), so a
//! commit's WAL frames are fsynced before the call returns and an acknowledged write survives
//! power loss. `SqliteOptions::synchronous` may opt into `NORMAL` (a commit reaches the OS
//! only; an OS crash or power loss may lose the last moments' acknowledged writes).
//!
//! WAL checkpoints, which write the database file itself, run on a thread of their own with a
//! second connection (`spawn_checkpointer`), so no request ever pays for one and callers can
//! run storage calls inline. [`Storage::shutdown`] truncates the WAL on a clean stop.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;

use crate::*;

mod appservices;
mod client_data;
mod directory;
mod ephemeral;
mod federation;
mod keys;
mod media;
mod registration_tokens;
mod reports;
pub(crate) use reports::user_order_column;
mod rooms;
mod search;
mod transient;
mod users;

use keys::*;
use rooms::*;

/// Migrations, applied in order; the schema version is the number applied. Never edit a
/// released one: append.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_initial.sql"),
    include_str!("../migrations/0002_directory_media.sql"),
    include_str!("../migrations/0003_registration_tokens.sql"),
    include_str!("../migrations/0004_e2ee_ephemeral.sql"),
    include_str!("../migrations/0005_search.sql"),
    include_str!("../migrations/0006_sync_indexes.sql"),
    include_str!("../migrations/0007_federation.sql"),
    include_str!("../migrations/0008_ratelimit_override.sql"),
    include_str!("../migrations/0009_relations.sql"),
    include_str!("../migrations/0010_txn_by_event.sql"),
    include_str!("../migrations/0011_device_user_agent.sql"),
    include_str!("../migrations/0012_transient.sql"),
    include_str!("../migrations/0013_appservices.sql"),
    include_str!("../migrations/0014_reports.sql"),
    include_str!("../migrations/0015_device_list_by_user.sql"),
    include_str!("../migrations/0016_remote_device_lists.sql"),
    include_str!("../migrations/0017_threepid_bindings.sql"),
    include_str!("../migrations/0018_user_signatures.sql"),
    include_str!("../migrations/0019_erased_users.sql"),
    include_str!("../migrations/0020_filters_per_user.sql"),
    include_str!("../migrations/0021_refresh_tokens.sql"),
    include_str!("../migrations/0022_profile_fields.sql"),
    include_str!("../migrations/0023_blocked_rooms_external_ids.sql"),
    include_str!("../migrations/0024_media_quarantine.sql"),
    include_str!("../migrations/0025_locked_suspended.sql"),
    include_str!("../migrations/0026_threepids.sql"),
    include_str!("../migrations/0027_quarantine_changes.sql"),
    include_str!("../migrations/0028_user_type.sql"),
    include_str!("../migrations/0029_account_validity.sql"),
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
    tokens: Mutex<HashMap<String, AccessTokenRow>>,
    /// Account rows, read by every authenticated request and written rarely.
    users: Mutex<UserCache>,
    /// Set on drop, to stop the checkpoint thread.
    stop: Option<Arc<AtomicBool>>,
    /// The checkpoint thread, joined by [`StorageInfo::shutdown`].
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
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
fn spawn_checkpointer(path: &Path, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>> {
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
            // A last pass: what was sent last is searchable after a restart too.
            if let Err(e) = index_search_backlog(&conn) {
                tracing::warn!(error = %e, "search indexing failed");
            }
        })
        .map_err(|e| StorageError::Backend(e.to_string()))
}

fn backend(e: rusqlite::Error) -> StorageError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            rusqlite::ErrorCode::ConstraintViolation => return StorageError::Conflict,
            rusqlite::ErrorCode::DiskFull => return StorageError::DiskFull,
            _ => {}
        }
    }
    StorageError::Backend(e.to_string())
}

/// How the SQLite backend is opened (`database: {name: sqlite3, args: {database, synchronous}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// The database file.
    pub path: std::path::PathBuf,
    /// SQLite's `synchronous` setting.
    pub synchronous: Synchronous,
}

/// SQLite's `PRAGMA synchronous` for the writer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Each commit is fsynced before it returns: durable against power loss and OS crashes.
    #[default]
    Full,
    /// Commits reach the OS, not the disk: durable against a process crash only.
    Normal,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, durable (`synchronous = FULL`), and
    /// applies pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(&SqliteOptions { path: path.to_owned(), synchronous: Synchronous::Full })
    }

    /// [`SqliteStore::open`] with explicit options.
    pub fn open_with(options: &SqliteOptions) -> Result<Self> {
        let path = options.path.as_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StorageError::Backend(e.to_string()))?;
        }
        let mut store = Self::setup(Connection::open(path).map_err(backend)?)?;
        if options.synchronous == Synchronous::Normal {
            store.conn().execute_batch("PRAGMA synchronous = NORMAL;").map_err(backend)?;
        }
        store.conn().execute_batch("PRAGMA wal_autocheckpoint = 0;").map_err(backend)?;
        for _ in 0..READERS {
            let reader = Connection::open(path).map_err(backend)?;
            reader.execute_batch("PRAGMA query_only = ON;").map_err(backend)?;
            reader.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
            reader.set_prepared_statement_cache_capacity(256);
            store.readers.push(Mutex::new(reader));
        }
        let stop = Arc::new(AtomicBool::new(false));
        store.checkpointer = Mutex::new(Some(spawn_checkpointer(path, stop.clone())?));
        store.stop = Some(stop);
        Ok(store)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory().map_err(backend)?)
    }

    fn setup(mut conn: Connection) -> Result<Self> {
        refuse_synapse_database(&conn)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
        // Every transaction takes the write lock at BEGIN. A deferred one that reads first and
        // then writes cannot wait for the lock if the checkpointer's search indexing (the other
        // writer) committed in between: SQLite answers SQLITE_BUSY at once, which surfaced as a
        // rare 500 on `/keys/upload` under load.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        conn.set_prepared_statement_cache_capacity(256);
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            readers: Vec::new(),
            next_reader: Default::default(),
            tokens: Mutex::new(HashMap::new()),
            users: Mutex::new(UserCache::default()),
            stop: None,
            checkpointer: Mutex::new(None),
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

    fn token_cache(&self) -> MutexGuard<'_, HashMap<String, AccessTokenRow>> {
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

/// Calls run inline (the defaults): the database is a local file, and only this process uses it.
impl StorageInfo for SqliteStore {
    fn shutdown(&self) -> Result<()> {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::Relaxed);
        }
        // Its last pass done, nothing else writes.
        if let Some(thread) = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
        // (busy, WAL frames, frames checkpointed): busy means a reader held the WAL open.
        let busy: i64 = self.conn().row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).map_err(backend)?;
        if busy != 0 {
            return Err(StorageError::Backend("the WAL could not be truncated: a reader was still active".into()));
        }
        Ok(())
    }
}

/// Refuses Synapse's own database (it has a `schema_version` table too, with other meanings)
/// before anything is written to it, its journal mode included.
fn refuse_synapse_database(conn: &Connection) -> Result<()> {
    let synapse: bool = conn
        .row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'event_json')", [], |r| {
            r.get(0)
        })
        .map_err(backend)?;
    if synapse {
        let found = conn.row("SELECT version FROM schema_version", [], |r| r.get(0)).optional().map_err(backend)?;
        return Err(StorageError::SynapseDatabase { found: found.unwrap_or(0) });
    }
    Ok(())
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
    if current == supported {
        // Nothing to write: a start-up on a full disk must still work (and serve reads).
        return Ok(());
    }
    let tx = conn.transaction().map_err(backend)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(|e| StorageError::Backend(format!("migration {}: {e}", i + 1)))?;
    }
    tx.exec("DELETE FROM schema_version", []).map_err(backend)?;
    tx.exec("INSERT INTO schema_version (version) VALUES (?1)", [supported]).map_err(backend)?;
    tx.commit().map_err(backend)
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
