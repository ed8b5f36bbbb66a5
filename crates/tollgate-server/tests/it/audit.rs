//! The audit log: xAI's search endpoint and its filters, access rules, export, the hash chain
//! against edits behind the application's back, and retention.

use std::collections::HashSet;

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_domain::ChainBreak;
use tollgate_server::Config;
use tollgate_store::testsuite::TestDb;

use crate::util::{TestApp, assert_xai_error, execute, on_both_backends};

on_both_backends!(
    search_in_xai_shape,
    paging_and_bad_parameters,
    only_the_team_may_read_its_log,
    export_as_csv_and_json_lines,
    edits_behind_the_back_are_caught,
    retention_prunes_and_the_chain_still_verifies,
    a_node_with_another_key_is_refused,
);

const FORBIDDEN: &str = "The caller does not have permission to execute the specified operation";
const INVALID: &str = "Client specified an invalid argument";

impl TestApp {
    fn events_path(&self, query: &str) -> String {
        format!("/audit/teams/{}/events{query}", self.team.id)
    }

    async fn events(&self, query: &str) -> Value {
        self.get_json(&self.events_path(query), &self.management_key).await
    }
}

fn actions(page: &Value) -> Vec<&str> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect()
}

async fn search_in_xai_shape(db: TestDb) {
    let app = TestApp::new(db).await;
    let created = app
        .create_api_key(json!({"name": "ci", "acls": ["api-key:model:*"]}))
        .await;
    app.clock.advance(Duration::minutes(5));
    app.get_json(&format!("/auth/teams/{}/api-keys", app.team.id), &app.management_key)
        .await;
    app.clock.advance(Duration::minutes(5));

    // Newest first by default; the accounts and keys work wrote these.
    let page = app.events("").await;
    assert_eq!(
        actions(&page),
        ["ListApiKeys", "CreateApiKey", "CreateManagementKey", "CreateUser"]
    );
    assert!(page.get("nextPageToken").is_none(), "one page: {page}");
    let created_event = &page["events"][1];
    assert_eq!(created_event["teamId"], app.team.id.to_string());
    assert_eq!(created_event["actor"]["type"], "management_key");
    assert_eq!(created_event["actor"]["name"], "ci");
    assert_eq!(
        created_event["target"],
        format!("api_key:{}", created["apiKeyId"].as_str().unwrap())
    );
    assert_eq!(created_event["outcome"], "success");
    assert_eq!(created_event["ipAddress"], "127.0.0.1");
    assert!(created_event["requestId"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(
        created_event["description"]
            .as_str()
            .unwrap()
            .starts_with("Created API key 'ci'")
    );
    assert_eq!(created_event["chainSeq"], "3");
    assert_eq!(created_event["chainHash"].as_str().unwrap().len(), 64);
    assert_eq!(created_event["eventTime"], "2026-11-01T12:00:00.000000Z");
    // A person's event carries xAI's `user`; a key's does not.
    assert!(created_event.get("user").is_none());

    // The search itself is on the record.
    let again = app.events("?eventFilter.query=ListAuditEvents").await;
    assert_eq!(actions(&again), ["ListAuditEvents"]);

    // By description or action text, any case.
    let listed = app.events("?eventFilter.query=listapikeys").await;
    assert_eq!(actions(&listed), ["ListApiKeys"]);
    let by_words = app.events("?eventFilter.query=created%20api%20key").await;
    assert_eq!(actions(&by_words), ["CreateApiKey"]);
    // By event id.
    let id = created_event["eventId"].as_str().unwrap();
    let one = app.events(&format!("?eventFilter.eventId={id}")).await;
    assert_eq!(one["events"].as_array().unwrap().len(), 1);
    assert_eq!(one["events"][0]["eventId"], id);
    // By actor: the management key's id.
    let key_id = created_event["actor"]["id"].as_str().unwrap();
    let by_key = app
        .events(&format!("?eventFilter.userId={key_id}&eventFilter.query=ApiKey"))
        .await;
    assert_eq!(actions(&by_key), ["ListApiKeys", "CreateApiKey"]);
    // By time: [from, to).
    let window = app
        .events("?eventTimeFrom=2026-11-01T12:04:00Z&eventTimeTo=2026-11-01T12:06:00%2B00:00")
        .await;
    assert_eq!(actions(&window), ["ListApiKeys"]);
    // Oldest first.
    let oldest = app.events("?orderBy=TIME_ASCENDING&pageSize=2").await;
    assert_eq!(actions(&oldest), ["CreateUser", "CreateManagementKey"]);
    app.finish().await;
}

async fn paging_and_bad_parameters(db: TestDb) {
    let app = TestApp::new(db).await;
    for i in 0..5 {
        app.create_api_key(json!({"name": format!("key {i}")})).await;
        app.clock.advance(Duration::seconds(1));
    }
    // Keyset pages of 2 visit all 7 events (user, management key, 5 keys) exactly once, in order.
    for order in ["TIME_DESCENDING", "TIME_ASCENDING"] {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = app
                .events(&format!(
                    "?pageSize=2&orderBy={order}&eventFilter.query=Create&pageToken={token}"
                ))
                .await;
            seen.extend(page["events"].as_array().unwrap().iter().map(|e| e["eventId"].clone()));
            match page["nextPageToken"].as_str() {
                Some(next) => token = next.to_owned(),
                None => break,
            }
        }
        assert_eq!(seen.len(), 7, "{order}");
        assert_eq!(seen.iter().map(ToString::to_string).collect::<HashSet<_>>().len(), 7);
    }

    let ascending_token = app.events("?pageSize=1&orderBy=TIME_ASCENDING").await["nextPageToken"]
        .as_str()
        .unwrap()
        .to_owned();
    for (query, message) in [
        ("?pageSize=0", "pageSize must be between 1 and 1000"),
        ("?pageSize=1001", "pageSize must be between 1 and 1000"),
        ("?pageSize=many", "pageSize"),
        ("?orderBy=NEWEST", "orderBy must be TIME_DESCENDING or TIME_ASCENDING"),
        ("?eventTimeFrom=yesterday", "eventTimeFrom must be an RFC 3339 time"),
        (
            "?eventTimeTo=2026-13-01T00:00:00Z",
            "eventTimeTo must be an RFC 3339 time",
        ),
        (
            "?eventTimeFrom=2026-11-02T00:00:00Z&eventTimeTo=2026-11-01T00:00:00Z",
            "eventTimeFrom must be before eventTimeTo",
        ),
        ("?eventFilter.eventId=42", "eventFilter.eventId is not an event id"),
        ("?pageToken=not-a-token", "invalid pageToken"),
        // A token is only good for the order it came from.
        (&format!("?pageToken={ascending_token}")[..], "invalid pageToken"),
    ] {
        let response = app
            .client
            .get(app.url(&app.events_path(query)))
            .bearer_auth(&app.management_key)
            .send()
            .await
            .unwrap();
        assert_xai_error(response, StatusCode::BAD_REQUEST, INVALID, message).await;
    }
    let long = "x".repeat(201);
    let response = app
        .client
        .get(app.url(&app.events_path(&format!("?eventFilter.query={long}"))))
        .bearer_auth(&app.management_key)
        .send()
        .await
        .unwrap();
    assert_xai_error(response, StatusCode::BAD_REQUEST, INVALID, "at most 200 characters").await;
    app.finish().await;
}

async fn only_the_team_may_read_its_log(db: TestDb) {
    let app = TestApp::new(db).await;
    let api_key = app.api_key().await;
    let (other_team, other_key) = app.other_team("other@example.com").await;

    let get = |path: String, key: Option<String>| {
        let request = app.client.get(app.url(&path));
        let request = match key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        async move { request.send().await.unwrap() }
    };
    let ours = app.events_path("");
    let export = app.events_path("/export");
    for path in [ours.clone(), export.clone()] {
        // Another team's management key: 403, and an unknown team looks exactly the same.
        let response = get(path.clone(), Some(other_key.clone())).await;
        assert_xai_error(
            response,
            StatusCode::FORBIDDEN,
            FORBIDDEN,
            "not authorized for this team",
        )
        .await;
        // An inference key is no management key.
        let response = get(path.clone(), Some(api_key.clone())).await;
        assert_xai_error(response, StatusCode::FORBIDDEN, FORBIDDEN, "This kind of key").await;
        // No credentials.
        let response = get(path.clone(), None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    for team in [tollgate_domain::TeamId::new().to_string(), "not-a-team".to_owned()] {
        let response = get(format!("/audit/teams/{team}/events"), Some(app.management_key.clone())).await;
        assert_xai_error(
            response,
            StatusCode::FORBIDDEN,
            FORBIDDEN,
            "not authorized for this team",
        )
        .await;
    }
    // The other team sees its own log, and nothing of ours; its key's refused attempts are in
    // its own log (never in ours), marked denied.
    let theirs = app
        .get_json(&format!("/audit/teams/{}/events", other_team.id), &other_key)
        .await;
    assert_eq!(
        actions(&theirs),
        [
            "ExportAuditEvents",
            "ListAuditEvents",
            "CreateManagementKey",
            "CreateUser"
        ]
    );
    let refused = &theirs["events"][1];
    assert_eq!(refused["outcome"], "denied");
    assert_eq!(refused["target"], format!("team:{}", app.team.id));
    assert!(
        refused["description"]
            .as_str()
            .unwrap()
            .starts_with("Refused ListAuditEvents")
    );
    assert!(
        theirs["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["teamId"] == other_team.id.to_string())
    );
    app.finish().await;
}

async fn export_as_csv_and_json_lines(db: TestDb) {
    let app = TestApp::new(db).await;
    // A name with a comma and quotes: CSV must keep it one field. (Formula neutralising is unit
    // tested: no field here starts with '='.)
    app.create_api_key(json!({"name": "=cmd|' /C calc'!A0, \"quoted\""}))
        .await;
    let export = |query: &'static str| {
        let request = app
            .client
            .get(app.url(&app.events_path(&format!("/export{query}"))))
            .bearer_auth(&app.management_key);
        async move { request.send().await.unwrap() }
    };

    let response = export("").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(&format!("audit-{}.csv", app.team.id))
    );
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(lines[0].starts_with("event_id,event_time,team_id,actor_type,actor_id,actor_name,action,description"));
    // Oldest first: user, management key, API key, and the export itself, recorded before the
    // first event is read.
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[4].contains(",ExportAuditEvents,Exported the audit log as csv,"),
        "{}",
        lines[4]
    );
    assert!(lines[1].contains(",CreateUser,"), "{}", lines[1]);
    assert!(
        lines[3].contains(",CreateApiKey,\"Created API key '=cmd|' /C calc'!A0, \"\"quoted\"\"'"),
        "{}",
        lines[3]
    );

    let response = export("?format=jsonl&eventFilter.query=CreateApiKey").await;
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let body = response.text().await.unwrap();
    let events: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["action"], "CreateApiKey");
    assert_eq!(events[0]["teamId"], app.team.id.to_string());

    let response = export("?format=xlsx").await;
    assert_xai_error(
        response,
        StatusCode::BAD_REQUEST,
        INVALID,
        "format must be csv or jsonl",
    )
    .await;

    // Exports are on the record, with their format.
    let exports = app.events("?eventFilter.query=ExportAuditEvents").await;
    let descriptions: Vec<_> = exports["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["description"].clone())
        .collect();
    assert_eq!(
        descriptions,
        [
            json!("Exported the audit log as jsonl"),
            json!("Exported the audit log as csv")
        ]
    );
    app.finish().await;
}

/// The `tollgate` binary against this database, with the test's chain key.
fn tollgate_cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    let key = tollgate_domain::AuditChainKey::from_bytes([42; 32]).to_hex();
    std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("TOLLGATE_DATABASE_URL", &app.config.database_url)
        .env("TOLLGATE_AUDIT__KEY", key)
        .env("TOLLGATE_LOG_FILTER", "warn")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

async fn edits_behind_the_back_are_caught(db: TestDb) {
    let app = TestApp::new(db).await;
    for i in 0..3 {
        app.create_api_key(json!({"name": format!("key {i}")})).await;
    }
    let url = app.config.database_url.clone();
    let team = app.team.id;
    let audit = app.server.as_ref().unwrap().audit.clone();
    let report = audit.verify(Some(team)).await.unwrap().unwrap();
    assert_eq!(report.result, Ok(()));
    assert_eq!(report.checked, 5);

    let output = tollgate_cli(&app, &["audit", "verify", "--team", &team.to_string()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ok, 5 events verified; head #5"), "{stdout}");

    // The application's own database refuses edits and deletions of events.
    let edit = "UPDATE audit_events SET description = 'nothing to see' WHERE seq = 3";
    let error = execute(&url, edit, edit).await.unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");
    let delete = "DELETE FROM audit_events WHERE seq = 4";
    let error = execute(&url, delete, delete).await.unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");

    // Someone with the database owner's rights switches that off and edits event #3.
    execute(
        &url,
        "DROP TRIGGER audit_events_no_update",
        "ALTER TABLE audit_events DISABLE TRIGGER USER",
    )
    .await
    .unwrap();
    execute(&url, edit, edit).await.unwrap();
    let report = audit.verify(Some(team)).await.unwrap().unwrap();
    let edited = app.store().audit_chain_page(Some(team), 2, 1).await.unwrap()[0].id;
    assert_eq!(report.result, Err(ChainBreak::Altered { id: edited, seq: 3 }));

    // The command names the first broken link and fails.
    let output = tollgate_cli(&app, &["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        stdout.contains(&format!(
            "team {team}: BROKEN: event {edited} (#3) does not match its hash"
        )),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 audit chain(s) do not verify"));

    app.finish().await;
}

async fn retention_prunes_and_the_chain_still_verifies(db: TestDb) {
    let app = TestApp::new(db).await;
    app.create_api_key(json!({"name": "old"})).await;
    let team = app.team.id;
    let audit = app.server.as_ref().unwrap().audit.clone();

    // Nothing is a year old yet.
    assert_eq!(audit.prune_expired().await.unwrap(), 0);
    app.clock.advance(Duration::days(366));
    app.create_api_key(json!({"name": "new"})).await;
    // CreateUser, CreateManagementKey and the old key's event are past the default 365 days.
    assert_eq!(audit.prune_expired().await.unwrap(), 3);
    let page = app.events("").await;
    assert_eq!(actions(&page), ["PruneAuditEvents", "CreateApiKey"]);
    assert!(
        page["events"][0]["description"]
            .as_str()
            .unwrap()
            .starts_with("Removed 3 audit events older than 2026-11-02T12:00:00Z (retention: 365 days)")
    );
    assert_eq!(page["events"][0]["actor"]["type"], "system");
    let report = audit.verify(Some(team)).await.unwrap().unwrap();
    assert_eq!(report.result, Ok(()));
    assert_eq!(report.pruned_through, Some(3));
    // The new key's event, the prune note, and the search just made.
    assert_eq!((report.checked, report.head.seq), (3, 6));
    // Running again removes nothing.
    assert_eq!(audit.prune_expired().await.unwrap(), 0);

    // Deleting the oldest remaining events and moving the boundary by hand is caught: the
    // boundary's MAC needs the chain key.
    let url = app.config.database_url.clone();
    let forge = "UPDATE audit_chains SET pruned_seq = 4";
    execute(&url, forge, forge).await.unwrap();
    let report = audit.verify(Some(team)).await.unwrap().unwrap();
    assert_eq!(report.result, Err(ChainBreak::ForgedBoundary { seq: 4 }));
    app.finish().await;
}

async fn a_node_with_another_key_is_refused(db: TestDb) {
    let mut config = Config::for_test(db.url.clone());
    config.audit.key = Some(tollgate_domain::AuditChainKey::from_bytes([7; 32]).to_hex().into());
    let error = match tollgate_server::open_store(&config).await {
        Ok(_) => panic!("a node with another audit key must not start"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("chained with another key"), "{error}");
    // The right key opens it.
    let store = tollgate_server::open_store(&Config::for_test(db.url.clone()))
        .await
        .unwrap();
    store.close().await;
    db.finish().await;
}
