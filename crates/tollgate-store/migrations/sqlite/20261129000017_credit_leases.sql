-- Spend: the month's invoice becomes a bucket of its own. The group commit charges each team's
-- requests of a batch as one charge: its spend entries and its usage rows share a charge id
-- (billing verify matches each charge's usage costs to its entries). SQLite cannot alter a
-- CHECK constraint, so the table is rebuilt (nothing references it).
CREATE TABLE ledger_entries_new (
    id              BLOB PRIMARY KEY NOT NULL,
    team_id         BLOB NOT NULL REFERENCES teams (id),
    kind            TEXT NOT NULL CHECK (kind IN ('purchase', 'promo_grant', 'spend', 'adjustment', 'forfeiture', 'promo_expiry')),
    bucket          TEXT NOT NULL CHECK (bucket IN ('prepaid', 'promo', 'invoice')),
    amount          INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    lot_id          BLOB,
    expires_at      TEXT,
    reason          TEXT,
    actor_kind      TEXT NOT NULL,
    actor_id        TEXT,
    created_at      TEXT NOT NULL,
    charge_id       BLOB,
    CONSTRAINT ledger_entries_idempotency_key_key UNIQUE (idempotency_key)
);
INSERT INTO ledger_entries_new (id, team_id, kind, bucket, amount, idempotency_key, lot_id, expires_at, reason,
    actor_kind, actor_id, created_at)
    SELECT id, team_id, kind, bucket, amount, idempotency_key, lot_id, expires_at, reason, actor_kind, actor_id,
        created_at FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_new RENAME TO ledger_entries;
CREATE INDEX ledger_entries_team_id_idx ON ledger_entries (team_id, created_at);
ALTER TABLE usage_events ADD COLUMN charge_id BLOB;
-- The prices a request was charged at (ticks per token), so a month's invoice itemizes it
-- exactly however prices change later.
ALTER TABLE usage_events ADD COLUMN prompt_price INTEGER;
ALTER TABLE usage_events ADD COLUMN cached_prompt_price INTEGER;
ALTER TABLE usage_events ADD COLUMN completion_price INTEGER;

-- What each team's invoice holds per billing month ('2026-11'), maintained from the invoice
-- entries in their transactions: the headroom under the spending limit is read from here.
CREATE TABLE invoice_months (
    team_id    BLOB NOT NULL REFERENCES teams (id),
    month      TEXT NOT NULL,
    owed       INTEGER NOT NULL CHECK (owed >= 0),
    updated_at TEXT NOT NULL,
    PRIMARY KEY (team_id, month)
);

-- Credit leases: a node's slice of a team's spendable credit, taken in one transaction and
-- spent locally. Spends shrink it in the group commit; what is left goes back when the node
-- returns it, or when it expires (a crashed node). Expiry is on the database's clock, in
-- milliseconds since the epoch, so every node judges it alike.
CREATE TABLE credit_leases (
    id            BLOB PRIMARY KEY NOT NULL,
    team_id       BLOB NOT NULL REFERENCES teams (id),
    node_id       BLOB NOT NULL,
    amount        INTEGER NOT NULL CHECK (amount >= 0),
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX credit_leases_team_id_idx ON credit_leases (team_id, expires_at_ms);
