-- What each counted usage report added, and for which organization, so the
-- spend of a budget period can be shown across the period (per day, per
-- hour for daily budgets) and not only as its total. Reports counted
-- before this migration keep 0 (their totals are in agents and org_usage).
ALTER TABLE usage_reports ADD COLUMN org_id TEXT NOT NULL DEFAULT '';
ALTER TABLE usage_reports ADD COLUMN tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_reports ADD COLUMN cost_micros BIGINT NOT NULL DEFAULT 0;
CREATE INDEX usage_reports_org_at ON usage_reports (org_id, at);
CREATE INDEX usage_reports_agent_at ON usage_reports (agent_id, at);
