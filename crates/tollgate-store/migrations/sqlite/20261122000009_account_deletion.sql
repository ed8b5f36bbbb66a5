-- Account deletion: 30 days to restore, then the personal data is purged.

ALTER TABLE users ADD COLUMN deleted_at TEXT;
ALTER TABLE users ADD COLUMN purge_after TEXT;
ALTER TABLE users ADD COLUMN purged_at TEXT;
-- A deleted account's memberships wait here (off every member list) until restore or purge.
ALTER TABLE team_members ADD COLUMN suspended_at TEXT;
CREATE INDEX users_purge_after_idx ON users (purge_after) WHERE purge_after IS NOT NULL;
