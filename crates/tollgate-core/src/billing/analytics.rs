//! Usage analytics: what a team's requests used and cost over a time range, bucketed and
//! grouped (domain `analytics`), exactly consistent with the ledger: costs are the recorded
//! costs, which are what each request's charge spent.

use tollgate_domain::analytics::{Dimension, Measure, Series, TimeUnit, UsageFilter, aggregate};
use tollgate_domain::{ApiKeyId, Permission, Timestamp};

use super::ledger::{Ledger, LedgerError};

/// The longest range asked at once.
const MAX_DAYS: i64 = 366;
/// The longest range asked by the hour.
const MAX_HOURLY_DAYS: i64 = 31;

/// A usage question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// From (inclusive).
    pub from: Timestamp,
    /// To (exclusive).
    pub to: Timestamp,
    /// How the range is cut.
    pub unit: TimeUnit,
    /// What is summed, in the answer's order.
    pub measures: Vec<Measure>,
    /// How series are split, in the labels' order.
    pub group_by: Vec<Dimension>,
    /// What is kept (all of them).
    pub filters: Vec<UsageFilter>,
}

impl Ledger {
    /// Answers `query` for the caller's team: everything for Admins and management keys; a
    /// Member sees the usage of the keys they created only.
    pub async fn usage(&self, caller: &crate::Caller, query: &UsageQuery) -> Result<Vec<Series>, LedgerError> {
        if query.from >= query.to {
            return Err(LedgerError::InvalidQuery(
                "the time range must end after it starts".into(),
            ));
        }
        let days = (query.to - query.from).num_days();
        if days > MAX_DAYS || (query.unit == TimeUnit::Hour && days > MAX_HOURLY_DAYS) {
            return Err(LedgerError::InvalidQuery(format!(
                "the time range may span at most {MAX_DAYS} days ({MAX_HOURLY_DAYS} by the hour)"
            )));
        }
        if query.measures.is_empty() {
            return Err(LedgerError::InvalidQuery("ask for at least one value".into()));
        }
        let team_id = caller.team_id();
        let own_keys: Option<Vec<ApiKeyId>> = if caller.allows(Permission::ManageBilling) {
            None
        } else if caller.allows(Permission::ManageOwnApiKeys) {
            let user = caller.user_id();
            let mut keys = Vec::new();
            let mut after = None;
            loop {
                let page = self.store().list_api_keys(team_id, after, 500).await?;
                let Some(last) = page.last().map(|key| key.id) else {
                    break;
                };
                keys.extend(
                    page.iter()
                        .filter(|key| key.created_by == user && user.is_some())
                        .map(|key| key.id),
                );
                after = Some(last);
            }
            Some(keys)
        } else {
            return Err(LedgerError::Forbidden("Only team members may see usage"));
        };
        let cells = self
            .store()
            .usage_cells(team_id, query.from, query.to, own_keys.as_deref())
            .await?;
        Ok(aggregate(
            &cells,
            query.from,
            query.unit,
            &query.measures,
            &query.group_by,
            &query.filters,
        ))
    }
}
