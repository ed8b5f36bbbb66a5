-- Deferred chat completions: asked for with "deferred": true, run in the background by the node
-- that admitted them, fetched once by any node. A pending one not finished by lost_after was
-- lost (its node stopped) and is reported failed; every row is deleted at expires_at (24 h),
-- fetched or not. The finished body is sealed (XChaCha20-Poly1305, the team and request ids as
-- associated data).
CREATE TABLE deferred_completions (
    id           TEXT PRIMARY KEY NOT NULL,
    team_id      BLOB NOT NULL REFERENCES teams (id),
    api_key_id   BLOB NOT NULL,
    model        TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    created_at   TEXT NOT NULL,
    lost_after   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    finished_at  TEXT,
    http_status  INTEGER,
    sealed       BLOB
);
CREATE INDEX deferred_completions_expiry_idx ON deferred_completions (expires_at);
