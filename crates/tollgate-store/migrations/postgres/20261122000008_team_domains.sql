-- Verified domains: a team publishes a DNS TXT record; signing up at the domain joins the team.

CREATE TABLE team_domains (
    id          UUID PRIMARY KEY NOT NULL,
    team_id     UUID NOT NULL REFERENCES teams (id),
    domain      TEXT NOT NULL,
    token       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    verified_at TIMESTAMPTZ,
    checked_at  TIMESTAMPTZ,
    last_error  TEXT,
    CONSTRAINT team_domains_team_id_domain_key UNIQUE (team_id, domain)
);
-- A domain is verified for one team at a time.
CREATE UNIQUE INDEX team_domains_verified_domain_key ON team_domains (domain) WHERE verified_at IS NOT NULL;
