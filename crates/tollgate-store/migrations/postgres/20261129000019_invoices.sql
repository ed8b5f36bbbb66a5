-- Invoices: a month's invoiced usage, issued when the month is over, receipts for prepaid
-- purchases, and credit notes correcting an invoice, numbered in one gap-free series (the
-- counter moves in the issuing transaction).
-- Finalized when issued: lines, amounts and the billing details are copied in and never change
-- (triggers refuse it); only the payment state moves.
CREATE TABLE invoice_series (
    series TEXT PRIMARY KEY NOT NULL,
    last   BIGINT NOT NULL
);

CREATE TABLE invoices (
    id               UUID PRIMARY KEY NOT NULL,
    team_id          UUID NOT NULL REFERENCES teams (id),
    number           TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('monthly', 'receipt', 'credit_note')),
    month            TEXT NOT NULL,
    top_up_id        UUID REFERENCES top_ups (id),
    corrects         UUID REFERENCES invoices (id),
    status           TEXT NOT NULL CHECK (status IN ('open', 'paid', 'failed', 'void')),
    subtotal         BIGINT NOT NULL,
    credit_used      BIGINT NOT NULL,
    total            BIGINT NOT NULL CHECK (total >= 0),
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
    issued_at        TIMESTAMPTZ NOT NULL,
    paid_at          TIMESTAMPTZ,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
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
    invoice_id  UUID NOT NULL REFERENCES invoices (id),
    position    INTEGER NOT NULL,
    description TEXT NOT NULL,
    unit_type   TEXT NOT NULL,
    unit_price  BIGINT NOT NULL,
    units       BIGINT NOT NULL,
    amount      BIGINT NOT NULL,
    PRIMARY KEY (invoice_id, position)
);

CREATE FUNCTION invoices_finalized() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
        AND (NEW.id, NEW.team_id, NEW.number, NEW.kind, NEW.month, NEW.top_up_id, NEW.corrects, NEW.subtotal, NEW.credit_used,
             NEW.total, NEW.bill_name, NEW.bill_email, NEW.bill_line1, NEW.bill_line2, NEW.bill_city, NEW.bill_state,
             NEW.bill_postal_code, NEW.bill_country, NEW.bill_tax_id_type, NEW.bill_tax_number, NEW.team_name,
             NEW.issued_at)
            IS NOT DISTINCT FROM
            (OLD.id, OLD.team_id, OLD.number, OLD.kind, OLD.month, OLD.top_up_id, OLD.corrects, OLD.subtotal, OLD.credit_used,
             OLD.total, OLD.bill_name, OLD.bill_email, OLD.bill_line1, OLD.bill_line2, OLD.bill_city, OLD.bill_state,
             OLD.bill_postal_code, OLD.bill_country, OLD.bill_tax_id_type, OLD.bill_tax_number, OLD.team_name,
             OLD.issued_at)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'an issued invoice never changes; only its payment state moves';
END;
$$;

CREATE TRIGGER invoices_finalized
    BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_finalized();

CREATE FUNCTION invoice_lines_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'an issued invoice never changes';
END;
$$;

CREATE TRIGGER invoice_lines_fixed
    BEFORE UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION invoice_lines_fixed();

-- A team whose monthly invoice stayed unpaid past the grace is blocked until it is paid: the
-- invoice's number, set by the billing job and cleared in the payment's transaction. Key
-- authentication reads it with the key, so every node sees it within its cache's second.
ALTER TABLE teams ADD COLUMN blocked_invoice TEXT;
