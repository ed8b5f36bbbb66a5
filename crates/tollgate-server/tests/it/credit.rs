//! Reserve, then settle: a request holds its worst-case cost against its team's credit before
//! the upstream is called, and settles its actual cost with its usage. Never overspent, however
//! many requests or nodes; a team without credit is refused in xAI's words; every exit path
//! releases what it held.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_domain::{Actor, Bucket, EntryKind, RequestContext, TeamId, Ticks};
use tollgate_gateway::usage::Demand;
use tollgate_gateway::wire::ChatCompletionRequest;
use tollgate_store::testsuite::TestDb;

use crate::util::{COMPLETION_PRICE, MODEL, PROMPT_PRICE, TestApp, on_both_backends, tollgate_cli, user_message};

on_both_backends!(
    a_team_without_credit_is_refused_before_the_upstream,
    a_thousand_requests_against_credit_for_five_hundred,
    an_upstream_that_ignores_its_budget_is_charged_in_full,
    an_upstream_failure_charges_nothing_and_releases_its_hold,
    credit_is_consumed_promo_then_prepaid_then_invoice,
    a_client_that_hangs_up_mid_stream_is_charged_and_the_upstream_cancelled,
    two_nodes_on_one_database_never_overspend_together,
    usage_analytics_match_the_ledger,
    members_see_the_usage_of_their_own_keys,
    a_request_past_its_deadline_is_cut_off_and_charged,
    leases_go_back_when_idle_and_at_shutdown,
    a_tokenizer_tightens_the_hold_of_a_long_prompt,
    a_node_that_stalls_past_its_lease_does_not_spend_it,
    a_node_reports_its_spends_when_it_renews_and_the_credit_is_lent_again,
);

const MAX_TOKENS: u64 = 100;

fn request() -> Value {
    json!({"model": MODEL, "messages": user_message(), "max_tokens": MAX_TOKENS})
}

/// The worst case of [`request`]: its prompt bound and its whole output budget.
fn hold_of_request() -> (u64, Ticks) {
    let parsed: ChatCompletionRequest = serde_json::from_value(request()).unwrap();
    let prompt = Demand::of_chat(&parsed).prompt_bound(tollgate_gateway::usage::TemplateOverhead::default());
    let hold = PROMPT_PRICE * i64::try_from(prompt).unwrap() + COMPLETION_PRICE * MAX_TOKENS as i64;
    (prompt, Ticks::new(hold))
}

fn out_of_credit_text(team_id: TeamId) -> String {
    format!(
        "Your team {team_id} has either used all available credits or reached its monthly spending limit. To \
         continue making API requests, please purchase more credits or raise your spending limit."
    )
}

async fn grant(app: &TestApp, amount: Ticks, promo_expires: Option<tollgate_domain::Timestamp>) {
    app.services()
        .ledger
        .grant(
            app.team.id,
            amount,
            "test credit",
            promo_expires,
            Actor::Operator,
            &RequestContext::default(),
        )
        .await
        .unwrap();
}

pub(crate) async fn assert_ledger_consistent(app: &TestApp) {
    assert_eq!(app.store().verify_ledger().await.unwrap(), None);
}

/// The team's newest ledger entries of `kind`, oldest first.
async fn entries_of(app: &TestApp, kind: EntryKind) -> Vec<tollgate_domain::LedgerEntry> {
    let mut entries: Vec<_> = app
        .store()
        .ledger_entries(app.team.id, 1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|entry| entry.kind == kind)
        .collect();
    entries.reverse();
    entries
}

/// Whether `done` holds within `seconds`, asked every 25 ms: for what a server does on its own
/// tasks after the client has its answer (a charge after a hang-up, a cancelled upstream call,
/// a lease returned).
pub(crate) async fn within<F, Fut>(seconds: f64, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    while !done().await {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    true
}

async fn upstream_call_cancelled(app: &TestApp) -> bool {
    within(5.0, || async { app.upstream.abandoned_streams() == 1 }).await
}

/// A brand-new team with no credit gets the 429 xAI sends, with its bare id, and the model
/// server is never called; with credit, the same request is served and its cost taken from it.
async fn a_team_without_credit_is_refused_before_the_upstream(db: TestDb) {
    let app = TestApp::prepaid_only(db).await;
    let key = app.api_key().await;
    let refused = app.chat(&key, request()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body,
        json!({"code": "Some resource has been exhausted", "error": out_of_credit_text(app.team.id)})
    );
    assert!(app.upstream.requests().is_empty(), "no upstream call");
    assert!(app.metrics().await.contains("out_of_credit_requests_total 1"));

    let (_, hold) = hold_of_request();
    grant(&app, hold, None).await;
    app.clock.advance(chrono::Duration::minutes(1));
    let served = app.chat(&key, request()).await;
    assert_eq!(served.status(), StatusCode::OK);
    let answer: Value = served.json().await.unwrap();
    let cost = answer["usage"]["cost_in_usd_ticks"].as_i64().unwrap();
    let sent = &app.upstream.requests()[0];
    assert_eq!(sent["max_tokens"], MAX_TOKENS, "the upstream is held to the budget");
    let balance = app.store().balance(app.team.id).await.unwrap();
    assert_eq!(balance.prepaid, Ticks::new(hold.get() - cost));
    let spends = entries_of(&app, EntryKind::Spend).await;
    assert_eq!(spends.len(), 1);
    assert_eq!(
        (spends[0].bucket, spends[0].amount),
        (Bucket::Prepaid, Ticks::new(-cost))
    );
    // Spend shows among the balance's changes once per billing month, as xAI lists it.
    assert_eq!(
        app.chat(
            &key,
            json!({"model": MODEL, "messages": user_message(), "max_tokens": 1})
        )
        .await
        .status(),
        StatusCode::OK
    );
    let path = format!("/v1/billing/teams/{}/prepaid/balance", app.team.id);
    let shown = app.get_json(&path, &app.management_key).await;
    let changes = shown["changes"].as_array().unwrap();
    let origins: Vec<&str> = changes.iter().map(|c| c["changeOrigin"].as_str().unwrap()).collect();
    assert_eq!(origins, ["SPEND", "MANUAL"], "{shown}");
    assert_eq!(
        (
            changes[0]["spendBpKeyYear"].as_i64(),
            changes[0]["spendBpKeyMonth"].as_i64()
        ),
        (Some(2026), Some(11))
    );
    let balance = app.store().balance(app.team.id).await.unwrap();
    let spent = hold.get() - balance.prepaid.get();
    assert_eq!(
        changes[0]["amount"]["val"],
        Ticks::new(spent).to_cents_rounded().to_string()
    );
    let out = tollgate_cli(&app, &["billing", "verify"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A usage row changed behind the ledger's back no longer matches its charge.
    let tamper = "UPDATE usage_events SET cost_ticks = cost_ticks + 1";
    crate::util::execute(&app.config.database_url, tamper, tamper)
        .await
        .unwrap();
    let mismatch = app.store().verify_ledger().await.unwrap().unwrap();
    assert!(mismatch.starts_with("charge "), "{mismatch}");
    // A usage row gone: its charge's spend has nothing behind it.
    let gone = "DELETE FROM usage_events";
    crate::util::execute(&app.config.database_url, gone, gone)
        .await
        .unwrap();
    let mismatch = app.store().verify_ledger().await.unwrap().unwrap();
    assert!(
        mismatch.starts_with("spend of charge ") && mismatch.ends_with("has no usage records"),
        "{mismatch}"
    );
    app.finish().await;
}

/// 1,000 requests at once against credit for exactly 500 worst-case holds, with an upstream
/// whose usage equals the hold: 500 are served, 500 refused, and the credit ends at exactly 0.
async fn a_thousand_requests_against_credit_for_five_hundred(db: TestDb) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.billing.max_invoiced_limit_usd = None;
    config.connections.max = 4_000;
    config.connections.max_per_client = 4_000;
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let (prompt, hold) = hold_of_request();
    app.upstream.report_usage(Some((prompt, MAX_TOKENS)));
    grant(&app, Ticks::new(hold.get() * 500), None).await;
    // Every admitted request waits at the upstream, so all 500 holds are in flight at once.
    let barrier = app.upstream.hold_all_answers();

    let client = reqwest::Client::new();
    let url = app.url("/v1/chat/completions");
    let requests: Vec<_> = (0..1_000)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            tokio::spawn(async move {
                let response = client.post(url).bearer_auth(key).json(&request()).send().await.unwrap();
                let status = response.status();
                (status, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    // The refusals come back while the admitted requests wait at the upstream.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while requests.iter().filter(|r| r.is_finished()).count() < 500 || app.upstream.requests().len() < 500 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} answered, {} at the upstream",
            requests.iter().filter(|r| r.is_finished()).count(),
            app.upstream.requests().len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (mut served, mut refused) = (0, 0);
    let mut waiting = Vec::new();
    for request in requests {
        if request.is_finished() {
            let (status, body) = request.await.unwrap();
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
            assert_eq!(body["error"].as_str(), Some(out_of_credit_text(app.team.id).as_str()));
            refused += 1;
        } else {
            waiting.push(request);
        }
    }
    barrier.add_permits(1);
    for request in waiting {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["usage"]["cost_in_usd_ticks"].as_i64(), Some(hold.get()));
        served += 1;
    }
    assert_eq!((served, refused), (500, 500));
    assert_eq!(app.upstream.requests().len(), 500, "no upstream call for a refusal");
    let balance = app.store().balance(app.team.id).await.unwrap();
    assert_eq!(balance.prepaid, Ticks::ZERO, "never below zero, nothing left unspent");
    assert_eq!(app.store().list_usage(app.team.id, 1_000).await.unwrap().len(), 500);
    assert_ledger_consistent(&app).await;
    app.finish().await;
}

/// An upstream that produces more than the budget it was held to is charged in full, counted
/// in a metric, and the balance goes below zero by exactly the excess; then nothing more runs.
async fn an_upstream_that_ignores_its_budget_is_charged_in_full(db: TestDb) {
    let app = TestApp::prepaid_only(db).await;
    let key = app.api_key().await;
    let (prompt, hold) = hold_of_request();
    grant(&app, hold, None).await;
    app.upstream.report_usage(Some((prompt, MAX_TOKENS + 7)));
    let response = app.chat(&key, request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let excess = 7 * COMPLETION_PRICE;
    let balance = app.store().balance(app.team.id).await.unwrap();
    assert_eq!(balance.prepaid, Ticks::new(-excess));
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&format!(
            "charged_beyond_hold_ticks_total{{model=\"{MODEL}\"}} {excess}"
        )),
        "{metrics}"
    );
    assert_eq!(app.chat(&key, request()).await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_ledger_consistent(&app).await;
    app.finish().await;
}

/// A request the model server fails (a 5xx it answers as a 502, or a 4xx it passes on) is
/// charged nothing and gives back its hold: with credit for exactly one hold, the next request
/// is served, which it would not be had a failed one kept its credit.
async fn an_upstream_failure_charges_nothing_and_releases_its_hold(db: TestDb) {
    let app = TestApp::prepaid_only(db).await;
    let key = app.api_key().await;
    let (_, hold) = hold_of_request();
    grant(&app, hold, None).await;
    app.upstream.fail_with(503, "down");
    for _ in 0..3 {
        assert_eq!(app.chat(&key, request()).await.status(), StatusCode::BAD_GATEWAY);
    }
    app.upstream.fail_with(400, "bad request for this model");
    crate::util::assert_xai_error(
        app.chat(&key, request()).await,
        StatusCode::BAD_REQUEST,
        "Client specified an invalid argument",
        "bad request for this model",
    )
    .await;
    assert!(
        app.store().list_usage(app.team.id, 10).await.unwrap().is_empty(),
        "not charged"
    );
    assert!(entries_of(&app, EntryKind::Spend).await.is_empty(), "no spend entry");
    assert_eq!(app.store().balance(app.team.id).await.unwrap().prepaid, hold);

    app.upstream.recover();
    let served = app.chat(&key, request()).await;
    assert_eq!(
        served.status(),
        StatusCode::OK,
        "the failed requests' holds were released"
    );
    let cost = served.json::<Value>().await.unwrap()["usage"]["cost_in_usd_ticks"]
        .as_i64()
        .unwrap();
    assert_eq!(
        app.store().balance(app.team.id).await.unwrap().prepaid,
        Ticks::new(hold.get() - cost)
    );
    assert_ledger_consistent(&app).await;
    app.finish().await;
}

/// Promotional credit first (soonest expiry first), then prepaid credit, then the month's
/// invoice up to the spending limit; beyond that, refused.
async fn credit_is_consumed_promo_then_prepaid_then_invoice(db: TestDb) {
    let app = TestApp::prepaid_only(db).await;
    let key = app.api_key().await;
    let (prompt, hold) = hold_of_request();
    app.upstream.report_usage(Some((prompt, MAX_TOKENS)));
    let now = crate::util::start_time();
    // Two promotional lots (the later one granted first), one request's worth of prepaid
    // credit, and an invoice limit of one request's worth.
    grant(&app, hold, Some(now + chrono::Duration::days(30))).await;
    grant(&app, hold, Some(now + chrono::Duration::days(10))).await;
    grant(&app, hold, None).await;
    let limit = tollgate_domain::ledger::format_usd(hold);
    let team = app.team.id.to_string();
    let out = tollgate_cli(&app, &["billing", "limit", "--team", &team, "--max-usd", &limit], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    for _ in 0..4 {
        assert_eq!(app.chat(&key, request()).await.status(), StatusCode::OK);
    }
    assert_eq!(app.chat(&key, request()).await.status(), StatusCode::TOO_MANY_REQUESTS);
    let spends = entries_of(&app, EntryKind::Spend).await;
    let grants = entries_of(&app, EntryKind::PromoGrant).await;
    let soonest = grants
        .iter()
        .find(|g| g.expires_at == Some(now + chrono::Duration::days(10)))
        .unwrap();
    let latest = grants
        .iter()
        .find(|g| g.expires_at == Some(now + chrono::Duration::days(30)))
        .unwrap();
    let taken: Vec<(Bucket, Option<uuid::Uuid>, i64)> =
        spends.iter().map(|e| (e.bucket, e.lot_id, -e.amount.get())).collect();
    assert_eq!(
        taken,
        [
            (Bucket::Promo, Some(soonest.id), hold.get()),
            (Bucket::Promo, Some(latest.id), hold.get()),
            (Bucket::Prepaid, None, hold.get()),
            (Bucket::Invoice, None, hold.get()),
        ]
    );
    let balance = app.store().balance(app.team.id).await.unwrap();
    assert_eq!((balance.prepaid, balance.promo), (Ticks::ZERO, Ticks::ZERO));
    assert_ledger_consistent(&app).await;

    // The month's invoice so far: lines per model and token kind, exact to the tick, and how
    // the month was paid (three holds from credit, one left to invoice).
    let path = format!("/v1/billing/teams/{}/postpaid/invoice/preview", app.team.id);
    let preview = app.get_json(&path, &app.management_key).await;
    let invoice = &preview["coreInvoice"];
    let lines = invoice["lines"].as_array().unwrap();
    let described: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["description"].as_str().unwrap(),
                l["unitPrice"].as_str().unwrap(),
                l["numUnits"].as_str().unwrap(),
            )
        })
        .collect();
    let (prompt_tokens, completion_tokens) = ((4 * prompt).to_string(), (4 * MAX_TOKENS).to_string());
    let (prompt_price, completion_price) = (PROMPT_PRICE.to_string(), COMPLETION_PRICE.to_string());
    assert_eq!(
        described,
        [
            ("grok-test prompt tokens", prompt_price.as_str(), prompt_tokens.as_str()),
            (
                "grok-test completion tokens",
                completion_price.as_str(),
                completion_tokens.as_str()
            ),
        ]
    );
    let exact: i64 = lines
        .iter()
        .map(|l| l["amountInUsdTicks"].as_str().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(exact, 4 * hold.get(), "the lines are the month's charges, to the tick");
    let cents = |ticks: i64| Ticks::new(ticks).to_cents_rounded().to_string();
    assert_eq!(invoice["amountBeforeVat"], cents(4 * hold.get()));
    assert_eq!(invoice["prepaidCreditsUsed"]["val"], cents(3 * hold.get()));
    assert_eq!(invoice["totalWithCorr"]["val"], cents(hold.get()));
    assert_eq!(preview["effectiveSpendingLimit"], cents(hold.get()));
    assert_eq!(preview["billingCycle"], json!({"year": 2026, "month": 11}));

    // A new month has fresh headroom and an invoice of its own.
    app.clock.advance(chrono::Duration::days(31));
    assert_eq!(app.chat(&key, request()).await.status(), StatusCode::OK);
    assert_ledger_consistent(&app).await;
    let preview = app.get_json(&path, &app.management_key).await;
    assert_eq!(preview["billingCycle"], json!({"year": 2026, "month": 12}));
    assert_eq!(preview["coreInvoice"]["totalWithCorr"]["val"], cents(hold.get()));
    assert_eq!(preview["coreInvoice"]["prepaidCreditsUsed"]["val"], "0");
    app.finish().await;
}

/// A client that hangs up mid-stream is charged for what was produced, and the upstream call is
/// cancelled (the mock sees its stream abandoned).
async fn a_client_that_hangs_up_mid_stream_is_charged_and_the_upstream_cancelled(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;
    let gate = app.upstream.hold_streams();
    let mut response = app
        .chat(
            &key,
            json!({"model": MODEL, "messages": user_message(), "stream": true}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // Read until the first word arrives, then hang up.
    let mut seen = String::new();
    while !seen.contains("Hello") {
        let chunk = response.chunk().await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);
    // The charge commits once Tollgate notices; wait for it (bounded), then let the mock go on.
    let charged = within(5.0, || async {
        !app.store().list_usage(app.team.id, 10).await.unwrap().is_empty()
    });
    assert!(charged.await, "the cut-off request is charged");
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert!(usage[0].estimated && usage[0].streamed);
    assert!(usage[0].cost.get() > 0);
    gate.notify_one();
    assert!(upstream_call_cancelled(&app).await, "the upstream call was cancelled");
    assert_ledger_consistent(&app).await;
    app.finish().await;
}

/// Two servers (two nodes, each with its own pool and lease) on one database serving one team
/// never spend more than its credit together.
async fn two_nodes_on_one_database_never_overspend_together(db: TestDb) {
    let app = TestApp::prepaid_only(db).await;
    let second = tollgate_server::start(
        &app.config,
        app.clock.clone() as Arc<dyn tollgate_domain::Clock>,
        std::future::pending(),
    )
    .await
    .unwrap();
    let key = app.api_key().await;
    let (prompt, hold) = hold_of_request();
    app.upstream.report_usage(Some((prompt, MAX_TOKENS)));
    grant(&app, Ticks::new(hold.get() * 60), None).await;
    let bases = [app.base.clone(), format!("http://{}", second.addr)];
    let client = reqwest::Client::new();
    let requests: Vec<_> = (0..200)
        .map(|i| {
            let (client, key) = (client.clone(), key.clone());
            let url = format!("{}/v1/chat/completions", bases[i % 2]);
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(key)
                    .json(&request())
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut served = 0;
    for request in requests {
        match request.await.unwrap() {
            StatusCode::OK => served += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    // Never more than the credit; a node may refuse while the other holds a lease it has not
    // returned yet, so fewer may be served, and what is left is still the team's.
    assert!(served <= 60, "{served} served on credit for 60");
    let balance = app.store().balance(app.team.id).await.unwrap();
    assert_eq!(balance.prepaid, Ticks::new(hold.get() * (60 - served)));
    assert!(balance.prepaid.get() >= 0);
    assert_ledger_consistent(&app).await;
    second.shutdown().await.unwrap();
    app.finish().await;
}

async fn usage_of(app: &TestApp, request: Value) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/v1/billing/teams/{}/usage", app.team.id)))
        .bearer_auth(&app.management_key)
        .json(&json!({"analyticsRequest": request}))
        .send()
        .await
        .unwrap()
}

/// `POST /v1/billing/teams/{id}/usage`: by day, by model and token type, filtered by key, and in
/// all exactly what the ledger spent.
async fn usage_analytics_match_the_ledger(db: TestDb) {
    let app = TestApp::new(db).await;
    let (first, second) = (app.api_key().await, app.api_key().await);
    for _ in 0..2 {
        assert_eq!(app.chat(&first, request()).await.status(), StatusCode::OK);
    }
    app.clock.advance(chrono::Duration::days(1));
    assert_eq!(app.chat(&second, request()).await.status(), StatusCode::OK);
    let cost = crate::util::expected_cost();
    let range = json!({"startTime": "2026-11-01 00:00:00", "endTime": "2026-12-01 00:00:00", "timezone": "Etc/GMT"});

    let by_day: Value = usage_of(
        &app,
        json!({"timeRange": range, "timeUnit": "TIME_UNIT_DAY",
               "values": [{"name": "usd", "aggregation": "AGGREGATION_SUM"}, {"name": "requests"}], "groupBy": [], "filters": []}),
    )
    .await
    .json()
    .await
    .unwrap();
    let points = &by_day["timeSeries"][0]["dataPoints"];
    let usd = |ticks: i64| tollgate_domain::ledger::format_usd(Ticks::new(ticks));
    assert_eq!(
        points,
        &json!([
            {"timestamp": "2026-11-01T00:00:00Z", "values": [(2 * cost) as f64 / 1e10, 2.0], "exactValues": [usd(2 * cost), "2"]},
            {"timestamp": "2026-11-02T00:00:00Z", "values": [cost as f64 / 1e10, 1.0], "exactValues": [usd(cost), "1"]},
        ]),
        "{by_day}"
    );
    assert_eq!(by_day["limitReached"], false);

    // The first key's tokens by kind, in one point for the whole range.
    // The oldest usage is the first key's.
    let stored = app.store().list_usage(app.team.id, 10).await.unwrap();
    let first_id = stored.last().unwrap().api_key_id.to_string();
    assert_ne!(stored[0].api_key_id.to_string(), first_id);
    let by_kind: Value = usage_of(
        &app,
        json!({"timeRange": range, "timeUnit": "TIME_UNIT_NONE", "values": [{"name": "tokens"}, {"name": "usd"}],
               "groupBy": ["model", "token_type"], "filters": [format!("api_key_id:{first_id}")]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let series: Vec<(Value, Value)> = by_kind["timeSeries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["group"].clone(), s["dataPoints"][0]["exactValues"].clone()))
        .collect();
    use tollgate_testkit::{CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS};
    let uncached = (PROMPT_TOKENS - CACHED_TOKENS) as i64;
    assert_eq!(
        series,
        [
            (
                json!([MODEL, "cached_prompt"]),
                json!([
                    (2 * CACHED_TOKENS).to_string(),
                    usd(2 * CACHED_TOKENS as i64 * crate::util::CACHED_PRICE)
                ])
            ),
            (
                json!([MODEL, "completion"]),
                json!([
                    (2 * COMPLETION_TOKENS).to_string(),
                    usd(2 * COMPLETION_TOKENS as i64 * COMPLETION_PRICE)
                ])
            ),
            (
                json!([MODEL, "prompt"]),
                json!([(2 * uncached).to_string(), usd(2 * uncached * PROMPT_PRICE)])
            ),
        ],
        "{by_kind}"
    );

    // In all, exactly what the ledger spent.
    let total: Value = usage_of(
        &app,
        json!({"timeRange": range, "timeUnit": "TIME_UNIT_MONTH", "values": [{"name": "usd"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    let spent: i64 = entries_of(&app, EntryKind::Spend)
        .await
        .iter()
        .map(|e| -e.amount.get())
        .sum();
    assert_eq!(spent, 3 * cost);
    assert_eq!(total["timeSeries"][0]["dataPoints"][0]["exactValues"][0], usd(spent));

    for (bad, fragment) in [
        (
            json!({"timeRange": {"startTime": "2026-11-01 00:00:00", "endTime": "2026-12-01 00:00:00", "timezone": "America/New_York"}, "timeUnit": "TIME_UNIT_DAY", "values": [{"name": "usd"}]}),
            "only UTC",
        ),
        (
            json!({"timeRange": {"startTime": "2026-12-01 00:00:00", "endTime": "2026-11-01 00:00:00"}, "timeUnit": "TIME_UNIT_DAY", "values": [{"name": "usd"}]}),
            "must end after",
        ),
        (
            json!({"timeRange": range, "timeUnit": "TIME_UNIT_FORTNIGHT", "values": [{"name": "usd"}]}),
            "not supported",
        ),
        (
            json!({"timeRange": range, "timeUnit": "TIME_UNIT_DAY", "values": [{"name": "usd"}], "groupBy": ["ip"]}),
            "cannot group",
        ),
        (
            json!({"timeRange": {"startTime": "yesterday", "endTime": "2026-11-01 00:00:00"}, "timeUnit": "TIME_UNIT_DAY", "values": [{"name": "usd"}]}),
            "is not a time",
        ),
    ] {
        crate::util::assert_xai_error(
            usage_of(&app, bad).await,
            StatusCode::BAD_REQUEST,
            "Client specified an invalid argument",
            fragment,
        )
        .await;
    }
    app.finish().await;
}

/// In the console, an Admin sees the team's usage; a Member only that of the keys they created.
async fn members_see_the_usage_of_their_own_keys(db: TestDb) {
    use reqwest::Method;
    let app = TestApp::new(db).await;
    let ada = app.signed_up("ada@example.com").await;
    let (_, team) = app
        .call_json(Method::POST, "/api/teams", &ada, Some(json!({"name": "Usage"})))
        .await;
    let team_id = team["teamId"].as_str().unwrap().to_owned();
    let bob = crate::teams::joined(&app, &ada, &team_id, "bob@example.com", "member").await;
    let keys = format!("/api/teams/{team_id}/api-keys");
    let acls = json!(["api-key:endpoint:*", "api-key:model:*"]);
    let (_, ada_key) = app
        .call_json(Method::POST, &keys, &ada, Some(json!({"name": "ada", "acls": acls})))
        .await;
    let (_, bob_key) = app
        .call_json(Method::POST, &keys, &bob, Some(json!({"name": "bob", "acls": acls})))
        .await;
    for key in [&ada_key, &ada_key, &bob_key] {
        let key = key["apiKey"].as_str().unwrap();
        assert_eq!(app.chat(key, request()).await.status(), StatusCode::OK);
    }
    let body = json!({"analyticsRequest": {"timeRange": {"startTime": "2026-11-01 00:00:00", "endTime": "2026-12-01 00:00:00"},
        "timeUnit": "TIME_UNIT_NONE", "values": [{"name": "requests"}], "groupBy": ["api_key_id"]}});
    let usage = format!("/api/teams/{team_id}/billing/usage");
    let requests_by_key = |answer: &Value| -> Vec<(String, String)> {
        answer["timeSeries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["group"][0].as_str().unwrap().to_owned(),
                    s["dataPoints"][0]["exactValues"][0].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (status, everything) = app.call_json(Method::POST, &usage, &ada, Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{everything}");
    let mut expected = vec![
        (ada_key["apiKeyId"].as_str().unwrap().to_owned(), "2".to_owned()),
        (bob_key["apiKeyId"].as_str().unwrap().to_owned(), "1".to_owned()),
    ];
    expected.sort();
    let mut seen = requests_by_key(&everything);
    seen.sort();
    assert_eq!(seen, expected);
    let (status, own) = app.call_json(Method::POST, &usage, &bob, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{own}");
    let bob_id = bob_key["apiKeyId"].as_str().unwrap().to_owned();
    assert_eq!(requests_by_key(&own), [(bob_id, "1".to_owned())]);
    app.finish().await;
}

/// A stream still running at `billing.max_request_seconds` is cut off (its credit lease is
/// guaranteed no longer): the client gets an error event instead of `[DONE]`, the upstream call
/// is cancelled, and what was produced is charged. (One second of real time: the deadline is
/// the node's monotonic clock, as the lease's is.)
async fn a_request_past_its_deadline_is_cut_off_and_charged(db: TestDb) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.billing.max_request_seconds = 1;
    config.billing.lease_seconds = 2;
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let gate = app.upstream.hold_streams();
    let response = app
        .chat(
            &key,
            json!({"model": MODEL, "messages": user_message(), "stream": true}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(text.contains("Hello"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(text.contains("cut off"), "{text}");
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(usage.len(), 1, "what was produced is charged");
    assert!(usage[0].estimated && usage[0].cost.get() > 0);
    gate.notify_one();
    assert!(upstream_call_cancelled(&app).await, "the upstream call was cancelled");
    assert_ledger_consistent(&app).await;
    app.finish().await;
}

async fn leased(app: &TestApp) -> Ticks {
    app.store().leased(app.team.id).await.unwrap()
}

/// What a node leased goes back to the team when the node has been idle a while, and at once
/// when it shuts down (not only when the lease expires). Real time: leases live on the
/// database's clock.
async fn leases_go_back_when_idle_and_at_shutdown(db: TestDb) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.billing.max_invoiced_limit_usd = None;
    // Idle after a quarter of the lease: 1 s.
    config.billing.lease_seconds = 4;
    config.billing.max_request_seconds = 2;
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let (_, hold) = hold_of_request();
    grant(&app, Ticks::new(hold.get() * 100), None).await;
    assert_eq!(app.chat(&key, request()).await.status(), StatusCode::OK);
    assert!(leased(&app).await.get() > 0, "the node leased some credit");
    // 2.5 s at most: well before the lease (renewed while fresh) would expire.
    let returned = within(2.5, || async { leased(&app).await == Ticks::ZERO });
    assert!(returned.await, "returned when idle, long before it would expire");

    // Leased again, then the server stops: returned at shutdown.
    assert_eq!(app.chat(&key, request()).await.status(), StatusCode::OK);
    assert!(leased(&app).await.get() > 0);
    let mut app = app;
    app.server.take().unwrap().shutdown().await.unwrap();
    let db = app.db.take().unwrap();
    let reopened = tollgate_store::connect(&db.url, tollgate_store::testsuite::TEST_AUDIT_KEY)
        .await
        .unwrap();
    assert_eq!(
        reopened.leased(app.team.id).await.unwrap(),
        Ticks::ZERO,
        "returned at shutdown"
    );
    reopened.close().await;
    db.finish().await;
}

/// A long prompt is held for its bytes (every byte may be a token), unless that does not fit the
/// team's credit and the model has a tokenizer: then the prompt is counted, and a team whose
/// credit covers the counted worst case is served.
async fn a_tokenizer_tightens_the_hold_of_a_long_prompt(db: TestDb) {
    use tollgate_gateway::usage::{TemplateOverhead, prompt_tokens_counted};
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.billing.max_invoiced_limit_usd = None;
    let mut plain = config.models[MODEL].clone();
    plain.aliases = vec![];
    plain.tokenizer = None;
    config.models.insert("no-tokenizer".into(), plain);
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let text = "hello ".repeat(2_000);
    let body = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 10});
    let parsed: ChatCompletionRequest = serde_json::from_value(body(MODEL)).unwrap();
    let template = TemplateOverhead::default();
    let by_bytes = Demand::of_chat(&parsed).prompt_bound(template);
    let cl100k = tollgate_gateway::tokenizer::Tokenizer::named("cl100k_base").unwrap();
    let counted = prompt_tokens_counted(&parsed, &cl100k).unwrap() + template.per_request + template.per_message;
    assert!(counted * 3 < by_bytes, "{counted} vs {by_bytes}");
    let hold = |prompt: u64| Ticks::new(PROMPT_PRICE * i64::try_from(prompt).unwrap() + COMPLETION_PRICE * 10);
    grant(&app, hold(counted), None).await;
    app.clock.advance(chrono::Duration::minutes(1));

    // Without a tokenizer the byte bound is held, and it does not fit.
    assert_eq!(
        app.chat(&key, body("no-tokenizer")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert!(app.upstream.requests().is_empty());
    // With one, the counted prompt is held, and it fits.
    assert_eq!(app.chat(&key, body(MODEL)).await.status(), StatusCode::OK);
    assert_ledger_consistent(&app).await;
    app.finish().await;
}

/// A node that stalls (a long pause, a frozen VM) resumes believing in a lease the database may
/// already have let go and lent again. It must not admit a request on that lease: once the
/// lease's admission window has passed on the node's own monotonic clock, the next hold asks the
/// database, which lends a fresh lease when the old one is gone. The keeper likewise forgets a
/// lease the database no longer renews. The node's clock is the test's, moved, not waited for;
/// the database's loss of the lease is a return, as an expiry would be.
async fn a_node_that_stalls_past_its_lease_does_not_spend_it(db: TestDb) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    let app = TestApp::prepaid_only(db).await;
    let (_, hold) = hold_of_request();
    grant(&app, Ticks::new(hold.get() * 100), None).await;
    let store = Arc::clone(&app.server.as_ref().unwrap().store);
    let settings = tollgate_core::billing::CreditSettings {
        lease_ttl: Duration::from_secs(60),
        max_request: Duration::from_secs(10),
        default_hard_limit: Ticks::ZERO,
    };
    // Admits for 60 - 10 - 6 (the margin) = 44 s after the lease was asked for.
    assert_eq!(settings.admit_window(), Duration::from_secs(44));
    let elapsed_ms = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let instant: tollgate_core::billing::Monotonic = {
        let elapsed_ms = Arc::clone(&elapsed_ms);
        Arc::new(move || start + Duration::from_millis(elapsed_ms.load(Ordering::SeqCst)))
    };
    let node = tollgate_core::billing::Credits::with_monotonic(
        Arc::clone(&store),
        app.clock.clone() as Arc<dyn tollgate_domain::Clock>,
        instant,
        settings,
    );
    let advance = |seconds: u64| elapsed_ms.fetch_add(seconds * 1000, Ordering::SeqCst);
    let team = app.team.id;

    let first = node.hold(team, hold).await.unwrap();
    // A priced hold draws on a lease.
    let leased_first = first.lease_id().unwrap();
    drop(first);
    // Within the window the lease admits with no database trip: a lease the database no
    // longer has still admits here, which is why the window ends well before the lease does.
    store.return_lease(leased_first).await.unwrap();
    advance(43);
    let within = node.hold(team, hold).await.unwrap();
    assert_eq!(
        within.lease_id(),
        Some(leased_first),
        "admitted locally within the window"
    );
    drop(within);

    // The node stalls past the window: its lease is no longer trusted, the database is asked,
    // and the lease it had is gone, so the hold draws on a fresh one.
    advance(2);
    let after_stall = node.hold(team, hold).await.unwrap();
    let leased_again = after_stall.lease_id().unwrap();
    assert_ne!(
        leased_again, leased_first,
        "never admitted on the lease it stalled past"
    );
    drop(after_stall);

    // The keeper renews a lease in use past half its window; one the database has let go is
    // forgotten, and the next hold takes a fresh lease at once.
    advance(23);
    store.return_lease(leased_again).await.unwrap();
    let in_use = node.hold(team, hold).await.unwrap();
    node.keep().await.unwrap();
    let after_keeper = node.hold(team, hold).await.unwrap();
    let leased_third = after_keeper.lease_id().unwrap();
    assert_ne!(
        leased_third, leased_again,
        "the keeper forgot the lease it could not renew"
    );
    assert_ne!(leased_third, leased_first);
    drop(after_keeper);
    drop(in_use);
    node.return_all().await;
    assert_ledger_consistent(&app).await;
    app.finish().await;
}

/// Spends move the team's balance when they commit, and their lease only when its node reports
/// them (renewing or growing it): until then another node sees less credit free than there is
/// (never more), and once the keeper renews the lease, the other node is lent what is truly
/// free. Two nodes on one store; the spends go through the group commit's store call, and each
/// is settled on its node as the request path does. The nodes' clocks are the test's.
async fn a_node_reports_its_spends_when_it_renews_and_the_credit_is_lent_again(db: TestDb) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    use tollgate_domain::{ApiKeyId, Clock as _, RequestId, TokenUsage, UsageRecord};

    let app = TestApp::prepaid_only(db).await;
    let (_, hold) = hold_of_request();
    let h = hold.get();
    grant(&app, Ticks::new(h * 100), None).await;
    let created = app.create_api_key(json!({"name": "spender"})).await;
    let key_id: ApiKeyId = created["apiKeyId"].as_str().unwrap().parse().unwrap();
    let store = Arc::clone(&app.server.as_ref().unwrap().store);
    let settings = tollgate_core::billing::CreditSettings {
        lease_ttl: Duration::from_secs(60),
        max_request: Duration::from_secs(10),
        default_hard_limit: Ticks::ZERO,
    };
    let elapsed_ms = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let node = || {
        let elapsed_ms = Arc::clone(&elapsed_ms);
        tollgate_core::billing::Credits::with_monotonic(
            Arc::clone(&store),
            app.clock.clone() as Arc<dyn tollgate_domain::Clock>,
            Arc::new(move || start + Duration::from_millis(elapsed_ms.load(Ordering::SeqCst))),
            settings,
        )
    };
    let (a, b) = (node(), node());
    let team = app.team.id;
    let spend = |cost: i64| tollgate_store::Charge {
        record: UsageRecord {
            request_id: RequestId::new(),
            team_id: team,
            api_key_id: key_id,
            model: MODEL.into(),
            endpoint: tollgate_domain::Endpoint::Chat,
            usage: TokenUsage::default(),
            cost: Ticks::new(cost),
            estimated: false,
            streamed: false,
            started_at: crate::util::start_time(),
            duration_ms: 1,
        },
        pricing: tollgate_domain::ModelPricing::default(),
    };

    // A leases 9 holds' worth (what it needs, and 8 holds more), takes 8 and spends 7 of them;
    // one request is still in flight on it.
    let mut holds = Vec::new();
    for _ in 0..8 {
        holds.push(a.hold(team, hold).await.unwrap());
    }
    assert_eq!(app.store().leased(team).await.unwrap(), Ticks::new(h * 9));
    for spent in holds.drain(1..) {
        store
            .insert_usage_batch(&[spend(h)], app.clock.now(), Ticks::ZERO)
            .await
            .unwrap();
        a.settled(spent, hold);
    }
    // 93 holds' worth left, of which A's lease truly holds 2; the stored lease still says 9, so
    // B, needing 90, is refused: less looks free than is (84), never more.
    assert_eq!(app.store().balance(team).await.unwrap().prepaid, Ticks::new(h * 93));
    assert_eq!(app.store().leased(team).await.unwrap(), Ticks::new(h * 9));
    let big = Ticks::new(h * 90);
    assert!(matches!(
        b.hold(team, big).await,
        Err(tollgate_core::billing::CreditError::Exhausted)
    ));

    // Past half its admission window, A's keeper renews the lease in use, reporting what A spent
    // on it: the stored lease shrinks by it, and B is lent what is truly free (91).
    elapsed_ms.fetch_add(settings.admit_window().as_millis() as u64 / 2 + 1_000, Ordering::SeqCst);
    a.keep().await.unwrap();
    assert_eq!(app.store().leased(team).await.unwrap(), Ticks::new(h * 2));
    let served = b.hold(team, big).await.unwrap();
    assert!(served.lease_id().is_some());
    // A's last request spends; B's too: 2 + 90 of the 93 are spent, and the ledger agrees.
    store
        .insert_usage_batch(&[spend(h), spend(h * 90)], app.clock.now(), Ticks::ZERO)
        .await
        .unwrap();
    a.settled(holds.pop().unwrap(), hold);
    b.settled(served, big);
    assert_eq!(app.store().balance(team).await.unwrap().prepaid, Ticks::new(h * 2));
    a.return_all().await;
    b.return_all().await;
    assert_eq!(app.store().leased(team).await.unwrap(), Ticks::ZERO);
    assert_ledger_consistent(&app).await;
    app.finish().await;
}
