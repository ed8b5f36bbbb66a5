-- A leaner spend entry, as the group commit writes one per team per batch. A spend needs no
-- idempotency key of its own: it is written only for usage rows new to the store (their request
-- ids make a retried batch a no-op) and is named by its charge (`charge_id`). So spends keep no
-- key, and the unique index covers the other kinds only (one index insert less per spend, and
-- no 45-byte key to build).
ALTER TABLE ledger_entries ALTER COLUMN idempotency_key DROP NOT NULL;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_idempotency_key_key;
UPDATE ledger_entries SET idempotency_key = NULL WHERE kind = 'spend' AND charge_id IS NOT NULL;
CREATE UNIQUE INDEX ledger_entries_idempotency_key_key ON ledger_entries (idempotency_key) WHERE idempotency_key IS NOT NULL;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_idempotency_key_check
    CHECK (idempotency_key IS NOT NULL OR (kind = 'spend' AND charge_id IS NOT NULL));
