-- Core runtime: organizations, users, agents, their state history and events.
-- MySQL / MariaDB dialect of migrations/sqlite/0001_core.sql (same tables,
-- columns and indexes; see docs/databases.md for the type choices).
-- Timestamps are unix milliseconds (UTC) in BIGINT, as in every dialect.
-- Text compares byte for byte (utf8mb4_bin), as SQLite's does; keys are
-- VARCHAR(255) so that every index fits InnoDB's 3072-byte limit.

CREATE TABLE orgs (
    id          VARCHAR(255) PRIMARY KEY,
    name        TEXT NOT NULL,
    plan        VARCHAR(255) NOT NULL DEFAULT 'free',
    created_at  BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE users (
    id             VARCHAR(255) PRIMARY KEY,
    org_id         VARCHAR(255) NOT NULL,
    email          VARCHAR(255) NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    role           VARCHAR(16) NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at     BIGINT NOT NULL,
    FOREIGN KEY (org_id) REFERENCES orgs(id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE agents (
    id                        VARCHAR(255) PRIMARY KEY,
    org_id                    VARCHAR(255) NOT NULL,
    name                      VARCHAR(255) NOT NULL,
    role                      TEXT,
    model                     TEXT,
    target                    VARCHAR(32) NOT NULL,
    health_interval_ms        BIGINT,
    health_failure_threshold  BIGINT,
    budget_tokens             BIGINT,
    budget_cost_micros        BIGINT,
    state                     VARCHAR(32) NOT NULL,
    state_reason              TEXT,
    restart_count             BIGINT NOT NULL DEFAULT 0,
    usage_tokens              BIGINT NOT NULL DEFAULT 0,
    usage_cost_micros         BIGINT NOT NULL DEFAULT 0,
    usage_period              VARCHAR(32) NOT NULL,
    usage_warned              BOOLEAN NOT NULL DEFAULT FALSE,
    deployment_ref            TEXT,
    runtime_token_hash        TEXT,
    epoch                     BIGINT NOT NULL,
    created_at                BIGINT NOT NULL,
    updated_at                BIGINT NOT NULL,
    deleted_at                BIGINT,
    -- MySQL has no partial index: the name of a live agent, NULL once it is
    -- deleted (NULLs never collide in a unique index).
    live_name                 VARCHAR(255) AS (IF(deleted_at IS NULL, name, NULL)) STORED,
    FOREIGN KEY (org_id) REFERENCES orgs(id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Names are unique among an organization's live agents.
CREATE UNIQUE INDEX agents_org_name ON agents (org_id, live_name);
CREATE INDEX agents_org_id ON agents (org_id, id);

CREATE TABLE agent_transitions (
    id          BIGINT AUTO_INCREMENT PRIMARY KEY,
    agent_id    VARCHAR(255) NOT NULL,
    org_id      VARCHAR(255) NOT NULL,
    from_state  VARCHAR(32),
    to_state    VARCHAR(32) NOT NULL,
    reason      TEXT,
    by_who      TEXT NOT NULL,
    at          BIGINT NOT NULL,
    FOREIGN KEY (agent_id) REFERENCES agents(id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX agent_transitions_agent ON agent_transitions (agent_id, id);

CREATE TABLE agent_events (
    id        BIGINT AUTO_INCREMENT PRIMARY KEY,
    agent_id  VARCHAR(255) NOT NULL,
    org_id    VARCHAR(255) NOT NULL,
    kind      VARCHAR(255) NOT NULL,
    detail    JSON NOT NULL,
    at        BIGINT NOT NULL,
    FOREIGN KEY (agent_id) REFERENCES agents(id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX agent_events_agent ON agent_events (agent_id, id);

-- Idempotency keys of counted usage reports.
CREATE TABLE usage_reports (
    agent_id   VARCHAR(255) NOT NULL,
    report_id  VARCHAR(255) NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (agent_id, report_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
