-- A top-up bought on the payment provider's hosted checkout page: the session and its page, so
-- asking again while it is open returns the same page.
ALTER TABLE top_ups ADD COLUMN checkout_id TEXT;
ALTER TABLE top_ups ADD COLUMN checkout_url TEXT;
