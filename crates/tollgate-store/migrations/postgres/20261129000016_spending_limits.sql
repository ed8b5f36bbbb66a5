-- A team's monthly invoiced spending limits, in USD ticks: the soft limit its Admins set, and
-- the operator's override of the default maximum (hardSlAuto, from the configuration). No row:
-- neither is set.
CREATE TABLE team_spending_limits (
    team_id       UUID PRIMARY KEY NOT NULL REFERENCES teams (id),
    soft_limit    BIGINT CHECK (soft_limit >= 0),
    hard_override BIGINT CHECK (hard_override >= 0),
    updated_at    TIMESTAMPTZ NOT NULL
);
