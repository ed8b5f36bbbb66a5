-- The operator may block a team (every request refused, saying why) and lift the block; the
-- reason is kept here while it stands. Separate from blocked_invoice, which paying lifts.
ALTER TABLE teams ADD COLUMN blocked_reason TEXT;
