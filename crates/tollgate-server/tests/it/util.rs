//! `TestApp`: a real server on a loopback port over a fresh database, a mock upstream, a user
//! with a Personal Team and a management key for it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_domain::{Actor, ManualClock, RequestContext, Team};
use tollgate_server::config::ModelConfig;
use tollgate_server::{Config, Server};
use tollgate_store::testsuite::TestDb;
use tollgate_testkit::MockUpstream;

/// Generates one test per backend from an `async fn(TestDb)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = tollgate_store::testsuite::TestDb::sqlite().await;
                    super::$name(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    match tollgate_store::testsuite::TestDb::postgres().await {
                        Some(db) => super::$name(db).await,
                        None => eprintln!("skipped: TOLLGATE_TEST_POSTGRES_URL is not set"),
                    }
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

pub const MODEL: &str = "grok-test";
pub const ALIAS: &str = "grok-test-latest";
pub const UPSTREAM_MODEL: &str = "mock-model";
pub const PROMPT_PRICE: i64 = 20_000;
pub const CACHED_PRICE: i64 = 5_000;
pub const COMPLETION_PRICE: i64 = 100_000;

/// The cost the mock's usage must come to.
pub fn expected_cost() -> i64 {
    use tollgate_testkit::{CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS};
    (PROMPT_TOKENS - CACHED_TOKENS) as i64 * PROMPT_PRICE
        + CACHED_TOKENS as i64 * CACHED_PRICE
        + COMPLETION_TOKENS as i64 * COMPLETION_PRICE
}

pub fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub struct TestApp {
    pub server: Option<Server>,
    pub db: Option<TestDb>,
    pub upstream: MockUpstream,
    pub clock: Arc<ManualClock>,
    pub client: reqwest::Client,
    pub base: String,
    pub team: Team,
    pub management_key: String,
    pub config: Config,
}

pub fn test_config(db: &TestDb, upstream: &MockUpstream) -> Config {
    let mut config = Config::for_test(db.url.clone());
    config.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    // Every team may be invoiced up to $1,000 a month, so requests are served without credit
    // to grant first; tests/it/credit.rs runs prepaid-only teams.
    config.billing.max_invoiced_limit_usd = Some("1000".into());
    config.models.insert(
        MODEL.into(),
        ModelConfig {
            base_url: Some(upstream.base_url.clone()),
            api_key: Some("upstream-secret".to_owned().into()),
            upstream_model: Some(UPSTREAM_MODEL.into()),
            max_concurrency: None,
            max_queue: None,
            queue_timeout_seconds: None,
            upstreams: vec![],
            aliases: vec![ALIAS.into()],
            prompt_price: Some(PROMPT_PRICE),
            cached_prompt_price: Some(CACHED_PRICE),
            completion_price: Some(COMPLETION_PRICE),
            image_price: None,
            web_search_price: 50_000_000,
            x_search_price: 50_000_000,
            server_side_tools: None,
            max_output_tokens: 16_384,
            endpoints: vec!["chat".into(), "completions".into(), "embeddings".into()],
            tokenizer: Some("cl100k_base".into()),
            template_tokens_per_message: None,
            template_tokens_per_request: None,
        },
    );
    config
}

impl TestApp {
    pub async fn new(db: TestDb) -> Self {
        if std::env::var_os("TEST_LOG").is_some() {
            tollgate_server::telemetry::init(tollgate_server::config::LogFormat::Text, "debug", false);
        }
        let upstream = MockUpstream::start().await.unwrap();
        let config = test_config(&db, &upstream);
        Self::with_config(db, upstream, config).await
    }

    /// An app whose teams are prepaid only (the operator's default maximum invoiced limit is $0,
    /// as out of the box): requests need credit.
    pub async fn prepaid_only(db: TestDb) -> Self {
        let upstream = MockUpstream::start().await.unwrap();
        let mut config = test_config(&db, &upstream);
        config.billing.max_invoiced_limit_usd = None;
        Self::with_config(db, upstream, config).await
    }

    pub async fn with_config(db: TestDb, upstream: MockUpstream, config: Config) -> Self {
        let clock = Arc::new(ManualClock::new(start_time()));
        let server = tollgate_server::start(&config, clock.clone(), std::future::pending())
            .await
            .unwrap();
        let base = format!("http://{}", server.addr);
        // Seed through the services, exactly as `tollgate user create` and
        // `tollgate management-key create` do.
        let services = tollgate_server::services(
            &config,
            &server.store,
            &(clock.clone() as Arc<dyn tollgate_domain::Clock>),
        )
        .unwrap();
        let (_user, team) = services
            .accounts
            .create_user(
                "owner@example.com",
                "Owner",
                "correct horse battery staple",
                Actor::Operator,
                &RequestContext::default(),
            )
            .await
            .unwrap();
        let (_, plain) = services
            .keys
            .create_management_key(team.id, "ci", Actor::Operator, None, &RequestContext::default())
            .await
            .unwrap();
        Self {
            server: Some(server),
            db: Some(db),
            upstream,
            clock,
            client: reqwest::Client::new(),
            base,
            team,
            management_key: plain.expose().to_owned(),
            config,
        }
    }

    /// The services over this app's store and clock, as the CLI builds them.
    pub fn services(&self) -> tollgate_server::Services {
        tollgate_server::services(
            &self.config,
            &self.server.as_ref().unwrap().store,
            &(self.clock.clone() as Arc<dyn tollgate_domain::Clock>),
        )
        .unwrap()
    }

    /// Another user's Personal Team and a management key for it.
    pub async fn other_team(&self, email: &str) -> (Team, String) {
        let services = self.services();
        let (_, team) = services
            .accounts
            .create_user(
                email,
                "Other",
                "correct horse battery staple",
                Actor::Operator,
                &RequestContext::default(),
            )
            .await
            .unwrap();
        let (_, plain) = services
            .keys
            .create_management_key(team.id, "other", Actor::Operator, None, &RequestContext::default())
            .await
            .unwrap();
        (team, plain.expose().to_owned())
    }

    /// An API key (allowed everything) of a team the owner created and then deleted; returns
    /// (team id, key id, secret).
    pub async fn key_of_a_deleted_team(&self) -> (tollgate_domain::TeamId, String, String) {
        let (team, caller, key, plain) = self.team_with_key("Doomed").await;
        self.services()
            .teams
            .delete_team(&caller, "Doomed", &RequestContext::default())
            .await
            .unwrap();
        (team.id, key.id.to_string(), plain)
    }

    /// A team the owner created (the owner as its Admin) and an API key of it allowed
    /// everything: (team, the owner as caller there, key, secret).
    pub async fn team_with_key(&self, name: &str) -> (Team, tollgate_core::Caller, tollgate_domain::ApiKey, String) {
        let services = self.services();
        let owner = self
            .store()
            .find_user_by_email(&tollgate_domain::Email::parse("owner@example.com").unwrap())
            .await
            .unwrap()
            .unwrap();
        let context = RequestContext::default();
        let team = services.teams.create_team(&owner, name, None, &context).await.unwrap();
        let caller = tollgate_core::Caller::Member {
            user_id: owner.id,
            email: owner.email.clone(),
            team_id: team.id,
            role: tollgate_domain::Role::Admin,
        };
        let new = tollgate_core::NewApiKey {
            name: "doomed".into(),
            acls: vec!["api-key:endpoint:*".into(), "api-key:model:*".into()],
            ..Default::default()
        };
        let (key, plain) = services
            .keys
            .create_api_key(&caller, team.id, new, &context)
            .await
            .unwrap();
        (team, caller, key, plain.expose().to_owned())
    }

    /// The operator listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let operator = self.server.as_ref().unwrap().operator_addr.unwrap();
        self.client
            .get(format!("http://{operator}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn store(&self) -> &dyn tollgate_store::Store {
        self.server.as_ref().unwrap().store.as_ref()
    }

    /// Creates an API key through the management API; returns the response body.
    pub async fn create_api_key(&self, body: Value) -> Value {
        let response = self
            .client
            .post(self.url(&format!("/auth/teams/{}/api-keys", self.team.id)))
            .bearer_auth(&self.management_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// An API key allowed everything.
    pub async fn api_key(&self) -> String {
        let created = self
            .create_api_key(json!({"name": "test", "acls": ["api-key:endpoint:*", "api-key:model:*"]}))
            .await;
        created["apiKey"].as_str().unwrap().to_owned()
    }

    /// `GET path` with `key`, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str, key: &str) -> Value {
        let response = self.client.get(self.url(path)).bearer_auth(key).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    /// A streaming chat request for `MODEL`.
    pub async fn stream_chat(&self, key: &str) -> reqwest::Response {
        self.chat(key, json!({"model": MODEL, "messages": user_message(), "stream": true}))
            .await
    }

    /// A plain chat request for `MODEL`.
    pub async fn hello(&self, key: &str) -> reqwest::Response {
        self.chat(key, json!({"model": MODEL, "messages": user_message()}))
            .await
    }

    /// The status of [`Self::hello`].
    pub async fn hello_status(&self, key: &str) -> StatusCode {
        self.hello(key).await.status()
    }

    pub async fn chat(&self, key: &str, body: Value) -> reqwest::Response {
        self.post("/v1/chat/completions", key, body).await
    }

    /// `body` posted to `path` with the key `key`.
    pub async fn post(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn finish(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
        self.db.take().unwrap().finish().await;
    }
}

/// Asserts an xAI-shaped error body.
pub async fn assert_xai_error(response: reqwest::Response, status: StatusCode, code: &str, contains: &str) {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(contains), "{message:?} should contain {contains:?}");
    assert_eq!(body.as_object().unwrap().len(), 2, "only code and error: {body}");
}

/// Runs `sqlite` or `postgres` behind the application's back, as an operator, an attacker with
/// database access or a newer release would.
pub async fn execute(url: &str, sqlite: &str, postgres: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection as _;
    if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url).await?;
        let result = sqlx::query(sqlite).execute(&mut connection).await;
        connection.close().await?;
        result.map(drop)
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await?;
        let result = sqlx::query(postgres).execute(&mut connection).await;
        connection.close().await?;
        result.map(drop)
    }
}

pub fn user_message() -> Value {
    json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}])
}

/// The `tollgate` binary against this app's database.
pub fn tollgate_cli(app: &TestApp, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write as _;
    let key = tollgate_domain::AuditChainKey::from_bytes([42; 32]).to_hex();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("TOLLGATE_DATABASE_URL", &app.config.database_url)
        .env("TOLLGATE_AUDIT__KEY", key)
        .env("TOLLGATE_LOG_FILTER", "warn")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}
