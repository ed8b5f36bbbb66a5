-- Auto top-up and billing alerts, per team. A top-up knows whether a person or the auto top-up
-- asked for it (the caps count the automatic ones).
ALTER TABLE top_ups ADD COLUMN automatic INTEGER NOT NULL DEFAULT 0 CHECK (automatic IN (0, 1));
CREATE INDEX top_ups_automatic_idx ON top_ups (team_id, automatic, created_at);

CREATE TABLE team_billing_settings (
    team_id              BLOB PRIMARY KEY NOT NULL REFERENCES teams (id),
    auto_threshold       INTEGER CHECK (auto_threshold >= 0),
    auto_amount_cents    INTEGER CHECK (auto_amount_cents > 0),
    auto_monthly_cents   INTEGER CHECK (auto_monthly_cents > 0),
    low_balance_alert    INTEGER CHECK (low_balance_alert >= 0),
    updated_at           TEXT NOT NULL
);

-- Alerts sent, one per crossing: (team, kind, key) — the key is the month for the invoiced-limit
-- alerts, the lot for promotional expiry, 'now' for low balance (deleted when the balance is
-- above the threshold again, which re-arms it).
CREATE TABLE billing_alerts (
    team_id    BLOB NOT NULL REFERENCES teams (id),
    kind       TEXT NOT NULL,
    alert_key  TEXT NOT NULL,
    sent_at    TEXT NOT NULL,
    PRIMARY KEY (team_id, kind, alert_key)
);
