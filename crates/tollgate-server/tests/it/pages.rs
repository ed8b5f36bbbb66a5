//! The web console's pages in a real browser: Debian's Chromium driven by npm `playwright-core`
//! (`tests/console/console.mjs`), against a real server. Then the server's side of what the
//! person did: the key was created, disabled and deleted through the same services as the API,
//! each audited, and the secret shown once no longer works.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;
use tollgate_store::testsuite::TestDb;

use crate::util::{TestApp, on_both_backends};

on_both_backends!(
    a_person_manages_api_keys_in_the_console,
    the_pages_account_mails_link_to_work,
    a_person_secures_their_account_on_the_account_page,
    an_admin_buys_credit_and_reads_usage_in_the_console,
    a_person_narrows_and_rotates_a_key_in_the_console,
    an_admin_changes_roles_and_management_keys_in_the_console,
    an_operator_manages_teams_in_the_console,
    a_person_joins_a_team_from_the_invitation_mail,
    a_newcomer_goes_from_sign_up_to_a_working_key,
);

/// Where a browser run saves each page's screenshot: `CONSOLE_SCREENSHOTS`, else
/// `target/console-screenshots`, one folder per backend (the README's images in `docs/images`
/// are never written).
fn screenshots(app: &TestApp) -> String {
    let base = std::env::var_os("CONSOLE_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|dir| std::path::PathBuf::from(dir).join("console-screenshots"))
        })
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots"));
    let backend = if app.config.database_url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    let dir = base.join(backend);
    std::fs::create_dir_all(&dir).unwrap();
    dir.to_string_lossy().into_owned()
}

/// Whether the browser and its driver are here (scripts/test installs both); under CI their
/// absence fails the test, elsewhere it is skipped with a note.
fn browser_installed() -> bool {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/console/node_modules/playwright-core"
    );
    let installed = std::path::Path::new(dir).is_dir() && std::path::Path::new("/usr/bin/chromium").exists();
    assert!(
        installed || std::env::var_os("CI").is_none(),
        "Chromium or playwright-core is missing: run scripts/test, which installs them"
    );
    if !installed {
        eprintln!("skipped: Chromium or playwright-core is not installed (scripts/test installs them)");
    }
    installed
}

async fn a_person_manages_api_keys_in_the_console(db: TestDb) {
    if !browser_installed() {
        return;
    }
    let app = TestApp::new(db).await;
    // Another session of the owner's, from curl: the browser sees it on the Sessions page, and
    // ends it.
    let other = app
        .client
        .post(app.url("/api/auth/sign-in"))
        .header("user-agent", "curl/8.5.0")
        .json(&serde_json::json!({"email": "owner@example.com", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    let other_cookie = other.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let base = app.url("");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/console.mjs");
    let shots = screenshots(&app);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args([
                script,
                &base,
                "owner@example.com",
                "correct horse battery staple",
                &shots,
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = seen["secret"].as_str().unwrap();
    assert!(secret.starts_with(&app.config.api_key_prefix), "{secret}");

    // The session ended in the browser is over.
    let ended = app
        .client
        .get(app.url("/api/sessions"))
        .header("cookie", &other_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), StatusCode::UNAUTHORIZED);

    // The newcomer's account exists, its address not yet verified.
    let newcomer = app
        .store()
        .find_user_by_email(&tollgate_domain::Email::parse("newcomer@example.com").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(newcomer.display_name, "Newcomer");
    assert!(newcomer.email_verified_at.is_none());

    // Another site cannot sign a person in through the form (login CSRF).
    let response = app
        .client
        .post(app.url("/sign-in"))
        .header("origin", "https://evil.example")
        .form(&[
            ("email", "owner@example.com"),
            ("password", "correct horse battery staple"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // The key shown once is deleted: it no longer opens the API.
    let response = app
        .client
        .get(app.url("/v1/api-key"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Each step went through the services, audited as the person.
    let events = app.store().list_audit_events(app.team.id, 100).await.unwrap();
    let actions: Vec<String> = events
        .iter()
        .map(|e| format!("{:?}", e.action).trim_matches('"').to_owned())
        .collect();
    for action in [
        "SignIn",
        "InviteTeamMember",
        "RevokeInvitation",
        "CreateApiKey",
        "UpdateApiKey",
        "DeleteApiKey",
        "EndSession",
        "SignOut",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action} not in {actions:?}");
    }
    app.finish().await;
}

/// Runs one step of `tests/console/links.mjs` in the browser.
async fn links_step(args: Vec<String>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/links.mjs");
    let out = tokio::task::spawn_blocking(move || Command::new("node").arg(script).args(&args).output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The token of the newest mail to `to` whose subject has `subject`.
async fn mailed_token(app: &TestApp, to: &str, subject: &str) -> String {
    let mail = app.store().list_mail(100).await.unwrap();
    let found = mail
        .iter()
        .find(|m| m.mail.to.iter().any(|t| t.as_ref() == to) && m.mail.subject.contains(subject))
        .unwrap_or_else(|| panic!("no mail '{subject}' to {to}"));
    let (_, rest) = found.mail.body.split_once("#token=").unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

/// The links in account mails open pages: verifying the address, asking for a reset from the
/// sign-in page, and choosing a new password (a weak one refused, the link still good), then
/// signing in with it.
async fn the_pages_account_mails_link_to_work(db: TestDb) {
    if !browser_installed() {
        return;
    }
    let app = TestApp::new(db).await;
    let base = app.url("");
    let email = "reader@example.com";
    let signed_up = app
        .client
        .post(app.url("/api/auth/sign-up"))
        .json(&serde_json::json!({"email": email, "password": "a sturdy passphrase for the reader", "name": "Reader"}))
        .send()
        .await
        .unwrap();
    assert!(signed_up.status().is_success());
    let token = mailed_token(&app, email, "Verify your email").await;
    links_step(vec!["verify".into(), base.clone(), token]).await;
    let parsed = tollgate_domain::Email::parse(email).unwrap();
    let user = app.store().find_user_by_email(&parsed).await.unwrap().unwrap();
    assert!(user.email_verified_at.is_some(), "the address was not verified");

    links_step(vec!["forgot".into(), base.clone(), email.into()]).await;
    let token = mailed_token(&app, email, "Reset your password").await;
    links_step(vec![
        "reset".into(),
        base.clone(),
        token,
        email.into(),
        "a brand new passphrase for the reader".into(),
    ])
    .await;
    // The new password signs in; the old one no longer does.
    for (password, status) in [
        ("a brand new passphrase for the reader", StatusCode::OK),
        ("a sturdy passphrase for the reader", StatusCode::UNAUTHORIZED),
    ] {
        let response = app
            .client
            .post(app.url("/api/auth/sign-in"))
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{password}");
    }

    // An email change: confirmed from the new address's link; a second one stopped from the old
    // address's link.
    let change = async |current: &str, new: &str| {
        let browser = reqwest::Client::builder().cookie_store(true).build().unwrap();
        let response = browser
            .post(app.url("/api/auth/sign-in"))
            .json(&serde_json::json!({"email": current, "password": "a brand new passphrase for the reader"}))
            .send()
            .await
            .unwrap();
        let signed_in: Value = response.json().await.unwrap();
        let csrf = signed_in["csrfToken"].as_str().unwrap().to_owned();
        let response = browser
            .post(app.url("/api/account/email"))
            .header("x-csrf-token", csrf)
            .json(&serde_json::json!({"newEmail": new, "password": "a brand new passphrase for the reader"}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    };
    change(email, "elsewhere@example.com").await;
    let token = mailed_token(&app, "elsewhere@example.com", "Confirm your new email address").await;
    links_step(vec!["change".into(), base.clone(), token]).await;
    let moved = app.store().get_user(user.id).await.unwrap();
    assert_eq!(moved.email.as_ref(), "elsewhere@example.com");
    change("elsewhere@example.com", "third@example.com").await;
    let stop = mailed_token(&app, "elsewhere@example.com", "about to change").await;
    links_step(vec!["stop".into(), base.clone(), stop]).await;
    let kept = app.store().get_user(user.id).await.unwrap();
    assert_eq!(
        kept.email.as_ref(),
        "elsewhere@example.com",
        "a stopped change went through"
    );
    app.finish().await;
}

/// The account page (`tests/console/account.mjs`): rename; TOTP turned on from the key the page
/// shows (a wrong code first), the recovery codes copied and downloaded; a sign-in with the next
/// step's code; the codes renewed; TOTP off; the account deleted and restored by signing in.
/// Then the server's side: each step audited, the account live again with TOTP off.
async fn a_person_secures_their_account_on_the_account_page(db: TestDb) {
    use tollgate_domain::Clock as _;
    if !browser_installed() {
        return;
    }
    let app = TestApp::new(db).await;
    let email = "careful@example.com";
    let password = "a sturdy passphrase for the careful";
    let signed_up = app
        .client
        .post(app.url("/api/auth/sign-up"))
        .json(&serde_json::json!({"email": email, "password": password, "name": "Careful"}))
        .send()
        .await
        .unwrap();
    assert!(signed_up.status().is_success());
    let base = app.url("");
    let now = app.clock.now().timestamp().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console/account.mjs");
    let shots = screenshots(&app);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args([script, &base, email, password, &now, &shots])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!seen["secret"].as_str().unwrap().is_empty());

    let user = app
        .store()
        .find_user_by_email(&tollgate_domain::Email::parse(email).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.display_name, "Renamed Person");
    assert!(user.deleted_at.is_none(), "the account was not restored");
    assert!(user.totp_enabled_at.is_none(), "TOTP is still on");
    // The recovery code that turned TOTP off is spent, and TOTP is off: a sign-in needs only
    // the password.
    let response = app
        .client
        .post(app.url("/api/auth/sign-in"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut actions = Vec::new();
    let personal = app.store().list_memberships(user.id).await.unwrap();
    for membership in personal {
        for event in app.store().list_audit_events(membership.team.id, 500).await.unwrap() {
            actions.push(format!("{:?}", event.action).trim_matches('"').to_owned());
        }
    }
    for action in [
        "UpdateProfile",
        "EnableMfa",
        "RegenerateRecoveryCodes",
        "DisableMfa",
        "DeleteAccount",
        "RestoreAccount",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action} not in {actions:?}");
    }
    app.finish().await;
}

/// A session of the test app's owner (an Admin of its team), signed in through the JSON API.
async fn owner_session(app: &TestApp) -> crate::teams::Browser {
    let response = app
        .client
        .post(app.url("/api/auth/sign-in"))
        .json(&serde_json::json!({"email": "owner@example.com", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    crate::teams::Browser::from_response(response).await
}

/// Runs one step of the browser script `tests/console/<name>`; its printed JSON.
async fn script_step(name: &str, args: Vec<String>) -> Value {
    let script = format!("{}/tests/console/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || Command::new("node").arg(script).args(&args).output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The Billing and Usage pages (`tests/console/billing.mjs`) against localstripe and the
/// stand-in for Stripe's hosted Checkout: the operator's grant shown; a limit above the
/// maximum and a malformed amount refused next to their fields; credit bought on the payment
/// page (the test pays there, as the customer would); then the credit, the purchase and its
/// receipt, and a request's usage drawn by model and by key.
async fn an_admin_buys_credit_and_reads_usage_in_the_console(db: TestDb) {
    use tollgate_domain::Clock as _;
    if !browser_installed() {
        return;
    }
    let Some(stripe) = crate::payments::LocalStripe::start().await else {
        return;
    };
    let standin = tollgate_testkit::checkout::CheckoutStandIn::start(&stripe.url())
        .await
        .unwrap();
    let app = crate::payments::app_with_stripe_at(db, &standin.url, &[]).await;
    standin.deliver_to(&app.url("/webhooks/stripe"), crate::payments::WEBHOOK_SECRET);
    stripe.deliver_to(&app.url("/webhooks/stripe")).await;
    app.services()
        .ledger
        .grant(
            app.team.id,
            tollgate_domain::Ticks::new(5 * tollgate_domain::Ticks::PER_USD),
            "welcome credit",
            None,
            tollgate_domain::Actor::Operator,
            &tollgate_domain::RequestContext::default(),
        )
        .await
        .unwrap();
    let base = app.url("");
    let shots = screenshots(&app);
    let (email, password) = ("owner@example.com", "correct horse battery staple");
    let opened = script_step(
        "billing.mjs",
        vec!["buy".into(), base.clone(), email.into(), password.into(), shots.clone()],
    )
    .await;
    let checkout = opened["checkout"].as_str().unwrap();
    let session = checkout.rsplit('/').next().unwrap();
    assert_eq!(
        standin.session(session).unwrap()["amount_total"],
        5000,
        "the page links to the session opened for $50: {checkout}"
    );
    assert_eq!(
        standin
            .complete(session, "4242424242424242", app.clock.now().timestamp())
            .await,
        Ok(200)
    );
    // The credit arrives with the provider's event; the receipt with the billing job.
    let want = tollgate_domain::Ticks::new(55 * tollgate_domain::Ticks::PER_USD);
    for _ in 0..100 {
        if app.store().balance(app.team.id).await.unwrap().total().unwrap() == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(app.store().balance(app.team.id).await.unwrap().total().unwrap(), want);
    app.services().payments.run_billing().await.unwrap();
    let key = app.api_key().await;
    assert_eq!(app.hello_status(&key).await, StatusCode::OK);

    let seen = script_step(
        "billing.mjs",
        vec![
            "after".into(),
            base,
            email.into(),
            password.into(),
            crate::util::MODEL.into(),
            shots,
        ],
    )
    .await;
    // The page's figures are the ledger's, to the tick.
    let spent = want
        .checked_sub(app.store().balance(app.team.id).await.unwrap().total().unwrap())
        .unwrap();
    assert_eq!(
        seen["cost"].as_str().unwrap(),
        format!("${}", tollgate_domain::ledger::format_usd(spent))
    );

    // A Member sees Usage (their own keys', so none) and no Billing tab; the server refuses the
    // Billing page and its changes all the same.
    let admin = owner_session(&app).await;
    let team = app.team.id.to_string();
    let member = crate::teams::joined(&app, &admin, &team, "member@example.com", "member").await;
    let page = |path: String| {
        let request = app.client.get(app.url(&path)).header("cookie", member.cookie());
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    let (status, usage) = page(format!("/console/usage?team={team}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(usage.contains("The usage of the API keys you created"), "{usage}");
    assert!(
        usage.contains("No usage in this period."),
        "a Member sees others' usage"
    );
    assert!(!usage.contains("/console/billing"), "a Member is shown the Billing tab");
    let (status, _) = page(format!("/console/billing?team={team}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.finish().await;
}

/// A key's pickers, limits and rotation (`tests/console/keys.mjs`): created for chat and one
/// model only, at 60 requests a minute; then also tokenize, 1,000 tokens a minute; rotated with
/// an hour's grace. Then the API: both secrets work within the grace, the endpoints not granted
/// are refused, and the key's page shows when it was last used.
async fn a_person_narrows_and_rotates_a_key_in_the_console(db: TestDb) {
    if !browser_installed() {
        return;
    }
    let app = TestApp::new(db).await;
    let base = app.url("");
    let shots = screenshots(&app);
    let (email, password) = ("owner@example.com", "correct horse battery staple");
    let seen = script_step(
        "keys.mjs",
        vec![
            "narrow".into(),
            base.clone(),
            email.into(),
            password.into(),
            crate::util::MODEL.into(),
            shots,
        ],
    )
    .await;
    let (first, rotated) = (seen["first"].as_str().unwrap(), seen["rotated"].as_str().unwrap());
    let id: tollgate_domain::ApiKeyId = seen["id"].as_str().unwrap().parse().unwrap();
    let key = app.store().find_api_key(app.team.id, id).await.unwrap().unwrap();
    let acls: Vec<String> = key.acls.as_slice().iter().map(ToString::to_string).collect();
    assert_eq!(
        acls,
        [
            "api-key:endpoint:chat",
            "api-key:endpoint:tokenize",
            &format!("api-key:model:{}", crate::util::MODEL)
        ]
    );
    assert_eq!((key.qps, key.qpm, key.tpm), (None, Some(60), Some(1000)));
    for secret in [first, rotated] {
        assert_eq!(
            app.hello_status(secret).await,
            StatusCode::OK,
            "a secret within its grace"
        );
    }
    let embeddings = app
        .post(
            "/v1/embeddings",
            rotated,
            serde_json::json!({"model": crate::util::MODEL, "input": "hi"}),
        )
        .await;
    assert_eq!(embeddings.status(), StatusCode::FORBIDDEN, "an endpoint not granted");
    app.server.as_ref().unwrap().keys.flush_last_used().await.unwrap();
    script_step(
        "keys.mjs",
        vec!["used".into(), base, email.into(), password.into(), id.to_string()],
    )
    .await;
    app.finish().await;
}

/// Roles and management keys (`tests/console/team.mjs`). A Member sees neither the Management
/// Keys tab nor role changes, and the server refuses both; then the Admin, in the browser, makes
/// them an Admin, revokes one management key and keeps another: the kept one opens the
/// Management API, the revoked one no longer does.
async fn an_admin_changes_roles_and_management_keys_in_the_console(db: TestDb) {
    if !browser_installed() {
        return;
    }
    let app = TestApp::new(db).await;
    let (email, password) = ("owner@example.com", "correct horse battery staple");
    let admin = owner_session(&app).await;
    let team = app.team.id.to_string();
    let member = crate::teams::joined(&app, &admin, &team, "member@example.com", "member").await;
    let get = |path: String| {
        let request = app.client.get(app.url(&path)).header("cookie", member.cookie());
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    let (status, users) = get(format!("/console/users?team={team}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!users.contains("Change role"), "a Member is offered role changes");
    assert!(
        !users.contains("/console/management-keys"),
        "a Member is shown the Management Keys tab"
    );
    let (status, _) = get(format!("/console/management-keys?team={team}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let base = app.url("");
    let shots = screenshots(&app);
    let seen = script_step(
        "team.mjs",
        vec![base, email.into(), password.into(), "member@example.com".into(), shots],
    )
    .await;
    let members = app.store().list_members(app.team.id).await.unwrap();
    let promoted = members
        .iter()
        .find(|m| m.email.as_ref() == "member@example.com")
        .unwrap();
    assert_eq!(promoted.role, tollgate_domain::Role::Admin);
    let balance = format!("/v1/billing/teams/{team}/prepaid/balance");
    for (key, status) in [
        (seen["kept"].as_str().unwrap(), StatusCode::OK),
        (seen["revoked"].as_str().unwrap(), StatusCode::UNAUTHORIZED),
    ] {
        let response = app.client.get(app.url(&balance)).bearer_auth(key).send().await.unwrap();
        assert_eq!(response.status(), status, "{key}");
    }
    app.finish().await;
}

/// The operator pages (`tests/console/operator.mjs`). Nobody opens them but a configured
/// operator with a verified address and two-factor authentication on; the operator grants
/// credit, raises a team's invoicing maximum, grants zero retention and blocks a key, each
/// recorded in the team's audit log as that person.
async fn an_operator_manages_teams_in_the_console(db: TestDb) {
    use tollgate_domain::Clock as _;
    if !browser_installed() {
        return;
    }
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.operators = vec!["ops@example.com".into()];
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let other_key = app
        .create_api_key(serde_json::json!({"name": "other", "acls": ["api-key:endpoint:*", "api-key:model:*"]}))
        .await["apiKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let ops = app.signed_up("ops@example.com").await;
    let owner = owner_session(&app).await;
    let operator_page = |browser: &crate::teams::Browser| {
        let request = app.client.get(app.url("/operator")).header("cookie", browser.cookie());
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    // Not an operator; an operator's address not yet verified; verified, without a second
    // factor: each refused, saying why.
    let (status, body) = operator_page(&owner).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("Only the operators"), "{body}");
    let (status, _) = operator_page(&ops).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.verify_email_of("ops@example.com").await;
    let (status, body) = operator_page(&ops).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("Turn on two-factor authentication"), "{body}");

    // Two-factor authentication on (its first code spends this step: the browser signs in with
    // the next one).
    let (status, enrollment) = app
        .call_json(
            reqwest::Method::POST,
            "/api/account/mfa/totp",
            &ops,
            Some(serde_json::json!({"password": crate::teams::PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{enrollment}");
    let secret = tollgate_domain::mfa::TotpSecret::from_base32(enrollment["secret"].as_str().unwrap()).unwrap();
    let step = u64::try_from(app.clock.now().timestamp() / 30).unwrap();
    let (status, _) = app
        .call_json(
            reqwest::Method::POST,
            "/api/account/mfa/totp/confirm",
            &ops,
            Some(serde_json::json!({"code": format!("{:06}", secret.code_at_step(step))})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let shots = screenshots(&app);
    script_step(
        "operator.mjs",
        vec![
            app.url(""),
            "ops@example.com".into(),
            crate::teams::PASSWORD.into(),
            format!("{:06}", secret.code_at_step(step + 1)),
            app.team.id.to_string(),
            other_key,
            shots,
        ],
    )
    .await;

    // The grant is in the ledger (the balance has moved since: the request served after the
    // block was lifted was paid from it).
    let entries = app.store().ledger_entries(app.team.id, 100).await.unwrap();
    let grant = entries
        .iter()
        .find(|entry| entry.reason.as_deref() == Some("welcome credit"))
        .unwrap_or_else(|| panic!("no grant in {entries:?}"));
    assert_eq!(
        grant.amount,
        tollgate_domain::Ticks::new(1_250 * tollgate_domain::Ticks::PER_CENT)
    );
    assert_eq!(grant.bucket, tollgate_domain::Bucket::Prepaid);
    assert!(app.store().data_use(app.team.id).await.unwrap().zero_retention);
    assert_eq!(
        app.hello_status(&key).await,
        StatusCode::FORBIDDEN,
        "a blocked key still works"
    );
    let events = app.store().list_audit_events(app.team.id, 200).await.unwrap();
    let granted = events
        .iter()
        .find(|e| e.action == "GrantCredits")
        .unwrap_or_else(|| panic!("the grant is not in the team's audit log: {events:?}"));
    assert_eq!(
        (granted.actor_kind.as_str(), granted.actor_label.as_deref()),
        ("user", Some("ops@example.com")),
        "{granted:?}"
    );
    // The team's block and its lifting, each audited as the operator.
    for action in ["BlockTeam", "UnblockTeam"] {
        let event = events
            .iter()
            .find(|e| e.action == action)
            .unwrap_or_else(|| panic!("{action} is not in the team's audit log"));
        assert_eq!(event.actor_label.as_deref(), Some("ops@example.com"), "{event:?}");
    }
    app.finish().await;
}

/// The invitation mail's link (`tests/console/join.mjs`): the invited person, signed up with the
/// invited address and verified, opens it, signs in, and joins the team by pressing Accept.
async fn a_person_joins_a_team_from_the_invitation_mail(db: TestDb) {
    if !browser_installed() {
        return;
    }
    let app = TestApp::new(db).await;
    let admin = owner_session(&app).await;
    let team = app.team.id.to_string();
    let (status, _) = app
        .call_json(
            reqwest::Method::POST,
            &format!("/api/teams/{team}/members"),
            &admin,
            Some(serde_json::json!({"email": "joiner@example.com", "role": "member"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let token = app.invitation_token(&app.store().list_mail(100).await.unwrap(), "joiner@example.com");
    app.signed_up("joiner@example.com").await;
    app.verify_email_of("joiner@example.com").await;
    let seen = script_step(
        "join.mjs",
        vec![
            app.url(""),
            "joiner@example.com".into(),
            crate::teams::PASSWORD.into(),
            token,
        ],
    )
    .await;
    assert!(seen["joined"].as_str().unwrap().ends_with(&team), "{seen}");
    let members = app.store().list_members(app.team.id).await.unwrap();
    let joined = members
        .iter()
        .find(|m| m.email.as_ref() == "joiner@example.com")
        .unwrap();
    assert_eq!(joined.role, tollgate_domain::Role::Member);
    app.finish().await;
}

/// The whole way in one browser run (`tests/console/journey.mjs`), in order: sign up, verify
/// the address from the link a real SMTP server received, TOTP on, signed out and in with a
/// code, a passkey added and signed in with (on `localhost`, which WebAuthn accepts as a relying
/// party, unlike an IP address), a team created, a member invited who signs up and accepts, a
/// key created, copied and called, the usage and audit events read, the key disabled and
/// deleted; the Member's view at a phone's width. Then the server's side of it.
async fn a_newcomer_goes_from_sign_up_to_a_working_key(db: TestDb) {
    use tollgate_domain::Clock as _;
    if !browser_installed() {
        return;
    }
    let Some(sink) = crate::smtp::SmtpSink::start().await else {
        return;
    };
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    config.console_url = format!("http://localhost:{port}");
    config.mail.smtp_url = Some(sink.url().into());
    let app = TestApp::with_config(db, upstream, config).await;
    let base = format!("http://localhost:{port}");
    let maildir = sink.maildir_root().to_string_lossy().into_owned();
    let now = app.clock.now().timestamp().to_string();
    let seen = script_step("journey.mjs", vec![base, maildir, now, screenshots(&app)]).await;

    let ada = app
        .store()
        .find_user_by_email(&tollgate_domain::Email::parse("ada@example.com").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(ada.email_verified_at.is_some(), "the address was not verified");
    assert!(ada.totp_enabled_at.is_some(), "TOTP is off");
    let passkeys = app.store().list_passkeys(ada.id).await.unwrap();
    assert_eq!(passkeys.len(), 1);
    assert!(passkeys[0].last_used_at.is_some(), "the passkey never signed in");

    // The key is gone, and its secret refused as xAI refuses an unknown key.
    let key = seen["key"].as_str().unwrap();
    crate::util::assert_xai_error(
        app.hello(key).await,
        StatusCode::BAD_REQUEST,
        "Client specified an invalid argument",
        "Incorrect API key provided",
    )
    .await;
    assert_eq!(seen["disabledStatus"], 403, "a disabled key is refused as forbidden");
    // The request was billed to the new team, and each step audited there.
    let team: tollgate_domain::TeamId = seen["team"].as_str().unwrap().parse().unwrap();
    let events = app.store().list_audit_events(team, 500).await.unwrap();
    let actions: Vec<String> = events
        .iter()
        .map(|event| format!("{:?}", event.action).trim_matches('"').to_owned())
        .collect();
    for action in [
        "CreateTeam",
        "InviteTeamMember",
        "AcceptInvitation",
        "CreateApiKey",
        "UpdateApiKey",
        "DeleteApiKey",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action} not in {actions:?}");
    }
    let members = app.store().list_members(team).await.unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    app.finish().await;
}
