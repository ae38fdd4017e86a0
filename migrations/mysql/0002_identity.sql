-- Identity, tenancy and audit (MySQL / MariaDB dialect of the SQLite
-- migration of the same name).

ALTER TABLE orgs ADD COLUMN slug VARCHAR(255);
-- Per-org overrides of the plan's limits (absent keys take the plan's).
ALTER TABLE orgs ADD COLUMN limits JSON NOT NULL DEFAULT ('{}');
ALTER TABLE orgs ADD COLUMN suspended_at BIGINT;
-- Live agents, kept in the same transaction as every agent insert and delete.
ALTER TABLE orgs ADD COLUMN agent_count BIGINT NOT NULL DEFAULT 0;
UPDATE orgs SET slug = lower(id) WHERE slug IS NULL;
UPDATE orgs SET agent_count =
    (SELECT COUNT(*) FROM agents a WHERE a.org_id = orgs.id AND a.deleted_at IS NULL);
CREATE UNIQUE INDEX orgs_slug ON orgs (slug);

ALTER TABLE users ADD COLUMN name TEXT NOT NULL DEFAULT ('');
ALTER TABLE users ADD COLUMN instance_admin BOOLEAN NOT NULL DEFAULT FALSE;
-- Access tokens issued before this (unix milliseconds) are refused.
ALTER TABLE users ADD COLUMN sessions_after BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
-- (MySQL cannot read the table it updates in a subquery: a derived table.)
UPDATE users SET instance_admin = TRUE
    WHERE id = (SELECT id FROM (SELECT id FROM users WHERE role = 'owner'
                                ORDER BY created_at, id LIMIT 1) AS first_owner);
CREATE INDEX users_org ON users (org_id, id);

-- Refresh tokens, stored as SHA-256 hashes; reuse revokes the family.
CREATE TABLE refresh_tokens (
    hash        VARCHAR(255) PRIMARY KEY,
    family      VARCHAR(255) NOT NULL,
    user_id     VARCHAR(255) NOT NULL,
    org_id      VARCHAR(255) NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    revoked_at  BIGINT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE api_keys (
    id            VARCHAR(255) PRIMARY KEY,
    org_id        VARCHAR(255) NOT NULL,
    name          TEXT NOT NULL,
    secret_hash   TEXT NOT NULL,
    scopes        JSON NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    last_used_at  BIGINT,
    revoked_at    BIGINT,
    FOREIGN KEY (org_id) REFERENCES orgs(id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX api_keys_org ON api_keys (org_id, id);

-- Failed logins per email (known or not, so the answer reveals nothing).
CREATE TABLE login_throttle (
    email         VARCHAR(255) PRIMARY KEY,
    failures      BIGINT NOT NULL,
    lockouts      BIGINT NOT NULL,
    locked_until  BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE audit_log (
    id          BIGINT AUTO_INCREMENT PRIMARY KEY,
    org_id      VARCHAR(255) NOT NULL,
    actor       VARCHAR(255) NOT NULL,
    action      VARCHAR(255) NOT NULL,
    target      VARCHAR(255) NOT NULL,
    summary     JSON NOT NULL,
    request_id  TEXT,
    client      TEXT,
    at          BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX audit_org ON audit_log (org_id, id);
CREATE INDEX audit_org_actor ON audit_log (org_id, actor, id);
CREATE INDEX audit_org_action ON audit_log (org_id, action, id);
CREATE INDEX audit_org_target ON audit_log (org_id, target, id);

-- Append-only, enforced by the database itself.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'audit log is append-only';
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'audit log is append-only';
