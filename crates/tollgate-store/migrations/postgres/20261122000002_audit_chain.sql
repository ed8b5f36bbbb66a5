-- Audit log: per-team hash chains, append-only enforcement, search indexes.
-- Events written before this migration keep seq/hash NULL and are reported as unchained.

ALTER TABLE audit_events
    ADD COLUMN seq BIGINT,
    ADD COLUMN actor_label_digest BYTEA,
    ADD COLUMN hash BYTEA;

CREATE UNIQUE INDEX audit_events_team_id_seq_key ON audit_events (team_id, seq);
CREATE INDEX audit_events_team_id_actor_id_at_idx ON audit_events (team_id, actor_id, at, id);

-- One row per chain (a team, or 'platform' for events of no team): the head, and where
-- retention last cut the chain (the last removed event's seq and hash, MAC'd with the chain key).
CREATE TABLE audit_chains (
    chain       TEXT PRIMARY KEY NOT NULL,
    team_id     UUID REFERENCES teams (id),
    head_seq    BIGINT NOT NULL,
    head_hash   BYTEA NOT NULL,
    pruned_seq  BIGINT,
    pruned_hash BYTEA,
    pruned_mac  BYTEA
);

-- A row exists here only inside the retention job's, or an account purge's, own transaction:
-- nothing else can delete an event, and an update may only erase an actor's label (the chain
-- commits to the label's keyed digest, which stays).
CREATE TABLE audit_prune_permits (id BIGINT PRIMARY KEY NOT NULL);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM audit_prune_permits) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit events are append-only; only retention removes them';
END;
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE DELETE OR TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

CREATE FUNCTION audit_events_erase_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM audit_prune_permits)
        AND NEW.actor_label IS NULL
        AND (NEW.id, NEW.team_id, NEW.at, NEW.seq, NEW.actor_kind, NEW.actor_id, NEW.actor_label_digest,
             NEW.action, NEW.description, NEW.target, NEW.outcome, NEW.ip, NEW.user_agent, NEW.request_id, NEW.hash)
            IS NOT DISTINCT FROM
            (OLD.id, OLD.team_id, OLD.at, OLD.seq, OLD.actor_kind, OLD.actor_id, OLD.actor_label_digest,
             OLD.action, OLD.description, OLD.target, OLD.outcome, OLD.ip, OLD.user_agent, OLD.request_id, OLD.hash)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit events are append-only';
END;
$$;

CREATE TRIGGER audit_events_erase_only
    BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_erase_only();

-- Facts about this database, e.g. the fingerprint of the audit chain key its chains use.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
