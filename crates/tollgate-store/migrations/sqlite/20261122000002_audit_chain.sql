-- Audit log: per-team hash chains, append-only enforcement, search indexes.
-- Events written before this migration keep seq/hash NULL and are reported as unchained.

ALTER TABLE audit_events ADD COLUMN seq INTEGER;
ALTER TABLE audit_events ADD COLUMN actor_label_digest BLOB;
ALTER TABLE audit_events ADD COLUMN hash BLOB;

CREATE UNIQUE INDEX audit_events_team_id_seq_key ON audit_events (team_id, seq);
CREATE INDEX audit_events_team_id_actor_id_at_idx ON audit_events (team_id, actor_id, at, id);

-- One row per chain (a team, or 'platform' for events of no team): the head, and where
-- retention last cut the chain (the last removed event's seq and hash, MAC'd with the chain key).
CREATE TABLE audit_chains (
    chain       TEXT PRIMARY KEY NOT NULL,
    team_id     BLOB REFERENCES teams (id),
    head_seq    INTEGER NOT NULL,
    head_hash   BLOB NOT NULL,
    pruned_seq  INTEGER,
    pruned_hash BLOB,
    pruned_mac  BLOB
);

-- A row exists here only inside the retention job's, or an account purge's, own transaction:
-- nothing else can delete an event, and an update may only erase an actor's label (the chain
-- commits to the label's keyed digest, which stays).
CREATE TABLE audit_prune_permits (id INTEGER PRIMARY KEY NOT NULL);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
WHEN NOT (
    EXISTS (SELECT 1 FROM audit_prune_permits)
    AND NEW.actor_label IS NULL
    AND NEW.id IS OLD.id AND NEW.team_id IS OLD.team_id AND NEW.at IS OLD.at AND NEW.seq IS OLD.seq
    AND NEW.actor_kind IS OLD.actor_kind AND NEW.actor_id IS OLD.actor_id
    AND NEW.actor_label_digest IS OLD.actor_label_digest AND NEW.action IS OLD.action
    AND NEW.description IS OLD.description AND NEW.target IS OLD.target AND NEW.outcome IS OLD.outcome
    AND NEW.ip IS OLD.ip AND NEW.user_agent IS OLD.user_agent AND NEW.request_id IS OLD.request_id
    AND NEW.hash IS OLD.hash
)
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN NOT EXISTS (SELECT 1 FROM audit_prune_permits)
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only; only retention removes them');
END;

-- Facts about this database, e.g. the fingerprint of the audit chain key its chains use.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
