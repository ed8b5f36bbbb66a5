-- External sign-in (OpenID Connect): identities keyed by (issuer, subject), never by email; the
-- flows between the redirect to the provider and its callback; and identities waiting for an
-- address or for the owner of an existing account to link them.

CREATE TABLE identities (
    id         UUID PRIMARY KEY NOT NULL,
    user_id    UUID NOT NULL REFERENCES users (id),
    provider   TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    email      TEXT,
    linked_at  TIMESTAMPTZ NOT NULL,
    CONSTRAINT identities_issuer_subject_key UNIQUE (issuer, subject)
);
CREATE INDEX identities_user_id_idx ON identities (user_id);

CREATE TABLE oidc_flows (
    state_hash   BYTEA PRIMARY KEY NOT NULL,
    provider     TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    browser_hash BYTEA NOT NULL,
    link_user_id UUID REFERENCES users (id),
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    used_at      TIMESTAMPTZ
);

CREATE TABLE pending_identities (
    token_hash     BYTEA PRIMARY KEY NOT NULL,
    provider       TEXT NOT NULL,
    issuer         TEXT NOT NULL,
    subject        TEXT NOT NULL,
    email          TEXT,
    email_verified BOOLEAN NOT NULL,
    name           TEXT,
    created_at     TIMESTAMPTZ NOT NULL,
    expires_at     TIMESTAMPTZ NOT NULL,
    used_at        TIMESTAMPTZ
);
