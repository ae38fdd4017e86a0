-- An agent's runtime settings of its own as JSON (NULL: the server's
-- defaults); organization secrets join the governance documents as kind
-- 'secret' (PostgreSQL dialect of the SQLite migration of the same name;
-- PostgreSQL changes the CHECK in place where SQLite rebuilds the table).
ALTER TABLE agents ADD COLUMN runtime JSONB;

ALTER TABLE gov_docs DROP CONSTRAINT gov_docs_kind;
ALTER TABLE gov_docs ADD CONSTRAINT gov_docs_kind
    CHECK (kind IN ('tool', 'profile', 'policy', 'secret'));
