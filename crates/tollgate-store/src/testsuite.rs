//! The conformance suite: backend-agnostic cases, each an `async fn(&dyn Store)`, run by the
//! workspace's integration tests against SQLite and PostgreSQL alike. A case that passes on one
//! backend and fails on the other is a bug in the shared SQL or in a migration.
//!
//! Also here: [`TestDb`], a fresh database per test (a temporary SQLite file, or a PostgreSQL
//! schema of its own), so parallel tests never share state.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: failing loudly is the point"
)]

use std::sync::Arc;

use chrono::DateTime;
use sqlx::Connection as _;
use tollgate_domain::keys::{KeyHash, KeyPrefix, PlainKey};
use tollgate_domain::{
    AclSet, Actor, ApiKey, ApiKeyId, AuditAction, AuditChainKey, AuditEvent, ChainVerifier, Email, MailId,
    ManagementKey, ManagementKeyId, OutboundMail, RequestContext, RequestId, Role, Team, TeamId, Ticks, Timestamp,
    TokenUsage, UsageRecord, User, UserId,
};

use crate::{AuditQuery, Backend, KeyRotation, SecretMatch, Store, StoreError};
use uuid::Uuid;

/// The audit chain key every test store uses.
pub const TEST_AUDIT_KEY: AuditChainKey = AuditChainKey::from_bytes([42; 32]);

/// The environment variable naming the PostgreSQL server tests use.
pub const POSTGRES_URL_VAR: &str = "TOLLGATE_TEST_POSTGRES_URL";

/// A database of its own for one test.
pub struct TestDb {
    /// The URL the store was opened with (for code that opens its own store from a URL).
    pub url: String,
    /// The migrated store.
    pub store: Arc<dyn Store>,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(#[expect(dead_code, reason = "held so the directory lives as long as the test")] tempfile::TempDir),
    Postgres { admin_url: String, schema: String },
}

impl TestDb {
    /// A migrated SQLite database in a fresh temporary file.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
        let store = crate::connect(&url, TEST_AUDIT_KEY).await.unwrap();
        store.migrate().await.unwrap();
        Self {
            url,
            store,
            cleanup: Cleanup::Sqlite(dir),
        }
    }

    /// The PostgreSQL server's admin URL, or `None` when tests should skip PostgreSQL. Under CI
    /// (`CI` set) a missing URL is an error, so the PostgreSQL half can never be skipped there.
    pub fn postgres_url() -> Option<String> {
        match std::env::var(POSTGRES_URL_VAR) {
            Ok(url) if !url.is_empty() => Some(url),
            _ if std::env::var_os("CI").is_some() => panic!("{POSTGRES_URL_VAR} must be set under CI"),
            _ => None,
        }
    }

    /// A migrated PostgreSQL schema of its own, or `None` when no server is configured.
    pub async fn postgres() -> Option<Self> {
        let admin_url = Self::postgres_url()?;
        let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to the test PostgreSQL server");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let separator = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{separator}options=-c%20search_path%3D{schema}");
        let store = crate::connect(&url, TEST_AUDIT_KEY).await.unwrap();
        store.migrate().await.unwrap();
        Some(Self {
            url,
            store,
            cleanup: Cleanup::Postgres { admin_url, schema },
        })
    }

    /// Closes the store and drops what the test created. A test that fails before this leaves a
    /// schema behind; it is harmless and named `t_<uuid>`.
    pub async fn finish(self) {
        self.store.close().await;
        if let Cleanup::Postgres { admin_url, schema } = self.cleanup {
            let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut admin)
                .await
                .unwrap();
            admin.close().await.unwrap();
        }
    }
}

fn at(seconds: i64) -> Timestamp {
    DateTime::from_timestamp(1_790_000_000 + seconds, 123_456_000).unwrap()
}

/// An operator's adjustment of `amount` ticks to the team's prepaid credit, with a key of its own.
fn prepaid_adjustment(team_id: TeamId, amount: i64, created_at: Timestamp) -> tollgate_domain::LedgerEntry {
    tollgate_domain::LedgerEntry {
        id: Uuid::now_v7(),
        team_id,
        kind: tollgate_domain::EntryKind::Adjustment,
        bucket: tollgate_domain::Bucket::Prepaid,
        amount: Ticks::new(amount),
        idempotency_key: format!("test:{}", Uuid::now_v7()),
        lot_id: None,
        expires_at: None,
        reason: Some("test".into()),
        created_at,
    }
}

fn audit(team_id: Option<TeamId>, action: AuditAction, when: Timestamp) -> AuditEvent {
    let context = RequestContext {
        ip: Some("192.0.2.1".into()),
        user_agent: Some("test".into()),
        request_id: Some("req-1".into()),
    };
    AuditEvent::success(
        when,
        team_id,
        Actor::Operator,
        action,
        format!("{action} in a test"),
        None,
        &context,
    )
}

/// A user with a Personal Team, as the accounts service creates them.
pub async fn seed_user(store: &dyn Store, email: &str) -> (User, Team) {
    let now = at(0);
    let user = User {
        id: UserId::new(),
        email: Email::parse(email).unwrap(),
        display_name: "Test User".into(),
        password_hash: Some("$argon2id$stub".into()),
        created_at: now,
        email_verified_at: None,
        totp_enabled_at: None,
        passkeys: 0,
        deleted_at: None,
        purge_after: None,
    };
    let team = Team {
        id: TeamId::new(),
        name: "Personal Team".into(),
        description: None,
        personal: true,
        created_at: now,
    };
    store
        .create_user_with_personal_team(&user, &team, &audit(Some(team.id), AuditAction::CreateUser, now))
        .await
        .unwrap();
    (user, team)
}

fn api_key(team: &Team, user: &User, acls: &[&str]) -> ApiKey {
    ApiKey {
        id: ApiKeyId::new(),
        team_id: team.id,
        name: "ci".into(),
        redacted: "tgk_...abcd".into(),
        acls: AclSet::parse(acls).unwrap(),
        qps: Some(5),
        qpm: None,
        tpm: Some(1_000_000),
        expire_time: Some(at(3600)),
        disabled: false,
        blocked: false,
        created_by: Some(user.id),
        created_at: at(1),
        modified_at: at(1),
        modified_by: Some(user.id),
        blocked_reason: None,
        deleted_at: None,
        last_used_at: None,
        previous_secret_expires_at: None,
        team_blocked_reason: None,
        team_blocked_by: None,
        team_zero_retention: false,
    }
}

fn fresh_hash() -> KeyHash {
    PlainKey::generate(&KeyPrefix::parse("tgk_").unwrap(), &mut rand::thread_rng()).hash()
}

/// A user comes with a Personal Team they administer, and one audit event, all in one go.
pub async fn user_gets_personal_team(store: &dyn Store) {
    let (user, team) = seed_user(store, "Ada@Example.com").await;
    let found = store
        .find_user_by_email(&Email::parse("Ada@example.COM").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, user);
    assert_eq!(store.get_user(user.id).await.unwrap(), user);
    assert_eq!(store.get_team(team.id).await.unwrap(), team);
    assert_eq!(store.find_role(team.id, user.id).await.unwrap(), Some(Role::Admin));
    let memberships = store.list_memberships(user.id).await.unwrap();
    assert_eq!(memberships.len(), 1);
    assert_eq!(memberships[0].team, team);
    let events = store.list_audit_events(team.id, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "CreateUser");
    assert_eq!(events[0].ip.as_deref(), Some("192.0.2.1"));
}

/// The operator blocks a team with a reason and lifts the block: the team's keys carry the
/// reason while it stands, the overview shows it, and a repeat changes nothing (no event).
pub async fn the_operator_blocks_and_unblocks_a_team(store: &dyn Store) {
    let (user, team) = seed_user(store, "blocked@example.com").await;
    let key = seed_key(store, &team, &user, &["api-key:endpoint:*"]).await;
    let blocked = store
        .set_team_block(
            team.id,
            Some("abuse report 42"),
            &audit(Some(team.id), AuditAction::BlockTeam, at(2)),
        )
        .await
        .unwrap();
    assert!(blocked);
    assert!(
        !store
            .set_team_block(
                team.id,
                Some("again"),
                &audit(Some(team.id), AuditAction::BlockTeam, at(3))
            )
            .await
            .unwrap(),
        "a blocked team was blocked again"
    );
    assert_eq!(
        store.team_block(team.id).await.unwrap().as_deref(),
        Some("abuse report 42")
    );
    let found = store.find_api_key(team.id, key.id).await.unwrap().unwrap();
    assert_eq!(found.team_blocked_reason.as_deref(), Some("abuse report 42"));
    let listed = store.list_teams("", 1000).await.unwrap();
    let summary = listed.iter().find(|s| s.team.id == team.id).unwrap();
    assert_eq!(summary.blocked_reason.as_deref(), Some("abuse report 42"));

    assert!(
        store
            .set_team_block(team.id, None, &audit(Some(team.id), AuditAction::UnblockTeam, at(4)))
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_team_block(team.id, None, &audit(Some(team.id), AuditAction::UnblockTeam, at(5)))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .find_api_key(team.id, key.id)
            .await
            .unwrap()
            .unwrap()
            .team_blocked_reason,
        None
    );
    let actions: Vec<String> = store
        .list_audit_events(team.id, 20)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.action)
        .filter(|action| action.ends_with("Team") && action != "CreateTeam")
        .collect();
    assert_eq!(actions, ["UnblockTeam", "BlockTeam"], "one event per change");
    let unknown = TeamId::new();
    assert!(matches!(
        store
            .set_team_block(unknown, Some("x"), &audit(None, AuditAction::BlockTeam, at(6)))
            .await,
        Err(StoreError::NotFound)
    ));
}

/// The operator's overview lists live teams newest first, found by a literal part of their
/// name in any case, with their balances and member counts.
pub async fn teams_are_listed_for_the_operator(store: &dyn Store) {
    let (_, first) = seed_user(store, "list-a@example.com").await;
    let (_, second) = seed_user(store, "list-b@example.com").await;
    let renamed = Team {
        name: "Acme 100% Research".into(),
        ..second.clone()
    };
    store
        .update_team(&renamed, &audit(Some(second.id), AuditAction::UpdateTeam, at(2)))
        .await
        .unwrap();
    let grant = prepaid_adjustment(second.id, 250, at(3));
    store
        .append_ledger_entry(&grant, &audit(Some(second.id), AuditAction::GrantCredits, at(3)))
        .await
        .unwrap();

    let all = store.list_teams("", 100).await.unwrap();
    let ids: Vec<TeamId> = all.iter().map(|summary| summary.team.id).collect();
    assert!(ids.contains(&first.id) && ids.contains(&second.id), "{ids:?}");
    let found = store.list_teams("acme 100%", 100).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].team, renamed);
    assert_eq!(found[0].balance.prepaid, Ticks::new(250));
    assert_eq!(found[0].members, 1);
    assert_eq!(found[0].blocked_invoice, None);
    // LIKE's wildcards in the search are literal.
    assert!(store.list_teams("acme 1_0", 100).await.unwrap().is_empty());
    assert!(
        store
            .list_teams("%", 100)
            .await
            .unwrap()
            .iter()
            .all(|s| s.team.name.contains('%'))
    );
    assert_eq!(store.list_teams("", 1).await.unwrap().len(), 1);
}

/// Missing rows are `NotFound` or `None`, never an error of another kind.
pub async fn missing_rows(store: &dyn Store) {
    assert!(matches!(store.get_user(UserId::new()).await, Err(StoreError::NotFound)));
    assert!(matches!(store.get_team(TeamId::new()).await, Err(StoreError::NotFound)));
    assert!(
        store
            .find_user_by_email(&Email::parse("nobody@example.com").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.find_api_key_by_hash(&fresh_hash()).await.unwrap().is_none());
    assert!(
        store
            .find_management_key_by_hash(&fresh_hash())
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.find_role(TeamId::new(), UserId::new()).await.unwrap().is_none());
}

/// A second account with a password at an address is a `Conflict` named alike on both backends
/// (only one account per address signs in with a password), and nothing of the failed sign-up
/// is left behind: no team, no audit event. Accounts without one may share the address.
pub async fn duplicate_email_conflicts_and_writes_nothing(store: &dyn Store) {
    let (first, first_team) = seed_user(store, "dup@example.com").await;
    assert!(first.password_hash.is_some());
    let user = User {
        id: UserId::new(),
        email: Email::parse("dup@example.com").unwrap(),
        display_name: "Two".into(),
        password_hash: Some("$argon2id$second".into()),
        created_at: at(5),
        email_verified_at: None,
        totp_enabled_at: None,
        passkeys: 0,
        deleted_at: None,
        purge_after: None,
    };
    let team = Team {
        id: TeamId::new(),
        name: "Personal Team".into(),
        description: None,
        personal: true,
        created_at: at(5),
    };
    let error = store
        .create_user_with_personal_team(&user, &team, &audit(Some(team.id), AuditAction::CreateUser, at(5)))
        .await
        .unwrap_err();
    match error {
        StoreError::Conflict { constraint } => assert_eq!(constraint, "users_email_key"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(store.get_team(team.id).await, Err(StoreError::NotFound)));
    assert!(store.list_audit_events(team.id, 10).await.unwrap().is_empty());
    assert_eq!(store.list_audit_events(first_team.id, 10).await.unwrap().len(), 1);

    // Without a password, a separate account at the same address: its own user and team. The
    // address still finds the one that signs in with a password.
    let separate = User {
        id: UserId::new(),
        password_hash: None,
        ..user
    };
    let separate_team = Team {
        id: TeamId::new(),
        ..team
    };
    store
        .create_user_with_personal_team(
            &separate,
            &separate_team,
            &audit(Some(separate_team.id), AuditAction::CreateUser, at(6)),
        )
        .await
        .unwrap();
    let found = store.find_user_by_email(&separate.email).await.unwrap().unwrap();
    assert_eq!(found.id, first.id);
}

/// API keys round-trip every field, are found by hash, and list in pages scoped to their team.
pub async fn api_keys_round_trip_and_paginate(store: &dyn Store) {
    let (user, team) = seed_user(store, "keys@example.com").await;
    let (other_user, other_team) = seed_user(store, "other@example.com").await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        let key = api_key(&team, &user, &["api-key:endpoint:chat", "api-key:model:*"]);
        let hash = fresh_hash();
        store
            .insert_api_key(&key, &hash, &audit(Some(team.id), AuditAction::CreateApiKey, at(1)))
            .await
            .unwrap();
        assert_eq!(
            store.find_api_key_by_hash(&hash).await.unwrap(),
            Some((key.clone(), SecretMatch::Current))
        );
        keys.push(key);
    }
    let foreign = seed_key(store, &other_team, &other_user, &[]).await;

    let first_page = store.list_api_keys(team.id, None, 2).await.unwrap();
    assert_eq!(first_page, keys[..2]);
    let second_page = store.list_api_keys(team.id, Some(first_page[1].id), 2).await.unwrap();
    assert_eq!(second_page, keys[2..]);
    assert_eq!(
        store.find_api_key(team.id, keys[0].id).await.unwrap().as_ref(),
        Some(&keys[0])
    );
    // Scoped by team: another team's id finds nothing.
    assert!(store.find_api_key(team.id, foreign.id).await.unwrap().is_none());
    assert_eq!(store.list_audit_events(team.id, 10).await.unwrap().len(), 4);
}

/// A key hash can belong to one key only.
pub async fn key_hashes_are_unique(store: &dyn Store) {
    let (user, team) = seed_user(store, "unique@example.com").await;
    let hash = fresh_hash();
    store
        .insert_api_key(
            &api_key(&team, &user, &[]),
            &hash,
            &audit(Some(team.id), AuditAction::CreateApiKey, at(1)),
        )
        .await
        .unwrap();
    let error = store
        .insert_api_key(
            &api_key(&team, &user, &[]),
            &hash,
            &audit(Some(team.id), AuditAction::CreateApiKey, at(1)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Conflict { ref constraint } if constraint == "api_keys_key_hash_key"),
        "{error:?}"
    );
    // The failed insert's audit event was rolled back with it.
    assert_eq!(store.list_audit_events(team.id, 10).await.unwrap().len(), 2);
}

/// Management keys round-trip.
pub async fn management_keys_round_trip(store: &dyn Store) {
    let (user, team) = seed_user(store, "mgmt@example.com").await;
    let key = ManagementKey {
        id: ManagementKeyId::new(),
        team_id: team.id,
        name: "ops".into(),
        redacted: "tgm_...wxyz".into(),
        created_by: Some(user.id),
        created_at: at(2),
        revoked_at: None,
    };
    let hash = fresh_hash();
    store
        .insert_management_key(
            &key,
            &hash,
            &audit(Some(team.id), AuditAction::CreateManagementKey, at(2)),
        )
        .await
        .unwrap();
    assert_eq!(store.find_management_key_by_hash(&hash).await.unwrap(), Some(key));
}

/// Usage is stored exactly once per request id, in batches, and reads back newest first.
pub async fn usage_is_idempotent_per_request(store: &dyn Store) {
    let (user, team) = seed_user(store, "usage@example.com").await;
    let key = seed_key(store, &team, &user, &[]).await;
    let record = |seconds: i64, prompt: u64| UsageRecord {
        request_id: RequestId::new(),
        team_id: team.id,
        api_key_id: key.id,
        model: "grok-test".into(),
        endpoint: tollgate_domain::Endpoint::Chat,
        usage: TokenUsage {
            prompt_tokens: prompt,
            cached_prompt_tokens: 3,
            completion_tokens: 7,
            reasoning_tokens: 2,
            images: seconds as u64 % 2,
            web_search_calls: 2,
            x_search_calls: 1,
        },
        cost: Ticks::new(1_234_567),
        estimated: false,
        streamed: seconds % 2 == 0,
        started_at: at(seconds),
        duration_ms: 42,
    };
    let batch = vec![record(10, 5), record(11, 6), record(12, 7)];
    let charges = |records: &[UsageRecord]| -> Vec<crate::Charge> {
        records
            .iter()
            .map(|record| crate::Charge {
                record: record.clone(),
                pricing: tollgate_domain::ModelPricing::default(),
            })
            .collect()
    };
    store
        .insert_usage_batch(&charges(&batch), at(20), Ticks::ZERO)
        .await
        .unwrap();
    // Replaying a batch (a retried group commit) stores and charges nothing twice; a batch that
    // mixes a request recorded before with a new one stores and charges the new one alone.
    store
        .insert_usage_batch(&charges(&batch[1..]), at(21), Ticks::ZERO)
        .await
        .unwrap();
    let late = record(13, 8);
    store
        .insert_usage_batch(&charges(&[batch[2].clone(), late.clone()]), at(22), Ticks::ZERO)
        .await
        .unwrap();
    store.insert_usage_batch(&[], at(23), Ticks::ZERO).await.unwrap();
    let stored = store.list_usage(team.id, 10).await.unwrap();
    let mut expected: Vec<_> = batch.iter().rev().cloned().collect();
    expected.insert(0, late);
    assert_eq!(stored, expected);
    assert_eq!(stored[0].usage.total_tokens(), 8 + 7 + 2);
    // A team without credit or invoice headroom is still charged (an overage): below zero.
    let balance = store.balance(team.id).await.unwrap();
    assert_eq!(balance.prepaid, Ticks::new(-4 * 1_234_567));
    assert_eq!(store.verify_ledger().await.unwrap(), None);
}

/// An API key of `user`'s in `team` with `acls`, stored.
async fn seed_key(store: &dyn Store, team: &Team, user: &User, acls: &[&str]) -> ApiKey {
    let key = api_key(team, user, acls);
    store
        .insert_api_key(
            &key,
            &fresh_hash(),
            &audit(Some(team.id), AuditAction::CreateApiKey, at(1)),
        )
        .await
        .unwrap();
    key
}

/// A request of `cost` made with `key` of `team`, to charge in a batch.
fn spent(team: TeamId, key: ApiKeyId, cost: i64) -> crate::Charge {
    crate::Charge {
        record: UsageRecord {
            request_id: RequestId::new(),
            team_id: team,
            api_key_id: key,
            model: "grok-test".into(),
            endpoint: tollgate_domain::Endpoint::Chat,
            usage: TokenUsage::default(),
            cost: Ticks::new(cost),
            estimated: false,
            streamed: false,
            started_at: at(2),
            duration_ms: 1,
        },
        pricing: tollgate_domain::ModelPricing::default(),
    }
}

/// One batch charges many teams at once, each in its consumption order: prepaid credit alone,
/// promotional lots then the invoice, the invoice alone, prepaid credit short of the charge
/// then the invoice.
pub async fn one_batch_charges_many_teams(store: &dyn Store) {
    let mut teams = Vec::new();
    for name in ["batch-a", "batch-b", "batch-c", "batch-d", "batch-e", "batch-f"] {
        let (user, team) = seed_user(store, &format!("{name}@example.com")).await;
        let key = seed_key(store, &team, &user, &[]).await;
        teams.push((team, key));
    }
    let entry = |team: TeamId, amount: i64, promo: bool| tollgate_domain::LedgerEntry {
        id: Uuid::now_v7(),
        team_id: team,
        kind: if promo {
            tollgate_domain::EntryKind::PromoGrant
        } else {
            tollgate_domain::EntryKind::Adjustment
        },
        bucket: if promo {
            tollgate_domain::Bucket::Promo
        } else {
            tollgate_domain::Bucket::Prepaid
        },
        amount: Ticks::new(amount),
        idempotency_key: format!("test:{}", Uuid::now_v7()),
        lot_id: None,
        expires_at: promo.then(|| at(10_000)),
        reason: Some("test".into()),
        created_at: at(1),
    };
    let grant = |team: TeamId, amount, promo| {
        let mut entry = entry(team, amount, promo);
        if promo {
            entry.lot_id = Some(entry.id);
        }
        entry
    };
    for (team, amount, promo) in [
        (teams[0].0.id, 100, false),
        (teams[1].0.id, 50, true),
        (teams[3].0.id, 30, false),
        // Prepaid credit that covers its charge to the tick; and prepaid credit that would
        // cover it alone, beside a promotional lot that consumption order takes first.
        (teams[4].0.id, 40, false),
        (teams[5].0.id, 100, false),
        (teams[5].0.id, 10, true),
    ] {
        store
            .append_ledger_entry(
                &grant(team, amount, promo),
                &audit(Some(team), AuditAction::GrantCredits, at(1)),
            )
            .await
            .unwrap();
    }
    let charge = |index: usize, cost: i64| spent(teams[index].0.id, teams[index].1.id, cost);
    let batch = [
        charge(0, 30),
        charge(1, 70),
        charge(0, 30),
        charge(2, 40),
        charge(3, 40),
        charge(4, 40),
        charge(5, 30),
    ];
    store
        .insert_usage_batch(&batch, at(3), Ticks::new(1_000))
        .await
        .unwrap();
    store
        .insert_usage_batch(&batch, at(4), Ticks::new(1_000))
        .await
        .unwrap();
    let balance = |index: usize| {
        let team = teams[index].0.id;
        async move { store.balance(team).await.unwrap() }
    };
    assert_eq!(balance(0).await.prepaid, Ticks::new(40));
    assert_eq!(
        (balance(1).await.prepaid, balance(1).await.promo),
        (Ticks::ZERO, Ticks::ZERO)
    );
    assert_eq!(balance(2).await.prepaid, Ticks::ZERO);
    let buckets = |index: usize| {
        let team = teams[index].0.id;
        async move {
            let mut spends: Vec<(tollgate_domain::Bucket, i64)> = store
                .ledger_entries(team, 10)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.kind == tollgate_domain::EntryKind::Spend)
                .map(|e| (e.bucket, e.amount.get()))
                .collect();
            spends.sort_by_key(|(bucket, _)| bucket.as_str());
            spends
        }
    };
    assert_eq!(buckets(0).await, [(tollgate_domain::Bucket::Prepaid, -60)]);
    assert_eq!(
        buckets(1).await,
        [
            (tollgate_domain::Bucket::Invoice, -20),
            (tollgate_domain::Bucket::Promo, -50)
        ]
    );
    assert_eq!(buckets(2).await, [(tollgate_domain::Bucket::Invoice, -40)]);
    assert_eq!(balance(3).await.prepaid, Ticks::ZERO);
    assert_eq!(
        buckets(3).await,
        [
            (tollgate_domain::Bucket::Invoice, -10),
            (tollgate_domain::Bucket::Prepaid, -30)
        ]
    );
    assert_eq!(balance(4).await.prepaid, Ticks::ZERO);
    assert_eq!(buckets(4).await, [(tollgate_domain::Bucket::Prepaid, -40)]);
    assert_eq!(
        (balance(5).await.prepaid, balance(5).await.promo),
        (Ticks::new(80), Ticks::ZERO)
    );
    assert_eq!(
        buckets(5).await,
        [
            (tollgate_domain::Bucket::Prepaid, -20),
            (tollgate_domain::Bucket::Promo, -10)
        ]
    );
    // A spend stores no key; it reads back named by its charge and part, one key per entry.
    let spends: Vec<tollgate_domain::LedgerEntry> = store
        .ledger_entries(teams[1].0.id, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == tollgate_domain::EntryKind::Spend)
        .collect();
    let keys: std::collections::BTreeSet<&str> = spends.iter().map(|e| e.idempotency_key.as_str()).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|key| key.starts_with("charge:")), "{keys:?}");
    assert_eq!(store.verify_ledger().await.unwrap(), None);
    // A retried batch that mixes a request recorded before with a new one, for a team whose
    // prepaid credit would cover both: the new one alone is charged (of the 40 left, 5 taken:
    // 35), not the two (which would leave 5).
    let replay = [batch[0].clone(), charge(0, 5)];
    store
        .insert_usage_batch(&replay, at(5), Ticks::new(1_000))
        .await
        .unwrap();
    assert_eq!(balance(0).await.prepaid, Ticks::new(35));
    let spent: i64 = buckets(0).await.iter().map(|(_, amount)| amount).sum();
    assert_eq!(spent, -65);
    assert_eq!(store.verify_ledger().await.unwrap(), None);
}

/// A charge that consumes more promotional lots than one multi-row statement holds, and more
/// than one round trip of writes carries (the group commit sends a batch's writes together, up to
/// 16,384 parameters: 1,300 spend entries take 16,900): every lot is taken, soonest expiry first,
/// each by its own entry, and the ledger still adds up.
pub async fn a_charge_across_many_lots_is_written_whole(store: &dyn Store) {
    const LOTS: i64 = 1_300;
    let (user, team) = seed_user(store, "many-lots@example.com").await;
    let key = seed_key(store, &team, &user, &[]).await;
    for n in 0..LOTS {
        let id = Uuid::now_v7();
        let grant = tollgate_domain::LedgerEntry {
            id,
            team_id: team.id,
            kind: tollgate_domain::EntryKind::PromoGrant,
            bucket: tollgate_domain::Bucket::Promo,
            amount: Ticks::new(2),
            idempotency_key: format!("test:lot:{n}"),
            lot_id: Some(id),
            expires_at: Some(at(10_000 + n)),
            reason: Some("test".into()),
            created_at: at(1),
        };
        store
            .append_ledger_entry(&grant, &audit(Some(team.id), AuditAction::GrantCredits, at(1)))
            .await
            .unwrap();
    }
    // Takes the lots whole but the last, of which one tick is left.
    let cost = LOTS * 2 - 1;
    let charge = spent(team.id, key.id, cost);
    store
        .insert_usage_batch(std::slice::from_ref(&charge), at(3), Ticks::ZERO)
        .await
        .unwrap();
    let balance = store.balance(team.id).await.unwrap();
    assert_eq!((balance.promo, balance.prepaid), (Ticks::new(1), Ticks::ZERO));
    let spends: Vec<tollgate_domain::LedgerEntry> = store
        .ledger_entries(team.id, u32::try_from(LOTS).unwrap() * 3)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == tollgate_domain::EntryKind::Spend)
        .collect();
    assert_eq!(spends.len(), usize::try_from(LOTS).unwrap());
    assert_eq!(spends.iter().map(|e| e.amount.get()).sum::<i64>(), -cost);
    // The lot that expires last is the one with a tick left.
    let last = spends.iter().find(|e| e.amount.get() == -1).unwrap();
    let grants = store
        .ledger_entries(team.id, u32::try_from(LOTS).unwrap() * 3)
        .await
        .unwrap();
    let latest_expiry = grants
        .iter()
        .filter(|e| e.kind == tollgate_domain::EntryKind::PromoGrant)
        .max_by_key(|e| e.expires_at)
        .unwrap();
    assert_eq!(last.lot_id, latest_expiry.lot_id);
    assert_eq!(store.verify_ledger().await.unwrap(), None);
}

/// Kept bodies read back byte for byte, a request kept twice keeps its first row, and pruning
/// deletes what was made before the cut only (days apart: PostgreSQL drops whole days). (On SQLite a file's bodies are written by the group
/// commit's thread, through rusqlite: what it writes, sqlx reads.)
pub async fn request_bodies_are_kept_once_and_pruned_by_age(store: &dyn Store) {
    let (user, team) = seed_user(store, "bodies@example.com").await;
    let key = seed_key(store, &team, &user, &[]).await;
    let body = |seconds: i64, sealed: &[u8]| crate::RetainedBody {
        request_id: RequestId::new(),
        team_id: team.id,
        api_key_id: key.id,
        endpoint: "chat".to_owned(),
        model: "grok-ü".to_owned(),
        created_at: at(seconds),
        sealed: sealed.to_vec(),
    };
    let old = body(1, &[0, 1, 2, 255]);
    const DAY: i64 = 86_400;
    let new = body(3 * DAY, &vec![7; 70_000]);
    store.insert_request_bodies(&[old.clone(), new.clone()]).await.unwrap();
    let mut again = new.clone();
    again.sealed = b"other".to_vec();
    store.insert_request_bodies(&[again]).await.unwrap();
    assert_eq!(store.request_body(old.request_id).await.unwrap(), Some(old.clone()));
    assert_eq!(store.request_body(new.request_id).await.unwrap(), Some(new.clone()));
    assert_eq!(store.request_body(RequestId::new()).await.unwrap(), None);
    store.insert_request_bodies(&[]).await.unwrap();
    assert_eq!(store.prune_request_bodies(at(2 * DAY), at(2 * DAY)).await.unwrap(), 1);
    assert_eq!(store.request_body(old.request_id).await.unwrap(), None);
    assert_eq!(store.request_body(new.request_id).await.unwrap(), Some(new));
}

/// Spend entries go to the spend journal and are folded into the ledger in bulk; every sum
/// reads the same before and after a fold (the monthly sums, the month's usage, the balance,
/// verification), the newest entries are merged across both, a fold sums a charge's spends into
/// one entry, happens only once enough has gathered, and moves each entry once.
pub async fn spends_read_the_same_before_and_after_a_fold(store: &dyn Store) {
    let (user, team) = seed_user(store, "journal@example.com").await;
    let key = seed_key(store, &team, &user, &[]).await;
    // Folding an empty journal moves nothing; a fresh store has journaled nothing.
    assert_eq!(store.fold_spends(0).await.unwrap(), 0);
    let credit = prepaid_adjustment(team.id, 1_000, at(1));
    store
        .append_ledger_entry(&credit, &audit(Some(team.id), AuditAction::GrantCredits, at(1)))
        .await
        .unwrap();
    let charge = |cost: i64, tokens: u64| {
        let mut charge = spent(team.id, key.id, cost);
        charge.record.usage.prompt_tokens = tokens;
        charge.pricing.prompt = Ticks::new(cost / i64::try_from(tokens).unwrap());
        charge
    };
    for (seconds, cost) in [(3, 30), (4, 40)] {
        store
            .insert_usage_batch(&[charge(cost, 10)], at(seconds), Ticks::ZERO)
            .await
            .unwrap();
    }
    let (month_from, month_to) = (at(-86_400 * 5), at(86_400 * 5));
    let sums = || async {
        (
            store.credit_changes(team.id, 10).await.unwrap(),
            store.month_usage(team.id, month_from, month_to).await.unwrap(),
            store.balance(team.id).await.unwrap(),
        )
    };
    let amounts = |entries: &[tollgate_domain::LedgerEntry]| entries.iter().map(|e| e.amount.get()).collect::<Vec<_>>();
    let journaled = sums().await;
    assert_eq!(
        amounts(&store.ledger_entries(team.id, 10).await.unwrap()),
        [-40, -30, 1_000],
        "newest first, a batch's spend each"
    );
    assert_eq!(journaled.0.1.iter().map(|m| m.amount.get()).sum::<i64>(), -70);
    assert_eq!(journaled.1.credit_used, Ticks::new(70));
    assert_eq!(journaled.1.lines.iter().map(|l| l.tokens).sum::<u64>(), 20);
    assert_eq!(store.verify_ledger().await.unwrap(), None);

    // Not due: fewer entries than asked for.
    assert_eq!(store.fold_spends(3).await.unwrap(), 0);
    assert_eq!(store.fold_spends(2).await.unwrap(), 2);
    assert_eq!(sums().await, journaled);
    assert_eq!(store.verify_ledger().await.unwrap(), None);
    // Both batches were spent under the team's open charge: one entry, at the later time,
    // counting both requests, naming the key that made them.
    let folded = store.ledger_entries(team.id, 10).await.unwrap();
    assert_eq!(amounts(&folded), [-70, 1_000]);
    assert_eq!(folded[0].reason.as_deref(), Some("2 requests"));
    assert_eq!(folded[0].created_at, at(4));
    assert_eq!(folded[0].kind, tollgate_domain::EntryKind::Spend);
    // Each entry moved once: the count starts again, and nothing is left to move.
    assert_eq!(store.fold_spends(1).await.unwrap(), 0);
    assert_eq!(store.fold_spends(0).await.unwrap(), 0);

    // A newer spend, journaled beside folded ones under a charge of its own (a fold closes the
    // open ones): the newest come first across both, and a limit cuts the merged list.
    store
        .insert_usage_batch(&[charge(50, 10)], at(5), Ticks::ZERO)
        .await
        .unwrap();
    assert_eq!(amounts(&store.ledger_entries(team.id, 2).await.unwrap()), [-50, -70]);
    let oldest_first = store.ledger_entries(team.id, 10).await.unwrap();
    assert_eq!(oldest_first.len(), 3);
    assert_eq!(
        store
            .month_usage(team.id, month_from, month_to)
            .await
            .unwrap()
            .credit_used,
        Ticks::new(120)
    );
    assert_eq!(store.balance(team.id).await.unwrap().prepaid, Ticks::new(880));
    assert_eq!(store.verify_ledger().await.unwrap(), None);
    assert_eq!(store.fold_spends(1).await.unwrap(), 1);
    assert_eq!(store.ledger_entries(team.id, 10).await.unwrap(), oldest_first);
    assert_eq!(store.verify_ledger().await.unwrap(), None);
}

/// A fold sums each charge's spends of one bucket into one entry, and a charge never spans two
/// billing months: each month's usage and spend read the same before and after the fold, for
/// every team of a batch.
pub async fn a_fold_sums_each_charge_within_its_month(store: &dyn Store) {
    let (user, team) = seed_user(store, "months@example.com").await;
    let (other_user, other_team) = seed_user(store, "months-other@example.com").await;
    let (key, second_key) = (
        seed_key(store, &team, &user, &[]).await,
        seed_key(store, &team, &user, &[]).await,
    );
    let other_key = seed_key(store, &other_team, &other_user, &[]).await;
    for team in [&team, &other_team] {
        store
            .append_ledger_entry(
                &prepaid_adjustment(team.id, 1_000, at(1)),
                &audit(Some(team.id), AuditAction::GrantCredits, at(1)),
            )
            .await
            .unwrap();
    }
    let charge = |team: TeamId, key: ApiKeyId, cost: i64| {
        let mut charge = spent(team, key, cost);
        charge.record.usage.prompt_tokens = 1;
        charge.pricing.prompt = Ticks::new(cost);
        charge
    };
    // at(0) is 21 September (UTC); 15 days later is October.
    let october = 86_400 * 15;
    for (seconds, batch) in [
        (
            3,
            vec![charge(team.id, key.id, 10), charge(other_team.id, other_key.id, 1)],
        ),
        (4, vec![charge(team.id, second_key.id, 20), charge(team.id, key.id, 30)]),
        (
            october,
            vec![charge(team.id, key.id, 40), charge(other_team.id, other_key.id, 2)],
        ),
        (october + 1, vec![charge(team.id, key.id, 50)]),
    ] {
        store
            .insert_usage_batch(&batch, at(seconds), Ticks::ZERO)
            .await
            .unwrap();
    }
    let september = (at(-86_400 * 20), at(86_400 * 10));
    let october_range = (at(86_400 * 10), at(86_400 * 40));
    let reads = || async {
        let mut reads = Vec::new();
        for team in [team.id, other_team.id] {
            reads.push((
                store.credit_changes(team, 10).await.unwrap().1,
                store.month_usage(team, september.0, september.1).await.unwrap(),
                store.month_usage(team, october_range.0, october_range.1).await.unwrap(),
                store.balance(team).await.unwrap(),
            ));
        }
        reads
    };
    let before = reads().await;
    assert_eq!(before[0].1.credit_used, Ticks::new(60));
    assert_eq!(before[0].2.credit_used, Ticks::new(90));
    assert_eq!(before[0].2.lines.iter().map(|l| l.tokens).sum::<u64>(), 2);
    assert_eq!(store.fold_spends(6).await.unwrap(), 6);
    assert_eq!(reads().await, before);
    assert_eq!(store.verify_ledger().await.unwrap(), None);
    let entries = store.ledger_entries(team.id, 10).await.unwrap();
    let spends: Vec<(i64, Option<&str>, Timestamp)> = entries
        .iter()
        .filter(|e| e.kind == tollgate_domain::EntryKind::Spend)
        .map(|e| (e.amount.get(), e.reason.as_deref(), e.created_at))
        .collect();
    assert_eq!(
        spends,
        [
            (-90, Some("2 requests"), at(october + 1)),
            (-60, Some("3 requests"), at(4)),
        ],
        "one entry per month, newest first"
    );
    let other: Vec<i64> = store
        .ledger_entries(other_team.id, 10)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == tollgate_domain::EntryKind::Spend)
        .map(|e| e.amount.get())
        .collect();
    assert_eq!(other, [-2, -1]);
}

/// Leases never lend more than a team may spend, nor more than half of what is free beyond what
/// is needed now (so another node always finds some); spends shrink them once their node reports them, expiry and return free
/// them, and a lease that expired cannot be renewed.
pub async fn credit_leases_lend_only_what_is_spendable(store: &dyn Store) {
    use crate::{LeaseGrant, LeaseRequest};
    let (user, team) = seed_user(store, "leases@example.com").await;
    let grant = |amount: i64, seconds: i64| prepaid_adjustment(team.id, amount, at(seconds));
    store
        .append_ledger_entry(
            &grant(1_000, 1),
            &audit(Some(team.id), AuditAction::GrantCredits, at(1)),
        )
        .await
        .unwrap();
    let (node_a, node_b) = (Uuid::now_v7(), Uuid::now_v7());
    let request = |node_id, lease_id, need: i64, want: i64, ttl_ms| LeaseRequest {
        team_id: team.id,
        lease_id,
        spent: Ticks::ZERO,
        node_id,
        need: Ticks::new(need),
        want: Ticks::new(want),
        ttl_ms,
        now: at(2),
        promo_horizon: at(2),
        default_hard_limit: Ticks::ZERO,
    };
    let LeaseGrant::Granted {
        lease_id: a,
        added,
        renewed,
    } = store
        .take_lease(&request(node_a, None, 100, 600, 60_000))
        .await
        .unwrap()
    else {
        panic!("1000 spendable, nothing leased")
    };
    // The 100 it needs, and of the 500 more it wants half of the 900 that would be left.
    assert_eq!((added, renewed), (Ticks::new(550), false));
    // Node B needs 500: only 450 are free, so nothing is lent.
    assert_eq!(
        store
            .take_lease(&request(node_b, None, 500, 500, 60_000))
            .await
            .unwrap(),
        LeaseGrant::Insufficient { free: Ticks::new(450) }
    );
    let LeaseGrant::Granted { lease_id: b, added, .. } = store
        .take_lease(&request(node_b, None, 100, 500, 60_000))
        .await
        .unwrap()
    else {
        panic!("450 free")
    };
    assert_eq!(added, Ticks::new(275), "100 and half of the 350 beyond");
    assert_eq!(store.leased(team.id).await.unwrap(), Ticks::new(825));
    // Growing A's lease by more than is free: nothing.
    assert_eq!(
        store
            .take_lease(&request(node_a, Some(a), 200, 200, 60_000))
            .await
            .unwrap(),
        LeaseGrant::Insufficient { free: Ticks::new(175) }
    );
    // A spend on A's lease moves the balance, not the stored lease: until A reports it, what
    // is free looks smaller than it is (never larger).
    let key = seed_key(store, &team, &user, &[]).await;
    store
        .insert_usage_batch(&[spent(team.id, key.id, 250)], at(3), Ticks::ZERO)
        .await
        .unwrap();
    assert_eq!(store.balance(team.id).await.unwrap().prepaid, Ticks::new(750));
    assert_eq!(store.leased(team.id).await.unwrap(), Ticks::new(825));
    assert_eq!(store.verify_ledger().await.unwrap(), None);
    assert_eq!(
        store.take_lease(&request(node_b, Some(b), 1, 1, 60_000)).await.unwrap(),
        LeaseGrant::Insufficient { free: Ticks::ZERO }
    );
    // A renews, reporting it: the lease shrinks by it, once however often it is reported, and
    // an older (smaller) report changes nothing.
    for reported in [250, 250, 100] {
        assert!(store.renew_lease(a, Ticks::new(reported), 60_000).await.unwrap());
        assert_eq!(store.leased(team.id).await.unwrap(), Ticks::new(575), "{reported}");
    }
    // A spends 50 more; B returns its lease; A grows, reporting 300 in all: the report is
    // applied before what is free is counted (700 spendable, 250 leased), and A gets half of
    // the 450 (renewed, same lease).
    store
        .insert_usage_batch(&[spent(team.id, key.id, 50)], at(3), Ticks::ZERO)
        .await
        .unwrap();
    store.return_lease(b).await.unwrap();
    assert_eq!(
        store
            .take_lease(&LeaseRequest {
                spent: Ticks::new(300),
                ..request(node_a, Some(a), 1, 1_000, 60_000)
            })
            .await
            .unwrap(),
        LeaseGrant::Granted {
            lease_id: a,
            added: Ticks::new(225),
            renewed: true
        }
    );
    assert_eq!(store.leased(team.id).await.unwrap(), Ticks::new(475));
    assert_eq!(store.verify_ledger().await.unwrap(), None);
    assert!(
        store.renew_lease(a, Ticks::new(300), 0).await.unwrap(),
        "live, so renewable"
    );
    // A lease renewed for 0 ms has expired: it is not renewable, lends nothing, and a grow
    // takes a new lease of the credit (half of it, being alone).
    assert!(!store.renew_lease(a, Ticks::new(300), 60_000).await.unwrap());
    assert_eq!(store.leased(team.id).await.unwrap(), Ticks::ZERO);
    let LeaseGrant::Granted {
        lease_id,
        added,
        renewed,
    } = store
        .take_lease(&LeaseRequest {
            spent: Ticks::new(300),
            ..request(node_a, Some(a), 1, 5_000, 60_000)
        })
        .await
        .unwrap()
    else {
        panic!("700 free")
    };
    assert_ne!(lease_id, a);
    assert_eq!((added, renewed), (Ticks::new(350), false));
}

/// Update, rotate (with and without grace), block, touch and delete; each scoped to the team.
pub async fn api_key_lifecycle(store: &dyn Store) {
    let (user, team) = seed_user(store, "lifecycle@example.com").await;
    let (_, other_team) = seed_user(store, "lifecycle-other@example.com").await;
    let mut key = api_key(&team, &user, &["api-key:model:*"]);
    let first = fresh_hash();
    let event = |action| audit(Some(team.id), action, at(2));
    store
        .insert_api_key(&key, &first, &event(AuditAction::CreateApiKey))
        .await
        .unwrap();

    key.name = "renamed".into();
    key.qpm = Some(60);
    key.tpm = None;
    key.disabled = true;
    key.expire_time = None;
    key.modified_at = at(3);
    store
        .update_api_key(&key, &event(AuditAction::UpdateApiKey))
        .await
        .unwrap();
    assert_eq!(store.find_api_key(team.id, key.id).await.unwrap().as_ref(), Some(&key));
    let foreign = ApiKey {
        team_id: other_team.id,
        ..key.clone()
    };
    assert!(matches!(
        store.update_api_key(&foreign, &event(AuditAction::UpdateApiKey)).await,
        Err(StoreError::NotFound)
    ));

    // Rotation with grace: both secrets find the key, and say which matched.
    let second = fresh_hash();
    let rotation = KeyRotation {
        team_id: team.id,
        id: key.id,
        new_hash: &second,
        new_redacted: "tgk_...new2",
        previous_valid_until: Some(at(3600)),
        at: at(4),
        by: Some(user.id),
    };
    store
        .rotate_api_key(&rotation, &event(AuditAction::RotateApiKey))
        .await
        .unwrap();
    let (found, matched) = store.find_api_key_by_hash(&first).await.unwrap().unwrap();
    assert_eq!((found.id, matched), (key.id, SecretMatch::Previous));
    assert_eq!(found.previous_secret_expires_at, Some(at(3600)));
    assert_eq!(found.redacted, "tgk_...new2");
    assert_eq!(
        store.find_api_key_by_hash(&second).await.unwrap().unwrap().1,
        SecretMatch::Current
    );
    // Rotating again without grace forgets both older secrets.
    let third = fresh_hash();
    let rotation = KeyRotation {
        new_hash: &third,
        previous_valid_until: None,
        ..rotation
    };
    store
        .rotate_api_key(&rotation, &event(AuditAction::RotateApiKey))
        .await
        .unwrap();
    assert!(store.find_api_key_by_hash(&first).await.unwrap().is_none());
    assert!(store.find_api_key_by_hash(&second).await.unwrap().is_none());
    let (found, _) = store.find_api_key_by_hash(&third).await.unwrap().unwrap();
    assert_eq!(found.previous_secret_expires_at, None);
    let foreign_rotation = KeyRotation {
        team_id: other_team.id,
        ..rotation
    };
    assert!(matches!(
        store
            .rotate_api_key(&foreign_rotation, &event(AuditAction::RotateApiKey))
            .await,
        Err(StoreError::NotFound)
    ));

    // Last use only moves forward.
    store.touch_api_keys(&[(key.id, at(50))]).await.unwrap();
    store
        .touch_api_keys(&[(key.id, at(40)), (ApiKeyId::new(), at(60))])
        .await
        .unwrap();
    store.touch_api_keys(&[]).await.unwrap();
    assert_eq!(
        store.find_api_key(team.id, key.id).await.unwrap().unwrap().last_used_at,
        Some(at(50))
    );

    // Blocking is recorded once, with its mail.
    let notice = OutboundMail {
        id: MailId::new(),
        to: vec![user.email.clone()],
        subject: "blocked".into(),
        body: "Your key was blocked.".into(),
        created_at: at(5),
    };
    let block = |reason: &'static str, when| {
        let mail = std::slice::from_ref(&notice);
        async move {
            store
                .block_api_key(
                    team.id,
                    key.id,
                    reason,
                    when,
                    &audit(Some(team.id), AuditAction::BlockApiKey, when),
                    mail,
                )
                .await
                .unwrap()
        }
    };
    assert!(block("leaked", at(5)).await);
    assert!(!block("again", at(6)).await);
    let queued = store.list_mail(10).await.unwrap();
    assert_eq!(queued.len(), 1, "the mail goes with the block, once");
    assert_eq!(queued[0].mail, notice);
    let blocked = store.find_api_key(team.id, key.id).await.unwrap().unwrap();
    assert!(blocked.blocked);
    assert_eq!(blocked.blocked_reason.as_deref(), Some("leaked"));

    // Deletion is soft: gone from lookups and lists, still known by its secret.
    assert!(matches!(
        store
            .delete_api_key(other_team.id, key.id, at(7), None, &event(AuditAction::DeleteApiKey))
            .await,
        Err(StoreError::NotFound)
    ));
    store
        .delete_api_key(team.id, key.id, at(7), Some(user.id), &event(AuditAction::DeleteApiKey))
        .await
        .unwrap();
    assert!(store.find_api_key(team.id, key.id).await.unwrap().is_none());
    assert!(store.list_api_keys(team.id, None, 10).await.unwrap().is_empty());
    let (deleted, _) = store.find_api_key_by_hash(&third).await.unwrap().unwrap();
    assert_eq!(deleted.deleted_at, Some(at(7)));
    assert!(matches!(
        store
            .delete_api_key(team.id, key.id, at(8), None, &event(AuditAction::DeleteApiKey))
            .await,
        Err(StoreError::NotFound)
    ));
    // Create, update, two rotations, one block, one delete (refused attempts write nothing).
    let actions: Vec<_> = store
        .list_audit_events(team.id, 20)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        // The block's event is stamped later (at(5)) than the others (at(2)).
        [
            "BlockApiKey",
            "DeleteApiKey",
            "RotateApiKey",
            "RotateApiKey",
            "UpdateApiKey",
            "CreateApiKey",
            "CreateUser"
        ]
    );
}

/// Senders claim due mail exclusively; failures retry later or give up; sent mail is done.
pub async fn mail_outbox_claims_retries_and_gives_up(store: &dyn Store) {
    let (user, team) = seed_user(store, "mail@example.com").await;
    assert_eq!(
        store.list_admin_emails(team.id).await.unwrap(),
        std::slice::from_ref(&user.email)
    );
    let mail = |n: i64| OutboundMail {
        id: MailId::new(),
        to: vec![user.email.clone(), Email::parse("second@example.com").unwrap()],
        subject: format!("subject {n}"),
        body: format!("body {n}"),
        created_at: at(n),
    };
    let (first, second) = (mail(1), mail(2));
    store.enqueue_mail(&[first.clone(), second.clone()]).await.unwrap();

    // Due at their creation; one claim takes both, a concurrent one gets nothing.
    let claimed = store.claim_due_mail(at(10), at(70), 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|q| q.mail.id).collect::<Vec<_>>(),
        [first.id, second.id]
    );
    assert_eq!(claimed[0].mail, first);
    assert!(store.claim_due_mail(at(11), at(71), 10).await.unwrap().is_empty());

    store.mark_mail_sent(first.id, at(12)).await.unwrap();
    store
        .mark_mail_failed(second.id, "connection refused", Some(at(100)), at(12))
        .await
        .unwrap();
    // Not due before its retry time, even once the hold has lapsed.
    assert!(store.claim_due_mail(at(80), at(140), 10).await.unwrap().is_empty());
    let retried = store.claim_due_mail(at(100), at(160), 10).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(
        (retried[0].attempts, retried[0].last_error.as_deref()),
        (1, Some("connection refused"))
    );
    store
        .mark_mail_failed(second.id, "still refused", None, at(101))
        .await
        .unwrap();
    assert!(store.claim_due_mail(at(1000), at(1060), 10).await.unwrap().is_empty());

    let listed = store.list_mail(10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[0].mail.id, listed[0].state()),
        (second.id, tollgate_domain::MailState::Failed)
    );
    assert_eq!(listed[0].attempts, 2);
    assert_eq!(
        (listed[1].mail.id, listed[1].state()),
        (first.id, tollgate_domain::MailState::Sent)
    );
    assert_eq!(listed[1].sent_at, Some(at(12)));
    // A sent mail keeps its recipients and subject, not its body (it may carry links).
    let kept = store.get_mail(first.id).await.unwrap().unwrap().mail;
    assert_eq!((kept.to, kept.subject), (first.to, first.subject));
    assert_eq!(kept.body, tollgate_domain::mail::SENT_BODY);
    assert_eq!(
        store.get_mail(second.id).await.unwrap().unwrap().mail,
        second,
        "unsent mail keeps it"
    );
    assert!(store.get_mail(MailId::new()).await.unwrap().is_none());
}

/// Management keys list per team and revoke once.
pub async fn management_keys_list_and_revoke(store: &dyn Store) {
    let (_, team) = seed_user(store, "mk@example.com").await;
    let (_, other_team) = seed_user(store, "mk-other@example.com").await;
    let key = ManagementKey {
        id: ManagementKeyId::new(),
        team_id: team.id,
        name: "ops".into(),
        redacted: "tgm_...abcd".into(),
        created_by: None,
        created_at: at(1),
        revoked_at: None,
    };
    let event = audit(Some(team.id), AuditAction::CreateManagementKey, at(1));
    store.insert_management_key(&key, &fresh_hash(), &event).await.unwrap();
    assert_eq!(
        store.list_management_keys(team.id).await.unwrap(),
        std::slice::from_ref(&key)
    );
    assert!(store.list_management_keys(other_team.id).await.unwrap().is_empty());
    let revoke = audit(Some(team.id), AuditAction::RevokeManagementKey, at(2));
    assert!(matches!(
        store
            .revoke_management_key(other_team.id, key.id, at(2), &revoke, &[])
            .await,
        Err(StoreError::NotFound)
    ));
    store
        .revoke_management_key(team.id, key.id, at(2), &revoke, &[])
        .await
        .unwrap();
    assert_eq!(
        store.list_management_keys(team.id).await.unwrap()[0].revoked_at,
        Some(at(2))
    );
    assert!(matches!(
        store.revoke_management_key(team.id, key.id, at(3), &revoke, &[]).await,
        Err(StoreError::NotFound)
    ));
}

/// A stand-alone audit event (e.g. a read) is stored with every field.
pub async fn audit_events_round_trip(store: &dyn Store) {
    let (_, team) = seed_user(store, "audit@example.com").await;
    let event = audit(Some(team.id), AuditAction::ListApiKeys, at(30));
    store.insert_audit_event(&event).await.unwrap();
    let newest = &store.list_audit_events(team.id, 1).await.unwrap()[0];
    assert_eq!(newest.id, event.id);
    assert_eq!(newest.at, event.at);
    assert_eq!(newest.action, "ListApiKeys");
    assert_eq!(newest.actor_kind, "operator");
    assert_eq!(newest.outcome, "success");
    assert_eq!(newest.request_id.as_deref(), Some("req-1"));
}

/// Walks a team's whole chain with the test key; returns how many events verified.
pub async fn verify_chain(store: &dyn Store, team_id: Option<TeamId>) -> Result<u64, tollgate_domain::ChainBreak> {
    let state = store.get_audit_chain(team_id).await.unwrap().unwrap();
    let mut verifier = ChainVerifier::new(&TEST_AUDIT_KEY, team_id, state.boundary.as_ref())?;
    let mut after = state.boundary.as_ref().map_or(0, |b| b.seq);
    loop {
        let page = store.audit_chain_page(team_id, after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq.unwrap();
        for record in &page {
            verifier.check(record)?;
        }
    }
    verifier.finish(&state.head)
}

/// Every event takes the next position in its team's chain, and the chain verifies; teams'
/// chains are separate, and platform events (no team) have their own.
pub async fn audit_chain_links_every_event(store: &dyn Store) {
    let (_, team) = seed_user(store, "chain@example.com").await;
    let (_, other) = seed_user(store, "other-chain@example.com").await;
    for i in 1..=4 {
        store
            .insert_audit_event(&audit(Some(team.id), AuditAction::ListApiKeys, at(i)))
            .await
            .unwrap();
    }
    store
        .insert_audit_event(&audit(None, AuditAction::CreateUser, at(9)))
        .await
        .unwrap();
    // A batch spanning two chains continues each where it was.
    store
        .append_audit_events(&[
            audit(Some(team.id), AuditAction::ListApiKeys, at(10)),
            audit(None, AuditAction::CreateUser, at(10)),
            audit(Some(team.id), AuditAction::ListApiKeys, at(11)),
        ])
        .await
        .unwrap();
    store.append_audit_events(&[]).await.unwrap();
    let seqs: Vec<_> = store
        .audit_chain_page(Some(team.id), 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq.unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(verify_chain(store, Some(team.id)).await, Ok(7));
    assert_eq!(verify_chain(store, Some(other.id)).await, Ok(1));
    assert_eq!(verify_chain(store, None).await, Ok(2));
    let state = store.get_audit_chain(Some(team.id)).await.unwrap().unwrap();
    assert_eq!(state.head.seq, 7);
    assert_eq!(state.boundary, None);
    assert_eq!(store.list_audit_chains().await.unwrap().len(), 3);
    assert_eq!(store.count_unchained_audit_events(Some(team.id)).await.unwrap(), 0);
    let newest = &store.list_audit_events(team.id, 1).await.unwrap()[0];
    assert_eq!(newest.actor_label_digest, None, "the operator has no label");
    assert!(store.get_audit_chain(Some(TeamId::new())).await.unwrap().is_none());
}

fn event_by(team: &Team, actor: Actor, action: AuditAction, description: &str, when: Timestamp) -> AuditEvent {
    AuditEvent::success(
        when,
        Some(team.id),
        actor,
        action,
        description.into(),
        None,
        &RequestContext::default(),
    )
}

/// Search: each filter alone and combined, both orders, keyset pages that neither skip nor repeat.
pub async fn audit_search_filters_and_pages(store: &dyn Store) {
    let (ada, team) = seed_user(store, "search@example.com").await;
    let (_, other) = seed_user(store, "search-other@example.com").await;
    let ada_actor = Actor::User {
        id: ada.id,
        email: "search@example.com".into(),
    };
    let events = [
        event_by(
            &team,
            ada_actor.clone(),
            AuditAction::ListApiKeys,
            "Listed API keys",
            at(10),
        ),
        event_by(
            &team,
            Actor::Operator,
            AuditAction::CreateApiKey,
            "Created API key 100% new",
            at(20),
        ),
        event_by(
            &team,
            ada_actor.clone(),
            AuditAction::CreateApiKey,
            "Created API key ci",
            at(20),
        ),
        event_by(
            &team,
            ada_actor.clone(),
            AuditAction::ListApiKeys,
            "Listed API keys",
            at(30),
        ),
    ];
    for event in &events {
        store.insert_audit_event(event).await.unwrap();
    }
    store
        .insert_audit_event(&event_by(
            &other,
            Actor::Operator,
            AuditAction::ListApiKeys,
            "Listed API keys",
            at(15),
        ))
        .await
        .unwrap();
    let base = AuditQuery {
        team_id: team.id,
        event_id: None,
        actor_id: None,
        text: None,
        from: Some(at(1)),
        to: None,
        newest_first: true,
        after: None,
        limit: 100,
    };
    let ids = |records: Vec<tollgate_domain::AuditRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let search = |query: AuditQuery| async move { ids(store.search_audit_events(&query).await.unwrap()) };

    // Newest first; equal times fall back to the id (UUIDv7: creation order).
    let newest = search(base.clone()).await;
    assert_eq!(newest, [events[3].id, events[2].id, events[1].id, events[0].id]);
    let oldest = search(AuditQuery {
        newest_first: false,
        ..base.clone()
    })
    .await;
    assert_eq!(oldest, [events[0].id, events[1].id, events[2].id, events[3].id]);

    // Keyset pages of 1 in both orders visit every event exactly once.
    for newest_first in [true, false] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .search_audit_events(&AuditQuery {
                    newest_first,
                    after,
                    limit: 1,
                    ..base.clone()
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.at, last.id));
            seen.extend(page.iter().map(|r| r.id));
        }
        assert_eq!(seen, if newest_first { newest.clone() } else { oldest.clone() });
    }

    let by_event = search(AuditQuery {
        event_id: Some(events[1].id),
        ..base.clone()
    })
    .await;
    assert_eq!(by_event, [events[1].id]);
    let by_user = search(AuditQuery {
        actor_id: Some(ada.id.to_string()),
        ..base.clone()
    })
    .await;
    assert_eq!(by_user, [events[3].id, events[2].id, events[0].id]);
    let by_action = search(AuditQuery {
        text: Some("listapikeys".into()),
        ..base.clone()
    })
    .await;
    assert_eq!(by_action, [events[3].id, events[0].id]);
    let by_words = search(AuditQuery {
        text: Some("API KEY CI".into()),
        ..base.clone()
    })
    .await;
    assert_eq!(by_words, [events[2].id]);
    // LIKE wildcards in the search text are literal.
    let literal = search(AuditQuery {
        text: Some("100%".into()),
        ..base.clone()
    })
    .await;
    assert_eq!(literal, [events[1].id]);
    let underscore = search(AuditQuery {
        text: Some("_".into()),
        ..base.clone()
    })
    .await;
    assert!(underscore.is_empty());
    let window = search(AuditQuery {
        from: Some(at(20)),
        to: Some(at(30)),
        ..base.clone()
    })
    .await;
    assert_eq!(window, [events[2].id, events[1].id]);
    let combined = search(AuditQuery {
        actor_id: Some(ada.id.to_string()),
        text: Some("Created".into()),
        ..base.clone()
    })
    .await;
    assert_eq!(combined, [events[2].id]);
    // Another team's events never show.
    let other_event = store.list_audit_events(other.id, 1).await.unwrap()[0].id;
    assert!(
        search(AuditQuery {
            event_id: Some(other_event),
            ..base.clone()
        })
        .await
        .is_empty()
    );
}

/// Pruning removes the oldest events (a prefix only), records a boundary the chain verifies from,
/// appends a note of its own, and is a no-op when run again.
pub async fn audit_pruning_keeps_the_chain_verifiable(store: &dyn Store) {
    let (_, team) = seed_user(store, "prune@example.com").await; // CreateUser at at(0)
    for i in 1..=4 {
        store
            .insert_audit_event(&audit(Some(team.id), AuditAction::ListApiKeys, at(i * 10)))
            .await
            .unwrap();
    }
    let note = |removed: u64| {
        AuditEvent::success(
            at(100),
            Some(team.id),
            Actor::System,
            AuditAction::PruneAuditEvents,
            format!("Removed {removed} events"),
            None,
            &RequestContext::default(),
        )
    };
    // Events at 0, 10 and 20 are older than 25.
    assert_eq!(store.prune_audit_chain(Some(team.id), at(25), &note).await.unwrap(), 3);
    let state = store.get_audit_chain(Some(team.id)).await.unwrap().unwrap();
    assert_eq!(state.boundary.as_ref().map(|b| b.seq), Some(3));
    assert_eq!(state.head.seq, 6);
    assert_eq!(verify_chain(store, Some(team.id)).await, Ok(3));
    let newest = &store.list_audit_events(team.id, 1).await.unwrap()[0];
    assert_eq!(newest.action, "PruneAuditEvents");
    assert_eq!(newest.description, "Removed 3 events");
    // Nothing more is old enough: no removal, no note.
    assert_eq!(store.prune_audit_chain(Some(team.id), at(25), &note).await.unwrap(), 0);
    assert_eq!(store.get_audit_chain(Some(team.id)).await.unwrap().unwrap().head.seq, 6);
    // A team with no chain has nothing to prune.
    assert_eq!(
        store
            .prune_audit_chain(Some(TeamId::new()), at(25), &note)
            .await
            .unwrap(),
        0
    );
}

/// Migrating again is a no-op, and the store answers pings.
pub async fn migrate_is_idempotent(store: &dyn Store) {
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    store.analyze().await.unwrap();
    assert!(matches!(store.backend(), Backend::Sqlite | Backend::Postgres));
}

/// Housekeeping deletes what is over, and nothing else.
pub async fn sweep_deletes_what_is_over(store: &dyn Store) {
    use tollgate_domain::{
        Invitation, InvitationId, OidcFlow, PendingIdentity, Session, SessionId, Sweep, Swept, TokenPurpose,
    };
    let (user, team) = seed_user(store, "sweep@example.com").await;
    let hour = chrono::Duration::hours(1);
    // Two of each: one begun at 0 (over by the sweep at 5000), one begun at 10000.
    for (n, begun) in [(1u8, at(0)), (2, at(10_000))] {
        let mut token = crate::AccountToken::issue([n; 32], user.id, TokenPurpose::VerifyEmail, begun, None);
        token.expires_at = begun + hour;
        store.insert_account_token(&token, &[], &[]).await.unwrap();
        store
            .create_mfa_challenge(&[n + 10; 32], user.id, begun, begun + hour)
            .await
            .unwrap();
        let session = Session {
            id: SessionId::new(),
            user_id: user.id,
            created_at: begun,
            last_seen_at: begun,
            absolute_expires_at: begun + hour,
            ip: None,
            user_agent: None,
            location: None,
            revoked_at: None,
        };
        store
            .create_session(&session, &[n + 20; 32], &[n + 30; 32], &[], &[])
            .await
            .unwrap();
        store
            .enqueue_mail(&[OutboundMail {
                id: MailId::new(),
                to: vec![user.email.clone()],
                subject: format!("mail {n}"),
                body: "a link".into(),
                created_at: begun,
            }])
            .await
            .unwrap();
        let invitation = Invitation {
            id: InvitationId::new(),
            team_id: team.id,
            email: Email::parse(&format!("guest{n}@example.com")).unwrap(),
            role: Role::Member,
            invited_by: Some(user.id),
            created_at: begun,
            expires_at: begun + hour,
            accepted_at: None,
            revoked_at: None,
        };
        store
            .create_invitation(
                &invitation,
                &[n + 40; 32],
                &[],
                &audit(Some(team.id), AuditAction::InviteTeamMember, begun),
            )
            .await
            .unwrap();
        store
            .create_oidc_flow(&OidcFlow {
                state_hash: [n + 50; 32],
                provider: "test".into(),
                nonce: "n".into(),
                pkce_verifier: "v".into(),
                browser_hash: [n + 60; 32],
                link_user_id: None,
                created_at: begun,
                expires_at: begun + hour,
            })
            .await
            .unwrap();
        store
            .insert_pending_identity(&PendingIdentity {
                token_hash: [n + 70; 32],
                provider: "test".into(),
                issuer: "https://id.example".into(),
                subject: format!("s{n}"),
                email: None,
                email_verified: false,
                name: None,
                created_at: begun,
                expires_at: begun + hour,
            })
            .await
            .unwrap();
        store
            .insert_responses(&[crate::StoredResponse {
                id: format!("resp_{n}"),
                team_id: team.id,
                api_key_id: ApiKeyId::new(),
                model: "m".into(),
                created_at: begun,
                expires_at: begun + hour,
                sealed: vec![n; 48],
            }])
            .await
            .unwrap();
        store
            .insert_deferred(&crate::NewDeferred {
                id: format!("deferred_{n}"),
                team_id: team.id,
                api_key_id: ApiKeyId::new(),
                model: "m".into(),
                created_at: begun,
                lost_after: begun + hour,
                expires_at: begun + hour,
            })
            .await
            .unwrap();
    }
    // A stored response is its team's only, and found only before it expires.
    let (_, other) = seed_user(store, "sweep-other@example.com").await;
    assert!(
        store
            .stored_response(other.id, "resp_2", at(10_001))
            .await
            .unwrap()
            .is_none()
    );
    assert!(!store.delete_response(other.id, "resp_2", at(10_001)).await.unwrap());
    assert!(
        store
            .stored_response(team.id, "resp_1", at(4_000))
            .await
            .unwrap()
            .is_none()
    );
    let found = store
        .stored_response(team.id, "resp_2", at(10_001))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.model.as_str(), found.sealed), ("m", vec![2; 48]));
    let sweep = Sweep {
        expired_before: at(5_000),
        sessions_begun_before: at(5_000),
        invitations_expired_before: at(5_000),
        mail_created_before: at(5_000),
        now: at(5_000),
    };
    let swept = store.sweep(&sweep).await.unwrap();
    assert_eq!(
        swept,
        Swept {
            tokens: 4,
            sessions: 1,
            invitations: 1,
            mail: 1,
            responses: 1,
            deferred: 1,
        }
    );
    // What is not over stays.
    assert!(store.find_account_token(&[1; 32]).await.unwrap().is_none());
    assert!(store.find_account_token(&[2; 32]).await.unwrap().is_some());
    assert_eq!(
        store.find_mfa_challenge(&[12; 32], at(10_001)).await.unwrap(),
        Some(user.id)
    );
    assert!(store.find_session(&[21; 32]).await.unwrap().is_none());
    assert!(store.find_session(&[22; 32]).await.unwrap().is_some());
    let mail = store.list_mail(10).await.unwrap();
    assert_eq!(
        mail.iter().map(|m| m.mail.subject.as_str()).collect::<Vec<_>>(),
        ["mail 2"]
    );
    assert_eq!(store.list_invitations(team.id, at(10_001)).await.unwrap().len(), 1);
    assert!(
        store
            .take_oidc_flow(&[52; 32], &[62; 32], at(10_001))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .take_pending_identity(&[72; 32], at(10_001))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .stored_response(team.id, "resp_2", at(10_001))
            .await
            .unwrap()
            .is_some()
    );
    assert!(store.delete_response(team.id, "resp_2", at(10_001)).await.unwrap());
    assert!(
        store
            .stored_response(team.id, "resp_2", at(10_001))
            .await
            .unwrap()
            .is_none()
    );
    // A second sweep finds nothing.
    assert_eq!(store.sweep(&sweep).await.unwrap(), Swept::default());
}

/// One pending top-up per team (a second start returns it); a change applies only to the top-up
/// as it was read, commits its entry with it, and an event id is processed once.
pub async fn top_ups_are_one_pending_and_change_once(store: &dyn Store) {
    use crate::{Changed, TopUpChange};
    use tollgate_domain::{TopUp, TopUpStatus};
    let (_, team) = seed_user(store, "topup@example.com").await;
    let top_up = |id: u128| TopUp {
        id: Uuid::from_u128(id),
        team_id: team.id,
        amount_cents: 2500,
        status: TopUpStatus::Pending,
        provider_ref: None,
        payment_method: Some("pm_1".into()),
        failure: None,
        taken_back_cents: 0,
        automatic: false,
        checkout: None,
        created_at: at(1),
        updated_at: at(1),
    };
    let first = store
        .start_top_up(&top_up(1), &audit(Some(team.id), AuditAction::TopUpCredits, at(1)))
        .await
        .unwrap();
    let second = store
        .start_top_up(&top_up(2), &audit(Some(team.id), AuditAction::TopUpCredits, at(2)))
        .await
        .unwrap();
    assert_eq!(second.id, first.id, "the pending one is returned");
    assert!(store.top_up(team.id, Uuid::from_u128(2)).await.unwrap().is_none());
    let entry = tollgate_domain::LedgerEntry {
        id: Uuid::now_v7(),
        team_id: team.id,
        kind: tollgate_domain::EntryKind::Purchase,
        bucket: tollgate_domain::Bucket::Prepaid,
        amount: Ticks::new(2500 * Ticks::PER_CENT),
        idempotency_key: "top-up:1".into(),
        lot_id: None,
        expires_at: None,
        reason: None,
        created_at: at(3),
    };
    let grant_audit = audit(Some(team.id), AuditAction::TopUpCredits, at(3));
    let grant = TopUpChange {
        top_up_id: first.id,
        event: Some(("evt_1", "payment_intent.succeeded")),
        expect_status: TopUpStatus::Pending,
        expect_taken_back_cents: 0,
        status: TopUpStatus::Succeeded,
        failure: None,
        taken_back_cents: 0,
        provider_ref: Some("pi_1"),
        payment_method: None,
        entry: Some(&entry),
        audit: Some(&grant_audit),
        at: at(3),
    };
    assert_eq!(store.change_top_up(&grant).await.unwrap(), Changed::Applied);
    assert_eq!(store.change_top_up(&grant).await.unwrap(), Changed::Duplicate);
    let again = TopUpChange {
        event: Some(("evt_2", "payment_intent.succeeded")),
        ..grant.clone()
    };
    assert_eq!(store.change_top_up(&again).await.unwrap(), Changed::Stale);
    assert!(
        !store.payment_event_seen("evt_2").await.unwrap(),
        "a stale change records nothing"
    );
    assert!(store.payment_event_seen("evt_1").await.unwrap());
    let stored = store.top_up_by_ref("pi_1").await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.payment_method.as_deref()),
        (TopUpStatus::Succeeded, Some("pm_1"))
    );
    assert_eq!(store.balance(team.id).await.unwrap().prepaid, entry.amount);
    assert!(store.pending_top_up(team.id).await.unwrap().is_none());
    // Now a new one may start.
    let third = store
        .start_top_up(&top_up(3), &audit(Some(team.id), AuditAction::TopUpCredits, at(4)))
        .await
        .unwrap();
    assert_eq!(third.id, Uuid::from_u128(3));
    assert_eq!(store.top_ups(team.id, 10).await.unwrap().len(), 2);
    assert!(
        store
            .record_payment_event("evt_3", "customer.created", at(5))
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_payment_event("evt_3", "customer.created", at(5))
            .await
            .unwrap()
    );
    assert_eq!(store.verify_ledger().await.unwrap(), None);
}

/// Invoice numbers have no gaps (a second invoice for the same month writes nothing and uses no
/// number); a team blocked for an unpaid invoice shows on its keys, and paying lifts it.
pub async fn invoices_are_numbered_without_gaps_and_block_until_paid(store: &dyn Store) {
    use crate::{Changed, InvoiceFilter, InvoicePayment};
    use tollgate_domain::{Invoice, InvoiceKind, InvoiceStatus, IssuedLine};
    let (user, team) = seed_user(store, "invoice@example.com").await;
    let key = api_key(&team, &user, &[]);
    let hash = fresh_hash();
    store
        .insert_api_key(&key, &hash, &audit(Some(team.id), AuditAction::CreateApiKey, at(1)))
        .await
        .unwrap();
    let invoice = |month: &str| Invoice {
        id: Uuid::now_v7(),
        team_id: team.id,
        number: String::new(),
        kind: InvoiceKind::Monthly,
        month: month.into(),
        top_up_id: None,
        corrects: None,
        status: InvoiceStatus::Open,
        lines: vec![IssuedLine {
            description: "grok prompt tokens".into(),
            unit_type: "tokens".into(),
            unit_price: Ticks::new(20_000),
            units: 500_000,
            amount: Ticks::new(10_000_000_000),
        }],
        subtotal: Ticks::new(10_000_000_000),
        credit_used: Ticks::ZERO,
        total: Ticks::new(10_000_000_000),
        billed_to: tollgate_domain::BillingInfo {
            name: "Acme".into(),
            ..Default::default()
        },
        team_name: String::new(),
        issued_at: at(10),
        paid_at: None,
        attempts: 0,
        next_attempt_at: Some(at(10)),
        failure: None,
    };
    let issue = |invoice: Invoice| async move {
        store
            .issue_invoice(&invoice, "TG", &audit(Some(team.id), AuditAction::IssueInvoice, at(10)))
            .await
            .unwrap()
    };
    let first = issue(invoice("2026-10")).await.unwrap();
    assert_eq!(
        (first.number.as_str(), first.team_name.as_str()),
        ("TG-000001", "Personal Team")
    );
    assert!(issue(invoice("2026-10")).await.is_none(), "one per month");
    let second = issue(invoice("2026-11")).await.unwrap();
    assert_eq!(second.number, "TG-000002", "no gap");
    let listed = store
        .invoices(
            team.id,
            &InvoiceFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].lines, first.lines);
    assert_eq!(store.invoices_due(at(10), 10).await.unwrap().len(), 2);
    // One node claims a due attempt; another then finds it not due.
    assert!(store.claim_invoice_attempt(second.id, at(10), at(600)).await.unwrap());
    assert!(!store.claim_invoice_attempt(second.id, at(10), at(600)).await.unwrap());
    assert_eq!(store.invoices_due(at(10), 10).await.unwrap().len(), 1);
    assert_eq!(
        store.invoices_due(at(600), 10).await.unwrap().len(),
        2,
        "due again if it stopped"
    );

    assert_eq!(store.teams_to_block(at(5)).await.unwrap(), vec![]);
    assert_eq!(
        store.teams_to_block(at(11)).await.unwrap(),
        vec![(team.id, "TG-000001".to_owned())]
    );
    assert!(
        store
            .block_team(
                team.id,
                "TG-000001",
                &audit(Some(team.id), AuditAction::BlockTeam, at(11)),
                None,
            )
            .await
            .unwrap()
    );
    let (found, _) = store.find_api_key_by_hash(&hash).await.unwrap().unwrap();
    assert_eq!(found.team_blocked_by.as_deref(), Some("TG-000001"));
    let pay = InvoicePayment {
        invoice_id: first.id,
        team_id: team.id,
        expect: InvoiceStatus::Open,
        status: InvoiceStatus::Paid,
        attempts: 1,
        next_attempt_at: None,
        failure: None,
        payment_ref: Some("pi_1"),
        paid_at: Some(at(12)),
        event: Some(("evt_paid", "payment_intent.succeeded")),
        audit: None,
        mail: None,
        entry: None,
        at: at(12),
    };
    assert_eq!(store.set_invoice_payment(&pay).await.unwrap(), Changed::Applied);
    assert_eq!(store.set_invoice_payment(&pay).await.unwrap(), Changed::Duplicate);
    let again = InvoicePayment {
        event: None,
        ..pay.clone()
    };
    assert_eq!(store.set_invoice_payment(&again).await.unwrap(), Changed::Stale);
    let (found, _) = store.find_api_key_by_hash(&hash).await.unwrap().unwrap();
    assert_eq!(found.team_blocked_by, None, "paying lifts the block");
    assert_eq!(
        store.invoice_by_payment("pi_1").await.unwrap().map(|i| i.id),
        Some(first.id)
    );
    assert_eq!(
        store.invoice_by_number("TG-000002").await.unwrap().map(|i| i.id),
        Some(second.id)
    );
}

/// Every case, by name, for the test generator.
#[macro_export]
macro_rules! for_each_conformance_case {
    ($callback:ident) => {
        $callback!(
            user_gets_personal_team,
            teams_are_listed_for_the_operator,
            the_operator_blocks_and_unblocks_a_team,
            missing_rows,
            duplicate_email_conflicts_and_writes_nothing,
            api_keys_round_trip_and_paginate,
            key_hashes_are_unique,
            management_keys_round_trip,
            usage_is_idempotent_per_request,
            credit_leases_lend_only_what_is_spendable,
            one_batch_charges_many_teams,
            a_charge_across_many_lots_is_written_whole,
            spends_read_the_same_before_and_after_a_fold,
            a_fold_sums_each_charge_within_its_month,
            request_bodies_are_kept_once_and_pruned_by_age,
            top_ups_are_one_pending_and_change_once,
            invoices_are_numbered_without_gaps_and_block_until_paid,
            audit_events_round_trip,
            api_key_lifecycle,
            mail_outbox_claims_retries_and_gives_up,
            management_keys_list_and_revoke,
            audit_chain_links_every_event,
            audit_search_filters_and_pages,
            audit_pruning_keeps_the_chain_verifiable,
            sweep_deletes_what_is_over,
            migrate_is_idempotent
        );
    };
}
