-- Teams: descriptions, deletion, and invitations of people who have no account yet.

ALTER TABLE teams
    ADD COLUMN description TEXT,
    ADD COLUMN deleted_at TIMESTAMPTZ;

CREATE TABLE team_invitations (
    id          UUID PRIMARY KEY NOT NULL,
    team_id     UUID NOT NULL REFERENCES teams (id),
    email       TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    token_hash  BYTEA NOT NULL,
    invited_by  UUID REFERENCES users (id),
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    accepted_at TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ,
    CONSTRAINT team_invitations_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX team_invitations_team_id_idx ON team_invitations (team_id, created_at);
CREATE INDEX team_invitations_email_idx ON team_invitations (email);
