-- Tasks given to agents and the steps their runtimes recorded (MySQL /
-- MariaDB dialect of the SQLite migration of the same name).

CREATE TABLE tasks (
    id           VARCHAR(255) PRIMARY KEY,
    org_id       VARCHAR(255) NOT NULL,
    agent_id     VARCHAR(255) NOT NULL,
    instruction  TEXT NOT NULL,
    input        JSON NOT NULL,
    state        VARCHAR(255) NOT NULL CHECK (state IN
                   ('queued', 'running', 'waiting_approval', 'succeeded', 'failed', 'cancelled')),
    result       LONGTEXT,
    error        TEXT,
    limits       JSON NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    runner_pid   BIGINT,
    parent_id    VARCHAR(255),
    from_step    BIGINT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX tasks_by_agent ON tasks (org_id, agent_id, id);
-- (No partial index: the state is the index's last column.)
CREATE INDEX tasks_open ON tasks (org_id, agent_id, state);

CREATE TABLE task_steps (
    task_id     VARCHAR(255) NOT NULL,
    seq         BIGINT NOT NULL,
    kind        VARCHAR(64)  NOT NULL,
    body        JSON   NOT NULL,
    tokens      BIGINT NOT NULL,
    latency_ms  BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    PRIMARY KEY (task_id, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
