-- An agent's runtime settings of its own (model provider overrides, MCP
-- servers) as JSON; NULL when it takes the server's defaults. Secrets are
-- named here, never stored here.
ALTER TABLE agents ADD COLUMN runtime TEXT;

-- Organization secrets join the governance documents as kind 'secret'
-- (their bodies hold sealed values only). SQLite cannot change a CHECK in
-- place: the table is rebuilt.
CREATE TABLE gov_docs_new (
    org_id      TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('tool', 'profile', 'policy', 'secret')),
    name        TEXT NOT NULL,
    body        TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (org_id, kind, name)
) WITHOUT ROWID;
INSERT INTO gov_docs_new SELECT org_id, kind, name, body, updated_at FROM gov_docs;
DROP TABLE gov_docs;
ALTER TABLE gov_docs_new RENAME TO gov_docs;
