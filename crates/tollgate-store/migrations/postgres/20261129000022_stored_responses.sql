-- Stored responses of the Responses API, per team, kept 30 days (configurable). `sealed` holds
-- the response and its conversation, encrypted (XChaCha20-Poly1305) with the team and response
-- ids as associated data, so a row read under another team does not open.
CREATE TABLE stored_responses (
    id          TEXT PRIMARY KEY NOT NULL,
    team_id     UUID NOT NULL REFERENCES teams (id),
    api_key_id  UUID NOT NULL,
    model       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    sealed      BYTEA NOT NULL
);
CREATE INDEX stored_responses_expiry_idx ON stored_responses (expires_at);
CREATE INDEX stored_responses_team_idx ON stored_responses (team_id);
