//! The PostgreSQL backend: the system of record when several nodes serve.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Pool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::{Backend, OpenError};

type Db = sqlx::Postgres;

const BACKEND: Backend = Backend::Postgres;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL store. Reads and writes share one pool.
pub(crate) struct SqlStore {
    write: Pool<Db>,
    read: Pool<Db>,
    audit_key: tollgate_domain::AuditChainKey,
    /// Spend entries this node has journaled since its last fold (see `fold_spends`).
    journaled: std::sync::atomic::AtomicU64,
    /// Each team's open charge on this node (see `OpenCharges`).
    open_charges: sql::usage::OpenCharges,
}

impl SqlStore {
    pub(crate) async fn connect(url: &str, audit_key: tollgate_domain::AuditChainKey) -> Result<Self, OpenError> {
        let options = PgConnectOptions::from_str(url).map_err(OpenError::InvalidUrl)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(OpenError::Connect)?;
        Ok(Self {
            write: pool.clone(),
            read: pool,
            audit_key,
            journaled: std::sync::atomic::AtomicU64::new(0),
            open_charges: sql::usage::OpenCharges::default(),
        })
    }

    /// SQLite's group commit has a thread of its own; PostgreSQL's runs on the pool.
    async fn commit_on_own_thread(
        &self,
        _batch: &[crate::Charge],
        _at: tollgate_domain::Timestamp,
        _default_hard_limit: tollgate_domain::Ticks,
    ) -> Option<Result<u64, crate::StoreError>> {
        None
    }

    /// SQLite writes kept bodies on the group commit's thread; PostgreSQL on the pool.
    async fn keep_bodies_on_own_thread(&self, _rows: &[crate::RetainedBody]) -> Option<Result<(), crate::StoreError>> {
        None
    }
}

#[path = "sql/mod.rs"]
mod sql;
