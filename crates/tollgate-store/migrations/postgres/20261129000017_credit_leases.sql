-- Spend: the month's invoice becomes a bucket of its own. The group commit charges each team's
-- requests of a batch as one charge: its spend entries and its usage rows share a charge id
-- (billing verify matches each charge's usage costs to its entries).
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_bucket_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_bucket_check CHECK (bucket IN ('prepaid', 'promo', 'invoice'));
ALTER TABLE ledger_entries ADD COLUMN charge_id UUID;
ALTER TABLE usage_events ADD COLUMN charge_id UUID;
-- The prices a request was charged at (ticks per token), so a month's invoice itemizes it
-- exactly however prices change later.
ALTER TABLE usage_events ADD COLUMN prompt_price BIGINT;
ALTER TABLE usage_events ADD COLUMN cached_prompt_price BIGINT;
ALTER TABLE usage_events ADD COLUMN completion_price BIGINT;

-- What each team's invoice holds per billing month ('2026-11'), maintained from the invoice
-- entries in their transactions: the headroom under the spending limit is read from here.
CREATE TABLE invoice_months (
    team_id    UUID NOT NULL REFERENCES teams (id),
    month      TEXT NOT NULL,
    owed       BIGINT NOT NULL CHECK (owed >= 0),
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (team_id, month)
);

-- Credit leases: a node's slice of a team's spendable credit, taken in one transaction and
-- spent locally. Spends shrink it in the group commit; what is left goes back when the node
-- returns it, or when it expires (a crashed node). Expiry is on the database's clock, in
-- milliseconds since the epoch, so every node judges it alike.
CREATE TABLE credit_leases (
    id            UUID PRIMARY KEY NOT NULL,
    team_id       UUID NOT NULL REFERENCES teams (id),
    node_id       UUID NOT NULL,
    amount        BIGINT NOT NULL CHECK (amount >= 0),
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX credit_leases_team_id_idx ON credit_leases (team_id, expires_at_ms);
