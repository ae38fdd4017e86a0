-- Scheduled tasks (PostgreSQL dialect of the SQLite migration of the same name).
CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    cron          TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    instruction   TEXT NOT NULL,
    input         JSONB NOT NULL DEFAULT 'null',
    limits        JSONB NOT NULL,
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    next_run_at   BIGINT,
    last_run_at   BIGINT,
    last_task_id  TEXT,
    last_error    TEXT,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX schedules_agent ON schedules (org_id, agent_id, id);
