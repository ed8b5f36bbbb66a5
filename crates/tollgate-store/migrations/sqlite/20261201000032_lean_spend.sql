-- A leaner spend entry, as the group commit writes one per team per batch. A spend needs no
-- idempotency key of its own: it is written only for usage rows new to the store (their request
-- ids make a retried batch a no-op) and is named by its charge (`charge_id`). So spends keep no
-- key, and the unique index covers the other kinds only (one b-tree insert less per spend, and
-- no 45-byte key to build). The table is also clustered by team and time (WITHOUT ROWID, keyed
-- by team_id, created_at, id), the order every read of one team's entries wants: a spend is one
-- b-tree insert, where it was four (the rows, the id's index, the key's and the team's). No
-- read looks an entry up by its id alone (ids are UUIDv7: unique without an index). SQLite
-- cannot alter a column or drop a constraint, so the table is rebuilt (nothing references it).
CREATE TABLE ledger_entries_new (
    id              BLOB NOT NULL,
    team_id         BLOB NOT NULL REFERENCES teams (id),
    kind            TEXT NOT NULL CHECK (kind IN ('purchase', 'promo_grant', 'spend', 'adjustment', 'forfeiture', 'promo_expiry', 'refund', 'credit_note', 'invoice_payment')),
    bucket          TEXT NOT NULL CHECK (bucket IN ('prepaid', 'promo', 'invoice')),
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
    SELECT id, team_id, kind, bucket, amount, CASE WHEN kind = 'spend' AND charge_id IS NOT NULL THEN NULL ELSE idempotency_key END,
        lot_id, expires_at, reason, actor_kind, actor_id, created_at, charge_id FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_new RENAME TO ledger_entries;
CREATE UNIQUE INDEX ledger_entries_idempotency_key_key ON ledger_entries (idempotency_key) WHERE idempotency_key IS NOT NULL;
