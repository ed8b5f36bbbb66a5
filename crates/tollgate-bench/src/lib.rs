//! What the benchmarks share: seeding a store with teams that can pay.

use tollgate_domain::{Actor, ApiKey, RequestContext, Ticks};

/// A team made for a benchmark: its key (and the key's secret) and plenty of prepaid credit.
pub struct Payer {
    /// The team's API key.
    pub key: ApiKey,
    /// The key's secret, as a client sends it.
    pub secret: String,
}

/// Creates a user and `teams` teams through the services, as people would, each with one API
/// key made from `new_key` and a million dollars of prepaid credit (the path measured is hold,
/// spend and release, not refusal).
pub async fn seed_payers(
    services: &tollgate_server::Services,
    teams: usize,
    new_key: impl Fn() -> tollgate_core::NewApiKey,
) -> anyhow::Result<Vec<Payer>> {
    let context = RequestContext::default();
    let (user, first) = services
        .accounts
        .create_user(
            "bench@example.com",
            "Bench",
            "benchmark password 123",
            Actor::Operator,
            &context,
        )
        .await?;
    let mut all = vec![first];
    for n in 1..teams {
        all.push(
            services
                .teams
                .create_team(&user, &format!("bench {n}"), None, &context)
                .await?,
        );
    }
    let mut payers = Vec::with_capacity(all.len());
    for team in &all {
        let (management_key, _) = services
            .keys
            .create_management_key(team.id, "bench", Actor::Operator, None, &context)
            .await?;
        let (key, secret) = services
            .keys
            .create_api_key(&management_key.into(), team.id, new_key(), &context)
            .await?;
        services
            .ledger
            .grant(
                team.id,
                Ticks::new(1_000_000 * Ticks::PER_USD),
                "benchmark credit",
                None,
                Actor::Operator,
                &context,
            )
            .await?;
        payers.push(Payer {
            key,
            secret: secret.expose().to_owned(),
        });
    }
    Ok(payers)
}

/// The CPU time this process has used so far (user and system, every thread, live or ended),
/// from `/proc/self/stat` in clock ticks of 10 ms (Linux's `USER_HZ`); `None` elsewhere. Over a
/// run of seconds it tells what a request costs in CPU, which moves far less between runs on a
/// shared machine than requests per second do.
#[must_use]
pub fn process_cpu() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // utime and stime are fields 14 and 15 of the line, 12th and 13th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(std::time::Duration::from_millis((utime + stime) * 10))
}

/// The CPU time every running process named `name` (its command, as `/proc/PID/comm` gives
/// it) has used so far, as [`process_cpu`] counts it; `None` where `/proc` cannot say. With
/// `"postgres"`, the database server's share of a run on the same machine (its backends, WAL
/// writer and checkpointer, and whatever else that server runs meanwhile; a process that ends
/// meanwhile takes its time with it).
#[must_use]
pub fn processes_cpu(name: &str) -> Option<std::time::Duration> {
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != name {
            continue;
        }
        let mut fields = stat[close + 1..].split_ascii_whitespace();
        let utime: u64 = fields.nth(11).and_then(|f| f.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
        ticks += utime + stime;
    }
    Some(std::time::Duration::from_millis(ticks * 10))
}
