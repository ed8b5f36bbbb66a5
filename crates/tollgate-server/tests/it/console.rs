//! The console's JSON API as a browser uses it: sign-up and sign-in with a session cookie and a
//! CSRF token, sessions and their timeouts, email verification and password reset by emailed
//! links, and the team pages (keys, management keys, audit log) per role.

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_store::testsuite::TestDb;

use crate::util::{TestApp, assert_xai_error, execute, on_both_backends};

on_both_backends!(
    sign_up_sign_in_and_sessions,
    sessions_time_out,
    repeated_failures_are_throttled,
    email_verification_and_password_reset,
    team_pages_follow_roles,
    client_addresses_come_from_trusted_proxies_only,
    two_factor_authentication,
    changing_the_password_ends_other_sessions,
    email_change_needs_both_addresses,
    sign_ins_from_new_places_are_announced,
    mail_and_sign_ups_are_rate_limited,
    passkeys_as_a_second_factor,
    passkeys_need_a_host_name,
    renaming_the_account,
);

const UNAUTHENTICATED: &str = "The request does not have valid authentication credentials";
const FORBIDDEN: &str = "The caller does not have permission to execute the specified operation";
const INVALID: &str = "Client specified an invalid argument";
const PASSWORD: &str = "a sturdy passphrase for tests";

/// A browser: its session cookie and CSRF token.
#[derive(Clone, Debug)]
struct Browser {
    cookie: String,
    csrf: String,
}

impl TestApp {
    async fn post_json(&self, path: &str, body: Value, browser: Option<&Browser>) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).json(&body);
        if let Some(browser) = browser {
            request = request
                .header("cookie", &browser.cookie)
                .header("x-csrf-token", &browser.csrf);
        }
        request.send().await.unwrap()
    }

    async fn console(
        &self,
        method: reqwest::Method,
        path: &str,
        browser: &Browser,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, self.url(path))
            .header("cookie", &browser.cookie)
            .header("x-csrf-token", &browser.csrf);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn console_post(&self, path: &str, browser: &Browser, body: Value) -> reqwest::Response {
        self.console(reqwest::Method::POST, path, browser, Some(body)).await
    }

    async fn console_get(&self, path: &str, browser: &Browser) -> Value {
        let response = self.console(reqwest::Method::GET, path, browser, None).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    async fn sign_up(&self, email: &str) -> Browser {
        let response = self
            .post_json(
                "/api/auth/sign-up",
                json!({"email": email, "password": PASSWORD, "name": "Grace"}),
                None,
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        browser(response).await
    }

    async fn sign_in(&self, email: &str, password: &str) -> reqwest::Response {
        self.post_json("/api/auth/sign-in", json!({"email": email, "password": password}), None)
            .await
    }
}

async fn browser(response: reqwest::Response) -> Browser {
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    Browser {
        cookie,
        csrf: body["csrfToken"].as_str().unwrap().to_owned(),
    }
}

async fn sign_up_sign_in_and_sessions(db: TestDb) {
    let app = TestApp::new(db).await;
    for (body, message) in [
        (
            json!({"email": "grace@example.com", "password": "short", "name": "G"}),
            "at least 15 characters",
        ),
        (
            json!({"email": "grace@example.com", "password": "polniypizdec0211", "name": "G"}),
            "commonly used passwords",
        ),
        (
            json!({"email": "grace@example.com", "password": "grace@example.com", "name": "G"}),
            "must not be your email",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD, "name": "G"}),
            "not a valid email",
        ),
    ] {
        let response = app.post_json("/api/auth/sign-up", body, None).await;
        assert_xai_error(response, StatusCode::BAD_REQUEST, INVALID, message).await;
    }

    let response = app
        .post_json(
            "/api/auth/sign-up",
            json!({"email": "Grace@Example.com", "password": PASSWORD, "name": "Grace"}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("tollgate_session="), "{set_cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain http console: no Secure");
    let first = browser(response).await;

    let me = app.console_get("/api/me", &first).await;
    assert_eq!(me["user"]["email"], "grace@example.com");
    assert_eq!(me["user"]["emailVerified"], false);
    assert_eq!(me["teams"][0]["role"], "admin");
    assert_eq!(me["teams"][0]["personal"], true);
    assert_eq!(me["currentTeamId"], me["teams"][0]["teamId"]);
    let team = me["currentTeamId"].as_str().unwrap().to_owned();

    let response = app
        .post_json(
            "/api/auth/sign-up",
            json!({"email": "grace@example.com", "password": PASSWORD, "name": "G"}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);

    // Unknown email and wrong password: one answer.
    for (email, password) in [
        ("grace@example.com", "wrong password, long enough"),
        ("nobody@example.com", PASSWORD),
    ] {
        let response = app.sign_in(email, password).await;
        assert_xai_error(
            response,
            StatusCode::UNAUTHORIZED,
            UNAUTHENTICATED,
            "Incorrect email or password",
        )
        .await;
    }
    let second = browser(app.sign_in("GRACE@example.com", PASSWORD).await).await;
    assert_ne!(second.cookie, first.cookie, "a new token at every sign-in");

    let sessions = app.console_get("/api/sessions", &second).await;
    let sessions = sessions["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    assert_eq!(sessions[0]["ipAddress"], "127.0.0.1");

    // A change without the CSRF token is refused, and changes nothing.
    let response = app
        .client
        .post(app.url("/api/sessions/end-others"))
        .header("cookie", &second.cookie)
        .send()
        .await
        .unwrap();
    assert_xai_error(response, StatusCode::FORBIDDEN, FORBIDDEN, "X-CSRF-Token").await;
    let wrong = Browser {
        csrf: first.csrf.clone(),
        ..second.clone()
    };
    let response = app
        .console(reqwest::Method::POST, "/api/sessions/end-others", &wrong, None)
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "another session's CSRF token");
    assert_eq!(
        app.console_get("/api/sessions", &second).await["sessions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let ended = app
        .console(reqwest::Method::POST, "/api/sessions/end-others", &second, None)
        .await;
    assert_eq!(ended.json::<Value>().await.unwrap(), json!({"ended": 1}));
    let response = app.console(reqwest::Method::GET, "/api/me", &first, None).await;
    assert_xai_error(response, StatusCode::UNAUTHORIZED, UNAUTHENTICATED, "not signed in").await;

    let response = app
        .console(reqwest::Method::POST, "/api/auth/sign-out", &second, None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let response = app.console(reqwest::Method::GET, "/api/me", &second, None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // No cookie at all.
    let response = app.client.get(app.url("/api/me")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // The team's log has the sign-ins, the failed one, and the session changes.
    let third = browser(app.sign_in("grace@example.com", PASSWORD).await).await;
    let log = app
        .console_get(
            &format!("/api/teams/{team}/audit/events?eventFilter.query=Sign"),
            &third,
        )
        .await;
    let outcomes: Vec<(String, String)> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = outcomes.iter().map(|(a, o)| (a.as_str(), o.as_str())).collect();
    assert_eq!(
        pairs,
        [
            ("SignIn", "success"),
            ("SignOut", "success"),
            ("SignIn", "success"),
            ("SignIn", "failure"),
            ("SignIn", "success")
        ]
    );
    app.finish().await;
}

async fn sessions_time_out(db: TestDb) {
    let app = TestApp::new(db).await;
    let idle = app.sign_up("idle@example.com").await;
    app.clock.advance(Duration::minutes(31));
    let response = app.console(reqwest::Method::GET, "/api/me", &idle, None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "idle for 31 minutes");

    // Kept busy, a session still ends 12 hours after sign-in.
    let busy = browser(app.sign_in("idle@example.com", PASSWORD).await).await;
    for _ in 0..35 {
        app.clock.advance(Duration::minutes(20));
        app.console_get("/api/me", &busy).await;
    }
    app.clock.advance(Duration::minutes(20));
    let response = app.console(reqwest::Method::GET, "/api/me", &busy, None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "12 hours after sign-in");
    app.finish().await;
}

async fn repeated_failures_are_throttled(db: TestDb) {
    let app = TestApp::new(db).await;
    app.sign_up("target@example.com").await;
    for _ in 0..10 {
        assert_eq!(
            app.sign_in("target@example.com", "not the password at all")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Even the right password waits now; other accounts do not.
    let response = app.sign_in("target@example.com", PASSWORD).await;
    assert_eq!(response.headers()["retry-after"], "900");
    assert_xai_error(
        response,
        StatusCode::TOO_MANY_REQUESTS,
        "Some resource has been exhausted",
        "Too many failed",
    )
    .await;
    app.sign_up("bystander@example.com").await;
    assert_eq!(
        app.sign_in("bystander@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    // The window passes.
    app.clock.advance(Duration::minutes(31));
    assert_eq!(
        app.sign_in("target@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
    app.finish().await;
}

/// The token of the newest mail to `to` whose subject contains `subject`.
async fn link_token(app: &TestApp, to: &str, subject: &str) -> String {
    let mail = app
        .store()
        .list_mail(50)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.mail.to.iter().any(|t| t.as_ref() == to) && m.mail.subject.contains(subject))
        .unwrap_or_else(|| panic!("no mail '{subject}' to {to}"));
    let (_, rest) = mail.mail.body.split_once("#token=").unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

async fn email_verification_and_password_reset(db: TestDb) {
    let app = TestApp::new(db).await;
    let signed_up = app.sign_up("ada@example.com").await;

    // Verification: the link from the mail, once.
    let token = link_token(&app, "ada@example.com", "Verify your email").await;
    let response = app
        .post_json("/api/auth/verify-email", json!({"token": token}), None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["emailVerified"], true);
    let response = app
        .post_json("/api/auth/verify-email", json!({"token": token}), None)
        .await;
    assert_xai_error(
        response,
        StatusCode::BAD_REQUEST,
        INVALID,
        "invalid, already used or expired",
    )
    .await;
    assert_eq!(
        app.console_get("/api/me", &signed_up).await["user"]["emailVerified"],
        true
    );

    // Reset: the same answer for an unknown address, and no mail.
    let mails_before = app.store().list_mail(50).await.unwrap().len();
    for email in ["nobody@example.com", "ada@example.com"] {
        let response = app
            .post_json("/api/auth/password-reset", json!({"email": email}), None)
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    assert_eq!(app.store().list_mail(50).await.unwrap().len(), mails_before + 1);
    let token = link_token(&app, "ada@example.com", "Reset your password").await;
    let confirm = |token: String, password: &'static str| {
        app.post_json(
            "/api/auth/password-reset/confirm",
            json!({"token": token, "password": password}),
            None,
        )
    };
    // A refused password does not use the link up.
    let response = confirm(token.clone(), "password").await;
    assert_xai_error(response, StatusCode::BAD_REQUEST, INVALID, "at least 15 characters").await;
    assert_eq!(
        confirm(token.clone(), "a brand new passphrase").await.status(),
        StatusCode::NO_CONTENT
    );
    let response = confirm(token, "another new passphrase").await;
    assert_xai_error(
        response,
        StatusCode::BAD_REQUEST,
        INVALID,
        "invalid, already used or expired",
    )
    .await;

    // Every session ended; the old password is gone; the account was told.
    let response = app.console(reqwest::Method::GET, "/api/me", &signed_up, None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.sign_in("ada@example.com", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.sign_in("ada@example.com", "a brand new passphrase").await.status(),
        StatusCode::OK
    );
    let notice = app.store().list_mail(50).await.unwrap();
    assert!(
        notice
            .iter()
            .any(|m| m.mail.subject.contains("Your password was changed"))
    );

    // A link expires after 60 minutes.
    app.post_json("/api/auth/password-reset", json!({"email": "ada@example.com"}), None)
        .await;
    let late = link_token(&app, "ada@example.com", "Reset your password").await;
    app.clock.advance(Duration::minutes(61));
    let response = confirm(late, "yet another passphrase").await;
    assert_xai_error(
        response,
        StatusCode::BAD_REQUEST,
        INVALID,
        "invalid, already used or expired",
    )
    .await;
    for garbage in ["", "short", &"x".repeat(43)] {
        let response = app
            .post_json("/api/auth/verify-email", json!({"token": garbage}), None)
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    app.finish().await;
}

async fn team_pages_follow_roles(db: TestDb) {
    let app = TestApp::new(db).await;
    let admin = app.sign_up("admin@example.com").await;
    let team = app.console_get("/api/me", &admin).await["currentTeamId"]
        .as_str()
        .unwrap()
        .to_owned();
    let member = app.sign_up("member@example.com").await;
    let member_id = app.console_get("/api/me", &member).await["user"]["userId"]
        .as_str()
        .unwrap()
        .to_owned();
    let stranger = app.sign_up("stranger@example.com").await;
    // Membership comes with the teams work; here it is written directly.
    let add = format!(
        "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ('{team}', '{member_id}', 'member', '2026-11-01T12:00:00Z')"
    );
    let add_pg = add.clone();
    let add_sqlite = format!(
        "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES (X'{}', X'{}', 'member', '2026-11-01T12:00:00+00:00')",
        team.replace('-', ""),
        member_id.replace('-', "")
    );
    execute(&app.config.database_url, &add_sqlite, &add_pg).await.unwrap();

    let keys = format!("/api/teams/{team}/api-keys");
    let body = |name: &str| Some(json!({"name": name, "acls": ["api-key:model:*"]}));
    let admins: Value = app
        .console(reqwest::Method::POST, &keys, &admin, body("admin-key"))
        .await
        .json()
        .await
        .unwrap();
    let members: Value = app
        .console(reqwest::Method::POST, &keys, &member, body("member-key"))
        .await
        .json()
        .await
        .unwrap();
    assert!(members["apiKey"].as_str().unwrap().starts_with("tgk_"));
    assert_eq!(members["userId"], member_id);
    let listed = app.console_get(&keys, &member).await;
    assert_eq!(
        listed["apiKeys"].as_array().unwrap().len(),
        2,
        "members see the team's keys"
    );

    let key_path = |key: &Value, rest: &str| format!("{keys}/{}{rest}", key["apiKeyId"].as_str().unwrap());
    let rename = json!({"apiKey": {"name": "renamed"}, "fieldMask": "name"});
    // A Member manages their own key, not the Admin's.
    let response = app
        .console(
            reqwest::Method::PUT,
            &key_path(&members, ""),
            &member,
            Some(rename.clone()),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .console(
            reqwest::Method::PUT,
            &key_path(&admins, ""),
            &member,
            Some(rename.clone()),
        )
        .await;
    assert_xai_error(
        response,
        StatusCode::FORBIDDEN,
        FORBIDDEN,
        "Only a team Admin or the key's creator",
    )
    .await;
    let response = app
        .console(reqwest::Method::DELETE, &key_path(&admins, ""), &member, None)
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = app
        .console(reqwest::Method::POST, &key_path(&admins, "/rotate"), &member, None)
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // The Admin manages every key.
    let response = app
        .console(reqwest::Method::POST, &key_path(&members, "/rotate"), &admin, None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .console(reqwest::Method::DELETE, &key_path(&members, ""), &admin, None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // The audit log and management keys are the Admins'.
    let audit = format!("/api/teams/{team}/audit/events");
    let log = app
        .console_get(&format!("{audit}?eventFilter.query=ApiKey"), &admin)
        .await;
    let by_member = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "CreateApiKey" && e["user"]["email"] == "member@example.com");
    assert!(by_member.is_some(), "{log}");
    let response = app.console(reqwest::Method::GET, &audit, &member, None).await;
    assert_xai_error(
        response,
        StatusCode::FORBIDDEN,
        FORBIDDEN,
        "Only team Admins may read the audit log",
    )
    .await;
    let response = app
        .console(reqwest::Method::GET, &format!("{audit}/export"), &member, None)
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let export = app
        .console(
            reqwest::Method::GET,
            &format!("{audit}/export?format=jsonl"),
            &admin,
            None,
        )
        .await;
    assert_eq!(export.status(), StatusCode::OK);
    assert!(export.text().await.unwrap().lines().count() > 5);

    let management = format!("/api/teams/{team}/management-keys");
    let response = app
        .console(reqwest::Method::POST, &management, &member, Some(json!({"name": "ci"})))
        .await;
    assert_xai_error(
        response,
        StatusCode::FORBIDDEN,
        FORBIDDEN,
        "Only team Admins may create management keys",
    )
    .await;
    let created: Value = app
        .console(reqwest::Method::POST, &management, &admin, Some(json!({"name": "ci"})))
        .await
        .json()
        .await
        .unwrap();
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tgm_"));
    // It works on the Management API, then is revoked from the console.
    let validation = app.get_json("/auth/management-keys/validation", &secret).await;
    assert_eq!(validation["scopeId"], team);
    let listed = app.console_get(&management, &admin).await;
    assert_eq!(listed["managementKeys"].as_array().unwrap().len(), 1);
    assert!(listed["managementKeys"][0].get("key").is_none());
    let id = created["managementKeyId"].as_str().unwrap();
    let response = app
        .console(reqwest::Method::DELETE, &format!("{management}/{id}"), &admin, None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = app
        .client
        .get(app.url("/auth/management-keys/validation"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Someone else's team, or no team at all, answer alike.
    for path in [
        keys.clone(),
        format!("/api/teams/{}/api-keys", tollgate_domain::TeamId::new()),
        "/api/teams/nope/api-keys".to_owned(),
    ] {
        let response = app.console(reqwest::Method::GET, &path, &stranger, None).await;
        assert_xai_error(
            response,
            StatusCode::FORBIDDEN,
            FORBIDDEN,
            "You are not a member of this team",
        )
        .await;
    }
    app.finish().await;
}

async fn client_addresses_come_from_trusted_proxies_only(db: TestDb) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.trusted_proxies = vec!["127.0.0.1".into()];
    let app = TestApp::with_config(db, upstream, config).await;
    app.sign_up("proxied@example.com").await;
    let response = app
        .client
        .post(app.url("/api/auth/sign-in"))
        .header("x-forwarded-for", "203.0.113.50, 198.51.100.7")
        .json(&json!({"email": "proxied@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let signed_in = browser(response).await;
    let sessions = app.console_get("/api/sessions", &signed_in).await;
    // The proxy (loopback here) is trusted; the client's own claim to its left is not.
    assert_eq!(sessions["sessions"][0]["ipAddress"], "198.51.100.7");
    app.finish().await;

    // Without trusted proxies the header is ignored.
    let db = TestDb::sqlite().await;
    let app = TestApp::new(db).await;
    app.sign_up("direct@example.com").await;
    let response = app
        .client
        .post(app.url("/api/auth/sign-in"))
        .header("x-forwarded-for", "198.51.100.7")
        .json(&json!({"email": "direct@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let signed_in = browser(response).await;
    let sessions = app.console_get("/api/sessions", &signed_in).await;
    assert_eq!(sessions["sessions"][0]["ipAddress"], "127.0.0.1");
    app.finish().await;
}

fn totp_code(secret: &tollgate_domain::mfa::TotpSecret, app: &TestApp) -> String {
    use tollgate_domain::Clock as _;
    let step = u64::try_from(app.clock.now().timestamp() / 30).unwrap();
    format!("{:06}", secret.code_at_step(step))
}

async fn two_factor_authentication(db: TestDb) {
    let app = TestApp::new(db).await;
    let main = app.sign_up("mfa@example.com").await;
    let other = browser(app.sign_in("mfa@example.com", PASSWORD).await).await;

    // Enrolment asks for the password again, and takes effect with a first code.
    let response = app
        .console(
            reqwest::Method::POST,
            "/api/account/mfa/totp",
            &main,
            Some(json!({"password": "not my password at all"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let enrollment: Value = app
        .console(
            reqwest::Method::POST,
            "/api/account/mfa/totp",
            &main,
            Some(json!({"password": PASSWORD})),
        )
        .await
        .json()
        .await
        .unwrap();
    let uri = enrollment["otpauthUri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/tollgate:mfa@example.com?secret="),
        "{uri}"
    );
    let secret = tollgate_domain::mfa::TotpSecret::from_base32(enrollment["secret"].as_str().unwrap()).unwrap();
    let response = app
        .console(
            reqwest::Method::POST,
            "/api/account/mfa/totp/confirm",
            &main,
            Some(json!({"code": "000000"})),
        )
        .await;
    assert_xai_error(
        response,
        StatusCode::UNAUTHORIZED,
        UNAUTHENTICATED,
        "Incorrect or already used code",
    )
    .await;
    let first_code = totp_code(&secret, &app);
    let confirmed: Value = app
        .console(
            reqwest::Method::POST,
            "/api/account/mfa/totp/confirm",
            &main,
            Some(json!({"code": first_code})),
        )
        .await
        .json()
        .await
        .unwrap();
    let recovery: Vec<String> = confirmed["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    assert_eq!(recovery[0].len(), 27);
    // The other session ended; this one goes on.
    assert_eq!(
        app.console(reqwest::Method::GET, "/api/me", &other, None)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.console_get("/api/me", &main).await["user"]["mfaEnabled"], true);
    assert_eq!(
        app.console_get("/api/account/mfa", &main).await,
        json!({"totpEnabled": true, "passkeys": 0, "recoveryCodesLeft": 10})
    );

    // Sign-in now takes two steps.
    let second_step = |token: String, factor: Value| {
        let mut body = json!({"mfaToken": token});
        for (k, v) in factor.as_object().unwrap() {
            body[k] = v.clone();
        }
        app.post_json("/api/auth/sign-in/second-factor", body, None)
    };
    let challenge = |response: reqwest::Response| async move {
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert!(
            response.headers().get("set-cookie").is_none(),
            "no session before the second factor"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["mfaRequired"], true);
        assert_eq!(body["methods"], json!(["totp", "recovery_code"]));
        body["mfaToken"].as_str().unwrap().to_owned()
    };
    let token = challenge(app.sign_in("mfa@example.com", PASSWORD).await).await;
    // The code used to confirm is spent.
    let response = second_step(token.clone(), json!({"code": first_code})).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    app.clock.advance(Duration::seconds(30));
    let fresh = totp_code(&secret, &app);
    let response = second_step(token.clone(), json!({"code": fresh})).await;
    assert_eq!(response.status(), StatusCode::OK);
    // The challenge and the code are both single use.
    assert_eq!(
        second_step(token, json!({"code": fresh})).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let token = challenge(app.sign_in("mfa@example.com", PASSWORD).await).await;
    assert_eq!(
        second_step(token.clone(), json!({"code": fresh})).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let response = second_step(token.clone(), json!({})).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // A recovery code works once, typed loosely; its use is mailed.
    let typed = recovery[3].to_lowercase().replace('-', " ");
    assert_eq!(
        second_step(token, json!({"recoveryCode": typed})).await.status(),
        StatusCode::OK
    );
    let token = challenge(app.sign_in("mfa@example.com", PASSWORD).await).await;
    assert_eq!(
        second_step(token.clone(), json!({"recoveryCode": recovery[3]}))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.console_get("/api/account/mfa", &main).await["recoveryCodesLeft"], 9);
    let mail = app.store().list_mail(50).await.unwrap();
    assert!(
        mail.iter()
            .any(|m| m.mail.subject.contains("A recovery code was used") && m.mail.body.contains("9 left"))
    );
    // A challenge lasts 5 minutes.
    app.clock.advance(Duration::minutes(6));
    let fresh = totp_code(&secret, &app);
    assert_eq!(
        second_step(token, json!({"code": fresh})).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // A reset link does not get around the second factor.
    app.post_json("/api/auth/password-reset", json!({"email": "mfa@example.com"}), None)
        .await;
    let reset = link_token(&app, "mfa@example.com", "Reset your password").await;
    let response = app
        .post_json(
            "/api/auth/password-reset/confirm",
            json!({"token": reset, "password": "a brand new passphrase"}),
            None,
        )
        .await;
    assert_xai_error(response, StatusCode::BAD_REQUEST, INVALID, "two-factor authentication").await;

    // New recovery codes replace the old ones.
    app.clock.advance(Duration::seconds(30));
    let token = challenge(app.sign_in("mfa@example.com", PASSWORD).await).await;
    let main = browser(second_step(token, json!({"code": totp_code(&secret, &app)})).await).await;
    app.clock.advance(Duration::seconds(30));
    let regenerated: Value = app
        .console(
            reqwest::Method::POST,
            "/api/account/mfa/recovery-codes",
            &main,
            Some(json!({"code": totp_code(&secret, &app)})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(regenerated["recoveryCodes"].as_array().unwrap().len(), 10);
    let token = challenge(app.sign_in("mfa@example.com", PASSWORD).await).await;
    assert_eq!(
        second_step(token, json!({"recoveryCode": recovery[5]})).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Turning it off needs a code (or a recovery code); nothing else will do.
    let disable = |factor: Value| app.console(reqwest::Method::POST, "/api/account/mfa/disable", &main, Some(factor));
    assert_eq!(disable(json!({})).await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        disable(json!({"code": "123456"})).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let new_recovery = regenerated["recoveryCodes"][0].as_str().unwrap();
    assert_eq!(
        disable(json!({"recoveryCode": new_recovery})).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.console_get("/api/account/mfa", &main).await,
        json!({"totpEnabled": false, "passkeys": 0, "recoveryCodesLeft": 0})
    );
    assert_eq!(
        app.sign_in("mfa@example.com", PASSWORD).await.status(),
        StatusCode::OK,
        "one step again"
    );

    let team = app.console_get("/api/me", &main).await["currentTeamId"]
        .as_str()
        .unwrap()
        .to_owned();
    let log = app
        .console_get(&format!("/api/teams/{team}/audit/events?eventFilter.query=Mfa"), &main)
        .await;
    // (The address "mfa@example.com" matches too; only the MFA actions matter here.)
    let actions: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .filter(|a| a.ends_with("Mfa"))
        .collect();
    assert_eq!(actions, ["DisableMfa", "EnableMfa"]);
    app.finish().await;
}

async fn changing_the_password_ends_other_sessions(db: TestDb) {
    let app = TestApp::new(db).await;
    let current = app.sign_up("change@example.com").await;
    let other = browser(app.sign_in("change@example.com", PASSWORD).await).await;
    let change = |current_password: &str, new_password: &str| {
        app.console(
            reqwest::Method::POST,
            "/api/account/password",
            &current,
            Some(json!({"currentPassword": current_password, "newPassword": new_password})),
        )
    };
    assert_eq!(
        change("wrong current password", "a new passphrase here").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let response = change(PASSWORD, "short").await;
    assert_xai_error(response, StatusCode::BAD_REQUEST, INVALID, "at least 15 characters").await;
    assert_eq!(
        change(PASSWORD, "a new passphrase here").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.console(reqwest::Method::GET, "/api/me", &other, None)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.console(reqwest::Method::GET, "/api/me", &current, None)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.sign_in("change@example.com", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.sign_in("change@example.com", "a new passphrase here")
            .await
            .status(),
        StatusCode::OK
    );
    let mail = app.store().list_mail(50).await.unwrap();
    assert!(
        mail.iter()
            .any(|m| m.mail.subject.contains("Your password was changed"))
    );
    app.finish().await;
}

async fn email_change_needs_both_addresses(db: TestDb) {
    let app = TestApp::new(db).await;
    let first = app.sign_up("old@example.com").await;
    app.sign_up("taken@example.com").await;
    let second = browser(app.sign_in("old@example.com", PASSWORD).await).await;
    let ask = |password: &str, new_email: &str| {
        app.console(
            reqwest::Method::POST,
            "/api/account/email",
            &first,
            Some(json!({"password": password, "newEmail": new_email})),
        )
    };
    assert_eq!(
        ask("wrong password, long enough", "new@example.com").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(ask(PASSWORD, "OLD@example.com").await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(ask(PASSWORD, "taken@example.com").await.status(), StatusCode::CONFLICT);
    assert_eq!(ask(PASSWORD, "New@Example.com").await.status(), StatusCode::ACCEPTED);

    // Nothing changes until the new address confirms; the old one is told, with a way out.
    assert_eq!(
        app.console_get("/api/me", &first).await["user"]["email"],
        "old@example.com"
    );
    let confirm = link_token(&app, "new@example.com", "Confirm your new email address").await;
    let mail = app.store().list_mail(50).await.unwrap();
    let notice = mail
        .iter()
        .find(|m| m.mail.subject.contains("about to change"))
        .unwrap();
    assert_eq!(notice.mail.to[0].as_ref(), "old@example.com");
    assert!(notice.mail.body.contains("new@example.com") && notice.mail.body.contains("/report-email-change#token="));

    let confirm_change = |token: String| app.post_json("/api/auth/email-change/confirm", json!({"token": token}), None);
    assert_eq!(confirm_change(confirm.clone()).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        confirm_change(confirm).await.status(),
        StatusCode::BAD_REQUEST,
        "single use"
    );
    // Every session ended; the new address signs in, verified; the old one is told.
    for browser in [&first, &second] {
        assert_eq!(
            app.console(reqwest::Method::GET, "/api/me", browser, None)
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        app.sign_in("old@example.com", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let now = browser(app.sign_in("new@example.com", PASSWORD).await).await;
    let me = app.console_get("/api/me", &now).await;
    assert_eq!(
        (me["user"]["email"].clone(), me["user"]["emailVerified"].clone()),
        (json!("new@example.com"), json!(true))
    );
    let mail = app.store().list_mail(50).await.unwrap();
    assert!(
        mail.iter()
            .any(|m| m.mail.subject.contains("was changed") && m.mail.to[0].as_ref() == "old@example.com")
    );

    // A change the owner did not ask for is stopped from the (current) address.
    let response = app
        .console(
            reqwest::Method::POST,
            "/api/account/email",
            &now,
            Some(json!({"password": PASSWORD, "newEmail": "thief@example.com"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let stolen = link_token(&app, "thief@example.com", "Confirm your new email address").await;
    let report_mail = app
        .store()
        .list_mail(50)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.mail.subject.contains("about to change") && m.mail.to[0].as_ref() == "new@example.com")
        .unwrap();
    let report = report_mail
        .mail
        .body
        .split_once("#token=")
        .unwrap()
        .1
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let response = app
        .post_json("/api/auth/email-change/report", json!({"token": report}), None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        confirm_change(stolen).await.status(),
        StatusCode::BAD_REQUEST,
        "the change was stopped"
    );
    assert_eq!(
        app.console(reqwest::Method::GET, "/api/me", &now, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.sign_in("new@example.com", PASSWORD).await.status(), StatusCode::OK);
    app.finish().await;
}

/// A tiny MaxMind-format database, written by the test with the PyPI package `mmdb-writer`;
/// `None` (skip) when it is not installed and not under CI.
fn location_database(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let path = dir.join("test-city.mmdb");
    let script = format!(
        "from mmdb_writer import MMDBWriter\n\
         from netaddr import IPSet\n\
         w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type='DBIP-City-Lite', languages=['en'], description='tollgate test')\n\
         w.insert_network(IPSet(['198.51.100.0/24']), {{'city': {{'names': {{'en': 'Lisbon'}}}}, 'country': {{'iso_code': 'PT', 'names': {{'en': 'Portugal'}}}}}})\n\
         w.insert_network(IPSet(['203.0.113.0/24']), {{'city': {{'names': {{'en': 'Osaka'}}}}, 'country': {{'iso_code': 'JP', 'names': {{'en': 'Japan'}}}}}})\n\
         w.to_db_file('{}')\n",
        path.display()
    );
    let status = std::process::Command::new("python3").args(["-c", &script]).status();
    if status.is_ok_and(|s| s.success()) {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "mmdb-writer is missing: pip install -r requirements-test.txt"
    );
    eprintln!("skipped: mmdb-writer is not installed (pip install -r requirements-test.txt)");
    None
}

async fn sign_ins_from_new_places_are_announced(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = location_database(dir.path()) else {
        return;
    };
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.geoip_database = Some(database);
    config.trusted_proxies = vec!["127.0.0.1".into()];
    let app = TestApp::with_config(db, upstream, config).await;
    let from = |ip: &'static str, browser_name: &'static str, path: &'static str, body: Value| {
        app.client
            .post(app.url(path))
            .header("x-forwarded-for", ip)
            .header("user-agent", browser_name)
            .json(&body)
            .send()
    };
    let credentials = json!({"email": "traveller@example.com", "password": PASSWORD});
    let alerts = || async {
        app.store()
            .list_mail(50)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.mail.subject.contains("New sign-in"))
            .collect::<Vec<_>>()
    };

    let response = from(
        "198.51.100.7",
        "Firefox/140",
        "/api/auth/sign-up",
        json!({"email": "traveller@example.com", "password": PASSWORD, "name": "T"}),
    )
    .await
    .unwrap();
    let signed_up = browser(response).await;
    from("198.51.100.8", "Firefox/140", "/api/auth/sign-in", credentials.clone())
        .await
        .unwrap();
    assert!(
        alerts().await.is_empty(),
        "the first session, and the same browser and place again"
    );
    let sessions = app.console_get("/api/sessions", &signed_up).await;
    assert_eq!(sessions["sessions"][0]["location"], "Lisbon, Portugal");

    // Another place.
    from("203.0.113.9", "Firefox/140", "/api/auth/sign-in", credentials.clone())
        .await
        .unwrap();
    let sent = alerts().await;
    assert_eq!(sent.len(), 1);
    let body = &sent[0].mail.body;
    for expected in [
        "IP address: 203.0.113.9",
        "Location: Osaka, Japan (approximate: derived from the IP address)",
        "Browser: Firefox/140",
        "/reset-password",
        "/sessions",
        "IP Geolocation by DB-IP",
    ] {
        assert!(body.contains(expected), "{expected:?} in {body}");
    }
    assert_eq!(sent[0].mail.to[0].as_ref(), "traveller@example.com");
    // Another browser; and a place the database does not know.
    from("198.51.100.7", "Safari/19", "/api/auth/sign-in", credentials.clone())
        .await
        .unwrap();
    from("192.0.2.1", "Safari/19", "/api/auth/sign-in", credentials.clone())
        .await
        .unwrap();
    let sent = alerts().await;
    assert_eq!(sent.len(), 3);
    assert!(sent[0].mail.body.contains("Location: unknown"), "{}", sent[0].mail.body);
    app.finish().await;
}

async fn mail_and_sign_ups_are_rate_limited(db: TestDb) {
    let app = TestApp::new(db).await;
    app.sign_up("bombed@example.com").await;
    for _ in 0..8 {
        let response = app
            .post_json("/api/auth/password-reset", json!({"email": "bombed@example.com"}), None)
            .await;
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "the same answer, over the limit too"
        );
    }
    let resets = app
        .store()
        .list_mail(50)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.mail.subject.contains("Reset your password"))
        .count();
    assert_eq!(resets, 5, "at most 5 reset links an hour");
    app.clock.advance(Duration::minutes(61));
    app.post_json("/api/auth/password-reset", json!({"email": "bombed@example.com"}), None)
        .await;
    let resets = app
        .store()
        .list_mail(50)
        .await
        .unwrap()
        .iter()
        .filter(|m| m.mail.subject.contains("Reset"))
        .count();
    assert_eq!(resets, 6);

    // Sign-ups from one address: 20 an hour.
    for i in 0..20 {
        app.sign_up(&format!("user{i}@example.com")).await;
    }
    let response = app
        .post_json(
            "/api/auth/sign-up",
            json!({"email": "one-too-many@example.com", "password": PASSWORD, "name": "X"}),
            None,
        )
        .await;
    assert_eq!(response.headers()["retry-after"], "3600");
    assert_xai_error(
        response,
        StatusCode::TOO_MANY_REQUESTS,
        "Some resource has been exhausted",
        "Too many",
    )
    .await;
    app.finish().await;
}

/// A console served as `http://localhost:8080` (WebAuthn needs a host name), and the origin a
/// browser there would report.
async fn passkey_app(db: TestDb) -> (TestApp, webauthn_authenticator_rs::prelude::Url) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.console_url = "http://localhost:8080".into();
    let app = TestApp::with_config(db, upstream, config).await;
    (app, "http://localhost:8080".parse().unwrap())
}

/// A software authenticator's answer to a challenge from Tollgate, as a browser at `origin`.
fn assert_with(
    authenticator: &mut webauthn_authenticator_rs::WebauthnAuthenticator<
        webauthn_authenticator_rs::softpasskey::SoftPasskey,
    >,
    origin: &webauthn_authenticator_rs::prelude::Url,
    challenge: &Value,
) -> Value {
    let options = serde_json::from_value(challenge["options"].clone()).unwrap();
    let credential = authenticator.do_authentication(origin.clone(), options).unwrap();
    json!({"ceremony": challenge["ceremony"], "credential": credential})
}

async fn passkeys_as_a_second_factor(db: TestDb) {
    use webauthn_authenticator_rs::WebauthnAuthenticator;
    use webauthn_authenticator_rs::softpasskey::SoftPasskey;
    let (app, origin) = passkey_app(db).await;
    let main = app.sign_up("key@example.com").await;
    let other = browser(app.sign_in("key@example.com", PASSWORD).await).await;

    // Adding one asks for the password again.
    let response = app
        .console_post(
            "/api/account/passkeys/register",
            &main,
            json!({"password": "not my password at all"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = app
        .console_post("/api/account/passkeys/register", &main, json!({"password": PASSWORD}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let challenge: Value = response.json().await.unwrap();
    let mut authenticator = WebauthnAuthenticator::new(SoftPasskey::new(true));
    let options = serde_json::from_value(challenge["options"].clone()).unwrap();
    let credential = authenticator.do_registration(origin.clone(), options).unwrap();
    let body = json!({"ceremony": challenge["ceremony"], "name": "Soft key", "credential": credential});
    let response = app.console_post("/api/account/passkeys", &main, body.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let added: Value = response.json().await.unwrap();
    assert_eq!(added["passkey"]["name"], "Soft key");
    assert_eq!(
        added["recoveryCodes"].as_array().unwrap().len(),
        10,
        "the first second factor"
    );
    // A challenge is answered once; the other session ended.
    let response = app.console_post("/api/account/passkeys", &main, body).await;
    assert_xai_error(response, StatusCode::BAD_REQUEST, INVALID, "already answered").await;
    let response = app.console(reqwest::Method::GET, "/api/me", &other, None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let mfa = app.console_get("/api/account/mfa", &main).await;
    assert_eq!(
        mfa,
        json!({"totpEnabled": false, "passkeys": 1, "recoveryCodesLeft": 10})
    );
    let listed = app.console_get("/api/account/passkeys", &main).await;
    let passkey_id = listed["passkeys"][0]["passkeyId"].as_str().unwrap().to_owned();

    // TOTP beside it, then off again: the recovery codes stay while a passkey does.
    let enrollment: Value = app
        .console_post("/api/account/mfa/totp", &main, json!({"password": PASSWORD}))
        .await
        .json()
        .await
        .unwrap();
    let secret = tollgate_domain::mfa::TotpSecret::from_base32(enrollment["secret"].as_str().unwrap()).unwrap();
    let response = app
        .console_post(
            "/api/account/mfa/totp/confirm",
            &main,
            json!({"code": totp_code(&secret, &app)}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    app.clock.advance(Duration::seconds(30));
    let response = app
        .console_post(
            "/api/account/mfa/disable",
            &main,
            json!({"code": totp_code(&secret, &app)}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let mfa = app.console_get("/api/account/mfa", &main).await;
    assert_eq!(
        mfa,
        json!({"totpEnabled": false, "passkeys": 1, "recoveryCodesLeft": 10})
    );

    // New recovery codes, proven with the passkey.
    let challenge = app
        .console(reqwest::Method::POST, "/api/account/passkeys/challenge", &main, None)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let answer = assert_with(&mut authenticator, &origin, &challenge);
    let response = app
        .console_post("/api/account/mfa/recovery-codes", &main, json!({"passkey": answer}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap()["recoveryCodes"]
            .as_array()
            .unwrap()
            .len(),
        10
    );

    // Signing in now takes the passkey as the second step.
    let first: Value = app.sign_in("key@example.com", PASSWORD).await.json().await.unwrap();
    assert_eq!(first["methods"], json!(["passkey", "recovery_code"]));
    let mfa_token = first["mfaToken"].clone();
    let response = app
        .post_json(
            "/api/auth/sign-in/passkey-challenge",
            json!({"mfaToken": mfa_token}),
            None,
        )
        .await;
    let challenge: Value = response.json().await.unwrap();
    let answer = assert_with(&mut authenticator, &origin, &challenge);
    let response = app
        .post_json(
            "/api/auth/sign-in/second-factor",
            json!({"mfaToken": mfa_token, "passkey": answer}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let listed = app.console_get("/api/account/passkeys", &main).await;
    assert!(listed["passkeys"][0]["lastUseTime"].is_string());

    // The same answer again (a replay), or a forged one, is refused. (An answer for another site
    // cannot be made: the authenticator signs only for the site's own host.)
    let again: Value = app.sign_in("key@example.com", PASSWORD).await.json().await.unwrap();
    let response = app
        .post_json(
            "/api/auth/sign-in/second-factor",
            json!({"mfaToken": again["mfaToken"], "passkey": answer}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge: Value = app
        .post_json(
            "/api/auth/sign-in/passkey-challenge",
            json!({"mfaToken": again["mfaToken"]}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let mut forged = assert_with(&mut authenticator, &origin, &challenge);
    let signature = forged["credential"]["response"]["signature"].as_str().unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    forged["credential"]["response"]["signature"] = json!(format!("{flipped}{}", &signature[1..]));
    let response = app
        .post_json(
            "/api/auth/sign-in/second-factor",
            json!({"mfaToken": again["mfaToken"], "passkey": forged}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "a forged signature");
    // A password reset does not get around it either.
    let response = app
        .console_post(
            "/api/account/email",
            &main,
            json!({"password": PASSWORD, "newEmail": "key2@example.com"}),
        )
        .await;
    assert_xai_error(response, StatusCode::BAD_REQUEST, INVALID, "two-factor authentication").await;

    // A password reset asks for the passkey too (the link proves only the mailbox).
    app.post_json("/api/auth/password-reset", json!({"email": "key@example.com"}), None)
        .await;
    let token = link_token(&app, "key@example.com", "Reset your password").await;
    let new_password = "another sturdy passphrase for tests";
    let response = app
        .post_json(
            "/api/auth/password-reset/confirm",
            json!({"token": token, "password": new_password}),
            None,
        )
        .await;
    assert_xai_error(response, StatusCode::BAD_REQUEST, INVALID, "two-factor authentication").await;
    let challenge: Value = app
        .post_json(
            "/api/auth/password-reset/passkey-challenge",
            json!({"token": token}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let answer = assert_with(&mut authenticator, &origin, &challenge);
    let response = app
        .post_json(
            "/api/auth/password-reset/confirm",
            json!({"token": token, "password": new_password, "passkey": answer}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // (A reset ends every session, this one's too.)
    let first: Value = app.sign_in("key@example.com", new_password).await.json().await.unwrap();
    let challenge: Value = app
        .post_json(
            "/api/auth/sign-in/passkey-challenge",
            json!({"mfaToken": first["mfaToken"]}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let answer = assert_with(&mut authenticator, &origin, &challenge);
    let main = browser(
        app.post_json(
            "/api/auth/sign-in/second-factor",
            json!({"mfaToken": first["mfaToken"], "passkey": answer}),
            None,
        )
        .await,
    )
    .await;

    // Removing it takes the password and a second factor; then two-factor authentication is off.
    let challenge = app
        .console(reqwest::Method::POST, "/api/account/passkeys/challenge", &main, None)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let answer = assert_with(&mut authenticator, &origin, &challenge);
    let path = format!("/api/account/passkeys/{passkey_id}/remove");
    let response = app
        .console(
            reqwest::Method::POST,
            &path,
            &main,
            Some(json!({"password": new_password})),
        )
        .await;
    assert_xai_error(response, StatusCode::BAD_REQUEST, INVALID, "two-factor authentication").await;
    let response = app
        .console(
            reqwest::Method::POST,
            &path,
            &main,
            Some(json!({"password": new_password, "passkey": answer})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let mfa = app.console_get("/api/account/mfa", &main).await;
    assert_eq!(
        mfa,
        json!({"totpEnabled": false, "passkeys": 0, "recoveryCodesLeft": 0})
    );
    let response = app.sign_in("key@example.com", new_password).await;
    assert_eq!(response.status(), StatusCode::OK, "one factor again");

    // The changes and the passkey sign-in are in the account's audit log; the owner was told of
    // each change.
    let me = app.console_get("/api/me", &main).await;
    let team = me["currentTeamId"].as_str().unwrap();
    let log = app
        .console_get(
            &format!("/api/teams/{team}/audit/events?eventFilter.query=Passkey"),
            &main,
        )
        .await;
    let mut actions: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    actions.sort_unstable();
    // (TOTP turned off while the passkey stayed, and the two sign-ins made with a passkey, say so
    // in their descriptions.)
    assert_eq!(
        actions,
        ["AddPasskey", "DisableMfa", "RemovePasskey", "SignIn", "SignIn"]
    );
    let mail = app.store().list_mail(50).await.unwrap();
    assert!(mail.iter().any(|m| m.mail.subject.contains("A passkey was added")));
    assert!(mail.iter().any(|m| m.mail.subject.contains("A passkey was removed")));
    app.finish().await;
}

/// WebAuthn names the site by host: a console at an IP address cannot have passkeys.
async fn passkeys_need_a_host_name(db: TestDb) {
    let app = TestApp::new(db).await;
    let main = app.sign_up("ip@example.com").await;
    let response = app
        .console(
            reqwest::Method::POST,
            "/api/account/passkeys/register",
            &main,
            Some(json!({"password": PASSWORD})),
        )
        .await;
    assert_xai_error(
        response,
        StatusCode::BAD_REQUEST,
        INVALID,
        "not available on this server",
    )
    .await;
    app.finish().await;
}

async fn renaming_the_account(db: TestDb) {
    let app = TestApp::new(db).await;
    let main = app.sign_up("name@example.com").await;
    let response = app
        .console(
            reqwest::Method::PATCH,
            "/api/account",
            &main,
            Some(json!({"name": "  Grace Hopper "})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["name"], "Grace Hopper");
    let me = app.console_get("/api/me", &main).await;
    assert_eq!(me["user"]["name"], "Grace Hopper");
    for bad in [json!({"name": "   "}), json!({"name": "x".repeat(101)})] {
        let response = app
            .console(reqwest::Method::PATCH, "/api/account", &main, Some(bad))
            .await;
        assert_xai_error(response, StatusCode::BAD_REQUEST, INVALID, "display name").await;
    }
    let response = app
        .console(
            reqwest::Method::PATCH,
            "/api/account",
            &main,
            Some(json!({"name": "G", "email": "x@example.com"})),
        )
        .await;
    assert!(response.status().is_client_error());
    // Without the CSRF token, nothing changes.
    let response = app
        .client
        .patch(app.url("/api/account"))
        .header("cookie", &main.cookie)
        .json(&json!({"name": "Mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.console_get("/api/me", &main).await["user"]["name"], "Grace Hopper");
    let team = me["currentTeamId"].as_str().unwrap();
    let log = app
        .console_get(
            &format!("/api/teams/{team}/audit/events?eventFilter.query=UpdateProfile"),
            &main,
        )
        .await;
    assert_eq!(log["events"].as_array().unwrap().len(), 1);
    app.finish().await;
}
