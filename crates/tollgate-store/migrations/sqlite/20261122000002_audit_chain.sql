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

-- A row exists here only inside the retention job's own transaction; nothing else can delete.
CREATE TABLE audit_prune_permits (id INTEGER PRIMARY KEY NOT NULL);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
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
