-- Core runtime: organizations, users, agents, their state history and events.
-- Timestamps are unix milliseconds (UTC). Money is integer micro-dollars.

CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    plan        TEXT NOT NULL DEFAULT 'free',
    created_at  INTEGER NOT NULL
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES orgs(id),
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at     INTEGER NOT NULL
);

CREATE TABLE agents (
    id                        TEXT PRIMARY KEY,
    org_id                    TEXT NOT NULL REFERENCES orgs(id),
    name                      TEXT NOT NULL,
    role                      TEXT,
    model                     TEXT,
    target                    TEXT NOT NULL,
    health_interval_ms        INTEGER,
    health_failure_threshold  INTEGER,
    budget_tokens             INTEGER,
    budget_cost_micros        INTEGER,
    state                     TEXT NOT NULL,
    state_reason              TEXT,
    restart_count             INTEGER NOT NULL DEFAULT 0,
    usage_tokens              INTEGER NOT NULL DEFAULT 0,
    usage_cost_micros         INTEGER NOT NULL DEFAULT 0,
    usage_period              TEXT NOT NULL,
    usage_warned              INTEGER NOT NULL DEFAULT 0,
    deployment_ref            TEXT,
    runtime_token_hash        TEXT,
    epoch                     INTEGER NOT NULL,
    created_at                INTEGER NOT NULL,
    updated_at                INTEGER NOT NULL,
    deleted_at                INTEGER
);

-- Names are unique among an organization's live agents.
CREATE UNIQUE INDEX agents_org_name ON agents (org_id, name) WHERE deleted_at IS NULL;
CREATE INDEX agents_org_id ON agents (org_id, id);

CREATE TABLE agent_transitions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id    TEXT NOT NULL REFERENCES agents(id),
    org_id      TEXT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    reason      TEXT,
    by_who      TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX agent_transitions_agent ON agent_transitions (agent_id, id);

CREATE TABLE agent_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id  TEXT NOT NULL REFERENCES agents(id),
    org_id    TEXT NOT NULL,
    kind      TEXT NOT NULL,
    detail    TEXT NOT NULL,
    at        INTEGER NOT NULL
);
CREATE INDEX agent_events_agent ON agent_events (agent_id, id);

-- Idempotency keys of counted usage reports.
CREATE TABLE usage_reports (
    agent_id   TEXT NOT NULL,
    report_id  TEXT NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (agent_id, report_id)
) WITHOUT ROWID;
