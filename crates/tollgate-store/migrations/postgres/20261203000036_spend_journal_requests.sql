-- A fold sums a charge's journaled spends of one bucket (and lot) into one ledger entry: a node
-- journals a team's spends under one open charge, batch after batch, until its next fold or
-- the billing month's end, so at a thousand teams a fold writes about one ledger entry per team
-- where it wrote one per batch (the ledger's index by team took half of a fold's time). Each
-- journal row carries its count of requests, which the fold adds up for the entry's reason
-- ("N requests", as the row's own reason says).
ALTER TABLE spend_journal ADD COLUMN requests BIGINT NOT NULL DEFAULT 0;
UPDATE spend_journal SET requests = CAST(split_part(reason, ' ', 1) AS BIGINT) WHERE reason ~ '^[0-9]+ requests$';
