-- Tollgate schema, SQLite. Ids are UUIDv7 stored as 16-byte BLOBs, times are RFC 3339 text
-- in UTC, booleans are 0/1, money is INTEGER USD ticks (1e-10 USD). Keep constraint and
-- column names identical to migrations/postgres.

CREATE TABLE users (
    id            BLOB PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    password_hash TEXT,
    created_at    TEXT NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE TABLE teams (
    id         BLOB PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    personal   INTEGER NOT NULL CHECK (personal IN (0, 1)),
    created_at TEXT NOT NULL
);

CREATE TABLE team_members (
    team_id    BLOB NOT NULL REFERENCES teams (id),
    user_id    BLOB NOT NULL REFERENCES users (id),
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at TEXT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user_id_idx ON team_members (user_id);

CREATE TABLE api_keys (
    id          BLOB PRIMARY KEY NOT NULL,
    team_id     BLOB NOT NULL REFERENCES teams (id),
    name        TEXT NOT NULL,
    key_hash    BLOB NOT NULL,
    redacted    TEXT NOT NULL,
    acls        TEXT NOT NULL,
    qps         INTEGER,
    qpm         INTEGER,
    tpm         INTEGER,
    expire_time TEXT,
    disabled    INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    blocked     INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
    created_by  BLOB REFERENCES users (id),
    created_at  TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    modified_by BLOB REFERENCES users (id),
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX api_keys_team_id_idx ON api_keys (team_id, id);

CREATE TABLE management_keys (
    id         BLOB PRIMARY KEY NOT NULL,
    team_id    BLOB NOT NULL REFERENCES teams (id),
    name       TEXT NOT NULL,
    key_hash   BLOB NOT NULL,
    redacted   TEXT NOT NULL,
    created_by BLOB REFERENCES users (id),
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    CONSTRAINT management_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX management_keys_team_id_idx ON management_keys (team_id, id);

-- One row per billable request. Append-only; never updated.
CREATE TABLE usage_events (
    request_id           BLOB PRIMARY KEY NOT NULL,
    team_id              BLOB NOT NULL REFERENCES teams (id),
    api_key_id           BLOB NOT NULL REFERENCES api_keys (id),
    model                TEXT NOT NULL,
    endpoint             TEXT NOT NULL,
    prompt_tokens        INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    cached_prompt_tokens INTEGER NOT NULL CHECK (cached_prompt_tokens >= 0),
    completion_tokens    INTEGER NOT NULL CHECK (completion_tokens >= 0),
    reasoning_tokens     INTEGER NOT NULL CHECK (reasoning_tokens >= 0),
    total_tokens         INTEGER NOT NULL CHECK (total_tokens >= 0),
    cost_ticks           INTEGER NOT NULL CHECK (cost_ticks >= 0),
    estimated            INTEGER NOT NULL CHECK (estimated IN (0, 1)),
    streamed             INTEGER NOT NULL CHECK (streamed IN (0, 1)),
    duration_ms          INTEGER NOT NULL CHECK (duration_ms >= 0),
    created_at           TEXT NOT NULL
);
CREATE INDEX usage_events_team_id_created_at_idx ON usage_events (team_id, created_at);

-- Append-only: no code path updates or deletes an event (retention aside).
CREATE TABLE audit_events (
    id          BLOB PRIMARY KEY NOT NULL,
    team_id     BLOB REFERENCES teams (id),
    at          TEXT NOT NULL,
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
