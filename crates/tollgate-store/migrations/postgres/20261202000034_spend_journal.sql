-- Spend entries are written to a journal in the order they happen, and moved into the ledger
-- in bulk ("folded"), as on SQLite, where writing them to the ledger directly cost billing a
-- fifth of its throughput at a thousand teams. The ledger's index by team put each charged
-- team's spend entry on a leaf of its own: a page dirtied and logged per team per commit
-- (PostgreSQL, whose group commit waits on its round trips, measured no gain from the journal
-- alone; it keeps the two backends' reads the same). The journal is a heap with no index,
-- appended to in the order its rows arrive. A fold moves every journal row into the ledger in one
-- statement (`DELETE … RETURNING` into an `INSERT`, so two nodes folding at once move each row
-- once), so each team's leaf is written once for all its spends since the last fold. Reads see
-- both through the `ledger` view: an entry is in exactly one of the two in every snapshot. No
-- foreign key: a spend's team is its usage rows' team, which `usage_events` checks in the same
-- transaction, and the ledger checks it again as the fold moves it; a key here would cost the
-- group commit a referential check (a query of its own) per spend.
CREATE TABLE spend_journal (
    id          UUID NOT NULL,
    team_id     UUID NOT NULL,
    kind        TEXT NOT NULL CHECK (kind = 'spend'),
    bucket      TEXT NOT NULL CHECK (bucket IN ('prepaid', 'promo', 'invoice')),
    amount      BIGINT NOT NULL,
    lot_id      UUID,
    reason      TEXT,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    charge_id   UUID NOT NULL
);
CREATE VIEW ledger AS
    SELECT id, team_id, kind, bucket, amount, idempotency_key, lot_id, expires_at, reason, actor_kind, actor_id,
        created_at, charge_id FROM ledger_entries
    UNION ALL
    SELECT id, team_id, kind, bucket, amount, NULL::TEXT, lot_id, NULL::TIMESTAMPTZ, reason, actor_kind, actor_id,
        created_at, charge_id FROM spend_journal;
