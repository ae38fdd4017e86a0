-- Governance: permission profiles and budget periods on agents, time zone
-- and budget period on organizations, the organization's governance
-- documents, approval requests with their votes, standing grants and kill
-- switches.

ALTER TABLE agents ADD COLUMN profile TEXT;
ALTER TABLE agents ADD COLUMN budget_period TEXT NOT NULL DEFAULT 'monthly'
    CHECK (budget_period IN ('daily', 'weekly', 'monthly'));
ALTER TABLE orgs ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE orgs ADD COLUMN budget_period TEXT NOT NULL DEFAULT 'monthly'
    CHECK (budget_period IN ('daily', 'weekly', 'monthly'));

-- An organization's own tools, profiles and approval policies (JSON bodies).
CREATE TABLE gov_docs (
    org_id      TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('tool', 'profile', 'policy')),
    name        TEXT NOT NULL,
    body        TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (org_id, kind, name)
) WITHOUT ROWID;

CREATE TABLE approvals (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    call_id       TEXT NOT NULL,
    tool          TEXT NOT NULL,
    args_hash     TEXT NOT NULL,
    arguments     TEXT NOT NULL,
    trigger       TEXT NOT NULL,
    policy        TEXT NOT NULL,
    -- The policy's levels as they were when the request was made.
    levels        TEXT NOT NULL,
    level         INTEGER NOT NULL DEFAULT 0,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'cancelled')),
    -- For `expired`: whether the timeout approved (1) or denied (0).
    outcome       INTEGER,
    requested_by  TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    decided_by    TEXT,
    decided_at    INTEGER,
    comment       TEXT,
    grant_id      TEXT,
    UNIQUE (agent_id, call_id)
);
CREATE INDEX approvals_org_state ON approvals (org_id, state, id);
CREATE INDEX approvals_pending ON approvals (state) WHERE state = 'pending';

CREATE TABLE approval_votes (
    approval_id  TEXT NOT NULL,
    level        INTEGER NOT NULL,
    user_id      TEXT NOT NULL,
    approve      INTEGER NOT NULL,
    comment      TEXT,
    at           INTEGER NOT NULL,
    PRIMARY KEY (approval_id, level, user_id)
) WITHOUT ROWID;

CREATE TABLE grants (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    tool         TEXT NOT NULL,
    args_hash    TEXT NOT NULL,
    approval_id  TEXT NOT NULL,
    granted_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
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
    at         INTEGER NOT NULL,
    PRIMARY KEY (scope, target)
) WITHOUT ROWID;
