//! External sign-in against a real OpenID provider (the npm package `oidc-provider`, started by
//! the test on loopback): new accounts, returning identities, linking to an existing account only
//! after its owner signs in, an address asked for when the provider gives none, the last sign-in
//! method kept, and a forged or unbound state refused.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_store::testsuite::TestDb;
use tollgate_testkit::MockUpstream;

use crate::util::{TestApp, assert_xai_error, execute, on_both_backends, test_config};

on_both_backends!(
    an_unreachable_provider_answers_503,
    sign_in_with_an_openid_provider,
    sign_in_with_a_plain_oauth2_provider,
    accounts_without_a_password_reauthenticate_by_signing_in,
    a_separate_account_shares_only_the_address,
    provider_sign_ins_land_on_the_consoles_pages,
);

/// The callbacks registered at the provider: `test` (OpenID Connect) and `plain` (the same
/// server used as a plain OAuth 2.0 provider with a user-info endpoint, as X is).
const REDIRECT_URIS: &str =
    "http://127.0.0.1:8080/api/auth/oidc/test/callback,http://127.0.0.1:8080/api/auth/oidc/plain/callback";

struct Provider {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Provider {
    /// The provider, or `None` (skip) when node or the package is missing and not under CI.
    async fn start() -> Option<Self> {
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        let installed = fixture.join("node_modules/oidc-provider").exists()
            && Command::new("node")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "the OpenID provider is missing: cd crates/tollgate-server/tests/oidc && npm ci"
            );
            eprintln!("skipped: the OpenID provider is not installed (npm ci in tests/oidc)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let accounts = dir.path().join("accounts.json");
        std::fs::write(
            &accounts,
            json!({
                "alice": {"email": "alice@example.com", "email_verified": true, "name": "Alice"},
                "bob": {"email": "bob@example.com", "email_verified": true, "name": "Bob"},
                "carol": {"name": "Carol"},
                "dave": {"email": "dave@example.net", "email_verified": true, "name": "Dave"},
                "erin": {"email": "erin@example.com", "email_verified": true, "name": "Erin"},
                "frank": {"name": "Frank"},
                "gus": {"name": "Gus"},
            })
            .to_string(),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("node")
            .current_dir(&fixture)
            .arg("provider.mjs")
            .arg(port.to_string())
            .args(["tollgate", "secret-for-tests", REDIRECT_URIS])
            .arg(&accounts)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let provider = Self { child, port, _dir: dir };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Some(provider);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the OpenID provider did not start");
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A browser: a cookie jar, no automatic redirects.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn location(response: &reqwest::Response) -> String {
    assert!(
        response.status().is_redirection(),
        "expected a redirect, got {}",
        response.status()
    );
    let target = response.headers()["location"].to_str().unwrap();
    response.url().join(target).unwrap().to_string()
}

/// Goes through the provider as `login` from `start` (a Tollgate start URL, or the provider URL of
/// a linking flow); returns the callback query (`code=…&state=…`).
async fn through_provider(browser: &reqwest::Client, provider_url: String, login: &str) -> String {
    let interaction = location(&browser.get(&provider_url).send().await.unwrap());
    let response = browser
        .post(&interaction)
        .form(&[("prompt", "login"), ("login", login), ("password", "x")])
        .send()
        .await
        .unwrap();
    let resume = location(&response);
    let consent = location(&browser.get(&resume).send().await.unwrap());
    let response = browser
        .post(&consent)
        .form(&[("prompt", "consent")])
        .send()
        .await
        .unwrap();
    let resume = location(&response);
    let callback = location(&browser.get(&resume).send().await.unwrap());
    assert!(
        callback.starts_with("http://127.0.0.1:8080/api/auth/oidc/"),
        "{callback}"
    );
    callback.split_once('?').unwrap().1.to_owned()
}

/// Signs in as `login` at the provider from Tollgate's start URL; returns Tollgate's answer to
/// the callback.
async fn sign_in(app: &TestApp, browser: &reqwest::Client, login: &str) -> reqwest::Response {
    sign_in_with(app, browser, "test", login).await
}

/// [`sign_in`] with the provider configured as `provider`.
async fn sign_in_with(app: &TestApp, browser: &reqwest::Client, provider: &str, login: &str) -> reqwest::Response {
    let start = browser
        .get(app.url(&format!("/api/auth/oidc/{provider}/start")))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let query = through_provider(browser, location(&start), login).await;
    browser
        .get(app.url(&format!("/api/auth/oidc/{provider}/callback?{query}")))
        .send()
        .await
        .unwrap()
}

/// The CSRF token of a signed-in answer; the browser keeps the session cookie.
async fn csrf(response: reqwest::Response) -> String {
    assert!(response.status().is_success(), "{}", response.status());
    let body: Value = response.json().await.unwrap();
    body["csrfToken"].as_str().unwrap().to_owned()
}

/// A Tollgate with the provider configured as `test`.
async fn app_with_provider(db: TestDb) -> Option<(Provider, TestApp)> {
    let provider = Provider::start().await?;
    let upstream = MockUpstream::start().await.unwrap();
    let mut config = test_config(&db, &upstream);
    config.oidc.insert(
        "test".into(),
        tollgate_server::config::OidcConfig {
            issuer: provider.issuer(),
            client_id: "tollgate".into(),
            client_secret: "secret-for-tests".to_owned().into(),
            display_name: Some("Test ID".into()),
        },
    );
    // The same server as a plain OAuth 2.0 provider, configured as X would be: no ID token, the
    // id and name read from the user-info endpoint, no address.
    config.oauth2.insert(
        "plain".into(),
        tollgate_server::config::OAuth2Config {
            preset: None,
            client_id: "tollgate".into(),
            client_secret: "secret-for-tests".to_owned().into(),
            display_name: Some("Plain".into()),
            authorization_url: Some(format!("{}/auth", provider.issuer())),
            token_url: Some(format!("{}/token", provider.issuer())),
            userinfo_url: Some(format!("{}/me", provider.issuer())),
            scopes: Some(vec!["openid".into(), "profile".into()]),
            issuer: Some("https://plain.example".into()),
            subject_pointer: Some("/sub".into()),
            name_pointer: Some("/name".into()),
            email_pointer: Some("/email".into()),
        },
    );
    let app = TestApp::with_config(db, upstream, config).await;
    Some((provider, app))
}

async fn sign_in_with_an_openid_provider(db: TestDb) {
    let Some((provider, app)) = app_with_provider(db).await else {
        return;
    };

    let providers: Value = app
        .client
        .get(app.url("/api/auth/providers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(providers["providers"][1]["startUrl"], "/api/auth/oidc/test/start");

    // A new person with an address the provider vouches for: a new account, verified, signed in.
    let alice = browser();
    let token = csrf(sign_in(&app, &alice, "alice").await).await;
    let me: Value = alice
        .get(app.url("/api/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["email"], "alice@example.com");
    assert_eq!(me["user"]["emailVerified"], true);
    assert_eq!(me["user"]["name"], "Alice");
    let identities: Value = alice
        .get(app.url("/api/account/identities"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(identities["password"], false);
    assert_eq!(identities["identities"][0]["subject"], "alice");
    assert_eq!(identities["identities"][0]["issuer"], provider.issuer());
    // Its only way to sign in cannot be removed.
    let id = identities["identities"][0]["identityId"].as_str().unwrap();
    let response = alice
        .delete(app.url(&format!("/api/account/identities/{id}")))
        .header("x-csrf-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Signing in again finds the same account.
    let again = browser();
    csrf(sign_in(&app, &again, "alice").await).await;
    let me_again: Value = again
        .get(app.url("/api/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me_again["user"]["userId"], me["user"]["userId"]);

    // Bob has a password account with the same address: never linked silently.
    let response = app
        .client
        .post(app.url("/api/auth/sign-up"))
        .json(&json!({"email": "bob@example.com", "password": "a sturdy passphrase for tests", "name": "Bob"}))
        .send()
        .await
        .unwrap();
    let bob_csrf = response.json::<Value>().await.unwrap()["csrfToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_cookie_jar = browser();
    let response = sign_in(&app, &bob_cookie_jar, "bob").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(
        response
            .headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("tollgate_session="))
    );
    let offer: Value = response.json().await.unwrap();
    assert_eq!(offer["outcome"], "email_in_use");
    assert_eq!(offer["email"], "bob@example.com");
    let pending = offer["pendingToken"].as_str().unwrap().to_owned();
    // Bob proves the account is his by signing in to it, then links.
    let bob = browser();
    let response = bob
        .post(app.url("/api/auth/sign-in"))
        .json(&json!({"email": "bob@example.com", "password": "a sturdy passphrase for tests"}))
        .send()
        .await
        .unwrap();
    let bob_token = csrf(response).await;
    let linked = bob
        .post(app.url("/api/account/identities/link"))
        .header("x-csrf-token", &bob_token)
        .json(&json!({"pendingToken": pending}))
        .send()
        .await
        .unwrap();
    assert_eq!(linked.status(), StatusCode::OK);
    let _ = bob_csrf;
    // From now on the provider signs Bob in to that account.
    let later = browser();
    csrf(sign_in(&app, &later, "bob").await).await;
    let me: Value = later
        .get(app.url("/api/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["email"], "bob@example.com");
    // Bob has a password too, so the identity may go.
    let identities: Value = bob
        .get(app.url("/api/account/identities"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = identities["identities"][0]["identityId"].as_str().unwrap();
    let response = bob
        .delete(app.url(&format!("/api/account/identities/{id}")))
        .header("x-csrf-token", &bob_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // Carol's provider gives no address: she gives one (and verifies it by mail).
    let carol = browser();
    let response = sign_in(&app, &carol, "carol").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let needed: Value = response.json().await.unwrap();
    assert_eq!(needed["outcome"], "email_needed");
    let response = carol
        .post(app.url("/api/auth/oidc/complete"))
        .json(&json!({"pendingToken": needed["pendingToken"], "email": "carol@example.com"}))
        .send()
        .await
        .unwrap();
    csrf(response).await;
    let me: Value = carol
        .get(app.url("/api/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me["user"]["email"].clone(), me["user"]["emailVerified"].clone()),
        (json!("carol@example.com"), json!(false))
    );
    let mail = app.store().list_mail(50).await.unwrap();
    assert!(
        mail.iter()
            .any(|m| m.mail.to[0].as_ref() == "carol@example.com" && m.mail.subject.contains("Verify"))
    );

    // Bob adds another sign-in from his signed-in account; it then signs in to his account.
    let response = bob
        .post(app.url("/api/account/identities/test/start"))
        .header("x-csrf-token", &bob_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let url = response.json::<Value>().await.unwrap()["authorizationUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let query = through_provider(&bob, url, "dave").await;
    let response = bob
        .get(app.url(&format!("/api/auth/oidc/test/callback?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let linked: Value = response.json().await.unwrap();
    assert_eq!(
        (linked["outcome"].as_str(), linked["identity"]["subject"].as_str()),
        (Some("linked"), Some("dave"))
    );
    let dave = browser();
    csrf(sign_in(&app, &dave, "dave").await).await;
    let me: Value = dave.get(app.url("/api/me")).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["user"]["email"], "bob@example.com", "linked, not a new account");
    // Linking needs a signed-in session (and its CSRF token).
    let response = app
        .client
        .post(app.url("/api/account/identities/test/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // An identity linked to one account cannot be linked to another.
    let mallory = browser();
    let response = mallory
        .post(app.url("/api/auth/sign-up"))
        .json(&json!({"email": "mallory@example.com", "password": "a sturdy passphrase for tests", "name": "M"}))
        .send()
        .await
        .unwrap();
    let mallory_token = csrf(response).await;
    let response = mallory
        .post(app.url("/api/account/identities/test/start"))
        .header("x-csrf-token", &mallory_token)
        .send()
        .await
        .unwrap();
    let url = response.json::<Value>().await.unwrap()["authorizationUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let query = through_provider(&mallory, url, "carol").await;
    let response = mallory
        .get(app.url(&format!("/api/auth/oidc/test/callback?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    // Linking and removing are in Bob's audit log.
    let me: Value = bob.get(app.url("/api/me")).send().await.unwrap().json().await.unwrap();
    let team = me["currentTeamId"].as_str().unwrap();
    let log: Value = bob
        .get(app.url(&format!("/api/teams/{team}/audit/events?eventFilter.query=Identity")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut actions: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    actions.sort_unstable();
    assert_eq!(actions, ["LinkIdentity", "LinkIdentity", "UnlinkIdentity"], "{log}");

    // Bob now signs in with the provider, so the password may go; then the provider is his last
    // way in and stays. Mallory has only a password: it stays.
    let response = post(
        &app,
        &mallory,
        "/api/account/password/remove",
        &mallory_token,
        json!({"password": "a sturdy passphrase for tests"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.unwrap().contains("last way to sign in"));
    let response = post(
        &app,
        &bob,
        "/api/account/password/remove",
        &bob_token,
        json!({"password": "not the password"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = post(
        &app,
        &bob,
        "/api/account/password/remove",
        &bob_token,
        json!({"password": "a sturdy passphrase for tests"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let identities: Value = bob
        .get(app.url("/api/account/identities"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(identities["password"], false);
    let dave_id = identities["identities"][0]["identityId"].as_str().unwrap();
    let response = bob
        .delete(app.url(&format!("/api/account/identities/{dave_id}")))
        .header("x-csrf-token", &bob_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = app
        .client
        .post(app.url("/api/auth/sign-in"))
        .json(&json!({"email": "bob@example.com", "password": "a sturdy passphrase for tests"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let mail = app.store().list_mail(100).await.unwrap();
    assert!(
        mail.iter()
            .any(|m| m.mail.to[0].as_ref() == "bob@example.com" && m.mail.subject.contains("password was removed"))
    );

    // An ID token whose nonce is not the one its flow sent is refused: the stored nonce is
    // changed behind Tollgate's back, as if the token had been lifted from another flow.
    let replayed = browser();
    let start = replayed.get(app.url("/api/auth/oidc/test/start")).send().await.unwrap();
    let query = through_provider(&replayed, location(&start), "alice").await;
    let tamper = "UPDATE oidc_flows SET nonce = 'another-flows-nonce' WHERE used_at IS NULL";
    execute(&app.config.database_url, tamper, tamper).await.unwrap();
    let response = replayed
        .get(app.url(&format!("/api/auth/oidc/test/callback?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = response.text().await.unwrap();
    assert!(body.contains("nonce"), "{body}");

    // Likewise a code redeemed with another PKCE verifier: the provider refuses the exchange.
    let lifted = browser();
    let start = lifted.get(app.url("/api/auth/oidc/test/start")).send().await.unwrap();
    let query = through_provider(&lifted, location(&start), "alice").await;
    let tamper = "UPDATE oidc_flows SET pkce_verifier = 'another-flows-verifier-that-is-long-enough-for-pkce' \
                  WHERE used_at IS NULL";
    execute(&app.config.database_url, tamper, tamper).await.unwrap();
    let response = lifted
        .get(app.url(&format!("/api/auth/oidc/test/callback?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = response.text().await.unwrap();
    assert!(body.contains("code exchange failed"), "{body}");

    // A forged state, or a callback in a browser that did not begin the flow, is refused.
    let eve = browser();
    let start = eve.get(app.url("/api/auth/oidc/test/start")).send().await.unwrap();
    let query = through_provider(&eve, location(&start), "alice").await;
    let forged = query.replace("state=", "state=x");
    let response = eve
        .get(app.url(&format!("/api/auth/oidc/test/callback?{forged}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let elsewhere = browser();
    let response = elsewhere
        .get(app.url(&format!("/api/auth/oidc/test/callback?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "the state is bound to the browser that began"
    );
    // The right browser can still finish it once: the state was not used up by the forgeries.
    let response = eve
        .get(app.url(&format!("/api/auth/oidc/test/callback?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = eve
        .get(app.url(&format!("/api/auth/oidc/test/callback?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "a state works once");
    // Linking needs a fresh sign-in: Bob's is now too old.
    app.clock.advance(chrono::Duration::minutes(11));
    let response = post(&app, &bob, "/api/account/identities/test/start", &bob_token, json!({})).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.text().await.unwrap().contains("Sign in again to link"));

    // The provider's refusal, and unknown providers.
    let response = app
        .client
        .get(app.url("/api/auth/oidc/test/callback?error=access_denied"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = app
        .client
        .get(app.url("/api/auth/oidc/nope/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    app.finish().await;
}

fn totp_code(secret: &tollgate_domain::mfa::TotpSecret, app: &TestApp) -> String {
    use tollgate_domain::Clock as _;
    let step = u64::try_from(app.clock.now().timestamp() / 30).unwrap();
    format!("{:06}", secret.code_at_step(step))
}

/// Signs in as `login` through the provider and then the second factor; the browser keeps the
/// session. Returns the CSRF token.
async fn sign_in_with_code(
    app: &TestApp,
    browser: &reqwest::Client,
    login: &str,
    secret: &tollgate_domain::mfa::TotpSecret,
) -> String {
    let response = sign_in(app, browser, login).await;
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "a provider sign-in still asks for the second factor"
    );
    let challenge: Value = response.json().await.unwrap();
    assert_eq!(challenge["mfaRequired"], true);
    let response = browser
        .post(app.url("/api/auth/sign-in/second-factor"))
        .json(&json!({"mfaToken": challenge["mfaToken"], "code": totp_code(secret, app)}))
        .send()
        .await
        .unwrap();
    csrf(response).await
}

async fn post(app: &TestApp, browser: &reqwest::Client, path: &str, token: &str, body: Value) -> reqwest::Response {
    browser
        .post(app.url(path))
        .header("x-csrf-token", token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn accounts_without_a_password_reauthenticate_by_signing_in(db: TestDb) {
    let Some((_provider, app)) = app_with_provider(db).await else {
        return;
    };

    // Just signed in with the provider, Erin turns on two-factor authentication: the fresh
    // sign-in stands in for the password she does not have.
    let erin = browser();
    let token = csrf(sign_in(&app, &erin, "erin").await).await;
    let response = post(&app, &erin, "/api/account/mfa/totp", &token, json!({})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let enrollment: Value = response.json().await.unwrap();
    let secret = tollgate_domain::mfa::TotpSecret::from_base32(enrollment["secret"].as_str().unwrap()).unwrap();
    let code = totp_code(&secret, &app);
    let response = post(
        &app,
        &erin,
        "/api/account/mfa/totp/confirm",
        &token,
        json!({"code": code}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    // From now on the provider's sign-in is only the first factor.
    app.clock.advance(chrono::Duration::seconds(30));
    let later = browser();
    let token = sign_in_with_code(&app, &later, "erin", &secret).await;

    // Ten minutes on, that sign-in is too old to stand in for a password.
    app.clock.advance(chrono::Duration::minutes(11));
    let code = totp_code(&secret, &app);
    let body = json!({"newEmail": "erin@example.org", "code": code});
    let response = post(&app, &later, "/api/account/email", &token, body).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.text().await.unwrap().contains("Sign in again to confirm"));
    let body = json!({"newPassword": "a sturdy passphrase for erin"});
    let response = post(&app, &later, "/api/account/password", &token, body).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Signed in afresh, she adds a password: the account now has two ways to sign in.
    let fresh = browser();
    let token = sign_in_with_code(&app, &fresh, "erin", &secret).await;
    let body = json!({"newPassword": "a sturdy passphrase for erin"});
    let response = post(&app, &fresh, "/api/account/password", &token, body).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let identities: Value = fresh
        .get(app.url("/api/account/identities"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(identities["password"], true);
    let response = app
        .client
        .post(app.url("/api/auth/sign-in"))
        .json(&json!({"email": "erin@example.com", "password": "a sturdy passphrase for erin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "the password, then the second factor"
    );
    // Once there is a password, it is what confirms changes: a fresh sign-in no longer does.
    let body = json!({"newPassword": "yet another sturdy passphrase"});
    let response = post(&app, &fresh, "/api/account/password", &token, body).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.unwrap().contains("Enter your password again"));
    app.finish().await;
}

async fn sign_in_with_a_plain_oauth2_provider(db: TestDb) {
    let Some((_provider, app)) = app_with_provider(db).await else {
        return;
    };
    let providers: Value = app
        .client
        .get(app.url("/api/auth/providers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["displayName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Plain", "Test ID"]);

    // No address from the provider (as with X): the new account asks for one, and verifies it.
    let frank = browser();
    let response = sign_in_with(&app, &frank, "plain", "frank").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let needed: Value = response.json().await.unwrap();
    assert_eq!(needed["outcome"], "email_needed");
    let response = frank
        .post(app.url("/api/auth/oidc/complete"))
        .json(&json!({"pendingToken": needed["pendingToken"], "email": "frank@example.com"}))
        .send()
        .await
        .unwrap();
    csrf(response).await;
    let me: Value = frank
        .get(app.url("/api/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["name"], "Frank", "the name comes from the user-info answer");
    assert_eq!(me["user"]["emailVerified"], false);
    let identities: Value = frank
        .get(app.url("/api/account/identities"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let identity = &identities["identities"][0];
    assert_eq!(
        (
            identity["provider"].as_str(),
            identity["issuer"].as_str(),
            identity["subject"].as_str()
        ),
        (Some("plain"), Some("https://plain.example"), Some("frank"))
    );
    // A pending sign-in is used once.
    let response = app
        .client
        .post(app.url("/api/auth/oidc/complete"))
        .json(&json!({"pendingToken": needed["pendingToken"], "email": "frank2@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Next time the provider's id finds the account.
    let again = browser();
    csrf(sign_in_with(&app, &again, "plain", "frank").await).await;
    let me_again: Value = again
        .get(app.url("/api/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me_again["user"]["userId"], me["user"]["userId"]);
    // The same person at the same server through OpenID Connect is another identity (another
    // issuer): identities are (issuer, subject), never a name or an address.
    let other = browser();
    let response = sign_in(&app, &other, "frank").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.json::<Value>().await.unwrap()["outcome"], "email_needed");

    // Gus is Frank on another X account: he gives Frank's address, is told it has an account,
    // signs in to it and links the new sign-in with the same pending token.
    let gus = browser();
    let response = sign_in_with(&app, &gus, "plain", "gus").await;
    let pending = response.json::<Value>().await.unwrap()["pendingToken"].clone();
    let response = gus
        .post(app.url("/api/auth/oidc/complete"))
        .json(&json!({"pendingToken": pending, "email": "frank@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    // (Another browser: this one is still signed in at the provider as Gus.)
    let frank = browser();
    let token = csrf(sign_in_with(&app, &frank, "plain", "frank").await).await;
    let response = post(
        &app,
        &frank,
        "/api/account/identities/link",
        &token,
        json!({"pendingToken": pending}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let identities: Value = frank
        .get(app.url("/api/account/identities"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut subjects: Vec<&str> = identities["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["subject"].as_str().unwrap())
        .collect();
    subjects.sort_unstable();
    assert_eq!(subjects, ["frank", "gus"]);

    // Each start stores a flow: one client address gets 300 an hour.
    let client = browser();
    let mut refused = None;
    for _ in 0..300 {
        let response = client.get(app.url("/api/auth/oidc/plain/start")).send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
    }
    assert!(refused.is_some(), "the 300th start in an hour is refused");
    let refused = refused.unwrap();
    assert_eq!(refused.headers()["retry-after"], "3600");
    app.clock.advance(chrono::Duration::minutes(61));
    let response = client.get(app.url("/api/auth/oidc/plain/start")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "an hour later it works again");
    app.finish().await;
}

/// No provider process needed: the configured issuer answers nothing.
async fn an_unreachable_provider_answers_503(db: TestDb) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let upstream = MockUpstream::start().await.unwrap();
    let mut config = test_config(&db, &upstream);
    config.oidc.insert(
        "down".into(),
        tollgate_server::config::OidcConfig {
            issuer: format!("http://127.0.0.1:{closed}"),
            client_id: "tollgate".into(),
            client_secret: "s".to_owned().into(),
            display_name: None,
        },
    );
    let app = TestApp::with_config(db, upstream, config).await;
    let response = browser()
        .get(app.url("/api/auth/oidc/down/start"))
        .send()
        .await
        .unwrap();
    assert_xai_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "The service is currently unavailable",
        "The sign-in provider is unavailable",
    )
    .await;
    // Nothing was stored for it, and a bad callback is still a clear 4xx.
    let response = browser()
        .get(app.url("/api/auth/oidc/down/callback?code=x&state=y"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = browser()
        .get(app.url("/api/auth/oidc/down/callback"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    app.finish().await;
}

async fn me(browser: &reqwest::Client, app: &TestApp) -> Value {
    me_get(browser, app, "/api/me").await
}

async fn me_get(browser: &reqwest::Client, app: &TestApp, path: &str) -> Value {
    browser.get(app.url(path)).send().await.unwrap().json().await.unwrap()
}

/// Signing up with a provider at an address a password account already has, the person may
/// choose a separate account instead of linking: two accounts, two Personal Teams, nothing
/// shared. The password still signs in to the first, the provider to the second; the second
/// cannot take a password too (email and password sign-in would be ambiguous); deleting it
/// leaves the first whole.
async fn a_separate_account_shares_only_the_address(db: TestDb) {
    let Some((_provider, app)) = app_with_provider(db).await else {
        return;
    };
    // The owner's team has verified the address's domain: accounts at it join when verified.
    let now = tollgate_domain::Clock::now(&*app.clock);
    let domain = tollgate_domain::TeamDomain {
        id: tollgate_domain::DomainId::new(),
        team_id: app.team.id,
        domain: "example.com".into(),
        token: "domain-verification=test".into(),
        created_at: now,
        verified_at: Some(now),
        checked_at: Some(now),
        last_error: None,
    };
    let audit = tollgate_domain::AuditEvent::success(
        now,
        Some(app.team.id),
        tollgate_domain::Actor::Operator,
        tollgate_domain::AuditAction::AddDomain,
        "test".into(),
        None,
        &tollgate_domain::RequestContext::default(),
    );
    app.store().insert_domain(&domain, &audit).await.unwrap();
    app.store().record_domain_check(&domain, None).await.unwrap();
    let owners = app.team.id.to_string();

    let password = "a sturdy passphrase for tests";
    let first = browser();
    let response = first
        .post(app.url("/api/auth/sign-up"))
        .json(&json!({"email": "alice@example.com", "password": password, "name": "Alice at work"}))
        .send()
        .await
        .unwrap();
    let first_token = csrf(response).await;
    let first_me = me(&first, &app).await;

    let second = browser();
    let response = sign_in(&app, &second, "alice").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let offer: Value = response.json().await.unwrap();
    assert_eq!(offer["outcome"], "email_in_use");
    let response = second
        .post(app.url("/api/auth/oidc/separate"))
        .json(&json!({"pendingToken": offer["pendingToken"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let token = csrf(response).await;
    let second_me = me(&second, &app).await;
    assert_ne!(second_me["user"]["userId"], first_me["user"]["userId"]);
    assert_eq!(second_me["user"]["email"], "alice@example.com");
    assert_eq!(second_me["user"]["emailVerified"], true);
    // Each has its own Personal Team. The second, verified by its provider, joined the team of
    // the address's verified domain; the first (not yet verified) did not.
    let teams = |me: &Value| -> Vec<String> {
        me["teams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["teamId"].as_str().unwrap().to_owned())
            .collect()
    };
    let personal = |me: &Value| -> String {
        me["teams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["personal"] == true && t["role"] == "admin")
            .unwrap()["teamId"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(teams(&first_me).len(), 1);
    assert_ne!(personal(&first_me), personal(&second_me));
    let mut joined = teams(&second_me);
    joined.sort();
    let mut expected = vec![personal(&second_me), owners.clone()];
    expected.sort();
    assert_eq!(joined, expected);
    // Verifying the first account's address now does not join it too: the person is in that
    // team with their other account already.
    let mail = app.store().list_mail(50).await.unwrap();
    let verification = mail
        .iter()
        .find(|m| m.mail.subject.contains("Verify your email"))
        .unwrap();
    let (_, rest) = verification.mail.body.split_once("#token=").unwrap();
    let link = rest.split_whitespace().next().unwrap();
    let response = app
        .client
        .post(app.url("/api/auth/verify-email"))
        .json(&json!({"token": link}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    let first_me = me(&first, &app).await;
    assert_eq!(first_me["user"]["emailVerified"], true);
    assert_eq!(teams(&first_me), [personal(&first_me)]);
    // A pending sign-in is used once.
    let again = second
        .post(app.url("/api/auth/oidc/separate"))
        .json(&json!({"pendingToken": offer["pendingToken"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);

    // The password reaches the first account; the provider, the second.
    let by_password = browser();
    let response = by_password
        .post(app.url("/api/auth/sign-in"))
        .json(&json!({"email": "alice@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    csrf(response).await;
    assert_eq!(
        me(&by_password, &app).await["user"]["userId"],
        first_me["user"]["userId"]
    );
    let by_provider = browser();
    csrf(sign_in(&app, &by_provider, "alice").await).await;
    assert_eq!(
        me(&by_provider, &app).await["user"]["userId"],
        second_me["user"]["userId"]
    );

    // Only one account per address signs in with a password.
    let response = post(
        &app,
        &second,
        "/api/account/password",
        &token,
        json!({"newPassword": "another sturdy passphrase"}),
    )
    .await;
    assert_xai_error(
        response,
        StatusCode::CONFLICT,
        "Some entity that we attempted to create already exists",
        "only one account per address may",
    )
    .await;

    // A password sign-up at the address is refused: the address is in use.
    let response = app
        .client
        .post(app.url("/api/auth/sign-up"))
        .json(&json!({"email": "alice@example.com", "password": "a third sturdy passphrase", "name": "A3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);

    // An invitation to the address is taken up by the account that accepts it, not the other;
    // the member list shows each account's sign-in methods beside the shared address.
    let response = post(&app, &first, "/api/teams", &first_token, json!({"name": "Acme"})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let acme = response.json::<Value>().await.unwrap()["teamId"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = post(
        &app,
        &first,
        &format!("/api/teams/{acme}/members"),
        &first_token,
        json!({"email": "alice@example.com", "role": "member"}),
    )
    .await;
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    let invitations = me_get(&second, &app, "/api/invitations").await;
    let invitation = invitations["invitations"][0]["invitationId"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = post(
        &app,
        &second,
        &format!("/api/invitations/{invitation}/accept"),
        &token,
        json!({}),
    )
    .await;
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    let members = me_get(&first, &app, &format!("/api/teams/{acme}/members")).await;
    let members = members["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| m["email"] == "alice@example.com"));
    assert_eq!(members[0]["userId"], first_me["user"]["userId"]);
    assert_eq!(members[0]["signInMethods"], json!(["password"]));
    assert_eq!(members[1]["userId"], second_me["user"]["userId"]);
    assert_eq!(members[1]["signInMethods"], json!(["test"]));
    assert_eq!(teams(&me(&second, &app).await).len(), 3);

    // A password reset goes to the account with the password, and its mail says which one.
    let response = app
        .client
        .post(app.url("/api/auth/password-reset"))
        .json(&json!({"email": "alice@example.com"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let mail = app.store().list_mail(50).await.unwrap();
    let reset = mail
        .iter()
        .find(|m| m.mail.subject.contains("Reset your password"))
        .unwrap();
    let first_id = first_me["user"]["userId"].as_str().unwrap();
    assert!(
        reset.mail.body.contains(&format!(
            "the account \"Alice at work\" (account id {first_id}), which signs in with a password"
        )),
        "{}",
        reset.mail.body
    );

    // Deleting the second account leaves the first whole.
    let response = post(&app, &second, "/api/account/delete", &token, json!({})).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", response.text().await.unwrap());
    let response = app
        .client
        .post(app.url("/api/auth/sign-in"))
        .json(&json!({"email": "alice@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let after: Value = me(&by_password, &app).await;
    assert_eq!(after["user"]["userId"], first_me["user"]["userId"]);
    assert_eq!(teams(&after), [personal(&first_me), acme]);
    app.finish().await;
}

/// A provider's callback in a browser (which asks for HTML) lands on the console's pages: a new
/// person in the console; an address that has an account on the choice the seeds describe,
/// whose "separate account" creates one and signs it in.
async fn provider_sign_ins_land_on_the_consoles_pages(db: TestDb) {
    let Some((_provider, app)) = app_with_provider(db).await else {
        return;
    };
    let html_callback = |browser: reqwest::Client, query: String| {
        let url = app.url(&format!("/api/auth/oidc/test/callback?{query}"));
        async move {
            browser
                .get(url)
                .header("accept", "text/html,application/xhtml+xml")
                .send()
                .await
                .unwrap()
        }
    };
    let start = |browser: reqwest::Client| {
        let url = app.url("/api/auth/oidc/test/start");
        async move { location(&browser.get(url).send().await.unwrap()) }
    };

    // A new person: signed in, on to the console.
    let dave = browser();
    let query = through_provider(&dave, start(dave.clone()).await, "dave").await;
    let response = html_callback(dave.clone(), query).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["location"], "/console");
    let console = dave.get(app.url("/console")).send().await.unwrap();
    assert_eq!(console.status(), StatusCode::OK);
    assert!(console.text().await.unwrap().contains("API Keys"));

    // Bob's address has a password account: the page offers the three choices.
    let response = app
        .client
        .post(app.url("/api/auth/sign-up"))
        .json(&json!({"email": "bob@example.com", "password": "a sturdy passphrase for tests", "name": "Bob"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let bob = browser();
    let query = through_provider(&bob, start(bob.clone()).await, "bob").await;
    let response = html_callback(bob.clone(), query).await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    for expected in [
        "bob@example.com already has an account",
        "You can create multiple accounts of different sign-in methods with the same email.",
        "We will not be able to merge the content",
        "Sign in and link",
        "Create a separate account",
        "Or use another address",
    ] {
        assert!(page.contains(expected), "{expected:?} not in {page}");
    }
    let (_, rest) = page.split_once("name=\"pending\" value=\"").unwrap();
    let pending = rest.split('"').next().unwrap().to_owned();
    let response = bob
        .post(app.url("/sign-up/separate"))
        .form(&[("pending", pending.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let me: Value = bob.get(app.url("/api/me")).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["user"]["email"], "bob@example.com");
    // The separate account signs in with the provider, not the password.
    let identities: Value = bob
        .get(app.url("/api/account/identities"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(identities["password"], false);
    assert_eq!(identities["identities"][0]["subject"], "bob");
    app.finish().await;
}
