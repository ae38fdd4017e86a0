-- Immutable numbered versions of what defines an agent's behaviour
-- (PostgreSQL dialect of the SQLite migration of the same name).
CREATE TABLE agent_versions (
    agent_id    TEXT   NOT NULL,
    n           BIGINT NOT NULL,
    org_id      TEXT   NOT NULL,
    definition  JSONB  NOT NULL,
    by_who      TEXT   NOT NULL,
    at          BIGINT NOT NULL,
    PRIMARY KEY (agent_id, n)
);
-- The version of its agent's definition a task ran with (NULL: an agent
-- from before versions).
ALTER TABLE tasks ADD COLUMN version BIGINT;
