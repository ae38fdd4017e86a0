-- An organization's spend per month, over all its agents. Kept apart from
-- the agents' own counters so that deleting an agent does not give the
-- organization its month back. Updated in the transaction that counts each
-- usage report.
CREATE TABLE org_usage (
    org_id      TEXT    NOT NULL,
    period      TEXT    NOT NULL, -- YYYY-MM (UTC)
    tokens      INTEGER NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    cost_micros INTEGER NOT NULL DEFAULT 0 CHECK (cost_micros >= 0),
    PRIMARY KEY (org_id, period)
) WITHOUT ROWID;

-- What existing agents (deleted ones included) spent so far.
INSERT INTO org_usage (org_id, period, tokens, cost_micros)
SELECT org_id, usage_period, SUM(usage_tokens), SUM(usage_cost_micros)
FROM agents
WHERE usage_tokens > 0 OR usage_cost_micros > 0
GROUP BY org_id, usage_period;
