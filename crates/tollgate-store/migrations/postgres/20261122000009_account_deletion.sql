-- Account deletion: 30 days to restore, then the personal data is purged.

ALTER TABLE users
    ADD COLUMN deleted_at TIMESTAMPTZ,
    ADD COLUMN purge_after TIMESTAMPTZ,
    ADD COLUMN purged_at TIMESTAMPTZ;
-- A deleted account's memberships wait here (off every member list) until restore or purge.
ALTER TABLE team_members ADD COLUMN suspended_at TIMESTAMPTZ;
CREATE INDEX users_purge_after_idx ON users (purge_after) WHERE purge_after IS NOT NULL;
