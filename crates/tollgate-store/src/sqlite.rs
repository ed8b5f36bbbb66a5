//! The SQLite backend: one embedded file, WAL mode.
//!
//! Writes go through a pool of exactly one connection, so transactions never fight over
//! SQLite's single write lock (no `SQLITE_BUSY` on a read-to-write upgrade); reads use a pool of
//! their own and run concurrently with the writer, as WAL allows.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Pool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::{Backend, OpenError};

type Db = sqlx::Sqlite;

const BACKEND: Backend = Backend::Sqlite;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store.
pub(crate) struct SqlStore {
    write: Pool<Db>,
    read: Pool<Db>,
    audit_key: tollgate_domain::AuditChainKey,
}

impl SqlStore {
    pub(crate) async fn connect(url: &str, audit_key: tollgate_domain::AuditChainKey) -> Result<Self, OpenError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(OpenError::InvalidUrl)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged, so a power loss cannot undo a
            // charge a client saw complete (the group commit shares one fsync among many).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(dir) = options
            .get_filename()
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(OpenError::Connect)?;
        let read = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(OpenError::Connect)?;
        Ok(Self { write, read, audit_key })
    }
}

#[path = "sql/mod.rs"]
mod sql;
