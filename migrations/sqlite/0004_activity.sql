-- Activity: what agents do, as reported by their runtimes, plus the control
-- plane's own events (state changes, budget alerts). High volume: written in
-- batches by the activity writer (src/activity), one transaction per flush.
-- `id` is the stream's event id (SSE `Last-Event-ID`): increasing, never
-- reused (AUTOINCREMENT), assigned by the single writer.
CREATE TABLE activity (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id      TEXT    NOT NULL,
    agent_id    TEXT,
    kind        TEXT    NOT NULL,
    payload     TEXT    NOT NULL, -- JSON
    at          INTEGER NOT NULL, -- when it happened (unix ms)
    recorded_at INTEGER NOT NULL  -- when it was committed
);
CREATE INDEX activity_by_org ON activity (org_id, id);
CREATE INDEX activity_by_agent ON activity (agent_id, id);

-- One row per committed flush, written in the flush's transaction: a writer
-- that replaces a killed one re-flushes the batch its predecessor held and
-- finds here whether that batch was already committed (and its ids).
CREATE TABLE activity_flushes (
    id       INTEGER PRIMARY KEY,
    first_id INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    at       INTEGER NOT NULL
);

-- Days of activity kept per organization (NULL: the configured default).
ALTER TABLE orgs ADD COLUMN activity_retention_days INTEGER;
