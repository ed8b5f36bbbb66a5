-- The credit ledger: append-only entries per team, each idempotent on its key. Amounts are USD
-- ticks (1e-10 USD), signed: credit to the team positive, consumption negative. A bucket says
-- which credit an entry moves: prepaid, or promotional (which expires, lot by lot).
CREATE TABLE ledger_entries (
    id              BLOB PRIMARY KEY NOT NULL,
    team_id         BLOB NOT NULL REFERENCES teams (id),
    kind            TEXT NOT NULL CHECK (kind IN ('purchase', 'promo_grant', 'spend', 'adjustment', 'forfeiture', 'promo_expiry')),
    bucket          TEXT NOT NULL CHECK (bucket IN ('prepaid', 'promo')),
    amount          INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    lot_id          BLOB,
    expires_at      TEXT,
    reason          TEXT,
    actor_kind      TEXT NOT NULL,
    actor_id        TEXT,
    created_at      TEXT NOT NULL,
    CONSTRAINT ledger_entries_idempotency_key_key UNIQUE (idempotency_key)
);
CREATE INDEX ledger_entries_team_id_idx ON ledger_entries (team_id, created_at);

-- Balances maintained from the entries, in the entries' transactions (never a sum on the hot
-- path); `tollgate billing verify` checks them against the sums.
CREATE TABLE team_balances (
    team_id    BLOB PRIMARY KEY NOT NULL REFERENCES teams (id),
    prepaid    INTEGER NOT NULL DEFAULT 0,
    promo      INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL
);

-- Promotional credit, lot by lot (one per grant): consumed soonest expiry first; what is left
-- at expiry is written off by a promo_expiry entry.
CREATE TABLE credit_lots (
    id         BLOB PRIMARY KEY NOT NULL,
    team_id    BLOB NOT NULL REFERENCES teams (id),
    granted    INTEGER NOT NULL,
    remaining  INTEGER NOT NULL CHECK (remaining >= 0),
    expires_at TEXT NOT NULL
);
CREATE INDEX credit_lots_team_id_idx ON credit_lots (team_id, expires_at);
