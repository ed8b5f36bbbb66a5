//! The audit log: the hash chain, search, export, retention.

use async_trait::async_trait;
use tollgate_domain::audit::GENESIS;
use tollgate_domain::{AuditEvent, AuditRecord, TeamId, Timestamp};

use crate::{AuditChainState, AuditQuery, AuditStore, StoreError};

use super::{
    AUDIT_COLUMNS, SqlStore, append_audit_chain, audit_from_row, chain_from_row, chain_hash, chain_name,
    contains_pattern, insert_audit, to_i64, to_u64,
};

#[async_trait]
impl AuditStore for SqlStore {
    async fn insert_audit_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        insert_audit(&mut tx, &self.audit_key, event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append_audit_events(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        // Group by chain, keeping each chain's events in the order given.
        let mut chains: Vec<(Option<TeamId>, Vec<&AuditEvent>)> = Vec::new();
        for event in events {
            match chains.iter_mut().find(|(team, _)| *team == event.team_id) {
                Some((_, list)) => list.push(event),
                None => chains.push((event.team_id, vec![event])),
            }
        }
        let mut tx = self.write.begin().await?;
        for (team_id, list) in &chains {
            append_audit_chain(&mut tx, &self.audit_key, *team_id, list).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit_events(&self, team_id: TeamId, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        self.search_audit_events(&AuditQuery {
            team_id,
            event_id: None,
            actor_id: None,
            text: None,
            from: None,
            to: None,
            newest_first: true,
            after: None,
            limit,
        })
        .await
    }

    async fn search_audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        // Filters are added as `$n` placeholders in a fixed order, then bound in the same order.
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE team_id = $1");
        let mut n = 1;
        let mut next = || {
            n += 1;
            n
        };
        if query.event_id.is_some() {
            sql.push_str(&format!(" AND id = ${}", next()));
        }
        if query.actor_id.is_some() {
            sql.push_str(&format!(" AND actor_id = ${}", next()));
        }
        if query.text.is_some() {
            let p = next();
            sql.push_str(&format!(
                " AND (LOWER(action) LIKE ${p} ESCAPE '\\' OR LOWER(description) LIKE ${p} ESCAPE '\\')"
            ));
        }
        if query.from.is_some() {
            sql.push_str(&format!(" AND at >= ${}", next()));
        }
        if query.to.is_some() {
            sql.push_str(&format!(" AND at < ${}", next()));
        }
        let (cmp, order) = if query.newest_first {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if query.after.is_some() {
            let (t, i) = (next(), next());
            // A row comparison, so both planners turn it into one index range (an OR of two
            // conditions makes PostgreSQL scan from the start of the team's events every page).
            sql.push_str(&format!(" AND (at, id) {cmp} (${t}, ${i})"));
        }
        sql.push_str(&format!(" ORDER BY at {order}, id {order} LIMIT ${}", next()));

        let mut q = sqlx::query(&sql).bind(query.team_id.as_uuid());
        if let Some(id) = query.event_id {
            q = q.bind(id.as_uuid());
        }
        if let Some(actor) = &query.actor_id {
            q = q.bind(actor.as_str());
        }
        if let Some(text) = &query.text {
            q = q.bind(contains_pattern(text));
        }
        if let Some(from) = query.from {
            q = q.bind(from);
        }
        if let Some(to) = query.to {
            q = q.bind(to);
        }
        if let Some((at, id)) = query.after {
            q = q.bind(at).bind(id.as_uuid());
        }
        let rows = q.bind(i64::from(query.limit)).fetch_all(&self.read).await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn list_audit_chains(&self) -> Result<Vec<AuditChainState>, StoreError> {
        let rows = sqlx::query(
            "SELECT team_id, head_seq, head_hash, pruned_seq, pruned_hash, pruned_mac FROM audit_chains ORDER BY chain",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(chain_from_row).collect()
    }

    async fn get_audit_chain(&self, team_id: Option<TeamId>) -> Result<Option<AuditChainState>, StoreError> {
        let row = sqlx::query(
            "SELECT team_id, head_seq, head_hash, pruned_seq, pruned_hash, pruned_mac FROM audit_chains WHERE chain = $1",
        )
        .bind(chain_name(team_id))
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(chain_from_row).transpose()
    }

    async fn audit_chain_page(
        &self,
        team_id: Option<TeamId>,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let team_filter = if team_id.is_some() {
            "team_id = $1"
        } else {
            "team_id IS NULL AND $1 IS NULL"
        };
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE {team_filter} AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(team_id.map(|t| t.as_uuid()))
        .bind(to_i64(after_seq, "seq")?)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn count_unchained_audit_events(&self, team_id: Option<TeamId>) -> Result<u64, StoreError> {
        let team_filter = if team_id.is_some() {
            "team_id = $1"
        } else {
            "team_id IS NULL AND $1 IS NULL"
        };
        let count: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM audit_events WHERE {team_filter} AND seq IS NULL"
        ))
        .bind(team_id.map(|t| t.as_uuid()))
        .fetch_one(&self.read)
        .await?;
        to_u64(count, "count")
    }

    async fn prune_audit_chain(
        &self,
        team_id: Option<TeamId>,
        before: Timestamp,
        note: &(dyn Fn(u64) -> AuditEvent + Send + Sync),
    ) -> Result<u64, StoreError> {
        let chain = chain_name(team_id);
        let team_filter = if team_id.is_some() {
            "team_id = $1"
        } else {
            "team_id IS NULL AND $1 IS NULL"
        };
        let team = team_id.map(|t| t.as_uuid());
        let mut tx = self.write.begin().await?;
        // Lock the chain so no event is appended while its prefix is cut.
        let Some(state) = sqlx::query(
            "UPDATE audit_chains SET head_seq = head_seq WHERE chain = $1 \
             RETURNING team_id, head_seq, head_hash, pruned_seq, pruned_hash, pruned_mac",
        )
        .bind(&chain)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(0);
        };
        let state = chain_from_row(&state)?;
        let first_kept: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MIN(seq) FROM audit_events WHERE {team_filter} AND seq IS NOT NULL AND at >= $2"
        ))
        .bind(team)
        .bind(before)
        .fetch_one(&mut *tx)
        .await?;
        let cut = match first_kept {
            Some(seq) => to_u64(seq, "audit_events.seq")?.saturating_sub(1),
            None => state.head.seq,
        };
        let already = state.boundary.as_ref().map_or(0, |b| b.seq);
        if cut <= already {
            return Ok(0);
        }
        let last_removed: Vec<u8> = sqlx::query_scalar(&format!(
            "SELECT hash FROM audit_events WHERE {team_filter} AND seq = $2"
        ))
        .bind(team)
        .bind(to_i64(cut, "seq")?)
        .fetch_one(&mut *tx)
        .await?;
        let last_removed = chain_hash(Some(last_removed), "audit_events.hash")?.unwrap_or(GENESIS);
        sqlx::query("INSERT INTO audit_prune_permits (id) VALUES (1)")
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query(&format!(
            "DELETE FROM audit_events WHERE {team_filter} AND seq IS NOT NULL AND seq <= $2"
        ))
        .bind(team)
        .bind(to_i64(cut, "seq")?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM audit_prune_permits").execute(&mut *tx).await?;
        let mac = self.audit_key.boundary_mac(team_id, cut, &last_removed);
        sqlx::query("UPDATE audit_chains SET pruned_seq = $2, pruned_hash = $3, pruned_mac = $4 WHERE chain = $1")
            .bind(&chain)
            .bind(to_i64(cut, "seq")?)
            .bind(last_removed.as_slice())
            .bind(mac.as_slice())
            .execute(&mut *tx)
            .await?;
        insert_audit(&mut tx, &self.audit_key, &note(removed)).await?;
        tx.commit().await?;
        Ok(removed)
    }
}
