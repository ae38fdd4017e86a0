-- Knowledge and memory (PostgreSQL dialect of the SQLite migration of the same name).
CREATE TABLE knowledge_bases (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX knowledge_bases_name ON knowledge_bases (org_id, name);

CREATE TABLE kb_documents (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL,
    kb_id         TEXT NOT NULL,
    title         TEXT NOT NULL,
    source        TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    metadata      TEXT NOT NULL DEFAULT '{}',
    content       TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    bytes         BIGINT NOT NULL,
    chunk_count   BIGINT NOT NULL,
    version       BIGINT NOT NULL,
    state         TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX kb_documents_kb ON kb_documents (org_id, kb_id, id);
CREATE INDEX kb_documents_state ON kb_documents (state);

CREATE TABLE kb_chunks (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL,
    kb_id         TEXT NOT NULL,
    doc_id        TEXT NOT NULL,
    position      BIGINT NOT NULL,
    start_offset  BIGINT NOT NULL,
    end_offset    BIGINT NOT NULL,
    tokens        BIGINT NOT NULL,
    body          TEXT NOT NULL
);
CREATE INDEX kb_chunks_doc ON kb_chunks (doc_id, position);

CREATE TABLE memories (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    kind          TEXT NOT NULL,
    content       TEXT NOT NULL,
    importance    BIGINT NOT NULL,
    source_task   TEXT,
    expires_at    BIGINT,
    state         TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX memories_agent ON memories (org_id, agent_id, id);
CREATE INDEX memories_expiry ON memories (expires_at);
CREATE INDEX memories_state ON memories (state);

-- Embeddings of chunks and memories (when an embedding provider is
-- configured): little-endian f32s, base64. The in-process vector index is
-- built from these rows on start.
CREATE TABLE kb_vectors (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL,
    scope         TEXT NOT NULL,
    owner_id      TEXT NOT NULL,
    doc_id        TEXT,
    expires_at    BIGINT,
    vector        TEXT NOT NULL
);
CREATE INDEX kb_vectors_doc ON kb_vectors (doc_id);
