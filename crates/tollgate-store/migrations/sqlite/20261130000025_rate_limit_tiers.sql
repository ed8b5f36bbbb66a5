-- A team's rate-limit tier: the highest it has reached by its spend (tiers never go down, even
-- when the operator raises the thresholds later), and the operator's pin. No row: tier 0, not
-- pinned.
CREATE TABLE team_tiers (
    team_id    BLOB PRIMARY KEY NOT NULL REFERENCES teams (id),
    reached    INTEGER NOT NULL DEFAULT 0 CHECK (reached >= 0),
    pinned     INTEGER CHECK (pinned >= 0),
    updated_at TEXT NOT NULL
);
