//! Buying credit through Stripe's protocol, against `localstripe` (PyPI) started by the test as a
//! real server: customers, saved cards, PaymentIntents with manual capture, signed webhooks.
//! localstripe fixes every card's country to `FR`, so one test refuses `FR` and another allows
//! it; it signs webhooks with the wall clock and sends each about a second later, once. What it
//! does not send (refunds and disputes made in Stripe's dashboard, redeliveries, reordering) the
//! tests post themselves, signed by the official `stripe` Python library — the known answer for
//! our signature check.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_domain::{AuditAction, Clock as _, Outcome, Ticks};
use tollgate_store::testsuite::TestDb;
use tollgate_testkit::MockUpstream;

use crate::util::{TestApp, on_both_backends, test_config, user_message};

on_both_backends!(
    a_top_up_is_captured_and_granted_once_whatever_the_webhooks_do,
    a_card_from_a_refused_country_is_refused_before_money_moves,
    forged_stale_and_unsigned_webhooks_change_nothing,
    without_a_provider_purchases_are_off,
    auto_top_up_respects_its_caps,
    alerts_are_mailed_once_per_crossing,
    hosted_checkout_buys_credit_and_saves_cards,
);

pub(crate) const WEBHOOK_SECRET: &str = "whsec_tollgate_test_secret";

/// A localstripe server on a free loopback port, killed on drop.
pub(crate) struct LocalStripe {
    child: Child,
    port: u16,
    http: reqwest::Client,
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn installed(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{module} is missing: pip install -r requirements-test.txt"
        );
        eprintln!("skipped: {module} is not installed (pip install -r requirements-test.txt)");
    }
    ok
}

impl LocalStripe {
    pub(crate) async fn start() -> Option<Self> {
        if !installed("localstripe") || !installed("stripe") {
            return None;
        }
        // A free port is only free until someone takes it: parallel tests pick ports the same
        // way, so a start whose server is not localstripe answering is tried again elsewhere.
        for _ in 0..5 {
            if let Some(stripe) = Self::start_once().await {
                return Some(stripe);
            }
        }
        panic!("localstripe did not start");
    }

    async fn start_once() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-m", "localstripe", "--port", &port.to_string(), "--from-scratch"])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stripe = Self {
            child,
            port,
            http: reqwest::Client::new(),
        };
        for _ in 0..200 {
            if stripe.child.try_wait().is_ok_and(|exited| exited.is_some()) {
                // It could not take the port.
                return None;
            }
            let answered = stripe
                .http
                .get(format!("{}/v1/customers", stripe.url()))
                .basic_auth("sk_test_tollgate", Some(""))
                .send()
                .await;
            if let Ok(response) = answered {
                // Someone else's server on the port answers otherwise (or not as JSON).
                let ours = response.status().is_success()
                    && response
                        .json::<Value>()
                        .await
                        .is_ok_and(|body| body["object"] == "list");
                return ours.then_some(stripe);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, form: &[(&str, &str)]) -> Value {
        let request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url()))
            .basic_auth("sk_test_tollgate", Some(""));
        let request = if method == reqwest::Method::GET {
            request.query(form)
        } else {
            request.form(form)
        };
        let response = request.send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "localstripe {path}: {status} {body}");
        body
    }

    /// Sends every event to `url`, signed with `secret`.
    pub(crate) async fn deliver_to(&self, url: &str) {
        let response = self
            .http
            .post(format!("{}/_config/webhooks/tollgate", self.url()))
            .form(&[("url", url), ("secret", WEBHOOK_SECRET)])
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    pub(crate) async fn customer_with_email(&self, email: &str) -> String {
        let list = self
            .call(reqwest::Method::GET, "/v1/customers", &[("email", email)])
            .await;
        list["data"][0]["id"].as_str().unwrap().to_owned()
    }

    /// Saves a card to `customer`, as Stripe's hosted pages would (the console's card form is
    /// Stripe's, not ours).
    pub(crate) async fn save_card(&self, customer: &str, number: &str) -> String {
        let method = self
            .call(
                reqwest::Method::POST,
                "/v1/payment_methods",
                &[
                    ("type", "card"),
                    ("card[number]", number),
                    ("card[exp_month]", "12"),
                    ("card[exp_year]", "2030"),
                    ("card[cvc]", "123"),
                ],
            )
            .await;
        let id = method["id"].as_str().unwrap().to_owned();
        self.call(
            reqwest::Method::POST,
            &format!("/v1/payment_methods/{id}/attach"),
            &[("customer", customer)],
        )
        .await;
        id
    }

    pub(crate) async fn events(&self, kind: &str) -> Vec<Value> {
        let list = self.call(reqwest::Method::GET, "/v1/events", &[("type", kind)]).await;
        list["data"].as_array().unwrap().clone()
    }

    pub(crate) async fn payment_intents(&self) -> Vec<Value> {
        let list = self.call(reqwest::Method::GET, "/v1/payment_intents", &[]).await;
        list["data"].as_array().unwrap().clone()
    }
}

/// `Stripe-Signature` for `payload` at `t`, made by the official `stripe` library.
pub(crate) fn stripe_signature(payload: &str, secret: &str, t: i64) -> String {
    let output = Command::new("python3")
        .args([
            "-c",
            "import sys; from stripe._webhook import WebhookSignature as W; \
             print(W.generate_signature_header(sys.stdin.read(), sys.argv[1], int(sys.argv[2])), end='')",
            secret,
            &t.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(payload.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

pub(crate) async fn post_event(app: &TestApp, event: &Value, signature: Option<String>) -> reqwest::Response {
    let payload = event.to_string();
    let mut request = app
        .client
        .post(app.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .body(payload);
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    request.send().await.unwrap()
}

/// Posts `event` signed by the `stripe` library at the app's clock; the answer's `outcome`.
pub(crate) async fn deliver(app: &TestApp, event: &Value) -> String {
    let signature = stripe_signature(&event.to_string(), WEBHOOK_SECRET, app.clock.now().timestamp());
    let response = post_event(app, event, Some(signature)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["outcome"].as_str().unwrap().to_owned()
}

pub(crate) async fn app_with_stripe(db: TestDb, stripe: Option<&LocalStripe>, refused: &[&str]) -> TestApp {
    // Configured but unreachable without one: the signature is checked before any call.
    let base = stripe.map_or_else(|| "http://127.0.0.1:9".to_owned(), LocalStripe::url);
    let app = app_with_stripe_at(db, &base, refused).await;
    if let Some(stripe) = stripe {
        stripe.deliver_to(&app.url("/webhooks/stripe")).await;
    }
    app
}

/// An app whose Stripe is at `base` (prepaid only).
pub(crate) async fn app_with_stripe_at(db: TestDb, base: &str, refused: &[&str]) -> TestApp {
    let upstream = MockUpstream::start().await.unwrap();
    let mut config = test_config(&db, &upstream);
    config.billing.max_invoiced_limit_usd = None;
    config.payments.stripe_api_base = base.to_owned();
    config.payments.stripe_secret_key = Some("sk_test_tollgate".to_owned().into());
    config.payments.stripe_webhook_secret = Some(WEBHOOK_SECRET.to_owned().into());
    config.payments.refused_card_countries = refused.iter().map(|c| (*c).to_owned()).collect();
    TestApp::with_config(db, upstream, config).await
}

pub(crate) async fn management(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let url = app.url(&format!("/v1/billing/teams/{}/{path}", app.team.id));
    let mut request = app.client.request(method, url).bearer_auth(&app.management_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// Makes `method` the team's default payment method through the Management API.
pub(crate) async fn make_default(app: &TestApp, method: &str) -> (StatusCode, Value) {
    management(
        app,
        reqwest::Method::POST,
        "payment-method/default",
        Some(json!({"paymentMethodId": method})),
    )
    .await
}

/// Billing details sent to the provider (its customer is made then), a card saved there.
pub(crate) async fn customer_with_card(app: &TestApp, stripe: &LocalStripe) -> (String, String) {
    let info = json!({"billingInfo": {
        "name": "Acme Research", "email": "billing@acme.example",
        "address": {"line1": "1 Main St", "city": "Paris", "postalCode": "75001", "country": "fr"},
        "taxIdType": "eu_vat", "taxNumber": "FR12345678901"
    }});
    let (status, saved) = management(app, reqwest::Method::POST, "billing-info", Some(info)).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["billingInfo"]["address"]["country"], "FR");
    let customer = stripe.customer_with_email("billing@acme.example").await;
    let card = stripe.save_card(&customer, "4242424242424242").await;
    (customer, card)
}

pub(crate) async fn prepaid(app: &TestApp) -> Ticks {
    app.store().balance(app.team.id).await.unwrap().prepaid
}

async fn wait_until_seen(app: &TestApp, event_id: &str) {
    for _ in 0..200 {
        if app.store().payment_event_seen(event_id).await.unwrap() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("event {event_id} was never processed");
}

/// The provider's succeeded event for a payment, once localstripe has sent it.
async fn succeeded_event(stripe: &LocalStripe, payment: &str) -> Value {
    for _ in 0..200 {
        let found = stripe
            .events("payment_intent.succeeded")
            .await
            .into_iter()
            .find(|event| event["data"]["object"]["id"] == payment);
        if let Some(event) = found {
            return event;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("localstripe never made the succeeded event of {payment}");
}

pub(crate) const CENT: i64 = Ticks::PER_CENT;

/// A saved card becomes the default; a top-up is authorized, its card checked, captured, and
/// the credit granted once: by the capture, and not again by localstripe's webhook, a redelivery
/// of it, or a `payment_failed` arriving late. A refund made in Stripe's dashboard takes credit
/// back; a dispute takes back the rest and the balance goes below zero, which stops requests.
async fn a_top_up_is_captured_and_granted_once_whatever_the_webhooks_do(db: TestDb) {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let app = app_with_stripe(db, Some(&stripe), &["IN"]).await;
    let (_customer, card) = customer_with_card(&app, &stripe).await;

    let (_, methods) = management(&app, reqwest::Method::GET, "payment-method", None).await;
    assert_eq!(methods["paymentMethods"][0]["paymentMethodId"], card.as_str());
    assert_eq!(methods["paymentMethods"][0]["cardDetails"]["last4"], "4242");
    assert_eq!(methods["paymentMethods"][0]["isDefault"], false);
    // Nothing to charge yet.
    let (status, body) = management(
        &app,
        reqwest::Method::POST,
        "prepaid/top-up",
        Some(json!({"amount": {"val": "2500"}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no default payment method"),
        "{body}"
    );
    let (status, _) = make_default(&app, &card).await;
    assert_eq!(status, StatusCode::OK);
    let (_, methods) = management(&app, reqwest::Method::GET, "payment-method", None).await;
    assert_eq!(methods["paymentMethods"][0]["isDefault"], true);
    // Someone else's card, or none, is not found.
    let (status, _) = make_default(&app, "pm_nobodys").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Out of bounds: a 400, nothing asked of the provider.
    for cents in ["499", "1000001", "ten"] {
        let (status, _) = management(
            &app,
            reqwest::Method::POST,
            "prepaid/top-up",
            Some(json!({"amount": {"val": cents}})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{cents}");
    }
    assert!(stripe.payment_intents().await.is_empty());

    // The sign is ignored, as xAI's is.
    let (status, bought) = management(
        &app,
        reqwest::Method::POST,
        "prepaid/top-up",
        Some(json!({"amount": {"val": "-2500"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{bought}");
    assert_eq!(bought["change"]["changeOrigin"], "PURCHASE");
    assert_eq!(bought["change"]["topupStatus"], "SUCCEEDED");
    assert_eq!(bought["change"]["amount"]["val"], "-2500");
    assert_eq!(prepaid(&app).await, Ticks::new(2500 * CENT));
    let intents = stripe.payment_intents().await;
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0]["status"], "succeeded");
    assert_eq!(intents[0]["capture_method"], "manual");
    let payment = intents[0]["id"].as_str().unwrap().to_owned();

    // localstripe's own webhook arrives: processed, nothing granted twice.
    let succeeded = succeeded_event(&stripe, &payment).await;
    wait_until_seen(&app, succeeded["id"].as_str().unwrap()).await;
    assert_eq!(prepaid(&app).await, Ticks::new(2500 * CENT));
    // Redelivered, twice: duplicates.
    assert_eq!(deliver(&app, &succeeded).await, "duplicate");
    assert_eq!(deliver(&app, &succeeded).await, "duplicate");
    // A failure arriving after the success (out of order): money captured wins.
    let mut late_failure = succeeded.clone();
    late_failure["id"] = json!("evt_late_failure");
    late_failure["type"] = json!("payment_intent.payment_failed");
    late_failure["data"]["object"]["status"] = json!("requires_payment_method");
    assert_eq!(deliver(&app, &late_failure).await, "processed");
    assert_eq!(prepaid(&app).await, Ticks::new(2500 * CENT));
    let (_, balance) = management(&app, reqwest::Method::GET, "prepaid/balance", None).await;
    assert_eq!(balance["total"]["val"], "-2500", "{balance}");
    let purchase = balance["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|change| change["changeOrigin"] == "PURCHASE")
        .unwrap();
    assert_eq!(purchase["topupStatus"], "SUCCEEDED");

    // Spend a little, then a partial refund in Stripe's dashboard, delivered twice.
    let key = app.api_key().await;
    let chat = app
        .chat(
            &key,
            json!({"model": crate::util::MODEL, "messages": user_message(), "max_tokens": 10}),
        )
        .await;
    assert_eq!(chat.status(), StatusCode::OK);
    let spent = Ticks::new(2500 * CENT).get() - prepaid(&app).await.get();
    assert!(spent > 0);
    let refund = json!({"id": "evt_refund_1", "type": "charge.refunded", "created": 1, "data": {"object": {
        "id": "ch_x", "object": "charge", "payment_intent": payment, "amount": 2500, "amount_refunded": 1000}}});
    assert_eq!(deliver(&app, &refund).await, "processed");
    assert_eq!(deliver(&app, &refund).await, "duplicate");
    assert_eq!(prepaid(&app).await, Ticks::new(1500 * CENT - spent));
    // A dispute of the rest: the balance goes below zero, and requests stop.
    let dispute = json!({"id": "evt_dispute_1", "type": "charge.dispute.created", "data": {"object": {
        "id": "dp_1", "object": "dispute", "payment_intent": payment, "amount": 1500}}});
    assert_eq!(deliver(&app, &dispute).await, "processed");
    assert_eq!(prepaid(&app).await, Ticks::new(-spent));
    // A refund "older" than what was taken back moves nothing (never more than was bought).
    let stale_refund = json!({"id": "evt_refund_0", "type": "charge.refunded", "data": {"object": {
        "payment_intent": payment, "amount_refunded": 500}}});
    assert_eq!(deliver(&app, &stale_refund).await, "processed");
    assert_eq!(prepaid(&app).await, Ticks::new(-spent));
    let chat = app
        .chat(
            &key,
            json!({"model": crate::util::MODEL, "messages": user_message(), "max_tokens": 10}),
        )
        .await;
    assert_eq!(chat.status(), StatusCode::TOO_MANY_REQUESTS);
    let (_, balance) = management(&app, reqwest::Method::GET, "prepaid/balance", None).await;
    let refunds = balance["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|change| change["changeOrigin"] == "REFUND")
        .count();
    assert_eq!(refunds, 2, "{balance}");

    // Every money-moving step is audited, and the ledger verifies.
    let events = app.store().list_audit_events(app.team.id, 100).await.unwrap();
    let count = |action: AuditAction| events.iter().filter(|e| e.action == action.as_str()).count();
    assert_eq!(count(AuditAction::TopUpCredits), 2, "asked for, then granted");
    assert_eq!(count(AuditAction::RefundCredits), 2);
    assert_eq!(count(AuditAction::SetBillingInfo), 1);
    assert_eq!(count(AuditAction::SetDefaultPaymentMethod), 1);
    assert_eq!(app.services().ledger.verify().await.unwrap(), None);
    app.finish().await;
}

/// The operator refuses cards issued in France (localstripe's only country): the card cannot
/// become the default, and a purchase with it (made the default in Stripe itself) is authorized
/// and then cancelled — never captured — with a message naming the rule; audited; no credit.
async fn a_card_from_a_refused_country_is_refused_before_money_moves(db: TestDb) {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let app = app_with_stripe(db, Some(&stripe), &["FR", "IN"]).await;
    let (customer, card) = customer_with_card(&app, &stripe).await;
    let (status, body) = make_default(&app, &card).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Cards issued in FR"), "{body}");
    // Made the default in Stripe's dashboard instead.
    stripe
        .call(
            reqwest::Method::POST,
            &format!("/v1/customers/{customer}"),
            &[("invoice_settings[default_payment_method]", &card)],
        )
        .await;
    let (status, body) = management(
        &app,
        reqwest::Method::POST,
        "prepaid/top-up",
        Some(json!({"amount": {"val": "2500"}})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("Cards issued in FR") && message.contains("FR, IN"),
        "{message}"
    );
    let intents = stripe.payment_intents().await;
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0]["status"], "canceled", "authorized, never captured");
    assert_eq!(intents[0]["latest_charge"]["captured"], false);
    assert_eq!(prepaid(&app).await, Ticks::ZERO);
    let (_, balance) = management(&app, reqwest::Method::GET, "prepaid/balance", None).await;
    assert_eq!(balance["total"]["val"], "0");
    assert_eq!(balance["changes"][0]["topupStatus"], "FAILED_TO_CHARGE");
    let events = app.store().list_audit_events(app.team.id, 100).await.unwrap();
    let refusals: Vec<_> = events
        .iter()
        .filter(|e| e.action == AuditAction::RefuseTopUp.as_str())
        .collect();
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].outcome, Outcome::Denied.as_str());
    assert!(refusals[0].description.contains("before money moved"));
    let refused_default = events
        .iter()
        .find(|e| e.action == AuditAction::SetDefaultPaymentMethod.as_str())
        .unwrap();
    assert_eq!(refused_default.outcome, Outcome::Denied.as_str());
    // A late authorization event for it changes nothing.
    let intent = intents[0].clone();
    let late = json!({"id": "evt_late_auth", "type": "payment_intent.amount_capturable_updated",
        "data": {"object": intent}});
    assert_eq!(deliver(&app, &late).await, "processed");
    assert_eq!(prepaid(&app).await, Ticks::ZERO);
    assert_eq!(app.services().ledger.verify().await.unwrap(), None);
    app.finish().await;
}

/// A wrong signature, a wrong secret, an old timestamp (a replay) or none: 400, and nothing is
/// recorded (the same event, properly signed, is then processed).
async fn forged_stale_and_unsigned_webhooks_change_nothing(db: TestDb) {
    if !installed("stripe") {
        return;
    }
    let app = app_with_stripe(db, None, &[]).await;
    let event = json!({"id": "evt_unrelated", "type": "customer.created", "data": {"object": {"id": "cus_1"}}});
    let payload = event.to_string();
    let now = app.clock.now().timestamp();
    let refused = [
        None,
        Some("t=1,v1=00".to_owned()),
        Some(stripe_signature(&payload, "whsec_someone_else", now)),
        Some(stripe_signature(&payload, WEBHOOK_SECRET, now - 301)),
        Some(stripe_signature(&payload, WEBHOOK_SECRET, now).replace("t=", "t=1")),
    ];
    for signature in refused {
        let response = post_event(&app, &event, signature.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{signature:?}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("Stripe-Signature"), "{body}");
    }
    assert!(!app.store().payment_event_seen("evt_unrelated").await.unwrap());
    // Within the tolerance, and with a second (rolled) secret's signature first.
    let good = stripe_signature(&payload, WEBHOOK_SECRET, now - 299);
    let (t, v1) = good.split_once(",v1=").unwrap();
    let rolled = format!("{t},v1={},v1={v1}", "ab".repeat(32));
    let response = post_event(&app, &event, Some(rolled)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["outcome"], "ignored");
    assert_eq!(deliver(&app, &event).await, "duplicate");
    // Signed but not an event.
    let not_event = json!([1, 2]);
    let response = post_event(
        &app,
        &not_event,
        Some(stripe_signature(&not_event.to_string(), WEBHOOK_SECRET, now)),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("tollgate_payment_events_total{outcome=\"refused\"} 6"),
        "{metrics}"
    );
    app.finish().await;
}

/// With no payment provider configured: purchases are a clear 400, there are no payment methods
/// (and the answer says purchases are off), billing details can still be kept, and the webhook
/// is not there.
async fn without_a_provider_purchases_are_off(db: TestDb) {
    let app = TestApp::prepaid_only(db).await;
    let (status, body) = management(
        &app,
        reqwest::Method::POST,
        "prepaid/top-up",
        Some(json!({"amount": {"val": "2500"}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("Purchases are off"), "{body}");
    let (_, methods) = management(&app, reqwest::Method::GET, "payment-method", None).await;
    assert_eq!(methods, json!({"paymentMethods": [], "purchasesEnabled": false}));
    let (status, _) = management(
        &app,
        reqwest::Method::POST,
        "billing-info",
        Some(json!({"billingInfo": {"name": "Acme"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, info) = management(&app, reqwest::Method::GET, "billing-info", None).await;
    assert_eq!(info["billingInfo"]["name"], "Acme");
    assert_eq!(info["billingInfo"]["address"]["country"], "");
    // Bad details: a clear 400, nothing written.
    for bad in [
        json!({"billingInfo": {"name": ""}}),
        json!({"billingInfo": {"name": "Acme", "email": "nope"}}),
        json!({"billingInfo": {"name": "Acme", "address": {"country": "France"}}}),
        json!({"billingInfo": {"name": "Acme", "taxIdType": "eu_vat"}}),
        json!({"billingInfo": {"name": "Acme", "surprise": 1}}),
    ] {
        let (status, body) = management(&app, reqwest::Method::POST, "billing-info", Some(bad.clone())).await;
        assert!(status.is_client_error(), "{bad} {status} {body}");
    }
    let (_, info) = management(&app, reqwest::Method::GET, "billing-info", None).await;
    assert_eq!(info["billingInfo"]["name"], "Acme");
    let response = app
        .client
        .post(app.url("/webhooks/stripe"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    app.finish().await;
}

/// Auto top-up: below the threshold it buys the amount with the default card, at most five times
/// in 24 hours (the sixth waits a day) and within the monthly maximum.
async fn auto_top_up_respects_its_caps(db: TestDb) {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let app = app_with_stripe(db, Some(&stripe), &[]).await;
    let (_, card) = customer_with_card(&app, &stripe).await;
    let (status, _) = make_default(&app, &card).await;
    assert_eq!(status, StatusCode::OK);
    let settings = |monthly: &str| {
        json!({"autoTopUp": {"threshold": {"val": "1000"}, "amount": {"val": "2500"}, "monthlyMaximum": {"val": monthly}},
            "lowBalanceAlert": null})
    };
    // The monthly maximum must cover one top-up.
    let (status, _) = management(&app, reqwest::Method::PUT, "billing-settings", Some(settings("2000"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, saved) = management(&app, reqwest::Method::PUT, "billing-settings", Some(settings("100000"))).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["autoTopUp"]["amount"]["val"], "2500");

    let payments = app.services().payments;
    let limit = Ticks::ZERO;
    let drain = |app: &TestApp| {
        let ledger = app.services().ledger;
        let team = app.team.id;
        async move {
            let prepaid = ledger.balance(team).await.unwrap().prepaid;
            // Down to $5, below the $10 threshold.
            ledger
                .adjust(
                    team,
                    Ticks::new(5 * Ticks::PER_USD - prepaid.get()),
                    "test: spend",
                    tollgate_domain::Actor::Operator,
                    &tollgate_domain::RequestContext::default(),
                )
                .await
                .unwrap();
        }
    };
    assert_eq!(payments.watch(limit).await.unwrap().auto_top_ups, 1, "from $0");
    assert_eq!(prepaid(&app).await, Ticks::new(2500 * CENT));
    assert_eq!(
        payments.watch(limit).await.unwrap().auto_top_ups,
        0,
        "above the threshold"
    );
    for _ in 0..4 {
        drain(&app).await;
        assert_eq!(payments.watch(limit).await.unwrap().auto_top_ups, 1);
        assert_eq!(prepaid(&app).await, Ticks::new(3000 * CENT));
    }
    drain(&app).await;
    assert_eq!(
        payments.watch(limit).await.unwrap().auto_top_ups,
        0,
        "a sixth in 24 hours waits"
    );
    app.clock
        .advance(chrono::Duration::hours(24) + chrono::Duration::seconds(1));
    assert_eq!(payments.watch(limit).await.unwrap().auto_top_ups, 1, "a day later");
    // Six bought this month ($150); a maximum of $150 allows no seventh.
    let (status, _) = management(&app, reqwest::Method::PUT, "billing-settings", Some(settings("15000"))).await;
    assert_eq!(status, StatusCode::OK);
    drain(&app).await;
    assert_eq!(
        payments.watch(limit).await.unwrap().auto_top_ups,
        0,
        "the monthly maximum"
    );
    let top_ups = app.store().top_ups(app.team.id, 100).await.unwrap();
    assert_eq!(top_ups.len(), 6);
    assert!(
        top_ups
            .iter()
            .all(|t| t.automatic && t.status == tollgate_domain::TopUpStatus::Succeeded)
    );
    assert_eq!(app.services().ledger.verify().await.unwrap(), None);
    app.finish().await;
}

/// Alerts go to the Admins once per crossing: prepaid credit below their threshold (again after
/// it went back above), 80% and then 100% of the month's invoiced limit, promotional credit
/// expiring within a week.
async fn alerts_are_mailed_once_per_crossing(db: TestDb) {
    let app = TestApp::new(db).await;
    let payments = app.services().payments;
    let limit = Ticks::new(1000 * Ticks::PER_USD);
    let (status, _) = management(
        &app,
        reqwest::Method::PUT,
        "billing-settings",
        Some(json!({"autoTopUp": {"threshold": {"val": "1000"}, "amount": {"val": "2500"}, "monthlyMaximum": {"val": "10000"}}, "lowBalanceAlert": null})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "auto top-up needs a payment provider");
    let (status, _) = management(
        &app,
        reqwest::Method::PUT,
        "billing-settings",
        Some(json!({"autoTopUp": null, "lowBalanceAlert": {"val": "500"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let count = |mail: &[tollgate_domain::QueuedMail], subject: &str| {
        mail.iter().filter(|m| m.mail.subject.contains(subject)).count()
    };
    let mail = || async { app.store().list_mail(200).await.unwrap() };
    assert_eq!(payments.watch(limit).await.unwrap().alerts, 1);
    assert_eq!(payments.watch(limit).await.unwrap().alerts, 0, "once per crossing");
    assert_eq!(count(&mail().await, "is below $5"), 1);
    let ledger = app.services().ledger;
    let context = tollgate_domain::RequestContext::default();
    let operator = || tollgate_domain::Actor::Operator;
    ledger
        .adjust(
            app.team.id,
            Ticks::new(10 * Ticks::PER_USD),
            "test",
            operator(),
            &context,
        )
        .await
        .unwrap();
    assert_eq!(payments.watch(limit).await.unwrap().alerts, 0, "above: re-armed");
    ledger
        .adjust(
            app.team.id,
            Ticks::new(-7 * Ticks::PER_USD),
            "test",
            operator(),
            &context,
        )
        .await
        .unwrap();
    assert_eq!(payments.watch(limit).await.unwrap().alerts, 1, "the second crossing");
    assert_eq!(count(&mail().await, "is below $5"), 2);
    ledger
        .adjust(
            app.team.id,
            Ticks::new(-3 * Ticks::PER_USD),
            "test",
            operator(),
            &context,
        )
        .await
        .unwrap();
    let _ = payments.watch(limit).await.unwrap();

    // Invoiced usage against a 50-cent limit: three requests of about 16 cents are 96%.
    let (status, _) = management(
        &app,
        reqwest::Method::POST,
        "postpaid/spending-limits",
        Some(json!({"desiredSoftSpendingLimit": {"val": "50"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let key = app.api_key().await;
    app.upstream.report_usage(Some((20, 16_000)));
    for _ in 0..3 {
        let response = app
            .chat(
                &key,
                json!({"model": crate::util::MODEL, "messages": user_message(), "max_tokens": 16_000}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(payments.watch(limit).await.unwrap().alerts, 1);
    assert_eq!(payments.watch(limit).await.unwrap().alerts, 0);
    assert_eq!(count(&mail().await, "used 80% of its monthly spending limit"), 1);
    let (status, _) = management(
        &app,
        reqwest::Method::POST,
        "postpaid/spending-limits",
        Some(json!({"desiredSoftSpendingLimit": {"val": "40"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(payments.watch(limit).await.unwrap().alerts, 1);
    assert_eq!(count(&mail().await, "used 100% of its monthly spending limit"), 1);

    // Promotional credit expiring in three days: announced once.
    let expires = app.clock.now() + chrono::Duration::days(3);
    ledger
        .grant(
            app.team.id,
            Ticks::new(Ticks::PER_USD),
            "launch",
            Some(expires),
            operator(),
            &context,
        )
        .await
        .unwrap();
    assert_eq!(payments.watch(limit).await.unwrap().alerts, 1);
    assert_eq!(payments.watch(limit).await.unwrap().alerts, 0);
    let promo = mail().await;
    let notice = promo.iter().find(|m| m.mail.subject.contains("expires soon")).unwrap();
    assert_eq!(notice.mail.to[0].as_ref(), "owner@example.com");
    app.finish().await;
}

/// Stripe's hosted Checkout (the test kit's stand-in, in front of localstripe): an Admin saves a
/// card on the hosted page (it becomes the default), then buys credit there. The completed
/// session arrives unpaid (manual capture): the authorized payment is checked, captured and
/// granted once. Asking again while it is open returns the same page; an expired page buys
/// nothing and leaves no purchase pending.
async fn hosted_checkout_buys_credit_and_saves_cards(db: TestDb) {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let standin = tollgate_testkit::checkout::CheckoutStandIn::start(&stripe.url())
        .await
        .unwrap();
    let app = app_with_stripe_at(db, &standin.url, &["IN"]).await;
    standin.deliver_to(&app.url("/webhooks/stripe"), WEBHOOK_SECRET);
    stripe.deliver_to(&app.url("/webhooks/stripe")).await;
    let response = app
        .client
        .post(app.url("/api/auth/sign-in"))
        .json(&json!({"email": "owner@example.com", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let admin = crate::teams::Browser::from_response(response).await;
    let team = app.team.id;
    let now = || app.clock.now().timestamp();
    let session_of = |url: &str| url.rsplit('/').next().unwrap().to_owned();

    let (status, setup) = app
        .call_json(
            reqwest::Method::POST,
            &format!("/api/teams/{team}/billing/payment-methods/setup"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{setup}");
    let setup_session = session_of(setup["url"].as_str().unwrap());
    assert_eq!(standin.session(&setup_session).unwrap()["mode"], "setup");
    assert_eq!(
        standin.complete(&setup_session, "4242424242424242", now()).await,
        Ok(200)
    );
    let (_, methods) = app
        .call_json(
            reqwest::Method::GET,
            &format!("/api/teams/{team}/billing/payment-methods"),
            &admin,
            None,
        )
        .await;
    assert_eq!(methods["paymentMethods"].as_array().unwrap().len(), 1, "{methods}");
    assert_eq!(
        methods["paymentMethods"][0]["isDefault"], true,
        "the first card is the default"
    );

    let buy = |cents: &'static str| {
        let (app, admin) = (&app, &admin);
        async move {
            app.call_json(
                reqwest::Method::POST,
                &format!("/api/teams/{team}/billing/checkout"),
                admin,
                Some(json!({"amount": {"val": cents}})),
            )
            .await
        }
    };
    let (status, opened) = buy("5000").await;
    assert_eq!(status, StatusCode::OK, "{opened}");
    assert_eq!(opened["change"]["topupStatus"], "TO_CHARGE");
    let page = opened["change"]["checkoutUrl"].as_str().unwrap().to_owned();
    let session = session_of(&page);
    let made = standin.session(&session).unwrap();
    assert_eq!(
        (made["mode"].as_str(), made["amount_total"].as_i64()),
        (Some("payment"), Some(5000))
    );
    // Asking again while it is open: the same page.
    let (_, again) = buy("7000").await;
    assert_eq!(again["change"]["checkoutUrl"], page.as_str());
    assert_eq!(again["change"]["topUpId"], opened["change"]["topUpId"]);

    // A first card declined on the page: the page stays open for another card.
    let declined = json!({"id": "evt_first_card_declined", "type": "payment_intent.payment_failed", "data": {"object": {
        "id": "pi_first_attempt", "status": "requires_payment_method", "amount": 5000,
        "last_payment_error": {"message": "Your card was declined."},
        "metadata": {"team_id": team.to_string(), "top_up_id": opened["change"]["topUpId"]}}}});
    assert_eq!(deliver(&app, &declined).await, "processed");
    let (_, still) = buy("5000").await;
    assert_eq!(still["change"]["topupStatus"], "TO_CHARGE");
    assert_eq!(standin.complete(&session, "4242424242424242", now()).await, Ok(200));
    assert_eq!(prepaid(&app).await, Ticks::new(5000 * CENT));
    let intents = stripe.payment_intents().await;
    let intent = intents.iter().find(|i| i["amount"] == 5000).unwrap();
    assert_eq!(intent["capture_method"], "manual");
    assert_eq!(intent["status"], "succeeded", "captured by us, after the check");
    // The same completion delivered again grants nothing more.
    let completed = json!({"id": format!("evt_cs_checkout_session_completed_{session}"), "type": "checkout.session.completed",
        "data": {"object": {"id": session, "mode": "payment", "status": "complete", "payment_intent": intent["id"],
            "metadata": {"team_id": team.to_string(), "top_up_id": opened["change"]["topUpId"]}}}});
    assert_eq!(deliver(&app, &completed).await, "duplicate");
    assert_eq!(prepaid(&app).await, Ticks::new(5000 * CENT));

    // An abandoned page: expired, nothing bought, nothing left pending.
    let (_, abandoned) = buy("2500").await;
    let abandoned_session = session_of(abandoned["change"]["checkoutUrl"].as_str().unwrap());
    assert_ne!(abandoned_session, session);
    assert_eq!(standin.expire(&abandoned_session, now()).await, Ok(200));
    let (_, next) = buy("2500").await;
    assert_ne!(
        next["change"]["topUpId"], abandoned["change"]["topUpId"],
        "a fresh purchase"
    );
    assert_eq!(prepaid(&app).await, Ticks::new(5000 * CENT));
    let top_ups = app.store().top_ups(team, 10).await.unwrap();
    assert!(
        top_ups
            .iter()
            .any(|t| t.status == tollgate_domain::TopUpStatus::Canceled
                && t.failure.as_deref() == Some("the checkout page expired unpaid"))
    );
    // A page whose expiry event never came: past its hour, it no longer holds purchases up.
    app.clock.advance(chrono::Duration::hours(2));
    let (_, fresh) = buy("2500").await;
    assert_ne!(fresh["change"]["topUpId"], next["change"]["topUpId"]);
    assert_eq!(
        app.services().payments.issue_receipts().await.unwrap(),
        0,
        "the purchase has its receipt"
    );
    assert_eq!(app.services().ledger.verify().await.unwrap(), None);
    app.finish().await;
}
