-- Request and response bodies kept for abuse review (30 days by default), compressed and sealed
-- by the server (team and request id bound in); deleted in bounded batches once expired.
CREATE TABLE request_bodies (
    request_id  BLOB PRIMARY KEY NOT NULL,
    team_id     BLOB NOT NULL,
    api_key_id  BLOB NOT NULL,
    endpoint    TEXT NOT NULL,
    model       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    sealed      BLOB NOT NULL
);
CREATE INDEX request_bodies_created_at_idx ON request_bodies (created_at);
