//! The store conformance suite, on SQLite and on PostgreSQL.

/// Wraps each case of `tollgate_store::testsuite` as an `async fn(TestDb)` and runs it on both
/// backends with `on_both_backends!`.
macro_rules! conformance_tests {
    ($($case:ident),* $(,)?) => {
        $(
            async fn $case(db: tollgate_store::testsuite::TestDb) {
                tollgate_store::testsuite::$case(db.store.as_ref()).await;
                db.finish().await;
            }
        )*
        crate::util::on_both_backends!($($case),*);
    };
}

tollgate_store::for_each_conformance_case!(conformance_tests);

#[test]
fn migration_sets_match() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tollgate-store/migrations");
    let names = |dir: &str| {
        let mut names: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names("sqlite"),
        names("postgres"),
        "every migration needs a twin with the same name"
    );
}

/// Start-up refuses a database whose applied migrations differ from this binary's: one edited
/// after it was applied, or one this binary does not know (a newer release ran against it).
mod migration_drift {
    use tollgate_server::Config;
    use tollgate_store::testsuite::TestDb;

    use crate::util::{execute, on_both_backends};

    on_both_backends!(drifted_migrations_stop_start_up);

    async fn start_up_error(url: &str) -> String {
        match tollgate_server::open_store(&Config::for_test(url.to_owned())).await {
            Ok(_) => panic!("start-up must refuse a drifted database"),
            Err(error) => format!("{error:#}"),
        }
    }

    async fn drifted_migrations_stop_start_up(db: TestDb) {
        db.store.close().await;
        // Once applied, a migration must never change.
        execute(
            &db.url,
            "UPDATE _sqlx_migrations SET checksum = zeroblob(48)",
            "UPDATE _sqlx_migrations SET checksum = decode(repeat('00', 48), 'hex')",
        )
        .await
        .unwrap();
        let error = start_up_error(&db.url).await;
        assert!(
            error.contains("database migration failed") && error.contains("modified"),
            "{error}"
        );

        let newer = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                     SELECT 29991231000000, 'from a newer release', success, checksum, 0 FROM _sqlx_migrations LIMIT 1";
        execute(&db.url, newer, newer).await.unwrap();
        let error = start_up_error(&db.url).await;
        assert!(
            error.contains("database migration failed") && error.contains("29991231000000"),
            "{error}"
        );
        db.finish().await;
    }
}

/// SQLite's group commit runs on a thread of its own over a database file; an in-memory
/// database, which that thread's connection would not see, keeps the sqlx path. The usage and
/// charge cases run through that path too, so it cannot rot unseen.
mod in_memory_sqlite {
    use std::sync::Arc;

    use tollgate_store::Store;
    use tollgate_store::testsuite::{self, TEST_AUDIT_KEY};

    async fn store() -> Arc<dyn Store> {
        let store = tollgate_store::connect("sqlite::memory:", TEST_AUDIT_KEY)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    }

    macro_rules! through_sqlx {
        ($($case:ident),* $(,)?) => {
            $(
                #[tokio::test]
                async fn $case() {
                    testsuite::$case(store().await.as_ref()).await;
                }
            )*
        };
    }

    through_sqlx!(
        usage_is_idempotent_per_request,
        one_batch_charges_many_teams,
        a_charge_across_many_lots_is_written_whole,
        spends_read_the_same_before_and_after_a_fold,
        a_fold_sums_each_charge_within_its_month,
        credit_leases_lend_only_what_is_spendable,
    );
}

/// PostgreSQL aborts one side of a deadlock; the store reports that as unavailable, which the
/// group commit retries (its batch is idempotent on its request ids). Two PostgreSQL nodes'
/// commits may lock common teams' balances in different orders.
#[tokio::test]
async fn a_deadlock_is_worth_retrying() {
    use sqlx::Connection as _;
    let Some(db) = tollgate_store::testsuite::TestDb::postgres().await else {
        return;
    };
    let mut first = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut second = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("CREATE TABLE deadlock (id INT PRIMARY KEY, n INT NOT NULL)")
        .execute(&mut first)
        .await
        .unwrap();
    sqlx::query("INSERT INTO deadlock VALUES (1, 0), (2, 0)")
        .execute(&mut first)
        .await
        .unwrap();
    let bump = |id: i32| sqlx::query("UPDATE deadlock SET n = n + 1 WHERE id = $1").bind(id);
    let mut one = first.begin().await.unwrap();
    let mut two = second.begin().await.unwrap();
    bump(1).execute(&mut *one).await.unwrap();
    bump(2).execute(&mut *two).await.unwrap();
    // Each waits for the other's row: PostgreSQL aborts one of them.
    let (a, b) = tokio::join!(bump(2).execute(&mut *one), bump(1).execute(&mut *two));
    let error = match (a, b) {
        (Err(error), Ok(_)) | (Ok(_), Err(error)) => error,
        other => panic!("expected one side aborted: {other:?}"),
    };
    let error = tollgate_store::StoreError::from(error);
    assert!(matches!(error, tollgate_store::StoreError::Unavailable(_)), "{error:?}");
    one.rollback().await.unwrap();
    two.rollback().await.unwrap();
    first.close().await.unwrap();
    second.close().await.unwrap();
    db.finish().await;
}
