-- Tasks given to agents and the steps their runtimes recorded (PostgreSQL
-- dialect of the SQLite migration of the same name).

CREATE TABLE tasks (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    instruction  TEXT NOT NULL,
    input        JSONB NOT NULL,
    state        TEXT NOT NULL CHECK (state IN
                   ('queued', 'running', 'waiting_approval', 'succeeded', 'failed', 'cancelled')),
    result       TEXT,
    error        TEXT,
    limits       JSONB NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    runner_pid   BIGINT,
    parent_id    TEXT,
    from_step    BIGINT
);
CREATE INDEX tasks_by_agent ON tasks (org_id, agent_id, id);
CREATE INDEX tasks_open ON tasks (org_id, agent_id) WHERE state IN ('queued', 'running', 'waiting_approval');

CREATE TABLE task_steps (
    task_id     TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    body        JSONB  NOT NULL,
    tokens      BIGINT NOT NULL,
    latency_ms  BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    PRIMARY KEY (task_id, seq)
);
