-- Generated images, priced per image: how many a request made, and the price it was charged at
-- (per image, in USD ticks), as the token prices beside them.
ALTER TABLE usage_events ADD COLUMN images BIGINT NOT NULL DEFAULT 0 CHECK (images >= 0);
ALTER TABLE usage_events ADD COLUMN image_price BIGINT;
