//! Synapse's database, read-only, on either of its engines: SQLite (rusqlite) or PostgreSQL
//! (the `postgres` client Myelin's own backend uses).
//!
//! The importer's queries are written once for both: `$1`-style parameters (SQLite reads `$1`
//! as the first parameter too), boolean literals `TRUE`/`FALSE`, integer parameters cast to
//! `BIGINT`. Every value comes back as a [`Cell`] (booleans as 0 and 1), and every query
//! returns its rows whole: no cursor stays open while the import queries again.

use std::cell::RefCell;

use rusqlite::types::ValueRef;

/// A query parameter.
#[derive(Clone, Copy)]
pub(super) enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// One value of a row.
#[derive(Clone, Debug)]
enum Cell {
    Null,
    Int(i64),
    Text(String),
}

/// One row, its columns in the query's order.
pub(super) struct Row(Vec<Cell>);

impl Row {
    /// A text column; empty for NULL.
    pub(super) fn text(&self, i: usize) -> String {
        self.opt_text(i).unwrap_or_default()
    }

    pub(super) fn opt_text(&self, i: usize) -> Option<String> {
        match self.0.get(i) {
            Some(Cell::Text(s)) => Some(s.clone()),
            Some(Cell::Int(n)) => Some(n.to_string()),
            _ => None,
        }
    }

    /// An integer (or boolean) column; 0 for NULL.
    pub(super) fn int(&self, i: usize) -> i64 {
        self.opt_int(i).unwrap_or(0)
    }

    pub(super) fn opt_int(&self, i: usize) -> Option<i64> {
        match self.0.get(i) {
            Some(Cell::Int(n)) => Some(*n),
            Some(Cell::Text(s)) => s.parse().ok(),
            _ => None,
        }
    }

    pub(super) fn flag(&self, i: usize) -> bool {
        self.int(i) != 0
    }
}

/// A stopped Synapse's database.
pub enum SynapseDb {
    /// `database: {name: sqlite3}`.
    Sqlite(rusqlite::Connection),
    /// `database: {name: psycopg2}`.
    Postgres(RefCell<postgres::Client>),
}

fn sqlite_err(e: rusqlite::Error) -> String {
    format!("reading Synapse's database: {e}")
}

fn pg_err(e: postgres::Error) -> String {
    format!("reading Synapse's database: {e}")
}

impl SynapseDb {
    /// Opens an SQLite file read-only.
    pub fn open_sqlite(path: &std::path::Path) -> Result<Self, String> {
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map(SynapseDb::Sqlite)
            .map_err(|e| format!("Could not open Synapse's database {}: {e}", path.display()))
    }

    /// Connects to PostgreSQL with Synapse's settings; every transaction is read-only.
    pub fn open_postgres(options: &myelin_storage::pg::PgOptions) -> Result<Self, String> {
        let (config, tls) = options.client_config().map_err(|e| format!("Synapse's database settings: {e}"))?;
        let mut client =
            config.connect(tls).map_err(|e| format!("Could not connect to Synapse's PostgreSQL database: {e}"))?;
        client.batch_execute("SET default_transaction_read_only = on").map_err(pg_err)?;
        Ok(SynapseDb::Postgres(RefCell::new(client)))
    }

    /// Every row of a query.
    pub(super) fn rows(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, String> {
        match self {
            SynapseDb::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql).map_err(sqlite_err)?;
                let values: Vec<rusqlite::types::Value> = args
                    .iter()
                    .map(|a| match a {
                        Arg::Text(s) => rusqlite::types::Value::Text((*s).to_owned()),
                        Arg::Int(n) => rusqlite::types::Value::Integer(*n),
                    })
                    .collect();
                let columns = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(values)).map_err(sqlite_err)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(sqlite_err)? {
                    let mut cells = Vec::with_capacity(columns);
                    for i in 0..columns {
                        cells.push(match row.get_ref(i).map_err(sqlite_err)? {
                            ValueRef::Null => Cell::Null,
                            ValueRef::Integer(n) => Cell::Int(n),
                            ValueRef::Real(f) => Cell::Int(f as i64),
                            ValueRef::Text(t) | ValueRef::Blob(t) => {
                                Cell::Text(String::from_utf8_lossy(t).into_owned())
                            }
                        });
                    }
                    out.push(Row(cells));
                }
                Ok(out)
            }
            SynapseDb::Postgres(client) => {
                let boxed: Vec<Box<dyn postgres::types::ToSql + Sync>> = args
                    .iter()
                    .map(|a| -> Box<dyn postgres::types::ToSql + Sync> {
                        match a {
                            Arg::Text(s) => Box::new((*s).to_owned()),
                            Arg::Int(n) => Box::new(*n),
                        }
                    })
                    .collect();
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
                let rows = client.borrow_mut().query(sql, &refs).map_err(pg_err)?;
                rows.iter().map(pg_row).collect()
            }
        }
    }

    /// The first row of a query, if any.
    pub(super) fn row(&self, sql: &str, args: &[Arg<'_>]) -> Result<Option<Row>, String> {
        Ok(self.rows(sql, args)?.into_iter().next())
    }

    /// The number of rows of a table; 0 if the table is not there.
    pub(super) fn count(&self, table: &str) -> usize {
        self.row(&format!("SELECT count(*) FROM {table}"), &[]).ok().flatten().map(|r| r.int(0) as usize).unwrap_or(0)
    }
}

fn pg_row(row: &postgres::Row) -> Result<Row, String> {
    use postgres::types::Type;
    let mut cells = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let t = column.type_();
        let cell = if *t == Type::BOOL {
            row.try_get::<_, Option<bool>>(i).map(|v| v.map(|b| Cell::Int(b as i64)))
        } else if *t == Type::INT2 {
            row.try_get::<_, Option<i16>>(i).map(|v| v.map(|n| Cell::Int(n.into())))
        } else if *t == Type::INT4 {
            row.try_get::<_, Option<i32>>(i).map(|v| v.map(|n| Cell::Int(n.into())))
        } else if *t == Type::INT8 {
            row.try_get::<_, Option<i64>>(i).map(|v| v.map(Cell::Int))
        } else if *t == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i)
                .map(|v| v.map(|b| Cell::Text(String::from_utf8_lossy(&b).into_owned())))
        } else {
            row.try_get::<_, Option<String>>(i).map(|v| v.map(Cell::Text))
        };
        cells.push(cell.map_err(|e| format!("reading Synapse's column {}: {e}", column.name()))?.unwrap_or(Cell::Null));
    }
    Ok(Row(cells))
}
