-- Payments. Bought credit can be taken back (a refund or dispute at the payment provider): a
-- 'refund' entry; a credit note on a paid invoice credits the team: a 'credit_note' entry; a
-- monthly invoice paid settles what its month owed: an 'invoice_payment' entry (bucket invoice).
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('purchase', 'promo_grant', 'spend', 'adjustment', 'forfeiture', 'promo_expiry', 'refund', 'credit_note', 'invoice_payment'));

-- A team's customer at the payment provider (Stripe's `cus_…`), made when it is first needed.
CREATE TABLE payment_customers (
    team_id     UUID PRIMARY KEY NOT NULL REFERENCES teams (id),
    provider    TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

-- Who a team's invoices are made out to; copied into each invoice when it is issued.
CREATE TABLE billing_info (
    team_id     UUID PRIMARY KEY NOT NULL REFERENCES teams (id),
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
    updated_at  TIMESTAMPTZ NOT NULL
);

-- Prepaid credit bought through the payment provider. At most one pending per team, so asking
-- twice returns the first; the provider's payment id is unique.
CREATE TABLE top_ups (
    id                UUID PRIMARY KEY NOT NULL,
    team_id           UUID NOT NULL REFERENCES teams (id),
    amount_cents      BIGINT NOT NULL CHECK (amount_cents > 0),
    status            TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'refused', 'canceled')),
    provider_ref      TEXT,
    payment_method    TEXT,
    failure           TEXT,
    taken_back_cents  BIGINT NOT NULL DEFAULT 0 CHECK (taken_back_cents >= 0),
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    CONSTRAINT top_ups_provider_ref_key UNIQUE (provider_ref)
);
CREATE UNIQUE INDEX top_ups_one_pending_idx ON top_ups (team_id) WHERE status = 'pending';
CREATE INDEX top_ups_team_id_idx ON top_ups (team_id, created_at);

-- Every provider event processed, by its id, written in the transaction of its effect: a
-- redelivered event finds its row and changes nothing.
CREATE TABLE payment_events (
    event_id    TEXT PRIMARY KEY NOT NULL,
    event_type  TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
