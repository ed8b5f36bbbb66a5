-- Invoices: a month's invoiced usage, issued when the month is over, receipts for prepaid
-- purchases, and credit notes correcting an invoice, numbered in one gap-free series (the
-- counter moves in the issuing transaction).
-- Finalized when issued: lines, amounts and the billing details are copied in and never change
-- (triggers refuse it); only the payment state moves.
CREATE TABLE invoice_series (
    series TEXT PRIMARY KEY NOT NULL,
    last   INTEGER NOT NULL
);

CREATE TABLE invoices (
    id               BLOB PRIMARY KEY NOT NULL,
    team_id          BLOB NOT NULL REFERENCES teams (id),
    number           TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('monthly', 'receipt', 'credit_note')),
    month            TEXT NOT NULL,
    top_up_id        BLOB REFERENCES top_ups (id),
    corrects         BLOB REFERENCES invoices (id),
    status           TEXT NOT NULL CHECK (status IN ('open', 'paid', 'failed', 'void')),
    subtotal         INTEGER NOT NULL,
    credit_used      INTEGER NOT NULL,
    total            INTEGER NOT NULL CHECK (total >= 0),
    bill_name        TEXT NOT NULL,
    bill_email       TEXT NOT NULL,
    bill_line1       TEXT NOT NULL,
    bill_line2       TEXT NOT NULL,
    bill_city        TEXT NOT NULL,
    bill_state       TEXT NOT NULL,
    bill_postal_code TEXT NOT NULL,
    bill_country     TEXT,
    bill_tax_id_type TEXT NOT NULL,
    bill_tax_number  TEXT NOT NULL,
    team_name        TEXT NOT NULL,
    issued_at        TEXT NOT NULL,
    paid_at          TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    failure          TEXT,
    payment_ref      TEXT,
    CONSTRAINT invoices_number_key UNIQUE (number),
    CONSTRAINT invoices_top_up_id_key UNIQUE (top_up_id)
);
CREATE UNIQUE INDEX invoices_one_per_month_idx ON invoices (team_id, month) WHERE kind = 'monthly';
CREATE INDEX invoices_corrects_idx ON invoices (corrects) WHERE corrects IS NOT NULL;
CREATE INDEX invoices_team_id_idx ON invoices (team_id, issued_at);
CREATE INDEX invoices_next_attempt_idx ON invoices (next_attempt_at) WHERE next_attempt_at IS NOT NULL;

CREATE TABLE invoice_lines (
    invoice_id  BLOB NOT NULL REFERENCES invoices (id),
    position    INTEGER NOT NULL,
    description TEXT NOT NULL,
    unit_type   TEXT NOT NULL,
    unit_price  INTEGER NOT NULL,
    units       INTEGER NOT NULL,
    amount      INTEGER NOT NULL,
    PRIMARY KEY (invoice_id, position)
);

CREATE TRIGGER invoices_finalized BEFORE UPDATE ON invoices
WHEN NOT (
    NEW.id IS OLD.id AND NEW.team_id IS OLD.team_id AND NEW.number IS OLD.number AND NEW.kind IS OLD.kind
    AND NEW.month IS OLD.month AND NEW.top_up_id IS OLD.top_up_id AND NEW.corrects IS OLD.corrects AND NEW.subtotal IS OLD.subtotal
    AND NEW.credit_used IS OLD.credit_used AND NEW.total IS OLD.total AND NEW.bill_name IS OLD.bill_name
    AND NEW.bill_email IS OLD.bill_email AND NEW.bill_line1 IS OLD.bill_line1 AND NEW.bill_line2 IS OLD.bill_line2
    AND NEW.bill_city IS OLD.bill_city AND NEW.bill_state IS OLD.bill_state
    AND NEW.bill_postal_code IS OLD.bill_postal_code AND NEW.bill_country IS OLD.bill_country
    AND NEW.bill_tax_id_type IS OLD.bill_tax_id_type AND NEW.bill_tax_number IS OLD.bill_tax_number
    AND NEW.team_name IS OLD.team_name AND NEW.issued_at IS OLD.issued_at
)
BEGIN
    SELECT RAISE(ABORT, 'an issued invoice never changes; only its payment state moves');
END;

CREATE TRIGGER invoices_kept BEFORE DELETE ON invoices
BEGIN
    SELECT RAISE(ABORT, 'invoices are never deleted');
END;

CREATE TRIGGER invoice_lines_no_update BEFORE UPDATE ON invoice_lines
BEGIN
    SELECT RAISE(ABORT, 'an issued invoice never changes');
END;

CREATE TRIGGER invoice_lines_no_delete BEFORE DELETE ON invoice_lines
BEGIN
    SELECT RAISE(ABORT, 'an issued invoice never changes');
END;

-- A team whose monthly invoice stayed unpaid past the grace is blocked until it is paid: the
-- invoice's number, set by the billing job and cleared in the payment's transaction. Key
-- authentication reads it with the key, so every node sees it within its cache's second.
ALTER TABLE teams ADD COLUMN blocked_invoice TEXT;
