-- Payments. Bought credit can be taken back (a refund or dispute at the payment provider): a
-- 'refund' entry; a credit note on a paid invoice credits the team: a 'credit_note' entry; a
-- monthly invoice paid settles what its month owed: an 'invoice_payment' entry (bucket invoice). SQLite cannot alter a CHECK constraint, so the table is rebuilt (nothing
-- references it).
CREATE TABLE ledger_entries_new (
    id              BLOB PRIMARY KEY NOT NULL,
    team_id         BLOB NOT NULL REFERENCES teams (id),
    kind            TEXT NOT NULL CHECK (kind IN ('purchase', 'promo_grant', 'spend', 'adjustment', 'forfeiture', 'promo_expiry', 'refund', 'credit_note', 'invoice_payment')),
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
    actor_kind, actor_id, created_at, charge_id)
    SELECT id, team_id, kind, bucket, amount, idempotency_key, lot_id, expires_at, reason, actor_kind, actor_id,
        created_at, charge_id FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_new RENAME TO ledger_entries;
CREATE INDEX ledger_entries_team_id_idx ON ledger_entries (team_id, created_at);

-- A team's customer at the payment provider (Stripe's `cus_…`), made when it is first needed.
CREATE TABLE payment_customers (
    team_id     BLOB PRIMARY KEY NOT NULL REFERENCES teams (id),
    provider    TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

-- Who a team's invoices are made out to; copied into each invoice when it is issued.
CREATE TABLE billing_info (
    team_id     BLOB PRIMARY KEY NOT NULL REFERENCES teams (id),
    name        TEXT NOT NULL,
    email       TEXT NOT NULL,
    line1       TEXT NOT NULL,
    line2       TEXT NOT NULL,
    city        TEXT NOT NULL,
    state       TEXT NOT NULL,
    postal_code TEXT NOT NULL,
    country     TEXT,
    tax_id_type TEXT NOT NULL,
    tax_number  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- Prepaid credit bought through the payment provider. At most one pending per team, so asking
-- twice returns the first; the provider's payment id is unique.
CREATE TABLE top_ups (
    id                BLOB PRIMARY KEY NOT NULL,
    team_id           BLOB NOT NULL REFERENCES teams (id),
    amount_cents      INTEGER NOT NULL CHECK (amount_cents > 0),
    status            TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'refused', 'canceled')),
    provider_ref      TEXT,
    payment_method    TEXT,
    failure           TEXT,
    taken_back_cents  INTEGER NOT NULL DEFAULT 0 CHECK (taken_back_cents >= 0),
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    CONSTRAINT top_ups_provider_ref_key UNIQUE (provider_ref)
);
CREATE UNIQUE INDEX top_ups_one_pending_idx ON top_ups (team_id) WHERE status = 'pending';
CREATE INDEX top_ups_team_id_idx ON top_ups (team_id, created_at);

-- Every provider event processed, by its id, written in the transaction of its effect: a
-- redelivered event finds its row and changes nothing.
CREATE TABLE payment_events (
    event_id    TEXT PRIMARY KEY NOT NULL,
    event_type  TEXT NOT NULL,
    received_at TEXT NOT NULL
);
