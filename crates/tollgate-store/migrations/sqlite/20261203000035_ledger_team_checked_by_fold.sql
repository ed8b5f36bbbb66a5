-- The ledger's foreign key to `teams` goes, as on PostgreSQL (where its check was a third of a
-- fold's time). Here the check was 2.8k of the 17.1k instructions a fold spent per spend entry
-- (callgrind, the `sqlite3` shell, 8,192 entries over 1,000 teams); the fold's own check
-- (`fold_spends`) costs 1.7k. Every entry's team is still checked by the database, once: an entry other
-- than a spend moves its team's `team_balances` row in its own transaction (`write_entry`), and
-- that row references `teams`; a spend's team is its usage rows' team, checked as they are
-- written, and the fold moves only spends whose team exists (a look-up of the teams' key,
-- without a foreign key's bookkeeping) and fails if any is left over. Teams are never deleted (a deleted team forfeits its credit and
-- keeps its rows), so no entry loses its team later. SQLite cannot drop a constraint, so the
-- table is rebuilt as in 20261202000033, and the `ledger` view over it with it.
DROP VIEW ledger;
CREATE TABLE ledger_entries_new (
    id              BLOB NOT NULL,
    team_id         BLOB NOT NULL,
    kind            TEXT NOT NULL CHECK (kind = 'purchase' OR kind = 'promo_grant' OR kind = 'spend' OR kind = 'adjustment'
                                         OR kind = 'forfeiture' OR kind = 'promo_expiry' OR kind = 'refund'
                                         OR kind = 'credit_note' OR kind = 'invoice_payment'),
    bucket          TEXT NOT NULL CHECK (bucket = 'prepaid' OR bucket = 'promo' OR bucket = 'invoice'),
    amount          INTEGER NOT NULL,
    idempotency_key TEXT,
    lot_id          BLOB,
    expires_at      TEXT,
    reason          TEXT,
    actor_kind      TEXT NOT NULL,
    actor_id        TEXT,
    created_at      TEXT NOT NULL,
    charge_id       BLOB,
    PRIMARY KEY (team_id, created_at, id),
    CHECK (idempotency_key IS NOT NULL OR (kind = 'spend' AND charge_id IS NOT NULL))
) WITHOUT ROWID;
INSERT INTO ledger_entries_new (id, team_id, kind, bucket, amount, idempotency_key, lot_id, expires_at, reason,
    actor_kind, actor_id, created_at, charge_id)
    SELECT id, team_id, kind, bucket, amount, idempotency_key, lot_id, expires_at, reason, actor_kind, actor_id,
        created_at, charge_id FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_new RENAME TO ledger_entries;
CREATE UNIQUE INDEX ledger_entries_idempotency_key_key ON ledger_entries (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE VIEW ledger AS
    SELECT id, team_id, kind, bucket, amount, idempotency_key, lot_id, expires_at, reason, actor_kind, actor_id,
        created_at, charge_id FROM ledger_entries
    UNION ALL
    SELECT id, team_id, kind, bucket, amount, NULL, lot_id, NULL, reason, actor_kind, actor_id, created_at, charge_id
        FROM spend_journal;
