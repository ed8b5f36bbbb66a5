-- API key lifecycle: soft deletion, rotation with a grace period, block reasons, last use.

ALTER TABLE api_keys ADD COLUMN deleted_at TEXT;
ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
-- The secret a rotation replaced, still accepted until previous_key_expires_at.
ALTER TABLE api_keys ADD COLUMN previous_key_hash BLOB;
ALTER TABLE api_keys ADD COLUMN previous_key_expires_at TEXT;
ALTER TABLE api_keys ADD COLUMN blocked_reason TEXT;

CREATE UNIQUE INDEX api_keys_previous_key_hash_key ON api_keys (previous_key_hash);
