-- The twin of SQLite's migration of the same name, which rewrites the ledger's kind and bucket
-- checks so SQLite need not build a temporary b-tree of each IN list for every entry it writes.
-- PostgreSQL checks an IN list in place: nothing to change here.
SELECT 1;
