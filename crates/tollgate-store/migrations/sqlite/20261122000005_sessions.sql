-- Console sign-in: sessions, email verification, single-use account tokens.

ALTER TABLE users ADD COLUMN email_verified_at TEXT;

CREATE TABLE sessions (
    id                  BLOB PRIMARY KEY NOT NULL,
    user_id             BLOB NOT NULL REFERENCES users (id),
    token_hash          BLOB NOT NULL,
    csrf_hash           BLOB NOT NULL,
    created_at          TEXT NOT NULL,
    last_seen_at        TEXT NOT NULL,
    absolute_expires_at TEXT NOT NULL,
    ip                  TEXT,
    user_agent          TEXT,
    -- Approximate place, from the IP address at sign-in (e.g. "Lisbon, Portugal").
    location            TEXT,
    revoked_at          TEXT,
    CONSTRAINT sessions_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id, created_at);

-- Links sent by mail (verify an address, reset a password, confirm or report an email change):
-- single use, stored hashed.
CREATE TABLE account_tokens (
    token_hash BLOB PRIMARY KEY NOT NULL,
    user_id    BLOB NOT NULL REFERENCES users (id),
    purpose    TEXT NOT NULL CHECK (purpose IN ('verify_email', 'reset_password', 'change_email', 'report_email_change', 'restore_account')),
    -- For an email change: the new address.
    data       TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT
);
CREATE INDEX account_tokens_user_id_idx ON account_tokens (user_id, purpose);
