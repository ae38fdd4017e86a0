-- Scheduled tasks (MySQL / MariaDB dialect of the SQLite migration of the
-- same name).
CREATE TABLE schedules (
    id            VARCHAR(255) PRIMARY KEY,
    org_id        VARCHAR(255) NOT NULL,
    agent_id      VARCHAR(255) NOT NULL,
    cron          TEXT NOT NULL,
    timezone      VARCHAR(64) NOT NULL,
    instruction   TEXT NOT NULL,
    input         JSON NOT NULL DEFAULT ('null'),
    limits        JSON NOT NULL,
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    next_run_at   BIGINT,
    last_run_at   BIGINT,
    last_task_id  VARCHAR(255),
    last_error    TEXT,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX schedules_agent ON schedules (org_id, agent_id, id);
