-- The ledger's foreign key to `teams` goes: its referential check, a query per row, was about a
-- third of a fold's time (45 of the 125 ms a fold of 8,192 spends over 1,000 teams took, `EXPLAIN
-- ANALYZE`), and every billed request of a node waits for a fold in turn. Every entry's team is still checked by the database, once:
-- an entry other than a spend moves its team's `team_balances` row in its own transaction
-- (`write_entry`), and that row references `teams`; a spend's team is its usage rows' team,
-- checked as they are written, and the fold moves only spends whose team exists (one join for
-- the whole fold) and fails if any is left over. Teams are never deleted (a deleted team
-- forfeits its credit and keeps its rows), so no entry loses its team later.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_team_id_fkey;
