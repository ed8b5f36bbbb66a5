-- A team's key policy: the widest grants and the highest limits a Member's API key may have.
-- No row: no ceiling.
CREATE TABLE team_key_policies (
    team_id    BLOB PRIMARY KEY NOT NULL REFERENCES teams (id),
    acls       TEXT,
    max_qps    INTEGER,
    max_qpm    INTEGER,
    max_tpm    INTEGER,
    updated_at TEXT NOT NULL,
    updated_by BLOB REFERENCES users (id)
);
