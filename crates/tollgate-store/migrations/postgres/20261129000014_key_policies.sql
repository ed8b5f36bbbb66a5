-- A team's key policy: the widest grants and the highest limits a Member's API key may have.
-- No row: no ceiling.
CREATE TABLE team_key_policies (
    team_id    UUID PRIMARY KEY NOT NULL REFERENCES teams (id),
    acls       TEXT,
    max_qps    BIGINT,
    max_qpm    BIGINT,
    max_tpm    BIGINT,
    updated_at TIMESTAMPTZ NOT NULL,
    updated_by UUID REFERENCES users (id)
);
