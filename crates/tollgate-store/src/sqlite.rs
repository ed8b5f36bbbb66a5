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
    /// The group commit's own thread and connection (none for an in-memory database, which a
    /// second connection would not see).
    committer: Option<commit::Committer>,
    /// Spend entries this process has journaled since its last fold (see `fold_spends`).
    journaled: std::sync::atomic::AtomicU64,
    /// Each team's open charge on this node (see `OpenCharges`).
    open_charges: sql::usage::OpenCharges,
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
        let file = options.get_filename().to_path_buf();
        if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        // No ping before a connection is handed out (sqlx's default): a SQLite connection lives
        // in this process and cannot lose its server, and the ping was a round trip to the
        // connection's thread (two thread switches) before every transaction and every read.
        // What a ping would still catch, that thread dying (a bug in sqlx or SQLite), shows as
        // an error on the connection's next use, and the pool replaces every connection after
        // sqlx's maximum lifetime (30 minutes) anyway.
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
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let committer = if in_memory {
            None
        } else {
            Some(commit::Committer::start(&file).map_err(|error| OpenError::Committer(error.to_string()))?)
        };
        Ok(Self {
            write,
            read,
            audit_key,
            committer,
            journaled: std::sync::atomic::AtomicU64::new(0),
            open_charges: sql::usage::OpenCharges::default(),
        })
    }

    /// The group commit on its own thread ([`commit`]), holding the write connection meanwhile;
    /// `None` where there is none (then the shared sqlx path writes it).
    async fn commit_on_own_thread(
        &self,
        batch: &[crate::Charge],
        at: tollgate_domain::Timestamp,
        default_hard_limit: tollgate_domain::Ticks,
    ) -> Option<Result<u64, crate::StoreError>> {
        let committer = self.committer.as_ref()?;
        Some(
            async {
                // The one write connection, held: no other write of this process runs meanwhile.
                let _writer = self.write.acquire().await?;
                let charge_ids = self.open_charges.for_batch(batch, at);
                committer.commit(batch, charge_ids, at, default_hard_limit).await
            }
            .await,
        )
    }

    /// Kept bodies written on the group commit's thread (one hand-off, no sqlx statement per
    /// batch), holding the write connection meanwhile; `None` where there is none.
    async fn keep_bodies_on_own_thread(&self, rows: &[crate::RetainedBody]) -> Option<Result<(), crate::StoreError>> {
        let committer = self.committer.as_ref()?;
        Some(
            async {
                let _writer = self.write.acquire().await?;
                committer.keep_bodies(rows.to_vec()).await
            }
            .await,
        )
    }
}

mod commit;

#[path = "sql/mod.rs"]
mod sql;

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// An in-memory database with every migration before `version` applied: the state a
    /// migration finds on a database that ran an older release.
    async fn migrated_before(version: i64) -> Pool<Db> {
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
                    .filter(|m| m.version < version)
                    .cloned()
                    .collect(),
            ),
            ..Migrator::DEFAULT
        };
        before.run(&pool).await.unwrap();
        pool
    }

    /// The migration that lets accounts share an address rebuilds SQLite's users table: on a
    /// database with accounts, every row and every reference to it survives, and the address is
    /// unique among accounts with a password only.
    #[tokio::test]
    async fn rebuilding_users_keeps_every_account_and_reference() {
        let pool = migrated_before(20_261_130_000_029).await;
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

    /// The migration that drops the ledger's foreign key rebuilds SQLite's table and the view
    /// over it: every entry survives, reads through the view see it and the journal, and the
    /// table references nothing.
    #[tokio::test]
    async fn dropping_the_ledgers_foreign_key_keeps_every_entry_and_the_view() {
        let pool = migrated_before(20_261_203_000_035).await;
        for statement in [
            "INSERT INTO teams (id, name, personal, created_at) VALUES (x'02', 'T', 0, '2026-11-01T00:00:00Z')",
            "INSERT INTO ledger_entries (id, team_id, kind, bucket, amount, idempotency_key, actor_kind, created_at) \
             VALUES (x'01', x'02', 'purchase', 'prepaid', 100, 'key-1', 'system', '2026-11-01T00:00:00Z')",
            "INSERT INTO spend_journal (id, team_id, kind, bucket, amount, actor_kind, created_at, charge_id) \
             VALUES (x'03', x'02', 'spend', 'prepaid', -40, 'system', '2026-11-02T00:00:00Z', x'04')",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        MIGRATOR.run(&pool).await.unwrap();
        let kept: Vec<(String, Option<String>)> = sqlx::query_as("SELECT kind, idempotency_key FROM ledger_entries")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(kept, vec![("purchase".to_owned(), Some("key-1".to_owned()))]);
        let balance: i64 = sqlx::query_scalar("SELECT SUM(amount) FROM ledger WHERE team_id = x'02'")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(balance, 60);
        let keys = sqlx::query("PRAGMA foreign_key_list(ledger_entries)")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert!(keys.is_empty());
        let orphans = sqlx::query("PRAGMA foreign_key_check").fetch_all(&pool).await.unwrap();
        assert!(orphans.is_empty());
    }

    /// The migration that counts each journaled spend's requests reads the count from its
    /// reason, where the group commit wrote it; a row without one counts none.
    #[tokio::test]
    async fn a_journaled_spend_keeps_its_count_of_requests() {
        let pool = migrated_before(20_261_203_000_036).await;
        for (id, reason) in [(1u8, Some("12 requests")), (2, None), (3, Some("a refund"))] {
            sqlx::query(
                "INSERT INTO spend_journal (id, team_id, kind, bucket, amount, reason, actor_kind, created_at, \
                 charge_id) VALUES ($1, x'02', 'spend', 'prepaid', -40, $2, 'system', '2026-11-02T00:00:00Z', x'04')",
            )
            .bind(vec![id])
            .bind(reason)
            .execute(&pool)
            .await
            .unwrap();
        }
        MIGRATOR.run(&pool).await.unwrap();
        let counts: Vec<i64> = sqlx::query_scalar("SELECT requests FROM spend_journal ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(counts, [12, 0, 0]);
    }

    /// The migration that rewrites the ledger's checks rebuilds SQLite's table: every entry
    /// survives with its key, the checks allow the same kinds and buckets as before and refuse
    /// others, and writing an entry no longer builds a temporary b-tree.
    #[tokio::test]
    async fn rebuilding_the_ledger_keeps_every_entry_and_check() {
        let pool = migrated_before(20_261_202_000_033).await;
        sqlx::query(
            "INSERT INTO teams (id, name, personal, created_at) VALUES (x'02', 'T', 0, '2026-11-01T00:00:00Z')",
        )
        .execute(&pool)
        .await
        .unwrap();
        let insert = |id: u8, kind: &str, bucket: &str| {
            let key = (kind != "spend").then(|| format!("key-{id}"));
            let charge = (kind == "spend").then_some(vec![id]);
            sqlx::query(
                "INSERT INTO ledger_entries (id, team_id, kind, bucket, amount, idempotency_key, actor_kind, \
                 created_at, charge_id) VALUES ($1, x'02', $2, $3, 100, $4, 'system', '2026-11-01T00:00:00Z', $5)",
            )
            .bind(vec![id])
            .bind(kind.to_owned())
            .bind(bucket.to_owned())
            .bind(key)
            .bind(charge)
        };
        let kinds = [
            "purchase",
            "promo_grant",
            "spend",
            "adjustment",
            "forfeiture",
            "promo_expiry",
            "refund",
            "credit_note",
            "invoice_payment",
        ];
        for (id, kind) in (1u8..).zip(kinds) {
            insert(id, kind, "prepaid").execute(&pool).await.unwrap();
        }
        MIGRATOR.run(&pool).await.unwrap();
        let kept: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT kind, idempotency_key FROM ledger_entries ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(kept.len(), kinds.len());
        assert_eq!(kept[0], ("purchase".to_owned(), Some("key-1".to_owned())));
        assert_eq!(kept[2], ("spend".to_owned(), None));
        for (id, bucket) in (20u8..).zip(["prepaid", "promo", "invoice"]) {
            insert(id, "adjustment", bucket).execute(&pool).await.unwrap();
        }
        for (id, kind, bucket) in [
            (30, "gift", "prepaid"),
            (31, "purchase", "cash"),
            (32, "Spend", "prepaid"),
        ] {
            let refused = insert(id, kind, bucket).execute(&pool).await;
            assert!(refused.is_err(), "{kind} / {bucket} was accepted");
        }
        // The key stays unique among entries that have one.
        let duplicate = sqlx::query("UPDATE ledger_entries SET idempotency_key = 'key-1' WHERE id = x'04'")
            .execute(&pool)
            .await;
        assert!(duplicate.is_err());
        let plan: Vec<(i64, String)> = sqlx::query_as(
            "EXPLAIN INSERT INTO ledger_entries (id, team_id, kind, bucket, amount, actor_kind, created_at, charge_id) \
             VALUES (x'50', x'02', 'spend', 'prepaid', -1, 'system', '2026-11-02T00:00:00Z', x'50')",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(!plan.iter().any(|(_, opcode)| opcode == "OpenEphemeral"), "{plan:?}");
    }
}
