-- Second factors: TOTP (seed sealed with the server key), recovery codes (hashed), and the
-- short-lived challenge between a password and its second factor at sign-in.

ALTER TABLE users
    ADD COLUMN totp_seed BYTEA,
    ADD COLUMN totp_pending_seed BYTEA,
    ADD COLUMN totp_enabled_at TIMESTAMPTZ,
    ADD COLUMN totp_last_step BIGINT;

CREATE TABLE recovery_codes (
    code_hash  BYTEA PRIMARY KEY NOT NULL,
    user_id    UUID NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);
CREATE INDEX recovery_codes_user_id_idx ON recovery_codes (user_id);

CREATE TABLE mfa_challenges (
    token_hash BYTEA PRIMARY KEY NOT NULL,
    user_id    UUID NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);
