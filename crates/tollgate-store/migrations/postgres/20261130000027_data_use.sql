-- How a team's data may be used: its Admins' permission to train on it (off by default), and
-- the operator's zero-retention grant (no bodies kept, nothing stored by the Responses API).
ALTER TABLE teams ADD COLUMN training_allowed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE teams ADD COLUMN zero_retention BOOLEAN NOT NULL DEFAULT FALSE;
