-- Activity (MySQL / MariaDB dialect of the SQLite migration of the same
-- name). `id` is the stream's event id: increasing, never reused,
-- assigned by the single activity writer.
CREATE TABLE activity (
    id          BIGINT AUTO_INCREMENT PRIMARY KEY,
    org_id      VARCHAR(255) NOT NULL,
    agent_id    VARCHAR(255),
    kind        VARCHAR(255) NOT NULL,
    payload     JSON   NOT NULL,
    at          BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX activity_by_org ON activity (org_id, id);
CREATE INDEX activity_by_agent ON activity (agent_id, id);

-- One row per committed flush (a re-flush by a replacement writer is a no-op).
CREATE TABLE activity_flushes (
    id       BIGINT PRIMARY KEY,
    first_id BIGINT NOT NULL,
    count    BIGINT NOT NULL,
    at       BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Days of activity kept per organization (NULL: the configured default).
ALTER TABLE orgs ADD COLUMN activity_retention_days BIGINT;
