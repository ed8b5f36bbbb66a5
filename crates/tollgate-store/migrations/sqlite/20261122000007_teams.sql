-- Teams: descriptions, deletion, and invitations of people who have no account yet.

ALTER TABLE teams ADD COLUMN description TEXT;
ALTER TABLE teams ADD COLUMN deleted_at TEXT;

CREATE TABLE team_invitations (
    id          BLOB PRIMARY KEY NOT NULL,
    team_id     BLOB NOT NULL REFERENCES teams (id),
    email       TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    token_hash  BLOB NOT NULL,
    invited_by  BLOB REFERENCES users (id),
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    accepted_at TEXT,
    revoked_at  TEXT,
    CONSTRAINT team_invitations_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX team_invitations_team_id_idx ON team_invitations (team_id, created_at);
CREATE INDEX team_invitations_email_idx ON team_invitations (email);
