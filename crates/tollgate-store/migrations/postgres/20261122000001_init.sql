-- Tollgate schema, PostgreSQL. Ids are UUIDv7, times TIMESTAMPTZ, money BIGINT USD ticks
-- (1e-10 USD). Keep constraint and column names identical to migrations/sqlite.

CREATE TABLE users (
    id            UUID PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    password_hash TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE TABLE teams (
    id         UUID PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    personal   BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE team_members (
    team_id    UUID NOT NULL REFERENCES teams (id),
    user_id    UUID NOT NULL REFERENCES users (id),
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user_id_idx ON team_members (user_id);

CREATE TABLE api_keys (
    id          UUID PRIMARY KEY NOT NULL,
    team_id     UUID NOT NULL REFERENCES teams (id),
    name        TEXT NOT NULL,
    key_hash    BYTEA NOT NULL,
    redacted    TEXT NOT NULL,
    acls        TEXT NOT NULL,
    qps         BIGINT,
    qpm         BIGINT,
    tpm         BIGINT,
    expire_time TIMESTAMPTZ,
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    blocked     BOOLEAN NOT NULL DEFAULT FALSE,
    created_by  UUID REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL,
    modified_at TIMESTAMPTZ NOT NULL,
    modified_by UUID REFERENCES users (id),
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX api_keys_team_id_idx ON api_keys (team_id, id);

CREATE TABLE management_keys (
    id         UUID PRIMARY KEY NOT NULL,
    team_id    UUID NOT NULL REFERENCES teams (id),
    name       TEXT NOT NULL,
    key_hash   BYTEA NOT NULL,
    redacted   TEXT NOT NULL,
    created_by UUID REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ,
    CONSTRAINT management_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX management_keys_team_id_idx ON management_keys (team_id, id);

-- One row per billable request. Append-only; never updated.
CREATE TABLE usage_events (
    request_id           UUID PRIMARY KEY NOT NULL,
    team_id              UUID NOT NULL REFERENCES teams (id),
    api_key_id           UUID NOT NULL REFERENCES api_keys (id),
    model                TEXT NOT NULL,
    endpoint             TEXT NOT NULL,
    prompt_tokens        BIGINT NOT NULL CHECK (prompt_tokens >= 0),
    cached_prompt_tokens BIGINT NOT NULL CHECK (cached_prompt_tokens >= 0),
    completion_tokens    BIGINT NOT NULL CHECK (completion_tokens >= 0),
    reasoning_tokens     BIGINT NOT NULL CHECK (reasoning_tokens >= 0),
    total_tokens         BIGINT NOT NULL CHECK (total_tokens >= 0),
    cost_ticks           BIGINT NOT NULL CHECK (cost_ticks >= 0),
    estimated            BOOLEAN NOT NULL,
    streamed             BOOLEAN NOT NULL,
    duration_ms          BIGINT NOT NULL CHECK (duration_ms >= 0),
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX usage_events_team_id_created_at_idx ON usage_events (team_id, created_at);

-- Append-only: no code path updates or deletes an event (retention aside).
CREATE TABLE audit_events (
    id          UUID PRIMARY KEY NOT NULL,
    team_id     UUID REFERENCES teams (id),
    at TIMESTAMPTZ NOT NULL,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT,
    actor_label TEXT,
    action      TEXT NOT NULL,
    description TEXT NOT NULL,
    target      TEXT,
    outcome     TEXT NOT NULL CHECK (outcome IN ('success', 'denied', 'failure')),
    ip          TEXT,
    user_agent  TEXT,
    request_id  TEXT
);
CREATE INDEX audit_events_team_id_at_idx ON audit_events (team_id, at, id);
