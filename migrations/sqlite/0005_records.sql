-- Typed records projected from activity events in the same flush
-- transaction. The activity row stays the one event of record: its payload
-- holds the record's fields (arguments, result, duration, tokens, content),
-- its org_id and at scope and date it. These tables are what cannot be read
-- from it quickly: an agent's tool calls by tool and status, a
-- conversation's messages. They are clustered by agent (WITHOUT ROWID: the
-- table is its own index, one b-tree insert a row on the ingest path), and
-- the retention job deletes them with their activity rows, in one
-- transaction.
CREATE TABLE tool_calls (
    agent_id    TEXT    NOT NULL,
    activity_id INTEGER NOT NULL,
    tool_id     TEXT    NOT NULL,
    status      TEXT    NOT NULL, -- ok | error | denied | timeout
    PRIMARY KEY (agent_id, activity_id)
) WITHOUT ROWID;

-- A conversation is named by the runtime (its id is unique per agent); the
-- first message opens it, each message moves last_at and the counters.
CREATE TABLE conversations (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT, -- page cursor
    org_id      TEXT    NOT NULL,
    agent_id    TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    title       TEXT,
    started_at  INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    messages    INTEGER NOT NULL,
    tokens      INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL, -- last committed message (retention)
    UNIQUE (agent_id, id)
);

CREATE TABLE messages (
    agent_id        TEXT    NOT NULL,
    conversation_id TEXT    NOT NULL,
    activity_id     INTEGER NOT NULL,
    PRIMARY KEY (agent_id, conversation_id, activity_id)
) WITHOUT ROWID;

-- Per agent, hour (unix ms of its start, by the events' own time) and kind:
-- what the daily timeline shows, added up in each flush's transaction so a
-- day reads at most 24 x kinds rows however busy the agent was.
CREATE TABLE activity_hours (
    agent_id    TEXT    NOT NULL,
    hour        INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    org_id      TEXT    NOT NULL,
    events      INTEGER NOT NULL,
    errors      INTEGER NOT NULL, -- tool calls whose status is not ok
    tokens      INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    PRIMARY KEY (agent_id, hour, kind)
) WITHOUT ROWID;
