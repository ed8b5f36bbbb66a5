-- External sign-in (OpenID Connect): identities keyed by (issuer, subject), never by email; the
-- flows between the redirect to the provider and its callback; and identities waiting for an
-- address or for the owner of an existing account to link them.

CREATE TABLE identities (
    id         BLOB PRIMARY KEY NOT NULL,
    user_id    BLOB NOT NULL REFERENCES users (id),
    provider   TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    email      TEXT,
    linked_at  TEXT NOT NULL,
    CONSTRAINT identities_issuer_subject_key UNIQUE (issuer, subject)
);
CREATE INDEX identities_user_id_idx ON identities (user_id);

CREATE TABLE oidc_flows (
    state_hash   BLOB PRIMARY KEY NOT NULL,
    provider     TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    browser_hash BLOB NOT NULL,
    link_user_id BLOB REFERENCES users (id),
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    used_at      TEXT
);

CREATE TABLE pending_identities (
    token_hash     BLOB PRIMARY KEY NOT NULL,
    provider       TEXT NOT NULL,
    issuer         TEXT NOT NULL,
    subject        TEXT NOT NULL,
    email          TEXT,
    email_verified BOOLEAN NOT NULL,
    name           TEXT,
    created_at     TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    used_at        TEXT
);
