-- Server-side tools (web search, X search) run by Tollgate for a request: how many calls were
-- charged, and the fee each was charged at (per call, in USD ticks), as the prices beside them.
ALTER TABLE usage_events ADD COLUMN web_search_calls INTEGER NOT NULL DEFAULT 0 CHECK (web_search_calls >= 0);
ALTER TABLE usage_events ADD COLUMN x_search_calls INTEGER NOT NULL DEFAULT 0 CHECK (x_search_calls >= 0);
ALTER TABLE usage_events ADD COLUMN web_search_price INTEGER;
ALTER TABLE usage_events ADD COLUMN x_search_price INTEGER;
