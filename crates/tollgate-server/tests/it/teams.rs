//! Teams: create, rename, members by email and invitations, roles with at least one Admin,
//! deletion; and the authorization matrix: every team-scoped route, as every kind of caller.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_store::testsuite::TestDb;

use crate::util::{TestApp, on_both_backends};

on_both_backends!(
    teams_members_and_invitations,
    management_keys_end_with_their_creators_admin_role,
    mail_people_can_cause_is_limited,
    members_keys_stay_within_the_key_policy,
    invitations_wait_for_a_verified_account,
    authorization_matrix,
    verified_domains_auto_join,
    account_deletion_restore_and_purge,
);

pub(crate) const PASSWORD: &str = "a sturdy passphrase for tests";

/// A signed-in browser: its session cookie and CSRF token.
#[derive(Clone, Debug)]
pub(crate) struct Browser {
    cookie: String,
    csrf: String,
}

impl Browser {
    /// The `Cookie` header's value of this session.
    pub(crate) fn cookie(&self) -> &str {
        &self.cookie
    }

    /// The session a sign-up, sign-in or restore answered with.
    pub(crate) async fn from_response(response: reqwest::Response) -> Self {
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let body: Value = response.json().await.unwrap();
        Self {
            cookie,
            csrf: body["csrfToken"].as_str().unwrap().to_owned(),
        }
    }
}

impl TestApp {
    pub(crate) async fn signed_up(&self, email: &str) -> Browser {
        let response = self
            .client
            .post(self.url("/api/auth/sign-up"))
            .json(&json!({"email": email, "password": PASSWORD, "name": email.split('@').next().unwrap()}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        Browser::from_response(response).await
    }

    pub(crate) async fn call(
        &self,
        method: Method,
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

    pub(crate) async fn call_json(
        &self,
        method: Method,
        path: &str,
        browser: &Browser,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let response = self.call(method, path, browser, body).await;
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn verify_email_of(&self, email: &str) {
        let mail = self
            .store()
            .list_mail(100)
            .await
            .unwrap()
            .into_iter()
            .find(|m| m.mail.to[0].as_ref() == email && m.mail.subject.contains("Verify your email"))
            .unwrap();
        let token = mail
            .mail
            .body
            .split_once("#token=")
            .unwrap()
            .1
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let response = self
            .client
            .post(self.url("/api/auth/verify-email"))
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    pub(crate) fn invitation_token(&self, mail: &[tollgate_domain::QueuedMail], email: &str) -> String {
        let mail = mail
            .iter()
            .find(|m| m.mail.to[0].as_ref() == email && m.mail.subject.contains("You are invited"))
            .unwrap();
        mail.mail
            .body
            .split_once("#token=")
            .unwrap()
            .1
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }
}

/// Invites `email` into `team_id` as `role`, then signs them up, verifies and accepts.
pub(crate) async fn joined(app: &TestApp, admin: &Browser, team_id: &str, email: &str, role: &str) -> Browser {
    let (status, _) = app
        .call_json(
            Method::POST,
            &format!("/api/teams/{team_id}/members"),
            admin,
            Some(json!({"email": email, "role": role})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let token = app.invitation_token(&app.store().list_mail(100).await.unwrap(), email);
    let browser = app.signed_up(email).await;
    app.verify_email_of(email).await;
    let (status, _) = app
        .call_json(
            Method::POST,
            "/api/invitations/accept",
            &browser,
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    browser
}

async fn user_id_of(app: &TestApp, browser: &Browser) -> String {
    let (_, me) = app.call_json(Method::GET, "/api/me", browser, None).await;
    me["user"]["userId"].as_str().unwrap().to_owned()
}

async fn teams_of(app: &TestApp, browser: &Browser) -> Vec<(String, String)> {
    let (_, me) = app.call_json(Method::GET, "/api/me", browser, None).await;
    me["teams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A management key carries its creator's Admin power, so it ends with it: demoting or removing
/// the creator revokes their keys in the same change, audited, and the other Admins are told.
/// Keys made by the operator (no creator) stay.
async fn management_keys_end_with_their_creators_admin_role(db: TestDb) {
    let app = TestApp::new(db).await;
    let ada = app.signed_up("ada@example.com").await;
    let (_, team) = app
        .call_json(Method::POST, "/api/teams", &ada, Some(json!({"name": "Ops"})))
        .await;
    let team_id = team["teamId"].as_str().unwrap().to_owned();
    let bob = joined(&app, &ada, &team_id, "bob@example.com", "admin").await;
    let bob_path = format!("/api/teams/{team_id}/members/{}", user_id_of(&app, &bob).await);
    let create_key = |name: &'static str| {
        let (app, bob, team_id) = (&app, &bob, &team_id);
        async move {
            let (status, key) = app
                .call_json(
                    Method::POST,
                    &format!("/api/teams/{team_id}/management-keys"),
                    bob,
                    Some(json!({"name": name})),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
            key["key"].as_str().unwrap().to_owned()
        }
    };
    let validates = |secret: String| {
        let app = &app;
        async move {
            app.client
                .get(app.url("/auth/management-keys/validation"))
                .bearer_auth(secret)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let operator_key = app
        .services()
        .keys
        .create_management_key(
            team_id.parse().unwrap(),
            "operator's",
            tollgate_domain::Actor::System,
            None,
            &tollgate_domain::RequestContext::default(),
        )
        .await
        .unwrap()
        .1
        .expose()
        .to_owned();

    // Demoted: Bob's key stops at once; the operator's stays.
    let first = create_key("deploy").await;
    assert_eq!(validates(first.clone()).await, StatusCode::OK);
    let response = app
        .call(Method::PATCH, &bob_path, &ada, Some(json!({"role": "member"})))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(validates(first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(validates(operator_key.clone()).await, StatusCode::OK);
    let (_, keys) = app
        .call_json(
            Method::GET,
            &format!("/api/teams/{team_id}/management-keys"),
            &ada,
            None,
        )
        .await;
    let deploy = keys["managementKeys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "deploy")
        .unwrap();
    assert!(deploy["revokeTime"].is_string());
    let (_, log) = app
        .call_json(Method::GET, &format!("/api/teams/{team_id}/audit/events"), &ada, None)
        .await;
    assert!(log.to_string().contains("Revoked management key 'deploy'"), "{log}");
    let notice = app
        .store()
        .list_mail(100)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.mail.subject.contains("management key 'deploy' was revoked"))
        .unwrap();
    assert_eq!(notice.mail.to[0].as_ref(), "ada@example.com");

    // Promoted again and removed: the new key goes too.
    let response = app
        .call(Method::PATCH, &bob_path, &ada, Some(json!({"role": "admin"})))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let second = create_key("ci").await;
    assert_eq!(validates(second.clone()).await, StatusCode::OK);
    // Promoting keeps keys: only losing the role ends them.
    let response = app
        .call(Method::PATCH, &bob_path, &ada, Some(json!({"role": "admin"})))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(validates(second.clone()).await, StatusCode::OK);
    assert_eq!(
        app.call(Method::DELETE, &bob_path, &ada, None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(validates(second).await, StatusCode::UNAUTHORIZED);
    assert_eq!(validates(operator_key).await, StatusCode::OK);

    // An Admin who deletes their account: their keys go with them, on the record, Ada told.
    let carol = joined(&app, &ada, &team_id, "carol@example.com", "admin").await;
    let (status, key) = app
        .call_json(
            Method::POST,
            &format!("/api/teams/{team_id}/management-keys"),
            &carol,
            Some(json!({"name": "carol's"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let carols = key["key"].as_str().unwrap().to_owned();
    assert_eq!(validates(carols.clone()).await, StatusCode::OK);
    let (status, _) = app
        .call_json(
            Method::POST,
            "/api/account/delete",
            &carol,
            Some(json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(validates(carols).await, StatusCode::UNAUTHORIZED);
    let (_, log) = app
        .call_json(Method::GET, &format!("/api/teams/{team_id}/audit/events"), &ada, None)
        .await;
    assert!(log.to_string().contains("Revoked management key 'carol's'"), "{log}");
    assert!(
        app.store().list_mail(100).await.unwrap().iter().any(|m| m
            .mail
            .subject
            .contains("management key 'carol's' was revoked")
            && m.mail.to[0].as_ref() == "ada@example.com")
    );
}

/// Mail a person can make Tollgate send to any address is limited per sender and per recipient
/// (5 an hour to one address, 100 an hour from one person); team names in it are quoted data.
async fn mail_people_can_cause_is_limited(db: TestDb) {
    let app = TestApp::new(db).await;
    let ada = app.signed_up("ada@example.com").await;
    let name = "Your account is locked. Reply with your password \"now\"";
    let (_, team) = app
        .call_json(Method::POST, "/api/teams", &ada, Some(json!({"name": name})))
        .await;
    let members = format!("/api/teams/{}/members", team["teamId"].as_str().unwrap());
    let invite = |email: String| {
        let (app, ada, members) = (&app, &ada, &members);
        async move {
            app.call(
                Method::POST,
                members,
                ada,
                Some(json!({"email": email, "role": "member"})),
            )
            .await
        }
    };
    for _ in 0..5 {
        assert_eq!(
            invite("victim@outside.test".into()).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let refused = invite("victim@outside.test".into()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "3600");
    let to_victim: Vec<_> = app
        .store()
        .list_mail(200)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.mail.to[0].as_ref() == "victim@outside.test")
        .collect();
    assert_eq!(to_victim.len(), 5);
    let invitation = &to_victim[0].mail;
    assert!(!invitation.subject.contains("locked"), "{}", invitation.subject);
    assert!(
        invitation
            .body
            .contains(r#"the team "Your account is locked. Reply with your password \"now\"" on"#),
        "{}",
        invitation.body
    );

    // Another person asking to move their account to that address is refused too.
    let bob = app.signed_up("bob@example.com").await;
    let change = |email: &'static str| {
        let (app, bob) = (&app, &bob);
        async move {
            app.call(
                Method::POST,
                "/api/account/email",
                bob,
                Some(json!({"password": PASSWORD, "newEmail": email})),
            )
            .await
            .status()
        }
    };
    assert_eq!(change("victim@outside.test").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(change("bob.new@example.com").await, StatusCode::ACCEPTED);

    // One sender: 100 an hour, whatever the addresses (5 were counted above).
    for i in 0..95 {
        assert_eq!(
            invite(format!("person{i}@outside.test")).await.status(),
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(
        invite("one.more@outside.test".into()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // An hour later, the address may be invited again (signed in anew: the session idled out).
    app.clock.advance(chrono::Duration::hours(2));
    let response = app
        .client
        .post(app.url("/api/auth/sign-in"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let ada = Browser::from_response(response).await;
    let response = app
        .call(
            Method::POST,
            &members,
            &ada,
            Some(json!({"email": "victim@outside.test", "role": "member"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

/// An Admin's key policy binds Members: their new keys and changes stay within it (they may
/// always tighten), and they cannot undo limits an Admin set; Admins are not bound.
async fn members_keys_stay_within_the_key_policy(db: TestDb) {
    let app = TestApp::new(db).await;
    let ada = app.signed_up("ada@example.com").await;
    let (_, team) = app
        .call_json(Method::POST, "/api/teams", &ada, Some(json!({"name": "Policy"})))
        .await;
    let team_id = team["teamId"].as_str().unwrap().to_owned();
    let bob = joined(&app, &ada, &team_id, "bob@example.com", "member").await;
    let keys = format!("/api/teams/{team_id}/api-keys");
    let policy_path = format!("/api/teams/{team_id}/key-policy");

    let (status, open) = app.call_json(Method::GET, &policy_path, &bob, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(open, json!({"acls": null, "qps": null, "qpm": null, "tpm": null}));
    let policy =
        json!({"acls": ["api-key:endpoint:chat", "api-key:model:grok-test"], "qps": 10, "qpm": null, "tpm": 100000});
    let (status, _) = app
        .call_json(Method::PUT, &policy_path, &bob, Some(policy.clone()))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "Members do not set the policy");
    let (status, set) = app
        .call_json(Method::PUT, &policy_path, &ada, Some(policy.clone()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(set, policy);

    // A Member's new key: within the policy, or refused with what is beyond it.
    let create = |who: &Browser, body: Value| {
        let (app, keys, who) = (&app, &keys, who.clone());
        async move { app.call_json(Method::POST, keys, &who, Some(body)).await }
    };
    let within =
        json!({"name": "ok", "acls": ["api-key:endpoint:chat", "api-key:model:grok-test"], "qps": 5, "tpm": 1000});
    let (status, key) = create(&bob, within).await;
    assert_eq!(status, StatusCode::OK, "{key}");
    for (beyond, says) in [
        (
            json!({"name": "wide", "acls": ["api-key:model:*"], "qps": 5, "tpm": 1}),
            "api-key:model:*",
        ),
        (
            json!({"name": "fast", "acls": [], "qps": 11, "tpm": 1}),
            "qps of at most 10",
        ),
        (
            json!({"name": "unlimited", "acls": [], "qps": 1}),
            "tpm of at most 100000",
        ),
    ] {
        let (status, refused) = create(&bob, beyond).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(refused["error"].as_str().unwrap().contains(says), "{refused}");
    }
    // Admins are not bound.
    let (status, admins) = create(&ada, json!({"name": "admin's", "acls": ["api-key:model:*"]})).await;
    assert_eq!(status, StatusCode::OK, "{admins}");

    // An Admin limits Bob's key further; Bob may tighten it, not undo it.
    let key_path = format!("{keys}/{}", key["apiKeyId"].as_str().unwrap());
    let update = |who: &Browser, api_key: Value, mask: &'static str| {
        let (app, key_path, who) = (&app, &key_path, who.clone());
        async move {
            app.call_json(
                Method::PUT,
                key_path,
                &who,
                Some(json!({"apiKey": api_key, "fieldMask": mask})),
            )
            .await
            .0
        }
    };
    assert_eq!(update(&ada, json!({"qps": 2}), "qps").await, StatusCode::OK);
    assert_eq!(update(&bob, json!({"qps": null}), "qps").await, StatusCode::FORBIDDEN);
    assert_eq!(update(&bob, json!({"qps": 50}), "qps").await, StatusCode::FORBIDDEN);
    assert_eq!(
        update(&bob, json!({"qps": 8}), "qps").await,
        StatusCode::OK,
        "within the policy"
    );
    assert_eq!(update(&bob, json!({"qps": 1}), "qps").await, StatusCode::OK);
    assert_eq!(update(&bob, json!({"name": "renamed"}), "name").await, StatusCode::OK);

    // A key beyond the policy (an Admin's, handed over) may be tightened by its Member.
    let (_, wide) = app
        .call_json(
            Method::GET,
            &format!("{keys}/{}", admins["apiKeyId"].as_str().unwrap()),
            &bob,
            None,
        )
        .await;
    assert_eq!(wide["aclStrings"], json!(["api-key:model:*"]));

    // The policy is on the record; lifting it frees Members again.
    let (_, log) = app
        .call_json(Method::GET, &format!("/api/teams/{team_id}/audit/events"), &ada, None)
        .await;
    assert!(log.to_string().contains("SetKeyPolicy"), "{log}");
    let (status, _) = app
        .call_json(
            Method::PUT,
            &policy_path,
            &ada,
            Some(json!({"acls": null, "qps": null, "qpm": null, "tpm": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(update(&bob, json!({"qps": null}), "qps").await, StatusCode::OK);
}

/// A signed-in account sees the invitations waiting for its address once it has verified it,
/// and accepts one without the emailed link; nobody else can accept it.
async fn invitations_wait_for_a_verified_account(db: TestDb) {
    let app = TestApp::new(db).await;
    let ada = app.signed_up("ada@example.com").await;
    let (_, team) = app
        .call_json(Method::POST, "/api/teams", &ada, Some(json!({"name": "Waiting Room"})))
        .await;
    let team_id = team["teamId"].as_str().unwrap().to_owned();
    let bob = app.signed_up("bob@example.com").await;
    let eve = app.signed_up("eve@example.com").await;
    app.verify_email_of("eve@example.com").await;
    let (status, _) = app
        .call_json(
            Method::POST,
            &format!("/api/teams/{team_id}/members"),
            &ada,
            Some(json!({"email": "bob@example.com", "role": "member"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, list) = app.call_json(Method::GET, "/api/invitations", &bob, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["invitations"], json!([]), "not until the address is verified");
    app.verify_email_of("bob@example.com").await;
    let (_, list) = app.call_json(Method::GET, "/api/invitations", &bob, None).await;
    let waiting = &list["invitations"][0];
    assert_eq!(waiting["teamName"], "Waiting Room");
    assert_eq!(waiting["role"], "member");
    let accept = format!("/api/invitations/{}/accept", waiting["invitationId"].as_str().unwrap());
    let (status, _) = app.call_json(Method::POST, &accept, &eve, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not Eve's invitation");
    let (status, joined) = app.call_json(Method::POST, &accept, &bob, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(joined["name"], "Waiting Room");
    assert!(
        teams_of(&app, &bob)
            .await
            .contains(&("Waiting Room".into(), "member".into()))
    );
    let (_, list) = app.call_json(Method::GET, "/api/invitations", &bob, None).await;
    assert_eq!(list["invitations"], json!([]));
    let (status, _) = app.call_json(Method::POST, &accept, &bob, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "used once");
}

async fn teams_members_and_invitations(db: TestDb) {
    let app = TestApp::new(db).await;
    let ada = app.signed_up("ada@example.com").await;
    let bob = app.signed_up("bob@example.com").await;
    let (status, team) = app
        .call_json(
            Method::POST,
            "/api/teams",
            &ada,
            Some(json!({"name": "Research", "description": "Models"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let team_id = team["teamId"].as_str().unwrap().to_owned();
    let base = format!("/api/teams/{team_id}");
    assert_eq!(
        teams_of(&app, &ada).await,
        [
            ("Personal Team".into(), "admin".into()),
            ("Research".into(), "admin".into())
        ]
    );

    let (status, renamed) = app
        .call_json(
            Method::PATCH,
            &base,
            &ada,
            Some(json!({"name": "Research Lab", "description": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (renamed["name"].clone(), renamed["description"].clone()),
        (json!("Research Lab"), Value::Null)
    );

    // Adding an address always invites, and the answer does not tell whether it has an
    // account: Bob (signed up, address not verified) gets exactly what a stranger gets.
    let members = format!("{base}/members");
    let invite = |email: &'static str, role: &'static str| {
        let (app, ada, members) = (&app, &ada, &members);
        async move {
            app.call_json(Method::POST, members, ada, Some(json!({"email": email, "role": role})))
                .await
        }
    };
    let (status, bob_invited) = invite("Bob@example.com", "admin").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, stranger_invited) = invite("stranger@example.com", "admin").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let shape = |v: &Value| {
        let mut keys: Vec<String> = v["invitation"].as_object().unwrap().keys().cloned().collect();
        keys.extend(v.as_object().unwrap().keys().cloned());
        keys
    };
    assert_eq!(shape(&bob_invited), shape(&stranger_invited));
    assert_eq!(bob_invited["invitation"]["email"], "bob@example.com");
    assert_eq!(teams_of(&app, &bob).await.len(), 1, "not a member before accepting");

    // Bob's own sign-ins are not copied into a team he has not joined.
    let signed_in = app
        .client
        .post(app.url("/api/auth/sign-in"))
        .json(&json!({"email": "bob@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::OK);
    let (_, log) = app
        .call_json(Method::GET, &format!("{base}/audit/events"), &ada, None)
        .await;
    assert!(
        !log.to_string().contains("bob@example.com"),
        "an invited account's events stay out of the team's log: {log}"
    );

    // Only an account that verified the address accepts; verifying alone joins nothing.
    let bob_token = app.invitation_token(&app.store().list_mail(100).await.unwrap(), "bob@example.com");
    let (status, refused) = app
        .call_json(
            Method::POST,
            "/api/invitations/accept",
            &bob,
            Some(json!({"token": bob_token})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(refused["error"].as_str().unwrap().contains("Verify your email address"));
    app.verify_email_of("bob@example.com").await;
    assert_eq!(teams_of(&app, &bob).await.len(), 1, "verifying does not accept");

    // A second invitation to one address replaces the first: one pending, the old link dead.
    let (status, _) = invite("bob@example.com", "member").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, pending) = app
        .call_json(Method::GET, &format!("{base}/invitations"), &ada, None)
        .await;
    let for_bob: Vec<&Value> = pending["invitations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["email"] == "bob@example.com")
        .collect();
    assert_eq!(for_bob.len(), 1);
    assert_eq!(for_bob[0]["role"], "member");
    let (status, _) = app
        .call_json(
            Method::POST,
            "/api/invitations/accept",
            &bob,
            Some(json!({"token": bob_token})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the replaced link no longer works");
    let mail = app.store().list_mail(100).await.unwrap();
    let newest_bob_token = mail
        .iter()
        .filter(|m| m.mail.to[0].as_ref() == "bob@example.com" && m.mail.subject.contains("You are invited"))
        .map(|m| {
            m.mail
                .body
                .split_once("#token=")
                .unwrap()
                .1
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned()
        })
        .find(|token| *token != bob_token)
        .unwrap();
    let (status, joined) = app
        .call_json(
            Method::POST,
            "/api/invitations/accept",
            &bob,
            Some(json!({"token": newest_bob_token})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(joined["name"], "Research Lab");
    assert!(
        teams_of(&app, &bob)
            .await
            .contains(&("Research Lab".into(), "member".into()))
    );
    let (_, list) = app.call_json(Method::GET, &members, &ada, None).await;
    let bob_id = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["email"] == "bob@example.com")
        .unwrap()["userId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = invite("bob@example.com", "admin").await;
    assert_eq!(status, StatusCode::CONFLICT, "already a member");
    let response = app
        .call(
            Method::DELETE,
            &format!(
                "{base}/invitations/{}",
                stranger_invited["invitation"]["invitationId"].as_str().unwrap()
            ),
            &ada,
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // Addresses with no account are invited by mail.
    for email in ["carol@example.com", "dave@example.com", "eve@example.com"] {
        let (status, invited) = invite(email, "member").await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(invited["invitation"]["email"], email);
    }
    let mail = app.store().list_mail(100).await.unwrap();
    let invite = mail
        .iter()
        .find(|m| m.mail.to[0].as_ref() == "carol@example.com")
        .unwrap();
    assert!(
        invite
            .mail
            .body
            .contains("ada@example.com invited you to the team \"Research Lab\""),
        "{}",
        invite.mail.body
    );
    let carol_token = app.invitation_token(&mail, "carol@example.com");
    let dave_token = app.invitation_token(&mail, "dave@example.com");
    let eve_token = app.invitation_token(&mail, "eve@example.com");
    let (_, pending) = app
        .call_json(Method::GET, &format!("{base}/invitations"), &ada, None)
        .await;
    assert_eq!(pending["invitations"].as_array().unwrap().len(), 3);

    // Carol signs up and verifies: not a member until she accepts.
    let carol = app.signed_up("carol@example.com").await;
    app.verify_email_of("carol@example.com").await;
    assert_eq!(teams_of(&app, &carol).await.len(), 1);
    let (status, _) = app
        .call_json(
            Method::POST,
            "/api/invitations/accept",
            &carol,
            Some(json!({"token": carol_token})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        teams_of(&app, &carol)
            .await
            .contains(&("Research Lab".into(), "member".into()))
    );

    // A withdrawn invitation no longer works.
    let dave_id = pending["invitations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["email"] == "dave@example.com")
        .unwrap()["invitationId"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .call(Method::DELETE, &format!("{base}/invitations/{dave_id}"), &ada, None)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let dave = app.signed_up("dave@example.com").await;
    let (status, _) = app
        .call_json(
            Method::POST,
            "/api/invitations/accept",
            &dave,
            Some(json!({"token": dave_token})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Eve accepts by link; nobody else can use her link.
    let eve = app.signed_up("eve@example.com").await;
    app.verify_email_of("eve@example.com").await;
    let (status, _) = app
        .call_json(
            Method::POST,
            "/api/invitations/accept",
            &dave,
            Some(json!({"token": eve_token})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, joined) = app
        .call_json(
            Method::POST,
            "/api/invitations/accept",
            &eve,
            Some(json!({"token": eve_token})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(joined["name"], "Research Lab");

    // Members see the team, not its administration.
    let (status, list) = app.call_json(Method::GET, &members, &carol, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["members"].as_array().unwrap().len(), 4);
    let (status, _) = app
        .call_json(
            Method::POST,
            &members,
            &carol,
            Some(json!({"email": "x@example.com", "role": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Roles: at least one Admin, always.
    let bob_path = format!("{members}/{bob_id}");
    assert_eq!(
        app.call(Method::PATCH, &bob_path, &ada, Some(json!({"role": "admin"})))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let (_, me) = app.call_json(Method::GET, "/api/me", &ada, None).await;
    let ada_id = me["user"]["userId"].as_str().unwrap().to_owned();
    let ada_path = format!("{members}/{ada_id}");
    assert_eq!(
        app.call(Method::PATCH, &ada_path, &ada, Some(json!({"role": "member"})))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let (status, refused) = app
        .call_json(Method::PATCH, &bob_path, &bob, Some(json!({"role": "member"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused["error"].as_str().unwrap().contains("at least one Admin"));
    assert_eq!(
        app.call(Method::DELETE, &bob_path, &bob, None).await.status(),
        StatusCode::BAD_REQUEST
    );
    let (status, _) = app
        .call_json(Method::PATCH, &bob_path, &bob, Some(json!({"role": "owner"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A removed member's API keys stay with the team and keep working.
    let (_, key) = app
        .call_json(
            Method::POST,
            &format!("{base}/api-keys"),
            &carol,
            Some(json!({"name": "carol's", "acls": ["api-key:endpoint:*", "api-key:model:*"]})),
        )
        .await;
    let carol_key = key["apiKey"].as_str().unwrap().to_owned();
    let (_, me) = app.call_json(Method::GET, "/api/me", &carol, None).await;
    let carol_path = format!("{members}/{}", me["user"]["userId"].as_str().unwrap());
    assert_eq!(
        app.call(Method::DELETE, &carol_path, &bob, None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(
        !teams_of(&app, &carol)
            .await
            .iter()
            .any(|(name, _)| name == "Research Lab")
    );
    assert_eq!(app.hello_status(&carol_key).await, StatusCode::OK);
    // Eve leaves by herself.
    let (_, me) = app.call_json(Method::GET, "/api/me", &eve, None).await;
    let eve_path = format!("{members}/{}", me["user"]["userId"].as_str().unwrap());
    assert_eq!(
        app.call(Method::DELETE, &eve_path, &eve, None).await.status(),
        StatusCode::NO_CONTENT
    );

    // Deleting needs the exact name; a Personal Team goes only with its account.
    let (status, _) = app
        .call_json(
            Method::DELETE,
            &base,
            &bob,
            Some(json!({"confirmName": "research lab"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let personal = me["teams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["personal"] == true)
        .unwrap()["teamId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, refused) = app
        .call_json(
            Method::DELETE,
            &format!("/api/teams/{personal}"),
            &eve,
            Some(json!({"confirmName": "Personal Team"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused["error"].as_str().unwrap().contains("Personal Team"));
    let (status, _) = app
        .call_json(
            Method::DELETE,
            &base,
            &bob,
            Some(json!({"confirmName": "Research Lab"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Its keys stopped; it is gone from every list and page.
    assert_eq!(app.hello_status(&carol_key).await, StatusCode::BAD_REQUEST);
    assert!(
        !teams_of(&app, &bob)
            .await
            .iter()
            .any(|(name, _)| name == "Research Lab")
    );
    assert_eq!(
        app.call(Method::GET, &base, &bob, None).await.status(),
        StatusCode::FORBIDDEN
    );
    let log = app
        .store()
        .list_audit_events(team_id.parse().unwrap(), 50)
        .await
        .unwrap();
    assert_eq!(log[0].action, "DeleteTeam");
    for action in [
        "CreateTeam",
        "UpdateTeam",
        "InviteTeamMember",
        "RevokeInvitation",
        "AcceptInvitation",
        "ChangeTeamMemberRole",
        "RemoveTeamMember",
    ] {
        assert!(log.iter().any(|e| e.action == action), "{action}");
    }
    app.finish().await;
}

/// One team-scoped route of the matrix: its method, path (`{team_id}`, `{api_key_id}`, other ids
/// filled in by the test), a body that passes authorization but changes nothing for good where
/// it can, and whether a Member may call it.
struct Route {
    method: Method,
    path: &'static str,
    body: Option<Value>,
    member: bool,
}

fn route(method: Method, path: &'static str, body: Option<Value>, member: bool) -> Route {
    Route {
        method,
        path,
        body,
        member,
    }
}

/// Every team-scoped route. A tidy test below fails when a route of the OpenAPI document is
/// missing here.
fn matrix_routes() -> Vec<Route> {
    let rename = Some(json!({"apiKey": {"name": "renamed"}, "fieldMask": "name"}));
    vec![
        // The console (session).
        route(Method::GET, "/api/teams/{team_id}", None, true),
        route(Method::PATCH, "/api/teams/{team_id}", Some(json!({"name": ""})), false),
        route(
            Method::DELETE,
            "/api/teams/{team_id}",
            Some(json!({"confirmName": "not its name"})),
            false,
        ),
        route(Method::GET, "/api/teams/{team_id}/members", None, true),
        route(
            Method::POST,
            "/api/teams/{team_id}/members",
            Some(json!({"email": "not-an-email", "role": "member"})),
            false,
        ),
        route(
            Method::PATCH,
            "/api/teams/{team_id}/members/{user_id}",
            Some(json!({"role": "admin"})),
            false,
        ),
        route(Method::DELETE, "/api/teams/{team_id}/members/{user_id}", None, false),
        route(Method::GET, "/api/teams/{team_id}/invitations", None, false),
        route(Method::GET, "/api/teams/{team_id}/domains", None, false),
        route(
            Method::POST,
            "/api/teams/{team_id}/domains",
            Some(json!({"domain": "gmail.com"})),
            false,
        ),
        route(Method::DELETE, "/api/teams/{team_id}/domains/{domain_id}", None, false),
        route(
            Method::POST,
            "/api/teams/{team_id}/domains/{domain_id}/verify",
            None,
            false,
        ),
        route(
            Method::DELETE,
            "/api/teams/{team_id}/invitations/{invitation_id}",
            None,
            false,
        ),
        route(Method::GET, "/api/teams/{team_id}/api-keys", None, true),
        route(Method::GET, "/api/teams/{team_id}/key-policy", None, true),
        route(Method::GET, "/api/teams/{team_id}/data-use", None, true),
        route(
            Method::PUT,
            "/api/teams/{team_id}/data-use",
            Some(json!({"trainingAllowed": false})),
            false,
        ),
        route(Method::GET, "/api/teams/{team_id}/billing/prepaid/balance", None, false),
        route(Method::GET, "/api/teams/{team_id}/billing/spending-limits", None, false),
        route(Method::GET, "/api/teams/{team_id}/billing/invoice/preview", None, false),
        // Members see the usage of their own keys.
        route(
            Method::POST,
            "/api/teams/{team_id}/billing/usage",
            Some(
                json!({"analyticsRequest": {"timeRange": {"startTime": "2026-11-01 00:00:00", "endTime": "2026-11-02 00:00:00"}, "timeUnit": "TIME_UNIT_DAY", "values": [{"name": "usd"}]}}),
            ),
            true,
        ),
        route(
            Method::POST,
            "/api/teams/{team_id}/billing/spending-limits",
            Some(json!({"desiredSoftSpendingLimit": {"val": "0"}})),
            false,
        ),
        route(Method::GET, "/api/teams/{team_id}/billing/billing-info", None, false),
        route(
            Method::POST,
            "/api/teams/{team_id}/billing/billing-info",
            Some(json!({"billingInfo": {"name": ""}})),
            false,
        ),
        route(Method::GET, "/api/teams/{team_id}/billing/payment-methods", None, false),
        route(
            Method::POST,
            "/api/teams/{team_id}/billing/payment-methods/default",
            Some(json!({"paymentMethodId": "pm_none"})),
            false,
        ),
        route(Method::GET, "/api/teams/{team_id}/billing/invoices", None, false),
        route(Method::GET, "/api/teams/{team_id}/billing/settings", None, false),
        route(
            Method::POST,
            "/api/teams/{team_id}/billing/checkout",
            Some(json!({"amount": {"val": "1"}})),
            false,
        ),
        route(
            Method::POST,
            "/api/teams/{team_id}/billing/payment-methods/setup",
            None,
            false,
        ),
        route(
            Method::PUT,
            "/api/teams/{team_id}/billing/settings",
            Some(json!({"autoTopUp": null, "lowBalanceAlert": {"val": "-1"}})),
            false,
        ),
        route(
            Method::GET,
            "/api/teams/{team_id}/billing/invoices/{invoice_id}",
            None,
            false,
        ),
        route(
            Method::GET,
            "/api/teams/{team_id}/billing/invoices/{invoice_id}/pdf",
            None,
            false,
        ),
        route(
            Method::POST,
            "/api/teams/{team_id}/billing/invoices/{invoice_id}/pay",
            None,
            false,
        ),
        route(
            Method::POST,
            "/api/teams/{team_id}/billing/top-up",
            Some(json!({"amount": {"val": "1"}})),
            false,
        ),
        route(
            Method::PUT,
            "/api/teams/{team_id}/key-policy",
            Some(json!({"acls": null, "qps": null, "qpm": null, "tpm": null})),
            false,
        ),
        route(
            Method::POST,
            "/api/teams/{team_id}/api-keys",
            Some(json!({"name": ""})),
            true,
        ),
        route(Method::GET, "/api/teams/{team_id}/api-keys/{api_key_id}", None, true),
        route(
            Method::PUT,
            "/api/teams/{team_id}/api-keys/{api_key_id}",
            rename.clone(),
            false,
        ),
        route(
            Method::DELETE,
            "/api/teams/{team_id}/api-keys/{api_key_id}",
            None,
            false,
        ),
        route(
            Method::POST,
            "/api/teams/{team_id}/api-keys/{api_key_id}/rotate",
            None,
            false,
        ),
        route(Method::GET, "/api/teams/{team_id}/management-keys", None, false),
        route(
            Method::POST,
            "/api/teams/{team_id}/management-keys",
            Some(json!({"name": ""})),
            false,
        ),
        route(
            Method::DELETE,
            "/api/teams/{team_id}/management-keys/{management_key_id}",
            None,
            false,
        ),
        route(Method::GET, "/api/teams/{team_id}/audit/events", None, false),
        route(Method::GET, "/api/teams/{team_id}/audit/events/export", None, false),
        // The Management API (management key).
        route(Method::GET, "/auth/teams/{team_id}/api-keys", None, false),
        route(
            Method::POST,
            "/auth/teams/{team_id}/api-keys",
            Some(json!({"name": ""})),
            false,
        ),
        route(Method::GET, "/auth/teams/{team_id}/endpoints", None, false),
        route(Method::GET, "/auth/teams/{team_id}/models", None, false),
        route(Method::GET, "/auth/api-keys/{api_key_id}", None, false),
        route(Method::PUT, "/auth/api-keys/{api_key_id}", rename, false),
        route(Method::DELETE, "/auth/api-keys/{api_key_id}", None, false),
        route(Method::POST, "/auth/api-keys/{api_key_id}/rotate", None, false),
        route(Method::GET, "/auth/api-keys/{api_key_id}/propagation", None, false),
        route(Method::GET, "/audit/teams/{team_id}/events", None, false),
        route(Method::GET, "/v1/billing/teams/{team_id}/prepaid/balance", None, false),
        route(
            Method::GET,
            "/v1/billing/teams/{team_id}/postpaid/invoice/preview",
            None,
            false,
        ),
        route(
            Method::POST,
            "/v1/billing/teams/{team_id}/usage",
            Some(
                json!({"analyticsRequest": {"timeRange": {"startTime": "2026-11-01 00:00:00", "endTime": "2026-11-02 00:00:00"}, "timeUnit": "TIME_UNIT_DAY", "values": [{"name": "usd"}]}}),
            ),
            false,
        ),
        route(
            Method::GET,
            "/v1/billing/teams/{team_id}/postpaid/spending-limits",
            None,
            false,
        ),
        route(
            Method::POST,
            "/v1/billing/teams/{team_id}/postpaid/spending-limits",
            Some(json!({"desiredSoftSpendingLimit": {"val": "0"}})),
            false,
        ),
        route(Method::GET, "/audit/teams/{team_id}/events/export", None, false),
        route(Method::GET, "/v1/billing/teams/{team_id}/billing-info", None, false),
        route(
            Method::POST,
            "/v1/billing/teams/{team_id}/billing-info",
            Some(json!({"billingInfo": {"name": ""}})),
            false,
        ),
        route(Method::GET, "/v1/billing/teams/{team_id}/payment-method", None, false),
        route(Method::GET, "/v1/billing/teams/{team_id}/invoices", None, false),
        route(
            Method::GET,
            "/v1/billing/teams/{team_id}/invoices/{invoice_id}/pdf",
            None,
            false,
        ),
        route(Method::GET, "/v1/billing/teams/{team_id}/billing-settings", None, false),
        route(
            Method::PUT,
            "/v1/billing/teams/{team_id}/billing-settings",
            Some(json!({"autoTopUp": null, "lowBalanceAlert": {"val": "-1"}})),
            false,
        ),
        route(
            Method::POST,
            "/v1/billing/teams/{team_id}/payment-method/default",
            Some(json!({"paymentMethodId": "pm_none"})),
            false,
        ),
        route(
            Method::POST,
            "/v1/billing/teams/{team_id}/prepaid/top-up",
            Some(json!({"amount": {"val": "1"}})),
            false,
        ),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    Member,
    OtherTeamAdmin,
    SignedOut,
    ApiKey,
    ManagementKey,
    OtherTeamManagementKey,
}

async fn authorization_matrix(db: TestDb) {
    let app = TestApp::new(db).await;
    let admin = app.signed_up("admin@example.com").await;
    let outsider = app.signed_up("outsider@example.com").await;
    let (_, team) = app
        .call_json(Method::POST, "/api/teams", &admin, Some(json!({"name": "Matrix"})))
        .await;
    let team_id = team["teamId"].as_str().unwrap().to_owned();
    let member = joined(&app, &admin, &team_id, "member@example.com", "member").await;
    let (_, management) = app
        .call_json(
            Method::POST,
            &format!("/api/teams/{team_id}/management-keys"),
            &admin,
            Some(json!({"name": "matrix"})),
        )
        .await;
    let management_key = management["key"].as_str().unwrap().to_owned();
    let (_, outsider_me) = app.call_json(Method::GET, "/api/me", &outsider, None).await;
    let outsider_team = outsider_me["currentTeamId"].as_str().unwrap().to_owned();
    let (_, other_management) = app
        .call_json(
            Method::POST,
            &format!("/api/teams/{outsider_team}/management-keys"),
            &outsider,
            Some(json!({"name": "o"})),
        )
        .await;
    let other_management_key = other_management["key"].as_str().unwrap().to_owned();
    let (_, api) = app
        .call_json(
            Method::POST,
            &format!("/api/teams/{team_id}/api-keys"),
            &admin,
            Some(json!({"name": "matrix", "acls": ["api-key:model:*"]})),
        )
        .await;
    let api_key = api["apiKey"].as_str().unwrap().to_owned();

    let callers = [
        Who::Admin,
        Who::Member,
        Who::OtherTeamAdmin,
        Who::SignedOut,
        Who::ApiKey,
        Who::ManagementKey,
        Who::OtherTeamManagementKey,
    ];
    let mut failures = Vec::new();
    for route in matrix_routes() {
        for who in callers {
            // A fresh key of the team (the Admin's) for each call, so destructive calls that are
            // allowed do not change what the next caller sees.
            let (_, fresh) = app
                .call_json(
                    Method::POST,
                    &format!("/api/teams/{team_id}/api-keys"),
                    &admin,
                    Some(json!({"name": "target"})),
                )
                .await;
            let path = route
                .path
                .replace("{team_id}", &team_id)
                .replace("{api_key_id}", fresh["apiKeyId"].as_str().unwrap())
                .replace("{user_id}", &tollgate_domain::UserId::new().to_string())
                .replace("{invitation_id}", &tollgate_domain::InvitationId::new().to_string())
                .replace("{domain_id}", &tollgate_domain::DomainId::new().to_string())
                .replace("{invoice_id}", &uuid::Uuid::now_v7().to_string())
                .replace(
                    "{management_key_id}",
                    &tollgate_domain::ManagementKeyId::new().to_string(),
                );
            let mut request = app.client.request(route.method.clone(), app.url(&path));
            request = match who {
                Who::Admin => request
                    .header("cookie", &admin.cookie)
                    .header("x-csrf-token", &admin.csrf),
                Who::Member => request
                    .header("cookie", &member.cookie)
                    .header("x-csrf-token", &member.csrf),
                Who::OtherTeamAdmin => request
                    .header("cookie", &outsider.cookie)
                    .header("x-csrf-token", &outsider.csrf),
                Who::SignedOut => request,
                Who::ApiKey => request.bearer_auth(&api_key),
                Who::ManagementKey => request.bearer_auth(&management_key),
                Who::OtherTeamManagementKey => request.bearer_auth(&other_management_key),
            };
            if let Some(body) = &route.body {
                request = request.json(body);
            }
            let status = request.send().await.unwrap().status();
            let console = route.path.starts_with("/api/");
            let allowed =
                |s: StatusCode| s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN && !s.is_server_error();
            let ok = match (console, who) {
                (true, Who::Admin) | (false, Who::ManagementKey) => allowed(status),
                (true, Who::Member) if route.member => allowed(status),
                (true, Who::Member | Who::OtherTeamAdmin) => status == StatusCode::FORBIDDEN,
                (true, Who::SignedOut | Who::ApiKey | Who::ManagementKey | Who::OtherTeamManagementKey) => {
                    status == StatusCode::UNAUTHORIZED
                }
                (false, Who::Admin | Who::Member | Who::OtherTeamAdmin | Who::SignedOut) => {
                    status == StatusCode::UNAUTHORIZED
                }
                (false, Who::ApiKey) => status == StatusCode::FORBIDDEN,
                // Another team's key: its team routes are forbidden; its per-key routes cannot
                // even find the key (no existence leak either way).
                (false, Who::OtherTeamManagementKey) => {
                    status == StatusCode::FORBIDDEN
                        || (route.path.starts_with("/auth/api-keys/") && status == StatusCode::NOT_FOUND)
                }
            };
            if !ok {
                failures.push(format!("{} {} as {who:?}: {status}", route.method, route.path));
            }
        }
    }
    assert!(failures.is_empty(), "authorization matrix:\n{}", failures.join("\n"));
    // Unknown teams answer exactly like forbidden ones.
    let unknown = tollgate_domain::TeamId::new();
    let response = app
        .call(Method::GET, &format!("/api/teams/{unknown}/members"), &admin, None)
        .await;
    let body: Value = response.json().await.unwrap();
    let response = app
        .call(
            Method::GET,
            &format!("/api/teams/{outsider_team}/members"),
            &admin,
            None,
        )
        .await;
    assert_eq!(response.json::<Value>().await.unwrap(), body);
    app.finish().await;
}

/// Every team-scoped route in the OpenAPI document is in the matrix.
#[test]
fn every_team_scoped_route_is_in_the_matrix() {
    let document: Value = serde_json::from_str(&tollgate_http::openapi::document_json()).unwrap();
    let listed: BTreeSet<(String, String)> = matrix_routes()
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
        .collect();
    let mut missing = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        let scoped = ["{team_id}", "{api_key_id}", "{management_key_id}"]
            .iter()
            .any(|p| path.contains(p));
        if !scoped {
            continue;
        }
        for method in operations.as_object().unwrap().keys() {
            let key = (method.to_uppercase(), path.clone());
            if !listed.contains(&key) {
                missing.push(format!("{} {}", key.0, key.1));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "team-scoped routes missing from the authorization matrix: {missing:?}"
    );
}

/// A real DNS server for the test: Python's `dnslib` on a loopback port, answering TXT queries
/// from a JSON file the test rewrites (`{"name": ["value", ...]}`); other names are NXDOMAIN.
struct DnsServer {
    child: std::process::Child,
    zone: std::path::PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

const DNS_SERVER: &str = r#"
import json, sys
from dnslib import RR, QTYPE, TXT, RCODE
from dnslib.server import DNSServer, BaseResolver
class Zone(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip('.').lower()
        try:
            records = json.load(open(sys.argv[1]))
        except Exception:
            records = {}
        if name not in records:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.TXT:
            for value in records[name]:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(value), ttl=1))
        return reply
DNSServer(Zone(), port=int(sys.argv[2]), address='127.0.0.1').start()
"#;

impl DnsServer {
    async fn start() -> Option<Self> {
        let available = std::process::Command::new("python3")
            .args(["-c", "import dnslib"])
            .status()
            .is_ok_and(|s| s.success());
        if !available {
            assert!(
                std::env::var_os("CI").is_none(),
                "dnslib is missing: pip install -r requirements-test.txt"
            );
            eprintln!("skipped: dnslib is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let zone = dir.path().join("zone.json");
        std::fs::write(&zone, "{}").unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("python3")
            .args(["-c", DNS_SERVER])
            .arg(&zone)
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            zone,
            port,
            _dir: dir,
        };
        // Ready once it answers a query.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let query = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0, 16, 0, 1];
        for _ in 0..100 {
            let _ = socket.send_to(&query, ("127.0.0.1", port));
            let mut buf = [0_u8; 512];
            if socket.recv_from(&mut buf).is_ok() {
                return Some(server);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the DNS server did not start");
    }

    fn publish(&self, records: Value) {
        std::fs::write(&self.zone, records.to_string()).unwrap();
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn verified_domains_auto_join(db: TestDb) {
    let Some(dns) = DnsServer::start().await else { return };
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.dns_resolver = Some(format!("127.0.0.1:{}", dns.port).parse().unwrap());
    let app = TestApp::with_config(db, upstream, config).await;
    let admin = app.signed_up("admin@acme-corp.test").await;
    let (_, team) = app
        .call_json(Method::POST, "/api/teams", &admin, Some(json!({"name": "Acme"})))
        .await;
    let domains = format!("/api/teams/{}/domains", team["teamId"].as_str().unwrap());

    for (domain, message) in [
        ("gmail.com", "public mail provider"),
        ("co.uk", "public suffix"),
        ("not a domain", "not a domain name"),
    ] {
        let (status, body) = app
            .call_json(Method::POST, &domains, &admin, Some(json!({"domain": domain})))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{domain}");
        assert!(body["error"].as_str().unwrap().contains(message), "{body}");
    }
    let (status, added) = app
        .call_json(
            Method::POST,
            &domains,
            &admin,
            Some(json!({"domain": "Acme-Corp.test"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(added["domain"], "acme-corp.test");
    assert_eq!(added["recordName"], "_tollgate-challenge.acme-corp.test");
    let value = added["recordValue"].as_str().unwrap().to_owned();
    assert!(value.starts_with("domain-verification="));
    let verify = format!("{domains}/{}/verify", added["domainId"].as_str().unwrap());

    // Not published yet.
    let (status, checked) = app.call_json(Method::POST, &verify, &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(checked["verified"], false);
    assert!(
        checked["lastError"].as_str().unwrap().contains("no TXT record"),
        "{checked}"
    );
    // Published (among other records) at the challenge name.
    dns.publish(json!({"_tollgate-challenge.acme-corp.test": ["v=spf1 -all", value]}));
    let (_, checked) = app.call_json(Method::POST, &verify, &admin, None).await;
    assert_eq!(checked["verified"], true, "{checked}");

    // Another team cannot have it verified too.
    let rival = app.signed_up("rival@example.com").await;
    let (_, rival_team) = app
        .call_json(Method::POST, "/api/teams", &rival, Some(json!({"name": "Rival"})))
        .await;
    let rival_domains = format!("/api/teams/{}/domains", rival_team["teamId"].as_str().unwrap());
    let (_, rival_added) = app
        .call_json(
            Method::POST,
            &rival_domains,
            &rival,
            Some(json!({"domain": "acme-corp.test"})),
        )
        .await;
    let mut records = json!({"_tollgate-challenge.acme-corp.test": [value]});
    records["acme-corp.test"] = json!([rival_added["recordValue"]]);
    dns.publish(records);
    let (status, _) = app
        .call_json(
            Method::POST,
            &format!("{rival_domains}/{}/verify", rival_added["domainId"].as_str().unwrap()),
            &rival,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Someone signing up at the domain joins once their address is verified, and is told.
    let dev = app.signed_up("dev@acme-corp.test").await;
    assert!(!teams_of(&app, &dev).await.iter().any(|(name, _)| name == "Acme"));
    app.verify_email_of("dev@acme-corp.test").await;
    assert!(teams_of(&app, &dev).await.contains(&("Acme".into(), "member".into())));
    let mail = app.store().list_mail(100).await.unwrap();
    assert!(mail.iter().any(|m| m.mail.to[0].as_ref() == "dev@acme-corp.test"
        && m.mail.subject.contains("You joined a team")
        && m.mail.body.contains("the team \"Acme\" has verified")));

    // The record is removed: the periodic re-check unverifies it, and nobody else joins.
    dns.publish(json!({}));
    assert_eq!(app.services().teams.recheck_domains().await.unwrap(), 1);
    let (_, list) = app.call_json(Method::GET, &domains, &admin, None).await;
    assert_eq!(list["domains"][0]["verified"], false);
    let late = app.signed_up("late@acme-corp.test").await;
    app.verify_email_of("late@acme-corp.test").await;
    assert!(!teams_of(&app, &late).await.iter().any(|(name, _)| name == "Acme"));
    let (status, _) = app
        .call_json(
            Method::DELETE,
            &format!("{domains}/{}", added["domainId"].as_str().unwrap()),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.finish().await;
}

async fn account_deletion_restore_and_purge(db: TestDb) {
    let app = TestApp::new(db).await;
    let ada = app.signed_up("ada@example.com").await;
    let (_, team) = app
        .call_json(Method::POST, "/api/teams", &ada, Some(json!({"name": "Shared"})))
        .await;
    let team_id = team["teamId"].as_str().unwrap().to_owned();
    let base = format!("/api/teams/{team_id}");
    let bob = joined(&app, &ada, &team_id, "bob@example.com", "member").await;
    let bob_id = user_id_of(&app, &bob).await;
    let (_, management) = app
        .call_json(
            Method::POST,
            &format!("{base}/management-keys"),
            &ada,
            Some(json!({"name": "ada's"})),
        )
        .await;
    let management_key = management["key"].as_str().unwrap().to_owned();
    let (_, key) = app
        .call_json(
            Method::POST,
            &format!("{base}/api-keys"),
            &ada,
            Some(json!({"name": "ada's", "acls": ["api-key:endpoint:*", "api-key:model:*"]})),
        )
        .await;
    let api_key = key["apiKey"].as_str().unwrap().to_owned();
    async fn delete(app: &TestApp, browser: &Browser, password: &str) -> (StatusCode, Value) {
        app.call_json(
            Method::POST,
            "/api/account/delete",
            browser,
            Some(json!({"password": password})),
        )
        .await
    }

    // The only Admin of a team must hand it over (or delete it) first.
    let (status, refused) = delete(&app, &ada, PASSWORD).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        refused["error"].as_str().unwrap().contains("only Admin of \"Shared\""),
        "{refused}"
    );
    let response = app
        .call(
            Method::PATCH,
            &format!("{base}/members/{bob_id}"),
            &ada,
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        delete(&app, &ada, "not the password, though long").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, deleted) = delete(&app, &ada, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["restoreUntil"], "2026-12-01T12:00:00.000000Z");

    // At once: signed out, off the member list, its management keys dead; its API keys stay.
    assert_eq!(
        app.call(Method::GET, "/api/me", &ada, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, members) = app.call_json(Method::GET, &format!("{base}/members"), &bob, None).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 1);
    let response = app
        .client
        .get(app.url("/auth/management-keys/validation"))
        .bearer_auth(&management_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.hello_status(&api_key).await, StatusCode::OK);
    let mail = app.store().list_mail(100).await.unwrap();
    assert!(
        mail.iter()
            .any(|m| m.mail.subject.contains("Your account was deleted") && m.mail.body.contains("2026-12-01"))
    );

    // Signing in within 30 days offers a restore; taking it brings the memberships back.
    let sign_in = || {
        app.client
            .post(app.url("/api/auth/sign-in"))
            .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
            .send()
    };
    let response = sign_in().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.headers().get("set-cookie").is_none());
    let offer: Value = response.json().await.unwrap();
    assert_eq!(offer["accountDeleted"], true);
    let response = app
        .client
        .post(app.url("/api/auth/restore"))
        .json(&json!({"token": offer["restoreToken"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let ada = Browser::from_response(response).await;
    assert!(teams_of(&app, &ada).await.contains(&("Shared".into(), "admin".into())));
    let response = app
        .client
        .post(app.url("/api/auth/restore"))
        .json(&json!({"token": offer["restoreToken"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "a restore token works once");

    // Deleted again, and not restored: 30 days later the personal data is purged.
    assert_eq!(delete(&app, &ada, PASSWORD).await.0, StatusCode::OK);
    app.clock.advance(chrono::Duration::days(29));
    assert_eq!(app.services().accounts.purge_deleted_accounts().await.unwrap(), 0);
    app.clock.advance(chrono::Duration::days(2));
    assert_eq!(app.services().accounts.purge_deleted_accounts().await.unwrap(), 1);
    assert_eq!(sign_in().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // The team's log keeps the events, by user id only, and its chain still verifies.
    let team_uuid: tollgate_domain::TeamId = team_id.parse().unwrap();
    let events = app.store().list_audit_events(team_uuid, 100).await.unwrap();
    let by_ada: Vec<_> = events
        .iter()
        .filter(|e| e.actor_kind == "user" && e.actor_label.is_none())
        .collect();
    assert!(!by_ada.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e.actor_label.as_deref() != Some("ada@example.com"))
    );
    let report = app
        .server
        .as_ref()
        .unwrap()
        .audit
        .verify(Some(team_uuid))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.result, Ok(()));
    // The address is free again.
    app.signed_up("ada@example.com").await;
    app.finish().await;
}
