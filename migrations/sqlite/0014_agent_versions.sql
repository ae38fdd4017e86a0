-- Immutable numbered versions of what defines an agent's behaviour (role,
-- instructions, persona, model and its settings, profile, knowledge,
-- budget, MCP servers), written in the transaction of the change that
-- made each; and the version each task ran with.
CREATE TABLE agent_versions (
    agent_id    TEXT    NOT NULL,
    n           INTEGER NOT NULL,
    org_id      TEXT    NOT NULL,
    definition  TEXT    NOT NULL,
    by_who      TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (agent_id, n)
) WITHOUT ROWID;
-- The version of its agent's definition a task ran with (NULL: an agent
-- from before versions).
ALTER TABLE tasks ADD COLUMN version INTEGER;
