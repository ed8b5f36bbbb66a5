//! The store conformance suite, on SQLite and on PostgreSQL.

macro_rules! conformance_tests {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = tollgate_store::testsuite::TestDb::sqlite().await;
                    tollgate_store::testsuite::$case(db.store.as_ref()).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(db) = tollgate_store::testsuite::TestDb::postgres().await else {
                        eprintln!("skipped: TOLLGATE_TEST_POSTGRES_URL is not set");
                        return;
                    };
                    tollgate_store::testsuite::$case(db.store.as_ref()).await;
                    db.finish().await;
                }
            )*
        }
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
