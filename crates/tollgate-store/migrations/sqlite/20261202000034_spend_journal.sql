-- Spend entries are written to a journal in the order they happen, and moved into the ledger
-- in bulk ("folded"). The ledger is clustered by team (its reads want a team's entries in
-- order), so a group commit that charged many teams wrote a spend entry onto a leaf of its own
-- for each of them: a page read, dirtied and logged per team per commit, which at a thousand
-- teams cost billing a fifth of its throughput. The journal is appended to in the order its
-- rows arrive (one leaf for a whole commit), and has no index for a commit to write. A fold
-- moves every journal row into the ledger in one transaction, so each team's leaf is written
-- once for all its spends since the last fold. Reads see both through the `ledger` view: an
-- entry is in exactly one of the two at every moment. No foreign key: a spend's team is its
-- usage rows' team, which `usage_events` checks in the same transaction, and the ledger checks
-- it again as the fold moves it; a key here would cost a lookup per spend in the group commit,
-- and keep SQLite from emptying the journal at once (with foreign keys on, `DELETE` of a
-- child table goes row by row: 3k instructions a row against 350).
CREATE TABLE spend_journal (
    id          BLOB NOT NULL,
    team_id     BLOB NOT NULL,
    kind        TEXT NOT NULL CHECK (kind = 'spend'),
    bucket      TEXT NOT NULL CHECK (bucket = 'prepaid' OR bucket = 'promo' OR bucket = 'invoice'),
    amount      INTEGER NOT NULL,
    lot_id      BLOB,
    reason      TEXT,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT,
    created_at  TEXT NOT NULL,
    charge_id   BLOB NOT NULL
);
CREATE VIEW ledger AS
    SELECT id, team_id, kind, bucket, amount, idempotency_key, lot_id, expires_at, reason, actor_kind, actor_id,
        created_at, charge_id FROM ledger_entries
    UNION ALL
    SELECT id, team_id, kind, bucket, amount, NULL, lot_id, NULL, reason, actor_kind, actor_id, created_at, charge_id
        FROM spend_journal;
