-- Typed records projected from activity events in the same flush
-- transaction (MySQL / MariaDB dialect of the SQLite migration of the same
-- name; InnoDB clusters every table by its primary key, as WITHOUT ROWID
-- does in SQLite).
CREATE TABLE tool_calls (
    agent_id    VARCHAR(255) NOT NULL,
    activity_id BIGINT NOT NULL,
    tool_id     VARCHAR(255) NOT NULL,
    status      VARCHAR(32)  NOT NULL,
    PRIMARY KEY (agent_id, activity_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE conversations (
    seq         BIGINT AUTO_INCREMENT PRIMARY KEY,
    org_id      VARCHAR(255) NOT NULL,
    agent_id    VARCHAR(255) NOT NULL,
    id          VARCHAR(255) NOT NULL,
    title       TEXT,
    started_at  BIGINT NOT NULL,
    last_at     BIGINT NOT NULL,
    messages    BIGINT NOT NULL,
    tokens      BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    UNIQUE (agent_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE messages (
    agent_id        VARCHAR(255) NOT NULL,
    conversation_id VARCHAR(255) NOT NULL,
    activity_id     BIGINT NOT NULL,
    PRIMARY KEY (agent_id, conversation_id, activity_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE activity_hours (
    agent_id    VARCHAR(255) NOT NULL,
    hour        BIGINT NOT NULL,
    kind        VARCHAR(255) NOT NULL,
    org_id      VARCHAR(255) NOT NULL,
    events      BIGINT NOT NULL,
    errors      BIGINT NOT NULL,
    tokens      BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    PRIMARY KEY (agent_id, hour, kind)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
