-- Agents as employees: an agent's job description, persona and manager
-- (`reports_to`) as one JSON document, NULL when none is set; an
-- organization's instructions (its handbook, part of every agent's system
-- prompt), NULL when it has none.
ALTER TABLE agents ADD COLUMN job JSON;
ALTER TABLE orgs ADD COLUMN instructions MEDIUMTEXT;
-- Whom an agent may give work with `agent.message`: `chart` (down the
-- org chart and to peers with the same manager) or `any` agent.
ALTER TABLE orgs ADD COLUMN delegation VARCHAR(16) NOT NULL DEFAULT 'chart';
-- A conversation is found by its id within its organization (people
-- write to `/conversations/{id}/messages`).
CREATE INDEX conversations_by_id ON conversations (org_id, id);
