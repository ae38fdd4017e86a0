-- An organization's spend per budget period, over all its agents (MySQL /
-- MariaDB dialect of the SQLite migration of the same name).
CREATE TABLE org_usage (
    org_id      VARCHAR(255) NOT NULL,
    period      VARCHAR(64)  NOT NULL,
    tokens      BIGINT NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    cost_micros BIGINT NOT NULL DEFAULT 0 CHECK (cost_micros >= 0),
    PRIMARY KEY (org_id, period)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT INTO org_usage (org_id, period, tokens, cost_micros)
SELECT org_id, usage_period, SUM(usage_tokens), SUM(usage_cost_micros)
FROM agents
WHERE usage_tokens > 0 OR usage_cost_micros > 0
GROUP BY org_id, usage_period;
