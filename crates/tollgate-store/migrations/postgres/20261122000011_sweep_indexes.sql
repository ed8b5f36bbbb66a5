-- Housekeeping deletes old sessions by age (outbox mail has its created_at index already).
CREATE INDEX sessions_created_at_idx ON sessions (created_at);
