//! The group-commit usage recorder.

use std::sync::Arc;

use tollgate_core::UsageRecorder;
use tollgate_domain::{ApiKeyId, RequestId, Ticks, TokenUsage, UsageRecord};
use tollgate_store::testsuite::TestDb;

use crate::util::{MODEL, TestApp, on_both_backends};

on_both_backends!(a_bad_record_fails_alone);

async fn a_bad_record_fails_alone(db: TestDb) {
    let app = TestApp::new(db).await;
    let created = app.create_api_key(serde_json::json!({"name": "k"})).await;
    let key_id: ApiKeyId = created["apiKeyId"].as_str().unwrap().parse().unwrap();
    let charge = |record| tollgate_store::Charge {
        record,
        pricing: tollgate_domain::ModelPricing::default(),
    };
    let record = |api_key_id| UsageRecord {
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
    };
    let (recorder, task) = UsageRecorder::start(
        Arc::clone(&app.server.as_ref().unwrap().store),
        app.clock.clone(),
        tollgate_domain::Ticks::ZERO,
    );
    let good = record(key_id);
    // No such key: the foreign key refuses it. Both are queued before the writer runs, so they
    // share a commit.
    let bad = record(ApiKeyId::new());
    let (good_result, bad_result) = tokio::join!(recorder.record(charge(good.clone())), recorder.record(charge(bad)));
    good_result.unwrap();
    assert!(bad_result.is_err());
    let stored = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(stored, vec![good]);
    drop(recorder);
    task.await.unwrap();
    app.finish().await;
}
