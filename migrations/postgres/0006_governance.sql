-- Governance (PostgreSQL dialect of the SQLite migration of the same name).

ALTER TABLE agents ADD COLUMN profile TEXT;
ALTER TABLE agents ADD COLUMN budget_period TEXT NOT NULL DEFAULT 'monthly'
    CHECK (budget_period IN ('daily', 'weekly', 'monthly'));
ALTER TABLE orgs ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE orgs ADD COLUMN budget_period TEXT NOT NULL DEFAULT 'monthly'
    CHECK (budget_period IN ('daily', 'weekly', 'monthly'));

CREATE TABLE gov_docs (
    org_id      TEXT NOT NULL,
    kind        TEXT NOT NULL CONSTRAINT gov_docs_kind CHECK (kind IN ('tool', 'profile', 'policy')),
    name        TEXT NOT NULL,
    body        JSONB NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (org_id, kind, name)
);

CREATE TABLE approvals (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    call_id       TEXT NOT NULL,
    tool          TEXT NOT NULL,
    args_hash     TEXT NOT NULL,
    arguments     JSONB NOT NULL,
    trigger       TEXT NOT NULL,
    policy        TEXT NOT NULL,
    levels        JSONB NOT NULL,
    level         BIGINT NOT NULL DEFAULT 0,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'cancelled')),
    -- For `expired`: whether the timeout approved.
    outcome       BOOLEAN,
    requested_by  TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    decided_by    TEXT,
    decided_at    BIGINT,
    comment       TEXT,
    grant_id      TEXT,
    UNIQUE (agent_id, call_id)
);
CREATE INDEX approvals_org_state ON approvals (org_id, state, id);
CREATE INDEX approvals_pending ON approvals (state) WHERE state = 'pending';

CREATE TABLE approval_votes (
    approval_id  TEXT NOT NULL,
    level        BIGINT NOT NULL,
    user_id      TEXT NOT NULL,
    approve      BOOLEAN NOT NULL,
    comment      TEXT,
    at           BIGINT NOT NULL,
    PRIMARY KEY (approval_id, level, user_id)
);

CREATE TABLE grants (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    tool         TEXT NOT NULL,
    args_hash    TEXT NOT NULL,
    approval_id  TEXT NOT NULL,
    granted_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    revoked_by   TEXT
);
CREATE INDEX grants_org ON grants (org_id, id);

-- Kill switches that are on: scope 'instance' (target '*'), 'org', 'agent'.
CREATE TABLE halts (
    scope      TEXT NOT NULL CHECK (scope IN ('instance', 'org', 'agent')),
    target     TEXT NOT NULL,
    org_id     TEXT,
    reason     TEXT,
    by_who     TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (scope, target)
);
