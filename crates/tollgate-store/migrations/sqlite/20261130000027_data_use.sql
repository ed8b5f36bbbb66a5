-- How a team's data may be used: its Admins' permission to train on it (off by default), and
-- the operator's zero-retention grant (no bodies kept, nothing stored by the Responses API).
ALTER TABLE teams ADD COLUMN training_allowed INTEGER NOT NULL DEFAULT 0 CHECK (training_allowed IN (0, 1));
ALTER TABLE teams ADD COLUMN zero_retention INTEGER NOT NULL DEFAULT 0 CHECK (zero_retention IN (0, 1));
