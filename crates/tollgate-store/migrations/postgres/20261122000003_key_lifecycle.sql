-- API key lifecycle: soft deletion, rotation with a grace period, block reasons, last use.

ALTER TABLE api_keys
    ADD COLUMN deleted_at TIMESTAMPTZ,
    ADD COLUMN last_used_at TIMESTAMPTZ,
    -- The secret a rotation replaced, still accepted until previous_key_expires_at.
    ADD COLUMN previous_key_hash BYTEA,
    ADD COLUMN previous_key_expires_at TIMESTAMPTZ,
    ADD COLUMN blocked_reason TEXT;

CREATE UNIQUE INDEX api_keys_previous_key_hash_key ON api_keys (previous_key_hash);
