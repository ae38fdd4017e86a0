-- Scheduled tasks: a cron expression in a time zone gives an agent a task
-- (instruction, input, limits) at each matching time.
CREATE TABLE schedules (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    cron          TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    instruction   TEXT NOT NULL,
    input         TEXT NOT NULL DEFAULT 'null',
    limits        TEXT NOT NULL,
    enabled       INTEGER NOT NULL DEFAULT 1,
    next_run_at   INTEGER,
    last_run_at   INTEGER,
    last_task_id  TEXT,
    last_error    TEXT,
    created_by    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX schedules_agent ON schedules (org_id, agent_id, id);
