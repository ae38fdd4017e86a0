-- Immutable numbered versions of what defines an agent's behaviour
-- (MySQL / MariaDB dialect of the SQLite migration of the same name).
CREATE TABLE agent_versions (
    agent_id    VARCHAR(255) NOT NULL,
    n           BIGINT NOT NULL,
    org_id      VARCHAR(255) NOT NULL,
    definition  JSON NOT NULL,
    by_who      TEXT NOT NULL,
    at          BIGINT NOT NULL,
    PRIMARY KEY (agent_id, n)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
-- The version of its agent's definition a task ran with (NULL: an agent
-- from before versions).
ALTER TABLE tasks ADD COLUMN version BIGINT;
