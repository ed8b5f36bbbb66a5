-- Console sign-in: sessions, email verification, single-use account tokens.

ALTER TABLE users ADD COLUMN email_verified_at TIMESTAMPTZ;

CREATE TABLE sessions (
    id                  UUID PRIMARY KEY NOT NULL,
    user_id             UUID NOT NULL REFERENCES users (id),
    token_hash          BYTEA NOT NULL,
    csrf_hash           BYTEA NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    last_seen_at        TIMESTAMPTZ NOT NULL,
    absolute_expires_at TIMESTAMPTZ NOT NULL,
    ip                  TEXT,
    user_agent          TEXT,
    -- Approximate place, from the IP address at sign-in (e.g. "Lisbon, Portugal").
    location            TEXT,
    revoked_at          TIMESTAMPTZ,
    CONSTRAINT sessions_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id, created_at);

-- Links sent by mail (verify an address, reset a password, confirm or report an email change):
-- single use, stored hashed.
CREATE TABLE account_tokens (
    token_hash BYTEA PRIMARY KEY NOT NULL,
    user_id    UUID NOT NULL REFERENCES users (id),
    purpose    TEXT NOT NULL CHECK (purpose IN ('verify_email', 'reset_password', 'change_email', 'report_email_change', 'restore_account')),
    -- For an email change: the new address.
    data       TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);
CREATE INDEX account_tokens_user_id_idx ON account_tokens (user_id, purpose);
