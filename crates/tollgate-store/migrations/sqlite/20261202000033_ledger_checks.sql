-- The ledger's kind and bucket checks as chains of comparisons instead of `IN (…)` lists. SQLite
-- evaluates a CHECK's IN list of more than two values by building a temporary b-tree of the list
-- for every row it writes (two per spend entry: a fifth of the instructions of a group commit
-- of one settlement); a chain of `=` compares in place. The constraints allow exactly what they
-- allowed before. SQLite cannot alter a constraint, so the table is rebuilt as in
-- 20261201000032 (nothing references it). PostgreSQL checks an IN list in place, so its twin
-- changes nothing.
CREATE TABLE ledger_entries_new (
    id              BLOB NOT NULL,
    team_id         BLOB NOT NULL REFERENCES teams (id),
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
