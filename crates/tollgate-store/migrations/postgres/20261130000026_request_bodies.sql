-- Request and response bodies kept for abuse review (30 days by default), compressed and sealed
-- by the server (team and request id bound in). Partitioned by day: retention drops whole
-- partitions (made ahead by the housekeeping job); rows outside them land in the default
-- partition, deleted in bounded batches.
CREATE TABLE request_bodies (
    request_id  UUID NOT NULL,
    team_id     UUID NOT NULL,
    api_key_id  UUID NOT NULL,
    endpoint    TEXT NOT NULL,
    model       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    sealed      BYTEA NOT NULL,
    PRIMARY KEY (request_id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE request_bodies_default PARTITION OF request_bodies DEFAULT;
CREATE INDEX request_bodies_created_at_idx ON request_bodies (created_at);
