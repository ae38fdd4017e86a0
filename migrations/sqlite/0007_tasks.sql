-- Tasks given to agents and the steps their runtimes recorded.

CREATE TABLE tasks (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    instruction  TEXT NOT NULL,
    input        TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN
                   ('queued', 'running', 'waiting_approval', 'succeeded', 'failed', 'cancelled')),
    result       TEXT,
    error        TEXT,
    limits       TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    -- The runtime process running it: another one connecting means lost.
    runner_pid   INTEGER,
    -- A replay: the task it branches from and the step it runs live from
    -- (its steps before that are copies of the parent's).
    parent_id    TEXT,
    from_step    INTEGER
);
-- An agent's tasks newest first (the list endpoint), and its open ones
-- (loaded by its actor).
CREATE INDEX tasks_by_agent ON tasks (org_id, agent_id, id);
CREATE INDEX tasks_open ON tasks (org_id, agent_id) WHERE state IN ('queued', 'running', 'waiting_approval');

CREATE TABLE task_steps (
    task_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,
    tokens      INTEGER NOT NULL,
    latency_ms  INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
