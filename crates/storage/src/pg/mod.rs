//! The PostgreSQL backend, for deployments that outgrow one SQLite file.
//!
//! Configured as Synapse's `database: {name: psycopg2, args: {...}}` (see [`PgOptions`]).
//!
//! # How it is called
//! The storage traits are synchronous, so this backend uses the synchronous `postgres` client
//! (tokio-postgres driven by a small runtime of its own per connection). Its calls block on the
//! network, so [`StorageInfo::inline_calls`] is false and `core` runs every call on the blocking
//! pool rather than on a runtime worker (where the `postgres` client would also panic).
//!
//! # Consistency
//! Every write transaction first takes one store-wide advisory lock ([`WRITE_LOCK`]), which is
//! what SQLite's single writer gives the SQLite backend: stream positions commit in order (a
//! reader that sees position N sees everything before N), and read-then-write steps such as
//! claiming a one-time key cannot race, whichever process of a deployment writes. Reads take no
//! lock and see the last commit.
//!
//! Nothing is cached in this process: another process sharing the database may change any row
//! (a logout there must end the session here at once).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};

use crate::*;
pub use tls::{PgTls, SSL_MODES};

mod appservices;
mod client_data;
mod directory;
mod ephemeral;
mod federation;
mod keys;
mod media;
mod registration_tokens;
mod reports;
mod rooms;
mod search;
mod tls;
mod transient;
mod users;

/// Migrations, applied in order; the schema version is the number applied. Never edit a
/// released one: append. (PostgreSQL's list starts from the schema SQLite reached in 11 steps.)
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_schema.sql"),
    include_str!("migrations/0002_transient.sql"),
    include_str!("migrations/0003_appservices.sql"),
    include_str!("migrations/0004_reports.sql"),
    include_str!("migrations/0005_device_list_by_user.sql"),
    include_str!("migrations/0006_remote_device_lists.sql"),
    include_str!("migrations/0007_threepid_bindings.sql"),
    include_str!("migrations/0008_user_signatures.sql"),
    include_str!("migrations/0009_erased_users.sql"),
    include_str!("migrations/0010_filters_per_user.sql"),
    include_str!("migrations/0011_refresh_tokens.sql"),
    include_str!("migrations/0012_profile_fields.sql"),
    include_str!("migrations/0013_blocked_rooms_external_ids.sql"),
    include_str!("migrations/0014_media_quarantine.sql"),
    include_str!("migrations/0015_locked_suspended.sql"),
    include_str!("migrations/0016_threepids.sql"),
    include_str!("migrations/0017_quarantine_changes.sql"),
    include_str!("migrations/0018_user_type.sql"),
    include_str!("migrations/0019_account_validity.sql"),
];

/// The advisory lock key every write transaction holds (an arbitrary constant: "myelin" in ASCII).
pub const WRITE_LOCK: i64 = 0x6d79656c696e;

/// The advisory lock key held while migrating, so that processes starting together migrate once.
const MIGRATION_LOCK: i64 = WRITE_LOCK + 1;

/// Connection settings, as Synapse's `database.args` for `psycopg2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// Server host name, or a directory holding the server's Unix socket.
    pub host: Option<String>,
    /// Port (5432 by default).
    pub port: Option<u16>,
    /// Role to connect as.
    pub user: Option<String>,
    /// Its password.
    pub password: Option<String>,
    /// Database name (`dbname` or `database`).
    pub dbname: Option<String>,
    /// libpq's `sslmode` (`prefer` when absent, as libpq's; see [`tls`]).
    pub sslmode: Option<String>,
    /// Root certificates the server's must chain to (`system`: the public roots).
    pub sslrootcert: Option<String>,
    /// A client certificate (PEM), with `sslkey`.
    pub sslcert: Option<String>,
    /// The client certificate's private key (PEM).
    pub sslkey: Option<String>,
    /// Connections kept open.
    pub cp_min: usize,
    /// Most connections open at once.
    pub cp_max: usize,
    /// Accept a database whose `LC_COLLATE`/`LC_CTYPE` is not `C` (Synapse's `allow_unsafe_locale`).
    pub allow_unsafe_locale: bool,
    /// `application_name` reported to the server.
    pub application_name: Option<String>,
    /// Connect timeout in seconds.
    pub connect_timeout: Option<u64>,
}

impl Default for PgOptions {
    fn default() -> Self {
        // Synapse's defaults for the connection pool.
        PgOptions {
            host: None,
            port: None,
            user: None,
            password: None,
            dbname: None,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            cp_min: 5,
            cp_max: 10,
            allow_unsafe_locale: false,
            application_name: None,
            connect_timeout: None,
        }
    }
}

impl PgOptions {
    /// Options from libpq-style `key=value` settings separated by spaces (`host`, `port`,
    /// `user`, `password`, `dbname`), as `scripts/test-postgres.sh` prints them.
    pub fn from_settings(settings: &str) -> Result<Self> {
        let mut options = PgOptions::default();
        for pair in settings.split_whitespace() {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| StorageError::Backend(format!("expected key=value, got '{pair}'")))?;
            let value = value.to_owned();
            match key {
                "host" => options.host = Some(value),
                "port" => {
                    options.port =
                        Some(value.parse().map_err(|_| StorageError::Backend(format!("bad port '{value}'")))?)
                }
                "user" => options.user = Some(value),
                "password" => options.password = Some(value),
                "dbname" => options.dbname = Some(value),
                other => return Err(StorageError::Backend(format!("unknown setting '{other}'"))),
            }
        }
        Ok(options)
    }

    /// The client settings these options stand for, and how its connections are made secure
    /// (also used to read a Synapse's database).
    pub fn client_config(&self) -> Result<(postgres::Config, PgTls)> {
        let mut config = postgres::Config::new();
        if let Some(host) = &self.host {
            config.host(host);
        }
        if let Some(port) = self.port {
            config.port(port);
        }
        if let Some(user) = &self.user {
            config.user(user);
        } else if let Ok(user) = std::env::var("PGUSER").or_else(|_| std::env::var("USER")) {
            config.user(&user);
        }
        if let Some(password) = &self.password {
            config.password(password);
        }
        if let Some(dbname) = &self.dbname {
            config.dbname(dbname);
        }
        config.application_name(self.application_name.as_deref().unwrap_or("myelin"));
        config.connect_timeout(Duration::from_secs(self.connect_timeout.unwrap_or(10)));
        let (tls, mode) = PgTls::new(self)?;
        config.ssl_mode(mode);
        Ok((config, tls))
    }
}

/// One pooled connection with its prepared statements.
pub(crate) struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// Connections to the database, opened on demand up to `cp_max`.
struct Pool {
    config: postgres::Config,
    tls: PgTls,
    max: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<PgConn>,
    open: usize,
}

/// A connection lent by the pool; back to it on drop (unless broken).
pub(crate) struct Lent<'a> {
    pool: &'a Pool,
    conn: Option<PgConn>,
}

impl Deref for Lent<'_> {
    type Target = PgConn;
    fn deref(&self) -> &PgConn {
        self.conn.as_ref().expect("lent connection")
    }
}

impl DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut PgConn {
        self.conn.as_mut().expect("lent connection")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        match self.conn.take() {
            // Lent during a panic, it may be inside a transaction: closed, not reused.
            Some(conn) if !conn.client.is_closed() && !std::thread::panicking() => state.idle.push(conn),
            _ => state.open -= 1,
        }
        self.pool.returned.notify_one();
    }
}

impl Pool {
    fn connect(&self) -> Result<PgConn> {
        let client = self.config.connect(self.tls.clone()).map_err(backend)?;
        Ok(PgConn { client, statements: HashMap::new() })
    }

    fn get(&self) -> Result<Lent<'_>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(Lent { pool: self, conn: Some(conn) });
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match self.connect() {
                    Ok(conn) => Ok(Lent { pool: self, conn: Some(conn) }),
                    Err(e) => {
                        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        state.open -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            state = self.returned.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Queries through a connection's prepared-statement cache, inside a transaction or not.
pub(crate) struct Db<'a, C: postgres::GenericClient> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
}

/// Query parameters.
pub(crate) type Params<'p> = [&'p (dyn ToSql + Sync)];

impl<C: postgres::GenericClient> Db<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).map_err(backend)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Runs a statement; returns the number of rows it changed.
    pub(crate) fn exec(&mut self, sql: &str, params: &Params<'_>) -> Result<u64> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, params).map_err(backend)
    }

    /// All rows of a query.
    pub(crate) fn rows(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params).map_err(backend)
    }

    /// The row of a query that returns at most one.
    pub(crate) fn opt(&mut self, sql: &str, params: &Params<'_>) -> Result<Option<Row>> {
        let statement = self.statement(sql)?;
        self.client.query_opt(&statement, params).map_err(backend)
    }

    /// The row of a query that returns exactly one.
    pub(crate) fn one(&mut self, sql: &str, params: &Params<'_>) -> Result<Row> {
        let statement = self.statement(sql)?;
        self.client.query_one(&statement, params).map_err(backend)
    }

    /// Runs SQL text that may hold several statements, without parameters.
    pub(crate) fn batch(&mut self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).map_err(backend)
    }
}

/// A write transaction (begun by [`begin_locked`]): the store-wide write lock is held until it
/// ends.
pub(crate) type WriteTx<'a> = Db<'a, Client>;

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: Pool,
    /// The connection holding this process's instance lock (see `register_instance`).
    instance: Mutex<Option<Client>>,
    /// This process's tag on the messages it publishes.
    origin: String,
}

/// The synchronous driver closes a connection by blocking on its own runtime, which panics
/// (and, during shutdown, aborts the process) on a thread that drives an async runtime. The
/// store's last owner may be a task on such a thread, so its connections are closed on a
/// thread of their own.
impl Drop for PostgresStore {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.pool.state.lock().unwrap_or_else(|p| p.into_inner()).idle);
        let instance = self.instance.lock().unwrap_or_else(|p| p.into_inner()).take();
        let closing = std::thread::Builder::new().name("postgres-close".into()).spawn(move || {
            drop(idle);
            drop(instance);
        });
        if let Ok(thread) = closing {
            let _ = thread.join();
        }
    }
}

/// Maps a driver error to a storage error (a constraint violation is a conflict).
pub(crate) fn backend(e: postgres::Error) -> StorageError {
    // Any constraint, as SQLite's backend maps them: a row that exists, or one that refers to
    // a row that does not.
    let constraint = [
        SqlState::UNIQUE_VIOLATION,
        SqlState::FOREIGN_KEY_VIOLATION,
        SqlState::NOT_NULL_VIOLATION,
        SqlState::CHECK_VIOLATION,
    ];
    if e.code().is_some_and(|code| constraint.contains(code)) {
        return StorageError::Conflict;
    }
    if e.code().is_some_and(|code| *code == SqlState::DISK_FULL) {
        return StorageError::DiskFull;
    }
    // The driver's Display says only "db error"; the server's message is in the details.
    match e.as_db_error() {
        Some(db) => StorageError::Backend(format!("{}: {}", db.severity(), db.message())),
        None => {
            // Some kinds (a failed TLS handshake) keep the reason in their source.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !message.contains(&cause_text) {
                    message = format!("{message}: {cause_text}");
                }
                source = cause.source();
            }
            StorageError::Backend(message)
        }
    }
}

impl PostgresStore {
    /// Connects, checks the database's encoding and locale as Synapse does, and applies
    /// pending migrations.
    pub fn open(options: &PgOptions) -> Result<Self> {
        let (config, tls) = options.client_config()?;
        let max = options.cp_max.max(1);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let store = PostgresStore {
            origin: format!("{:x}-{nanos:x}", std::process::id()),
            instance: Mutex::new(None),
            pool: Pool {
                config,
                tls,
                max,
                state: Mutex::new(PoolState { idle: Vec::new(), open: 0 }),
                returned: Condvar::new(),
            },
        };
        store.check_database(options.allow_unsafe_locale)?;
        store.migrate()?;
        // Open the rest of `cp_min` now, so the first requests do not pay for connecting.
        let warm: Vec<_> = (1..options.cp_min.min(max)).filter_map(|_| store.pool.get().ok()).collect();
        drop(warm);
        Ok(store)
    }

    /// The schema version this build writes.
    pub fn supported_schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// Synapse's checks, with its messages: PostgreSQL 14 or newer, a UTF-8 database, and
    /// `C` collation and ctype (text sorts and compares byte-wise, and an upgrade of the OS's
    /// locale data cannot corrupt indexes) unless `allow_unsafe_locale` is set.
    fn check_database(&self, allow_unsafe_locale: bool) -> Result<()> {
        let setup = |message: String| {
            StorageError::Backend(format!(
                "{message}\nSee Synapse's docs/postgres.md for more information. You can override this check by \
                 setting 'allow_unsafe_locale' to true in the database config."
            ))
        };
        self.read(|db| {
            let version: i32 = db.one("SELECT current_setting('server_version_num')::INTEGER", &[])?.get(0);
            if version < 140000 {
                return Err(StorageError::Backend("Myelin requires PostgreSQL 14 or above.".into()));
            }
            let row = db.one(
                "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database
                 WHERE datname = current_database()",
                &[],
            )?;
            let (encoding, collate, ctype): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            if encoding != "UTF8" {
                return Err(StorageError::Backend(format!(
                    "Database has incorrect encoding: '{encoding}' instead of 'UTF8'"
                )));
            }
            if collate != "C" {
                tracing::warn!("Database has incorrect collation of '{collate}'. Should be 'C'");
                if !allow_unsafe_locale {
                    return Err(setup(format!("Database has incorrect collation of '{collate}'. Should be 'C'")));
                }
            }
            if ctype != "C" && !allow_unsafe_locale {
                return Err(setup(format!("Database has incorrect ctype of '{ctype}'. Should be 'C'")));
            }
            Ok(())
        })
    }

    fn migrate(&self) -> Result<()> {
        self.transaction(MIGRATION_LOCK, |tx| {
            // Asked first: `CREATE TABLE IF NOT EXISTS` would log a NOTICE at every start.
            let exists: bool = tx.one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?.get(0);
            // Synapse's own database has a `schema_version` table too, with other meanings.
            if tx.one("SELECT to_regclass('event_json') IS NOT NULL", &[])?.get::<_, bool>(0) {
                let found = tx.opt("SELECT version::BIGINT FROM schema_version", &[])?.map(|r| r.get(0));
                return Err(StorageError::SynapseDatabase { found: found.unwrap_or(0) });
            }
            if !exists {
                tx.batch("CREATE TABLE schema_version (version BIGINT NOT NULL)")?;
            }
            let found: Option<i64> = tx.opt("SELECT version FROM schema_version", &[])?.map(|r| r.get(0));
            let current = found.unwrap_or(0);
            let supported = MIGRATIONS.len() as i64;
            if current > supported {
                return Err(StorageError::SchemaTooNew { found: current, supported });
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
                tx.batch(sql).map_err(|e| StorageError::Backend(format!("migration {}: {e}", i + 1)))?;
            }
            tx.exec("DELETE FROM schema_version", &[])?;
            tx.exec("INSERT INTO schema_version (version) VALUES ($1)", &[&supported])?;
            Ok(())
        })
    }

    /// Runs `f` outside a transaction (each statement sees the latest commit).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&mut Db<'_, Client>) -> Result<T>) -> Result<T> {
        let mut lent = self.pool.get()?;
        let PgConn { client, statements } = &mut *lent;
        f(&mut Db { client, statements })
    }

    /// Runs `f` in a read-only transaction that sees one snapshot throughout (for reads of
    /// several statements that must agree with each other).
    pub(crate) fn snapshot<T>(&self, f: impl FnOnce(&mut Db<'_, postgres::Transaction<'_>>) -> Result<T>) -> Result<T> {
        let mut lent = self.pool.get()?;
        let PgConn { client, statements } = &mut *lent;
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(backend)?;
        let value = f(&mut Db { client: &mut tx, statements })?;
        tx.commit().map_err(backend)?;
        Ok(value)
    }

    /// Runs `f` in one transaction holding the store-wide write lock; commits if it succeeds.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>) -> Result<T> {
        self.transaction(WRITE_LOCK, f)
    }

    fn transaction<T>(&self, lock: i64, f: impl FnOnce(&mut WriteTx<'_>) -> Result<T>) -> Result<T> {
        let mut lent = self.pool.get()?;
        let PgConn { client, statements } = &mut *lent;
        begin_locked(client, lock)?;
        let result = f(&mut Db { client: &mut *client, statements });
        end(client, result)
    }

    /// Like [`PostgresStore::write`] for a batch: each item runs in a savepoint of one
    /// transaction, so one that fails is undone alone and the others commit together. (A batch
    /// of one needs no savepoint: its failure undoes the whole transaction, which is the same.)
    pub(crate) fn write_each<I, T>(
        &self,
        items: &[I],
        mut f: impl FnMut(&mut WriteTx<'_>, &I) -> Result<T>,
    ) -> Vec<Result<T>> {
        let failed = |e: &StorageError| items.iter().map(|_| Err(e.clone())).collect();
        let mut lent = match self.pool.get() {
            Ok(lent) => lent,
            Err(e) => return failed(&e),
        };
        let PgConn { client, statements } = &mut *lent;
        if let Err(e) = begin_locked(client, WRITE_LOCK) {
            return failed(&e);
        }
        if let [item] = items {
            let result = f(&mut Db { client: &mut *client, statements }, item);
            return vec![end(client, result)];
        }
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let result = client.batch_execute("SAVEPOINT item").map_err(backend).and_then(|()| {
                match f(&mut Db { client: &mut *client, statements: &mut *statements }, item) {
                    Ok(value) => client.batch_execute("RELEASE SAVEPOINT item").map_err(backend).map(|()| value),
                    Err(e) => {
                        client.batch_execute("ROLLBACK TO SAVEPOINT item").map_err(backend)?;
                        Err(e)
                    }
                }
            });
            results.push(result);
        }
        match end(client, Ok(())) {
            Ok(()) => results,
            Err(e) => failed(&e),
        }
    }
}

/// Opens a transaction and takes the advisory lock `lock` in it, in one round trip.
fn begin_locked(client: &mut Client, lock: i64) -> Result<()> {
    client.batch_execute(&format!("BEGIN; SELECT pg_advisory_xact_lock({lock})")).map_err(backend)
}

/// Commits a transaction [`begin_locked`] opened if `result` is a success, else rolls it back.
/// (A connection whose rollback fails is closed, and the pool drops it; one lent during a panic
/// is dropped too, see [`Lent`].)
fn end<T>(client: &mut Client, result: Result<T>) -> Result<T> {
    match result {
        Ok(value) => match client.batch_execute("COMMIT") {
            Ok(()) => Ok(value),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK");
                Err(backend(e))
            }
        },
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK");
            Err(e)
        }
    }
}

/// The `LISTEN`/`NOTIFY` channel the processes of one deployment talk on.
const BUS_CHANNEL: &str = "myelin";

/// The first key of the advisory locks that mark live instances (the second is the name's hash).
const INSTANCE_LOCK_CLASS: i32 = 0x6d79;

/// A stable 32-bit hash of an instance name (FNV-1a), the second key of its lock.
fn instance_key(name: &str) -> i32 {
    name.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193)) as i32
}

impl StorageInfo for PostgresStore {
    fn inline_calls(&self) -> bool {
        false
    }

    fn register_instance(&self, name: &str) -> Result<()> {
        // A session lock on a connection of its own, held until this process ends: the
        // database releases it when the connection drops, however the process died.
        let mut client = self.pool.config.connect(self.pool.tls.clone()).map_err(backend)?;
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&INSTANCE_LOCK_CLASS, &instance_key(name)])
            .map_err(backend)?
            .get(0);
        if !taken {
            return Err(StorageError::Backend(format!(
                "another live process is already named '{name}' (worker_name must differ between processes)"
            )));
        }
        *self.instance.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
        Ok(())
    }

    fn live_instances(&self, names: &[String]) -> Result<Option<Vec<String>>> {
        let held: Vec<u32> = self.read(|db| {
            Ok(db
                .rows(
                    // Advisory locks belong to a database, but pg_locks lists the whole
                    // cluster's: without the database, another deployment's process of the
                    // same name (every main process is `master`) would look alive here.
                    "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted
                     AND classid = $1::INTEGER::OID AND objsubid = 2
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    &[&INSTANCE_LOCK_CLASS],
                )?
                .iter()
                .map(|r| r.get::<_, u32>(0))
                .collect())
        })?;
        Ok(Some(names.iter().filter(|n| held.contains(&(instance_key(n) as u32))).cloned().collect()))
    }

    fn publish(&self, message: &str) -> Result<()> {
        // Tagged with this process's ID, so that its own messages are not delivered back to it.
        let payload = format!("{} {message}", self.origin);
        self.read(|db| db.exec("SELECT pg_notify($1, $2)", &[&BUS_CHANNEL, &payload]).map(drop))
    }

    fn subscribe(&self, deliver: Box<dyn Fn(String) + Send + 'static>) -> Result<bool> {
        // A connection of its own, outside the pool: it waits for notifications all the time.
        let mut client = self.pool.config.connect(self.pool.tls.clone()).map_err(backend)?;
        client.batch_execute(&format!("LISTEN {BUS_CHANNEL}")).map_err(backend)?;
        let config = self.pool.config.clone();
        let tls = self.pool.tls.clone();
        let own = format!("{} ", self.origin);
        std::thread::Builder::new()
            .name("postgres-bus".into())
            .spawn(move || {
                loop {
                    let mut notifications = client.notifications();
                    let mut pending = notifications.blocking_iter();
                    loop {
                        match pending.next() {
                            Ok(Some(n)) => {
                                if !n.payload().starts_with(&own) {
                                    let message = n.payload().split_once(' ').map_or("", |(_, m)| m);
                                    deliver(message.to_owned());
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "lost the PostgreSQL notification connection");
                                break;
                            }
                        }
                    }
                    drop(pending);
                    drop(notifications);
                    // Reconnect until it works, then tell the subscriber it may have missed some.
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                        let listening = config.connect(tls.clone()).and_then(|mut c| {
                            c.batch_execute(&format!("LISTEN {BUS_CHANNEL}"))?;
                            Ok(c)
                        });
                        if let Ok(c) = listening {
                            client = c;
                            deliver(BUS_RESYNC.to_owned());
                            break;
                        }
                    }
                }
            })
            .map_err(|e| StorageError::Backend(e.to_string()))?;
        Ok(true)
    }
}

/// Claims the next position of the shared stream, inside the caller's write transaction.
pub(crate) fn next_stream_position<C: postgres::GenericClient>(tx: &mut Db<'_, C>) -> Result<i64> {
    Ok(tx.one("UPDATE stream_position SET position = position + 1 RETURNING position", &[])?.get(0))
}

/// `usize` as a query parameter.
pub(crate) fn int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
