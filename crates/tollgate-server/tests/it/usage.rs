//! The group-commit usage recorder.

use std::sync::Arc;

use tollgate_core::UsageRecorder;
use tollgate_domain::{ApiKeyId, RequestId, Ticks, TokenUsage, UsageRecord};
use tollgate_store::testsuite::TestDb;

use crate::util::{MODEL, TestApp, on_both_backends};

on_both_backends!(
    a_bad_record_fails_alone,
    the_recorder_folds_spends_once_enough_gather,
    a_fold_moves_no_spend_of_a_missing_team,
    a_failed_fold_waits_for_the_journal_to_double
);

/// A request of the app's team on `api_key_id`, costing 10 ticks.
fn charge(app: &TestApp, api_key_id: ApiKeyId) -> tollgate_store::Charge {
    tollgate_store::Charge {
        record: UsageRecord {
            request_id: RequestId::new(),
            team_id: app.team.id,
            api_key_id,
            model: MODEL.into(),
            endpoint: tollgate_domain::Endpoint::Chat,
            usage: TokenUsage {
                prompt_tokens: 3,
                completion_tokens: 4,
                ..TokenUsage::default()
            },
            cost: Ticks::new(10),
            estimated: false,
            streamed: false,
            started_at: crate::util::start_time(),
            duration_ms: 1,
        },
        pricing: tollgate_domain::ModelPricing::default(),
    }
}

async fn a_bad_record_fails_alone(db: TestDb) {
    let app = TestApp::new(db).await;
    let created = app.create_api_key(serde_json::json!({"name": "k"})).await;
    let key_id: ApiKeyId = created["apiKeyId"].as_str().unwrap().parse().unwrap();
    let (recorder, task) = UsageRecorder::start(
        Arc::clone(&app.server.as_ref().unwrap().store),
        app.clock.clone(),
        tollgate_domain::Ticks::ZERO,
    );
    let good = charge(&app, key_id);
    // No such key: the foreign key refuses it. Both are queued before the writer runs, so they
    // share a commit.
    let bad = charge(&app, ApiKeyId::new());
    let (good_result, bad_result) = tokio::join!(recorder.record(good.clone()), recorder.record(bad));
    good_result.unwrap();
    assert!(bad_result.is_err());
    let stored = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(stored, vec![good.record]);
    drop(recorder);
    task.await.unwrap();
    app.finish().await;
}

/// The recorder folds the spend journal into the ledger at start (what an earlier process left)
/// and after a batch once enough spend entries have gathered, not before.
async fn the_recorder_folds_spends_once_enough_gather(db: TestDb) {
    let app = TestApp::new(db).await;
    let created = app.create_api_key(serde_json::json!({"name": "k"})).await;
    let key_id: ApiKeyId = created["apiKeyId"].as_str().unwrap().parse().unwrap();
    let charge = || charge(&app, key_id);
    let store = Arc::clone(&app.server.as_ref().unwrap().store);
    // Left in the journal by "an earlier process".
    store
        .insert_usage_batch(
            &[charge()],
            tollgate_domain::Clock::now(app.clock.as_ref()),
            Ticks::ZERO,
        )
        .await
        .unwrap();
    let (recorder, task) = UsageRecorder::start_folding_at(Arc::clone(&store), app.clock.clone(), Ticks::ZERO, 2);
    // One at a time, so each is a batch of its own: the start folded the earlier spend; the
    // first and second make two, folded after the second's answer; the third waits for more.
    for _ in 0..3 {
        recorder.record(charge()).await.unwrap();
    }
    drop(recorder);
    task.await.unwrap();
    assert_eq!(store.fold_spends(0).await.unwrap(), 1, "only the last spend was left");
    let spends = app
        .store()
        .ledger_entries(app.team.id, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|entry| entry.kind == tollgate_domain::EntryKind::Spend)
        .count();
    // Each fold closes the node's open charges: the first and second were spent under one,
    // which their fold summed into one entry.
    assert_eq!(spends, 3);
    assert_eq!(app.store().verify_ledger().await.unwrap(), None);
    app.finish().await;
}

/// The ledger checks a spend's team when the journal is folded into it (it has no foreign key to
/// do so row by row): a spend of a team that does not exist, written behind the application's
/// back, stops the fold, which then moves nothing; without it, the fold moves the rest.
async fn a_fold_moves_no_spend_of_a_missing_team(db: TestDb) {
    let app = TestApp::new(db).await;
    let created = app.create_api_key(serde_json::json!({"name": "k"})).await;
    let key_id: ApiKeyId = created["apiKeyId"].as_str().unwrap().parse().unwrap();
    let store = Arc::clone(&app.server.as_ref().unwrap().store);
    store
        .insert_usage_batch(
            &[charge(&app, key_id)],
            tollgate_domain::Clock::now(app.clock.as_ref()),
            Ticks::ZERO,
        )
        .await
        .unwrap();
    journal_a_spend_of_no_team(&app).await;
    let refused = store.fold_spends(0).await;
    assert!(
        matches!(&refused, Err(tollgate_store::StoreError::Corrupt(why)) if why.contains("team that does not exist")),
        "{refused:?}"
    );
    let spends = || async {
        app.store()
            .ledger_entries(app.team.id, 10)
            .await
            .unwrap()
            .into_iter()
            .filter(|entry| entry.kind == tollgate_domain::EntryKind::Spend)
            .count()
    };
    // Still journaled (reads see the journal too); the next fold finds it there.
    assert_eq!(spends().await, 1);
    remove_the_spend_of_no_team(&app).await;
    assert_eq!(store.fold_spends(0).await.unwrap(), 1);
    assert_eq!(spends().await, 1);
    assert_eq!(app.store().verify_ledger().await.unwrap(), None);
    app.finish().await;
}

/// Journals a spend of 5 ticks for a team that does not exist, behind the application's back.
async fn journal_a_spend_of_no_team(app: &TestApp) {
    let (id, team, charge_id) = (
        "0190a000-0000-7000-8000-00000000000a",
        "0190a000-0000-7000-8000-00000000000b",
        "0190a000-0000-7000-8000-00000000000c",
    );
    let blob = |uuid: &str| format!("x'{}'", uuid.replace('-', ""));
    let columns = "id, team_id, kind, bucket, amount, actor_kind, created_at, charge_id";
    let rest = "'spend', 'prepaid', -5, 'system', '2026-11-01T00:00:00Z'";
    crate::util::execute(
        &app.config.database_url,
        &format!(
            "INSERT INTO spend_journal ({columns}) VALUES ({}, {}, {rest}, {})",
            blob(id),
            blob(team),
            blob(charge_id)
        ),
        &format!("INSERT INTO spend_journal ({columns}) VALUES ('{id}', '{team}', {rest}, '{charge_id}')"),
    )
    .await
    .unwrap();
}

/// Removes what [`journal_a_spend_of_no_team`] wrote.
async fn remove_the_spend_of_no_team(app: &TestApp) {
    let gone = "DELETE FROM spend_journal WHERE amount = -5";
    crate::util::execute(&app.config.database_url, gone, gone)
        .await
        .unwrap();
}

/// A fold that failed is not tried again after every batch (each try would redo a whole
/// journal's work and undo it), but once the journal has doubled.
async fn a_failed_fold_waits_for_the_journal_to_double(db: TestDb) {
    let app = TestApp::new(db).await;
    let created = app.create_api_key(serde_json::json!({"name": "k"})).await;
    let key_id: ApiKeyId = created["apiKeyId"].as_str().unwrap().parse().unwrap();
    let store = Arc::clone(&app.server.as_ref().unwrap().store);
    journal_a_spend_of_no_team(&app).await;
    // The fold at start fails: the next is due at 4 entries, not 2.
    let (recorder, task) = UsageRecorder::start_folding_at(Arc::clone(&store), app.clock.clone(), Ticks::ZERO, 2);
    recorder.record(charge(&app, key_id)).await.unwrap();
    remove_the_spend_of_no_team(&app).await;
    // Two and three entries: a fold at 2 would now succeed, but none is tried before 4.
    recorder.record(charge(&app, key_id)).await.unwrap();
    recorder.record(charge(&app, key_id)).await.unwrap();
    drop(recorder);
    task.await.unwrap();
    assert_eq!(
        store.fold_spends(0).await.unwrap(),
        3,
        "no fold was tried before 4 entries"
    );
    assert_eq!(app.store().verify_ledger().await.unwrap(), None);
    app.finish().await;
}
