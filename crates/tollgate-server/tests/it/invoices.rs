//! Invoices: a month's invoiced usage is issued after the month ends (the clock is moved, never
//! slept), numbered without gaps, made out to the billing details of that day and never changed;
//! receipts for purchases share the series. With Stripe (localstripe), a declined charge is
//! retried, blocks the team after the grace, and paying lifts the block.

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_domain::{Actor, Clock as _, RequestContext, Ticks};
use tollgate_store::testsuite::TestDb;

use crate::payments::{LocalStripe, app_with_stripe, customer_with_card, make_default, management};
use crate::util::{MODEL, TestApp, execute, on_both_backends, tollgate_cli, user_message};

on_both_backends!(
    a_month_closes_into_immutable_gap_free_invoices,
    an_unpaid_invoice_blocks_after_the_grace_and_paying_lifts_it,
);

/// A request that costs about 16 cents: the upstream reports 16,000 completion tokens.
async fn chat(app: &TestApp, key: &str) {
    app.upstream.report_usage(Some((20, 16_000)));
    let response = app
        .chat(
            key,
            json!({"model": MODEL, "messages": user_message(), "max_tokens": 16_000}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

async fn billing_info(app: &TestApp, name: &str) {
    let info = json!({"billingInfo": {"name": name, "email": "ap@acme.example",
        "address": {"line1": "1 <Main> St", "city": "Paris", "country": "FR"}}});
    let (status, body) = management(app, reqwest::Method::POST, "billing-info", Some(info)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn invoices(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = management(app, reqwest::Method::GET, &format!("invoices{query}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["invoices"].as_array().unwrap().clone()
}

/// Two teams use the model in November; one more request lands after midnight. An hour into
/// December the job issues one invoice per team (TG-000001, TG-000002), with lines that sum
/// exactly, the billing details of that day, and `PENDING` (no provider: nothing is charged).
/// Running again issues nothing; a later change of billing details, or an attempt to edit the
/// invoice in the database, changes nothing; the operator marks one paid.
async fn a_month_closes_into_immutable_gap_free_invoices(db: TestDb) {
    let app = TestApp::new(db).await;
    billing_info(&app, "Acme v1").await;
    let key = app.api_key().await;
    chat(&app, &key).await;
    chat(&app, &key).await;
    let (other, other_management) = app.other_team("other@example.com").await;
    let created: Value = app
        .client
        .post(app.url(&format!("/auth/teams/{}/api-keys", other.id)))
        .bearer_auth(&other_management)
        .json(&json!({"name": "other", "acls": ["api-key:model:*", "api-key:endpoint:*"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other_key = created["apiKey"].as_str().unwrap().to_owned();
    chat(&app, &other_key).await;
    // A team that used the model and was then deleted still gets its last month's invoice.
    let doomed = {
        let (team, caller, _, key) = app.team_with_key("Doomed").await;
        chat(&app, &key).await;
        app.services()
            .teams
            .delete_team(&caller, "Doomed", &RequestContext::default())
            .await
            .unwrap();
        team
    };
    let owed = app
        .store()
        .month_usage(app.team.id, start("2026-11"), start("2026-12"))
        .await
        .unwrap();
    assert!(owed.invoiced.get() > 0);

    // Midnight: a request now belongs to December; the month is not issued within the hour.
    app.clock.set(start("2026-12") + Duration::minutes(30));
    chat(&app, &key).await;
    let payments = app.services().payments;
    assert_eq!(payments.run_billing().await.unwrap().invoices, 0, "within the grace");
    app.clock.set(start("2026-12") + Duration::hours(2));
    let run = payments.run_billing().await.unwrap();
    assert_eq!((run.invoices, run.charges, run.blocked), (3, 0, 0));
    let filter = tollgate_store::InvoiceFilter {
        limit: 10,
        ..Default::default()
    };
    let last = app.store().invoices(doomed.id, &filter).await.unwrap();
    assert_eq!(last.len(), 1, "the deleted team's last month");
    assert_eq!(last[0].team_name, "Doomed");
    assert_eq!(payments.run_billing().await.unwrap().invoices, 0, "issued once");

    let issued = invoices(&app, "").await;
    assert_eq!(issued.len(), 1, "each team sees its own");
    let invoice = &issued[0];
    assert_eq!(invoice["invoiceStatus"], "PENDING");
    assert_eq!(invoice["monthly"]["billingCycle"], json!({"year": 2026, "month": 11}));
    assert_eq!(invoice["billingInfo"]["name"], "Acme v1");
    let total: i64 = invoice["total"].as_str().unwrap().parse().unwrap();
    assert_eq!(total, owed.invoiced.to_cents_rounded());
    let exact: i64 = invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["amountInUsdTicks"].as_str().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(exact, owed.invoiced.get() + owed.credit_used.get());
    let mut numbers: Vec<String> = [app.team.id, other.id]
        .iter()
        .map(|team| {
            let out = tollgate_cli(&app, &["billing", "invoice", "list", "--team", &team.to_string()], None);
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()[..9].to_owned()
        })
        .collect();
    numbers.push(last[0].number.clone());
    numbers.sort();
    assert_eq!(numbers, ["TG-000001", "TG-000002", "TG-000003"]);
    // Filters, as xAI's.
    assert_eq!(
        invoices(&app, "?billingCycle.year=2026&billingCycle.month=11")
            .await
            .len(),
        1
    );
    assert_eq!(
        invoices(&app, "?billingCycle.year=2026&billingCycle.month=10")
            .await
            .len(),
        0
    );
    assert_eq!(invoices(&app, "?since.year=2026&since.month=12").await.len(), 0);
    let id = invoice["invoiceId"].as_str().unwrap();
    assert_eq!(invoices(&app, &format!("?invoiceIds.invoiceIds={id}")).await.len(), 1);
    let (status, _) = management(&app, reqwest::Method::GET, "invoices?billingCycle.year=2026", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // As a PDF (read back by pypdf) and as a printable page.
    let pdf = app
        .client
        .get(app.url(&format!("/v1/billing/teams/{}/invoices/{id}/pdf", app.team.id)))
        .bearer_auth(&app.management_key)
        .send()
        .await
        .unwrap();
    assert_eq!(pdf.status(), StatusCode::OK);
    assert_eq!(pdf.headers()["content-type"], "application/pdf");
    let text = pdf_text(&pdf.bytes().await.unwrap());
    let number = invoice["invoiceNumber"].as_str().unwrap();
    let total_text = format!("${}.{:02}", total / 100, total % 100);
    for expected in [
        number,
        "Acme v1",
        "1 <Main> St",
        total_text.as_str(),
        "completion tokens",
    ] {
        assert!(text.contains(expected), "{expected} not in {text}");
    }
    let signed_in = app
        .client
        .post(app.url("/api/auth/sign-in"))
        .json(&json!({"email": "owner@example.com", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    let admin = crate::teams::Browser::from_response(signed_in).await;
    let page = app
        .call(
            reqwest::Method::GET,
            &format!("/api/teams/{}/billing/invoices/{id}", app.team.id),
            &admin,
            None,
        )
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("1 &lt;Main&gt; St") && html.contains(number), "{html}");

    // New details later: the issued invoice keeps those of its day.
    billing_info(&app, "Acme v2").await;
    assert_eq!(invoices(&app, "").await[0]["billingInfo"]["name"], "Acme v1");
    // The database itself refuses an edit of an issued invoice.
    let url = app.db.as_ref().unwrap().url.clone();
    let tamper = "UPDATE invoices SET total = 1";
    assert!(execute(&url, tamper, tamper).await.is_err());
    let tamper = "UPDATE invoice_lines SET amount = 1";
    assert!(execute(&url, tamper, tamper).await.is_err());
    let tamper = "DELETE FROM invoices";
    assert!(execute(&url, tamper, tamper).await.is_err());

    // The December request is on December's preview, not on November's invoice.
    let (_, preview) = management(&app, reqwest::Method::GET, "postpaid/invoice/preview", None).await;
    assert_eq!(preview["billingCycle"], json!({"year": 2026, "month": 12}));
    assert!(!preview["coreInvoice"]["lines"].as_array().unwrap().is_empty());

    // Without a payment provider nothing blocks, however long it stays unpaid.
    app.clock.advance(Duration::days(40));
    assert_eq!(payments.run_billing().await.unwrap().blocked, 0);
    chat(&app, &key).await;

    let number = tollgate_cli(
        &app,
        &["billing", "invoice", "list", "--team", &app.team.id.to_string()],
        None,
    );
    let number = String::from_utf8(number.stdout).unwrap()[..9].to_owned();
    let out = tollgate_cli(
        &app,
        &[
            "billing",
            "invoice",
            "mark-paid",
            "--number",
            &number,
            "--reason",
            "bank transfer 2026-12-03",
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let paid = &invoices(&app, "").await[0];
    assert_eq!(paid["invoiceStatus"], "PAID");
    let again = tollgate_cli(
        &app,
        &[
            "billing",
            "invoice",
            "mark-paid",
            "--number",
            &number,
            "--reason",
            "twice",
        ],
        None,
    );
    assert!(!again.status.success(), "paid already");

    // Corrections are credit notes, numbered in the series; the invoices never change. Paid:
    // the amount is credited to prepaid credit.
    let before = app.store().balance(app.team.id).await.unwrap().prepaid;
    let out = tollgate_cli(
        &app,
        &[
            "billing",
            "invoice",
            "credit-note",
            "--number",
            &number,
            "--usd",
            "0.10",
            "--reason",
            "outage on Nov 3",
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // (December's invoice, TG-000004, was issued meanwhile: it is the one marked paid.)
    assert_eq!(number, "TG-000004");
    assert!(String::from_utf8_lossy(&out.stdout).contains("credit note TG-000005"));
    let after = app.store().balance(app.team.id).await.unwrap().prepaid;
    assert_eq!(after.get() - before.get(), Ticks::PER_USD / 10);
    let all = invoices(&app, "").await;
    let note = all.iter().find(|i| i.get("creditNote").is_some()).unwrap();
    let corrected = all.iter().find(|i| i["invoiceNumber"] == number.as_str()).unwrap();
    assert_eq!(note["creditNote"]["correctsInvoiceId"], corrected["invoiceId"]);
    assert_eq!(note["total"], "10");
    assert_eq!(corrected["invoiceStatus"], "PAID", "the invoice itself does not change");
    let too_much = tollgate_cli(
        &app,
        &[
            "billing",
            "invoice",
            "credit-note",
            "--number",
            &number,
            "--usd",
            "1000",
            "--reason",
            "no",
        ],
        None,
    );
    assert!(!too_much.status.success(), "never more than the invoice");
    // The other team's November invoice, unpaid, credited in full: never charged.
    let others = app.store().invoices(other.id, &filter).await.unwrap();
    let note = payments
        .credit_note(&others[0].number, others[0].total, "goodwill", Actor::Operator)
        .await
        .unwrap();
    assert_eq!(note.number, "TG-000006", "the refused one used no number");
    let voided = app.store().invoice(other.id, others[0].id).await.unwrap().unwrap();
    assert_eq!(voided.status, tollgate_domain::InvoiceStatus::Void);
    assert_eq!(voided.total, others[0].total, "its amounts stay as issued");
    let out = tollgate_cli(&app, &["billing", "verify"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    app.finish().await;
}

/// The text of a PDF, as pypdf reads it.
fn pdf_text(pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("invoice.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, pypdf; print(''.join(p.extract_text() for p in pypdf.PdfReader(sys.argv[1]).pages))",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "pypdf: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn start(month: &str) -> tollgate_domain::Timestamp {
    chrono::DateTime::parse_from_rfc3339(&format!("{month}-01T00:00:00Z"))
        .unwrap()
        .to_utc()
}

/// A card that is declined when charged: the month's invoice fails (retried after a day, still
/// declined); 14 days on, the team is blocked — inference answers 403 naming the invoice and
/// `/v1/api-key` says `team_blocked` — until a good card is made the default and the next
/// attempt pays it. A purchase gets a receipt in the same series.
async fn an_unpaid_invoice_blocks_after_the_grace_and_paying_lifts_it(db: TestDb) {
    let Some(stripe) = LocalStripe::start().await else {
        return;
    };
    let app = app_with_stripe(db, Some(&stripe), &[]).await;
    app.services()
        .ledger
        .set_hard_override(
            app.team.id,
            Some(Ticks::new(100 * Ticks::PER_USD)),
            Actor::Operator,
            &RequestContext::default(),
        )
        .await
        .unwrap();
    let (customer, good) = customer_with_card(&app, &stripe).await;
    let declined = stripe.save_card(&customer, "4000000000000341").await;
    let (status, _) = make_default(&app, &declined).await;
    assert_eq!(status, StatusCode::OK);
    let key = app.api_key().await;
    for _ in 0..3 {
        chat(&app, &key).await;
    }

    let payments = app.services().payments;
    app.clock.set(start("2026-12") + Duration::hours(2));
    let run = payments.run_billing().await.unwrap();
    assert_eq!((run.invoices, run.charges), (1, 0), "charged at issue");
    let invoice = invoices(&app, "").await.remove(0);
    assert_eq!(invoice["invoiceStatus"], "FAILED", "{invoice}");
    assert!(invoice["failure"].as_str().unwrap().contains("declined"), "{invoice}");
    // The Admins (and the billing address) are told, once per failed attempt.
    let failed_mail = |mail: &Vec<tollgate_domain::QueuedMail>| {
        mail.iter()
            .filter(|m| m.mail.subject.contains("Payment of invoice TG-000001 failed"))
            .count()
    };
    let mail = app.store().list_mail(100).await.unwrap();
    assert_eq!(failed_mail(&mail), 1);
    let notice = mail.iter().find(|m| m.mail.subject.contains("TG-000001")).unwrap();
    let to: Vec<&str> = notice.mail.to.iter().map(AsRef::as_ref).collect();
    assert_eq!(to, ["owner@example.com", "billing@acme.example"]);
    assert!(notice.mail.body.contains("declined"), "{}", notice.mail.body);
    app.clock.advance(Duration::days(1));
    assert_eq!(payments.run_billing().await.unwrap().charges, 1, "retried after a day");
    assert_eq!(failed_mail(&app.store().list_mail(100).await.unwrap()), 2);
    assert_eq!(invoices(&app, "").await[0]["invoiceStatus"], "FAILED");
    // Within the grace, requests go on.
    chat(&app, &key).await;

    app.clock.set(start("2026-12") + Duration::days(15));
    assert_eq!(payments.run_billing().await.unwrap().blocked, 1);
    let mail = app.store().list_mail(100).await.unwrap();
    assert!(
        mail.iter()
            .any(|m| m.mail.subject.contains("are stopped: invoice TG-000001 is unpaid"))
    );
    let number = {
        let out = tollgate_cli(
            &app,
            &["billing", "invoice", "list", "--team", &app.team.id.to_string()],
            None,
        );
        String::from_utf8(out.stdout).unwrap()[..9].to_owned()
    };
    // Key authentication re-reads within a second of the (moved) clock.
    app.clock.advance(Duration::seconds(2));
    let refused = app
        .chat(
            &key,
            json!({"model": MODEL, "messages": user_message(), "max_tokens": 16_000}),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: Value = refused.json().await.unwrap();
    let text = body["error"].as_str().unwrap();
    assert!(text.contains(&number) && text.contains("unpaid"), "{text}");
    assert!(!text.contains("credits"), "not the out-of-credit text: {text}");
    assert_eq!(app.get_json("/v1/api-key", &key).await["team_blocked"], true);

    // A good card as the default; the next attempt pays and lifts the block.
    let (status, _) = make_default(&app, &good).await;
    assert_eq!(status, StatusCode::OK);
    app.clock.advance(Duration::days(7));
    payments.run_billing().await.unwrap();
    let paid = invoices(&app, "").await.remove(0);
    assert_eq!(paid["invoiceStatus"], "PAID");
    // The payment is on the ledger, settling the month.
    let entries = app.services().ledger.entries(app.team.id, 100).await.unwrap();
    let payment = entries
        .iter()
        .find(|e| e.kind == tollgate_domain::EntryKind::InvoicePayment)
        .unwrap();
    assert_eq!(
        payment.amount.to_cents_rounded().to_string(),
        paid["total"].as_str().unwrap()
    );
    assert_eq!(payment.reason.as_deref(), paid["invoiceNumber"].as_str());
    app.clock.advance(Duration::seconds(2));
    assert_eq!(app.get_json("/v1/api-key", &key).await["team_blocked"], false);
    chat(&app, &key).await;

    // A purchase, and its receipt: the next number of the one series.
    let (status, bought) = management(
        &app,
        reqwest::Method::POST,
        "prepaid/top-up",
        Some(json!({"amount": {"val": "2500"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{bought}");
    let all = invoices(&app, "").await;
    let receipt = all.iter().find(|i| i.get("prepaid").is_some()).unwrap();
    assert_eq!(receipt["invoiceStatus"], "PAID");
    assert_eq!(receipt["total"], "2500");
    assert_eq!(receipt["invoiceNumber"], "TG-000002");
    let events = app.store().list_audit_events(app.team.id, 200).await.unwrap();
    for action in ["IssueInvoice", "PayInvoice", "BlockTeam"] {
        assert!(events.iter().any(|e| e.action == action), "{action}");
    }
    assert_eq!(app.services().ledger.verify().await.unwrap(), None);
    let now = app.clock.now();
    assert!(now > start("2026-12"));
    app.finish().await;
}
