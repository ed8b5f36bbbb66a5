//! Store errors. A database error is never turned into `None`: a missing row is `NotFound` (or
//! `Ok(None)` from a `find_*`), everything else is an error the caller sees.

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A unique or foreign-key constraint refused the write. `constraint` is the same name on
    /// both backends (e.g. `users_email_key`).
    #[error("conflict on {constraint}")]
    Conflict {
        /// The constraint's name.
        constraint: String,
    },
    /// The database cannot be reached, the pool is exhausted, or PostgreSQL aborted the
    /// transaction as one side of a deadlock or a serialization failure; worth retrying.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A value read back does not fit its domain type (a bug or a hand-edited row).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(ref db) if db.is_unique_violation() || db.is_foreign_key_violation() => {
                StoreError::Conflict {
                    constraint: constraint_name(db.as_ref()),
                }
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(error)
            }
            // deadlock_detected, serialization_failure: the whole transaction was rolled back,
            // and running it again is the remedy.
            sqlx::Error::Database(ref db) if matches!(db.code().as_deref(), Some("40P01" | "40001")) => {
                StoreError::Unavailable(error)
            }
            other => StoreError::Other(anyhow::Error::new(other)),
        }
    }
}

/// PostgreSQL names the constraint; SQLite only says `UNIQUE constraint failed: users.email`, from
/// which we rebuild the name PostgreSQL would use (`users_email_key`), as both schemas name
/// their single-column unique constraints that way.
fn constraint_name(db: &dyn sqlx::error::DatabaseError) -> String {
    if let Some(name) = db.constraint() {
        return name.to_owned();
    }
    let message = db.message();
    match message.strip_prefix("UNIQUE constraint failed: ") {
        Some(columns) => {
            let mut parts = columns.split(", ").filter_map(|c| c.split_once('.'));
            match parts.next() {
                Some((table, first)) => {
                    let mut name = format!("{table}_{first}");
                    for (_, column) in parts {
                        name.push('_');
                        name.push_str(column);
                    }
                    name.push_str("_key");
                    name
                }
                None => message.to_owned(),
            }
        }
        None => message.to_owned(),
    }
}

/// Why a store could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL is neither `sqlite:` nor `postgres:`.
    #[error("unsupported database URL scheme (expected sqlite://… or postgres://…)")]
    UnsupportedScheme,
    /// The URL does not parse.
    #[error("invalid database URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The database could not be reached.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// The SQLite file's directory could not be created.
    #[error("cannot create the directory for the database file {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite's group-commit connection could not be opened.
    #[error("cannot open the group commit's connection to the database file: {0}")]
    Committer(String),
    /// A migration failed or the applied migrations differ from this binary's.
    #[error(
        "database migration failed: {0}. Nothing of the failing migration was applied; fix the cause and start again"
    )]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The database's audit chains were written with another key.
    #[error(
        "this database's audit log is chained with another key (fingerprint {stored}; this node's is {ours}). \
         Give every node the same audit chain key (audit.key_file)"
    )]
    AuditKeyMismatch {
        /// The fingerprint the database recorded.
        stored: String,
        /// This node's key's fingerprint.
        ours: String,
    },
    /// Reading or writing the database failed after migrating.
    #[error("database error after migrating: {0}")]
    Store(#[source] StoreError),
}
