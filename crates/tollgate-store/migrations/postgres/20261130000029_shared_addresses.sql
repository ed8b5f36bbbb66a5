-- Several accounts may share an address (a person's own and their company's, each with its own
-- teams and billing), but at most one of them signs in with a password, so email + password
-- sign-in is never ambiguous: users_email_key is now unique among accounts with a password only.
ALTER TABLE users DROP CONSTRAINT users_email_key;
CREATE UNIQUE INDEX users_email_key ON users (email) WHERE password_hash IS NOT NULL;
CREATE INDEX users_email_idx ON users (email);
