-- Spends no longer shrink their credit lease in the group commit (an UPDATE per team per batch):
-- the node reports what it has spent on the lease in all when it renews or grows it, and the
-- lease shrinks then by what had not been reported. `spent` is that cumulative report, so a
-- report applied twice (an answer lost after its commit) changes nothing the second time.
ALTER TABLE credit_leases ADD COLUMN spent INTEGER NOT NULL DEFAULT 0 CHECK (spent >= 0);
