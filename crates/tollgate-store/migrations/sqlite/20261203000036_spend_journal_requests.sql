-- A fold sums a charge's journaled spends of one bucket (and lot) into one ledger entry: a node
-- journals a team's spends under one open charge, batch after batch, until its next fold or
-- the billing month's end, so at a thousand teams a fold writes about one ledger entry per team
-- where it wrote one per batch (on PostgreSQL the ledger's index by team took half a fold's time). Each
-- journal row carries its count of requests, which the fold adds up for the entry's reason
-- ("N requests", as the row's own reason says).
ALTER TABLE spend_journal ADD COLUMN requests INTEGER NOT NULL DEFAULT 0;
UPDATE spend_journal SET requests = CAST(substr(reason, 1, instr(reason, ' ') - 1) AS INTEGER)
    WHERE reason GLOB '[0-9]* requests';
