-- Identity, tenancy and audit: org slugs, plans and limits, suspension;
-- user names and session revocation; refresh-token families; API keys;
-- login throttling; the append-only audit log.

ALTER TABLE orgs ADD COLUMN slug TEXT;
-- Per-org overrides of the plan's limits (JSON object; absent keys take the plan's).
ALTER TABLE orgs ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
ALTER TABLE orgs ADD COLUMN suspended_at INTEGER;
-- Live agents, kept in the same transaction as every agent insert and delete:
-- the plan's agent limit is checked against it atomically.
ALTER TABLE orgs ADD COLUMN agent_count INTEGER NOT NULL DEFAULT 0;
UPDATE orgs SET slug = lower(id) WHERE slug IS NULL;
UPDATE orgs SET agent_count =
    (SELECT COUNT(*) FROM agents a WHERE a.org_id = orgs.id AND a.deleted_at IS NULL);
CREATE UNIQUE INDEX orgs_slug ON orgs (slug);

ALTER TABLE users ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN instance_admin INTEGER NOT NULL DEFAULT 0;
-- Access tokens issued before this (unix milliseconds) are refused: a password or
-- role change, or a logout everywhere, moves it forward.
ALTER TABLE users ADD COLUMN sessions_after INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
UPDATE users SET instance_admin = 1
    WHERE id = (SELECT id FROM users WHERE role = 'owner' ORDER BY created_at, id LIMIT 1);
CREATE INDEX users_org ON users (org_id, id);

-- Refresh tokens, stored as SHA-256 hashes. A token is used once; using it
-- again revokes its whole family (every token descended from one login).
CREATE TABLE refresh_tokens (
    hash        TEXT PRIMARY KEY,
    family      TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    org_id      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES orgs(id),
    name          TEXT NOT NULL,
    secret_hash   TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);
CREATE INDEX api_keys_org ON api_keys (org_id, id);

-- Failed logins per email (known or not, so the answer reveals nothing).
CREATE TABLE login_throttle (
    email         TEXT PRIMARY KEY,
    failures      INTEGER NOT NULL,
    lockouts      INTEGER NOT NULL,
    locked_until  INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    summary     TEXT NOT NULL,
    request_id  TEXT,
    client      TEXT,
    at          INTEGER NOT NULL
);
CREATE INDEX audit_org ON audit_log (org_id, id);
CREATE INDEX audit_org_actor ON audit_log (org_id, actor, id);
CREATE INDEX audit_org_action ON audit_log (org_id, action, id);
CREATE INDEX audit_org_target ON audit_log (org_id, target, id);

-- Append-only, enforced by the database itself.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
