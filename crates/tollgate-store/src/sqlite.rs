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
        // No ping before a connection is handed out (sqlx's default): a SQLite connection lives
        // in this process and cannot lose its server, and the ping was a round trip to the
        // connection's thread (two thread switches) before every transaction and every read.
        let write = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(OpenError::Connect)?;
        let read = SqlitePoolOptions::new()
            .test_before_acquire(false)
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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// The migration that lets accounts share an address rebuilds SQLite's users table: on a
    /// database with accounts, every row and every reference to it survives, and the address is
    /// unique among accounts with a password only.
    #[tokio::test]
    async fn rebuilding_users_keeps_every_account_and_reference() {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .unwrap()
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let before = Migrator {
            migrations: Cow::Owned(
                MIGRATOR
                    .migrations
                    .iter()
                    .filter(|m| m.version < 20_261_130_000_029)
                    .cloned()
                    .collect(),
            ),
            ..Migrator::DEFAULT
        };
        before.run(&pool).await.unwrap();
        for statement in [
            "INSERT INTO users (id, email, display_name, password_hash, created_at, passkey_count) \
             VALUES (x'01', 'a@example.com', 'A', 'hash', '2026-11-01T00:00:00Z', 2)",
            "INSERT INTO teams (id, name, personal, created_at) VALUES (x'02', 'Personal Team', 1, '2026-11-01T00:00:00Z')",
            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES (x'02', x'01', 'admin', '2026-11-01T00:00:00Z')",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        MIGRATOR.run(&pool).await.unwrap();
        let kept: (String, i64) = sqlx::query_as("SELECT email, passkey_count FROM users WHERE id = x'01'")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(kept, ("a@example.com".to_owned(), 2));
        let orphans = sqlx::query("PRAGMA foreign_key_check").fetch_all(&pool).await.unwrap();
        assert!(orphans.is_empty());
        // References still hold: a member needs an account.
        let orphan = sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES (x'02', x'09', 'member', '2026-11-01T00:00:00Z')",
        )
        .execute(&pool)
        .await;
        assert!(orphan.is_err());
        // A second account at the address, without a password: allowed; with one: refused.
        sqlx::query(
            "INSERT INTO users (id, email, display_name, created_at) VALUES (x'03', 'a@example.com', 'A2', '2026-11-02T00:00:00Z')",
        )
        .execute(&pool)
        .await
        .unwrap();
        let second_password = sqlx::query(
            "INSERT INTO users (id, email, display_name, password_hash, created_at) \
             VALUES (x'04', 'a@example.com', 'A3', 'hash', '2026-11-02T00:00:00Z')",
        )
        .execute(&pool)
        .await;
        let error = crate::StoreError::from(second_password.unwrap_err());
        assert!(
            matches!(&error, crate::StoreError::Conflict { constraint } if constraint == "users_email_key"),
            "{error:?}"
        );
    }
}
