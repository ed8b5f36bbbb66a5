//! The credit ledger: the operator's grants and adjustments (exact decimal USD), balances that
//! always equal the sum of their entries, promotional credit that expires (moved clock),
//! forfeiture when a team is deleted, and `tollgate billing verify` catching a tampered balance.

use serde_json::Value;
use tollgate_domain::{Actor, Bucket, Clock as _, EntryKind, RequestContext, Ticks};
use tollgate_store::testsuite::TestDb;

use crate::util::{TestApp, execute, on_both_backends, tollgate_cli};

on_both_backends!(
    operators_grant_and_adjust_exactly,
    credit_expires_is_forfeited_and_verified,
    the_prepaid_balance_in_xais_shape,
    spending_limits_stay_under_the_operators_maximum,
);

/// Admins set the monthly invoiced spending limit up to the operator's maximum (default $0:
/// prepaid only); above it is a 400, never a silent clamp; the operator raises one team's
/// maximum from the command line.
async fn spending_limits_stay_under_the_operators_maximum(db: TestDb) {
    let app = TestApp::prepaid_only(db).await;
    let path = format!("/v1/billing/teams/{}/postpaid/spending-limits", app.team.id);
    let limits = app.get_json(&path, &app.management_key).await;
    assert_eq!(
        limits,
        serde_json::json!({"spendingLimits": {"hardSlAuto": {"val": "0"}, "effectiveHardSl": {"val": "0"}, "effectiveSl": {"val": "0"}}})
    );
    let set = |cents: &'static str| {
        let (app, path) = (&app, &path);
        async move {
            app.client
                .post(app.url(path))
                .bearer_auth(&app.management_key)
                .json(&serde_json::json!({"desiredSoftSpendingLimit": {"val": cents}}))
                .send()
                .await
                .unwrap()
        }
    };
    let refused = set("20000").await;
    assert_eq!(refused.status(), reqwest::StatusCode::BAD_REQUEST);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("at most $0.00"), "{body}");

    let team = app.team.id.to_string();
    let (ok, out) = run(&app, &["billing", "limit", "--team", &team, "--max-usd", "500"]);
    assert!(ok, "{out}");
    let answer: Value = set("20000").await.json().await.unwrap();
    assert_eq!(answer, serde_json::json!({"thisBpSoftSpendingLimit": {"val": "20000"}}));
    let limits = app.get_json(&path, &app.management_key).await;
    assert_eq!(limits["spendingLimits"]["hardSlOverride"]["val"], "50000");
    assert_eq!(limits["spendingLimits"]["softSl"]["val"], "20000");
    assert_eq!(limits["spendingLimits"]["effectiveSl"]["val"], "20000");
    assert_eq!(set("50001").await.status(), reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(set("-1").await.status(), reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(set("1.5").await.status(), reqwest::StatusCode::BAD_REQUEST);

    // The operator lowering the maximum lowers the limit in force with it.
    let (ok, out) = run(&app, &["billing", "limit", "--team", &team, "--max-usd", "100"]);
    assert!(ok, "{out}");
    let limits = app.get_json(&path, &app.management_key).await;
    assert_eq!(limits["spendingLimits"]["effectiveSl"]["val"], "10000");
    let (ok, _) = run(&app, &["billing", "limit", "--team", &team, "--default"]);
    assert!(ok);
    let limits = app.get_json(&path, &app.management_key).await;
    assert_eq!(limits["spendingLimits"]["effectiveSl"]["val"], "0");
    assert!(limits["spendingLimits"].get("hardSlOverride").is_none());
}

/// `GET /v1/billing/teams/{id}/prepaid/balance`: xAI's inverted ledger in cents as strings; a
/// team with no credit answers 200 and `"0"`.
async fn the_prepaid_balance_in_xais_shape(db: TestDb) {
    let app = TestApp::new(db).await;
    let path = format!("/v1/billing/teams/{}/prepaid/balance", app.team.id);
    let empty = app.get_json(&path, &app.management_key).await;
    assert_eq!(empty, serde_json::json!({"changes": [], "total": {"val": "0"}}));
    let ledger = app.services().ledger;
    let context = RequestContext::default();
    ledger
        .grant(app.team.id, usd("12.50"), "welcome", None, Actor::Operator, &context)
        .await
        .unwrap();
    app.clock.advance(chrono::Duration::seconds(1));
    ledger
        .adjust(app.team.id, usd("-0.005"), "rounding check", Actor::Operator, &context)
        .await
        .unwrap();
    let balance = app.get_json(&path, &app.management_key).await;
    // $12.495 left: -1249.5 cents rounds half away from zero to -1250; each change rounds alone.
    assert_eq!(balance["total"], serde_json::json!({"val": "-1250"}));
    let changes = balance["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(
        changes[0]["amount"]["val"], "1",
        "the newest first: the adjustment, inverted"
    );
    assert_eq!(changes[1]["amount"]["val"], "-1250");
    assert_eq!(changes[1]["changeOrigin"], "MANUAL");
    assert_eq!(changes[1]["teamId"], app.team.id.to_string());
    // Another team's key sees its own team only.
    let (_, other_key) = app.other_team("other@example.com").await;
    let refused = app
        .client
        .get(app.url(&path))
        .bearer_auth(&other_key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
}

fn usd(text: &str) -> Ticks {
    tollgate_domain::ledger::parse_usd(text).unwrap()
}

fn run(app: &TestApp, args: &[&str]) -> (bool, String) {
    let output = tollgate_cli(app, args, None);
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

async fn operators_grant_and_adjust_exactly(db: TestDb) {
    let app = TestApp::new(db).await;
    let team = app.team.id.to_string();
    let (ok, out) = run(
        &app,
        &[
            "billing", "grant", "--team", &team, "--usd", "12.50", "--reason", "welcome",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("granted $12.50"), "{out}");
    let (ok, out) = run(
        &app,
        &[
            "billing",
            "adjust",
            "--team",
            &team,
            "--usd",
            "-5",
            "--reason",
            "correction",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        &app,
        &[
            "billing",
            "adjust",
            "--team",
            &team,
            "--usd",
            "0.0000000001",
            "--reason",
            "a tick",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = run(&app, &["billing", "balance", "--team", &team]);
    assert!(ok, "{out}");
    assert!(out.contains("prepaid: $7.5000000001"), "{out}");
    assert!(out.contains("promotional: $0.00"), "{out}");

    // Refused plainly, nothing written.
    for (args, says) in [
        (vec!["grant", "--usd", "0", "--reason", "x"], "more than $0"),
        (vec!["grant", "--usd", "1.5e3", "--reason", "x"], "not an amount"),
        (
            vec!["grant", "--usd", "0.00000000001", "--reason", "x"],
            "more than 10 decimal places",
        ),
        (vec!["adjust", "--usd", "0", "--reason", "x"], "must not be $0"),
        (vec!["grant", "--usd", "1", "--reason", " "], "reason must not be empty"),
    ] {
        let mut full = vec!["billing"];
        full.push(args[0]);
        full.extend(["--team", &team]);
        full.extend(&args[1..]);
        let (ok, out) = run(&app, &full);
        assert!(!ok, "{full:?}: {out}");
        assert!(out.contains(says), "{full:?}: {out}");
    }
    let unknown = tollgate_domain::TeamId::new().to_string();
    let (ok, out) = run(
        &app,
        &["billing", "grant", "--team", &unknown, "--usd", "1", "--reason", "x"],
    );
    assert!(!ok && out.contains("no such team"), "{out}");
    assert_eq!(
        app.store().balance(app.team.id).await.unwrap().prepaid,
        usd("7.5000000001")
    );

    // On the team's record, by the operator.
    let log = app
        .get_json(
            &format!("/audit/teams/{}/events?pageSize=50", app.team.id),
            &app.management_key,
        )
        .await;
    let events: Vec<&Value> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "GrantCredits" || e["action"] == "AdjustCredits")
        .collect();
    assert_eq!(events.len(), 3, "{log}");
    assert!(events.iter().all(|e| e["actor"]["type"] == "operator"), "{log}");
    let (ok, out) = run(&app, &["billing", "verify"]);
    assert!(ok, "{out}");
}

async fn credit_expires_is_forfeited_and_verified(db: TestDb) {
    let app = TestApp::new(db).await;
    let ledger = app.services().ledger;
    let context = RequestContext::default();
    let team = app.team.id;
    let in_a_day = app.clock.now() + chrono::Duration::days(1);
    ledger
        .grant(
            team,
            usd("3"),
            "launch promotion",
            Some(in_a_day),
            Actor::Operator,
            &context,
        )
        .await
        .unwrap();
    ledger
        .grant(team, usd("10"), "prepaid", None, Actor::Operator, &context)
        .await
        .unwrap();
    let past = ledger
        .grant(
            team,
            usd("1"),
            "too late",
            Some(app.clock.now()),
            Actor::Operator,
            &context,
        )
        .await;
    assert!(past.is_err(), "an expiry must be in the future");
    let balance = ledger.balance(team).await.unwrap();
    assert_eq!((balance.prepaid, balance.promo), (usd("10"), usd("3")));

    // Nothing expires early; after its day the lot's remainder is written off, once.
    assert_eq!(ledger.expire_promotions().await.unwrap(), 0);
    app.clock.advance(chrono::Duration::days(2));
    assert_eq!(ledger.expire_promotions().await.unwrap(), 1);
    assert_eq!(ledger.expire_promotions().await.unwrap(), 0);
    let balance = ledger.balance(team).await.unwrap();
    assert_eq!((balance.prepaid, balance.promo), (usd("10"), Ticks::ZERO));
    let entries = ledger.entries(team, 10).await.unwrap();
    let expiry = entries.iter().find(|e| e.kind == EntryKind::PromoExpiry).unwrap();
    assert_eq!((expiry.bucket, expiry.amount), (Bucket::Promo, usd("-3")));
    assert_eq!(ledger.verify().await.unwrap(), None);

    // A deleted team's credit is forfeited on the ledger, in the deletion's transaction.
    let (doomed, _, _) = app.key_of_a_deleted_team().await;
    assert_eq!(app.store().balance(doomed).await.unwrap(), Default::default());
    let (other, _) = app.other_team("other@example.com").await;
    ledger
        .grant(other.id, usd("4.25"), "credit", None, Actor::Operator, &context)
        .await
        .unwrap();
    forfeit_by_deleting(&app, other.id).await;
    let forfeited = app.store().ledger_entries(other.id, 10).await.unwrap();
    let forfeiture = forfeited.iter().find(|e| e.kind == EntryKind::Forfeiture).unwrap();
    assert_eq!(forfeiture.amount, usd("-4.25"));
    assert_eq!(app.store().balance(other.id).await.unwrap().prepaid, Ticks::ZERO);
    assert_eq!(ledger.verify().await.unwrap(), None);

    // A balance edited behind the ledger's back is caught, and named.
    execute(
        &app.config.database_url,
        "UPDATE team_balances SET prepaid = prepaid + 1",
        "UPDATE team_balances SET prepaid = prepaid + 1",
    )
    .await
    .unwrap();
    let (ok, out) = run(&app, &["billing", "verify"]);
    assert!(!ok, "{out}");
    assert!(out.contains("ledger mismatch: team"), "{out}");
    assert!(out.contains("prepaid balance"), "{out}");
}

/// Deletes `team` (not a Personal Team: it is made a normal one for the test) through the
/// team service, as an Admin would.
async fn forfeit_by_deleting(app: &TestApp, team: tollgate_domain::TeamId) {
    execute(
        &app.config.database_url,
        &format!(
            "UPDATE teams SET personal = 0 WHERE id = X'{}'",
            team.as_uuid().simple()
        ),
        &format!("UPDATE teams SET personal = FALSE WHERE id = '{team}'"),
    )
    .await
    .unwrap();
    let owner = app
        .store()
        .find_user_by_email(&tollgate_domain::Email::parse("other@example.com").unwrap())
        .await
        .unwrap()
        .unwrap();
    let caller = tollgate_core::Caller::Member {
        user_id: owner.id,
        email: owner.email.clone(),
        team_id: team,
        role: tollgate_domain::Role::Admin,
    };
    let name = app.store().get_team(team).await.unwrap().name;
    app.services()
        .teams
        .delete_team(&caller, &name, &RequestContext::default())
        .await
        .unwrap();
}
