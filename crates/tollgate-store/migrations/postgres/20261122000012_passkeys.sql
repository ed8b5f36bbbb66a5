-- Passkeys (WebAuthn credentials) as second factors, and the ceremonies that add and prove them.

ALTER TABLE users ADD COLUMN passkey_count INTEGER NOT NULL DEFAULT 0 CHECK (passkey_count >= 0);

CREATE TABLE passkeys (
    id            UUID PRIMARY KEY NOT NULL,
    user_id       UUID NOT NULL REFERENCES users (id),
    name          TEXT NOT NULL,
    credential_id BYTEA NOT NULL,
    data          TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    last_used_at  TIMESTAMPTZ,
    CONSTRAINT passkeys_credential_id_key UNIQUE (credential_id)
);
CREATE INDEX passkeys_user_id_idx ON passkeys (user_id);

CREATE TABLE webauthn_ceremonies (
    token_hash BYTEA PRIMARY KEY NOT NULL,
    user_id    UUID NOT NULL REFERENCES users (id),
    purpose    TEXT NOT NULL CHECK (purpose IN ('register', 'authenticate')),
    state      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);
