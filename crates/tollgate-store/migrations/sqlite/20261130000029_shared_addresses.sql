-- Several accounts may share an address (a person's own and their company's, each with its own
-- teams and billing), but at most one of them signs in with a password, so email + password
-- sign-in is never ambiguous: users_email_key is now unique among accounts with a password only.
--
-- SQLite cannot drop a table constraint, so the users table is rebuilt in this migration's
-- transaction. Foreign keys cannot be turned off inside a transaction, but they can be deferred
-- to its commit: dropping users counts its members, keys, … as orphans, putting every row back
-- under the same id settles each, and the commit would fail if any were left.
PRAGMA defer_foreign_keys = ON;
CREATE TABLE users_copy AS SELECT * FROM users;
DROP TABLE users;
CREATE TABLE users (
    id                BLOB PRIMARY KEY NOT NULL,
    email             TEXT NOT NULL,
    display_name      TEXT NOT NULL,
    password_hash     TEXT,
    created_at        TEXT NOT NULL,
    email_verified_at TEXT,
    totp_seed         BLOB,
    totp_pending_seed BLOB,
    totp_enabled_at   TEXT,
    totp_last_step    INTEGER,
    deleted_at        TEXT,
    purge_after       TEXT,
    purged_at         TEXT,
    passkey_count     INTEGER NOT NULL DEFAULT 0 CHECK (passkey_count >= 0)
);
INSERT INTO users (id, email, display_name, password_hash, created_at, email_verified_at, totp_seed,
    totp_pending_seed, totp_enabled_at, totp_last_step, deleted_at, purge_after, purged_at, passkey_count)
SELECT id, email, display_name, password_hash, created_at, email_verified_at, totp_seed,
    totp_pending_seed, totp_enabled_at, totp_last_step, deleted_at, purge_after, purged_at, passkey_count
FROM users_copy;
DROP TABLE users_copy;
CREATE INDEX users_purge_after_idx ON users (purge_after) WHERE purge_after IS NOT NULL;
CREATE UNIQUE INDEX users_email_key ON users (email) WHERE password_hash IS NOT NULL;
CREATE INDEX users_email_idx ON users (email);
