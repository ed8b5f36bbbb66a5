-- One pending invitation per (team, address): a new one withdraws the old, and this index keeps
-- two concurrent ones from both standing. Older duplicates are withdrawn first (the newest stays).
UPDATE team_invitations SET revoked_at = created_at
WHERE accepted_at IS NULL AND revoked_at IS NULL AND EXISTS (
    SELECT 1 FROM team_invitations newer
    WHERE newer.team_id = team_invitations.team_id AND newer.email = team_invitations.email
      AND newer.accepted_at IS NULL AND newer.revoked_at IS NULL
      AND (newer.created_at > team_invitations.created_at
           OR (newer.created_at = team_invitations.created_at AND newer.id > team_invitations.id))
);
CREATE UNIQUE INDEX team_invitations_pending_key ON team_invitations (team_id, email)
    WHERE accepted_at IS NULL AND revoked_at IS NULL;
