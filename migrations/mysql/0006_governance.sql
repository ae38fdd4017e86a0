-- Governance (MySQL / MariaDB dialect of the SQLite migration of the same
-- name). `trigger` is a reserved word here and is quoted.

ALTER TABLE agents ADD COLUMN profile VARCHAR(255);
ALTER TABLE agents ADD COLUMN budget_period VARCHAR(16) NOT NULL DEFAULT 'monthly'
    CHECK (budget_period IN ('daily', 'weekly', 'monthly'));
ALTER TABLE orgs ADD COLUMN timezone VARCHAR(64) NOT NULL DEFAULT 'UTC';
ALTER TABLE orgs ADD COLUMN budget_period VARCHAR(16) NOT NULL DEFAULT 'monthly'
    CHECK (budget_period IN ('daily', 'weekly', 'monthly'));

CREATE TABLE gov_docs (
    org_id      VARCHAR(255) NOT NULL,
    kind        VARCHAR(255) NOT NULL,
    name        VARCHAR(255) NOT NULL,
    body        JSON NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (org_id, kind, name),
    CONSTRAINT gov_docs_kind CHECK (kind IN ('tool', 'profile', 'policy'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE approvals (
    id            VARCHAR(255) PRIMARY KEY,
    org_id        VARCHAR(255) NOT NULL,
    agent_id      VARCHAR(255) NOT NULL,
    call_id       VARCHAR(255) NOT NULL,
    tool          VARCHAR(255) NOT NULL,
    args_hash     VARCHAR(255) NOT NULL,
    arguments     JSON NOT NULL,
    `trigger`     TEXT NOT NULL,
    policy        VARCHAR(255) NOT NULL,
    levels        JSON NOT NULL,
    level         BIGINT NOT NULL DEFAULT 0,
    state         VARCHAR(255) NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'cancelled')),
    -- For `expired`: whether the timeout approved.
    outcome       BOOLEAN,
    requested_by  TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    decided_by    TEXT,
    decided_at    BIGINT,
    comment       TEXT,
    grant_id      VARCHAR(255),
    UNIQUE (agent_id, call_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX approvals_org_state ON approvals (org_id, state, id);
-- (No partial index: every row is indexed by state.)
CREATE INDEX approvals_pending ON approvals (state);

CREATE TABLE approval_votes (
    approval_id  VARCHAR(255) NOT NULL,
    level        BIGINT NOT NULL,
    user_id      VARCHAR(255) NOT NULL,
    approve      BOOLEAN NOT NULL,
    comment      TEXT,
    at           BIGINT NOT NULL,
    PRIMARY KEY (approval_id, level, user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE grants (
    id           VARCHAR(255) PRIMARY KEY,
    org_id       VARCHAR(255) NOT NULL,
    agent_id     VARCHAR(255) NOT NULL,
    tool         VARCHAR(255) NOT NULL,
    args_hash    VARCHAR(255) NOT NULL,
    approval_id  VARCHAR(255) NOT NULL,
    granted_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    revoked_by   TEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX grants_org ON grants (org_id, id);

-- Kill switches that are on: scope 'instance' (target '*'), 'org', 'agent'.
CREATE TABLE halts (
    scope      VARCHAR(16) NOT NULL CHECK (scope IN ('instance', 'org', 'agent')),
    target     VARCHAR(255) NOT NULL,
    org_id     VARCHAR(255),
    reason     TEXT,
    by_who     TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (scope, target)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
