-- An agent's runtime settings of its own as JSON (NULL: the server's
-- defaults); organization secrets join the governance documents as kind
-- 'secret' (MySQL / MariaDB dialect of the SQLite migration of the same
-- name; the CHECK is replaced in place where SQLite rebuilds the table).
ALTER TABLE agents ADD COLUMN runtime JSON;

ALTER TABLE gov_docs DROP CONSTRAINT gov_docs_kind;
ALTER TABLE gov_docs ADD CONSTRAINT gov_docs_kind
    CHECK (kind IN ('tool', 'profile', 'policy', 'secret'));
