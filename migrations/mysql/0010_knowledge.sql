-- Knowledge and memory (MySQL / MariaDB dialect of the SQLite migration of the
-- same name).
CREATE TABLE knowledge_bases (
    id           VARCHAR(255) PRIMARY KEY,
    org_id       VARCHAR(255) NOT NULL,
    name         VARCHAR(255) NOT NULL,
    description  TEXT NOT NULL,
    created_by   VARCHAR(255) NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE UNIQUE INDEX knowledge_bases_name ON knowledge_bases (org_id, name);

CREATE TABLE kb_documents (
    id            VARCHAR(255) PRIMARY KEY,
    org_id        VARCHAR(255) NOT NULL,
    kb_id         VARCHAR(255) NOT NULL,
    title         TEXT NOT NULL,
    source        TEXT NOT NULL,
    content_type  VARCHAR(64) NOT NULL,
    metadata      TEXT NOT NULL,
    content       MEDIUMTEXT NOT NULL,
    content_hash  VARCHAR(64) NOT NULL,
    bytes         BIGINT NOT NULL,
    chunk_count   BIGINT NOT NULL,
    version       BIGINT NOT NULL,
    state         VARCHAR(64) NOT NULL,
    created_by    VARCHAR(255) NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX kb_documents_kb ON kb_documents (org_id, kb_id, id);
CREATE INDEX kb_documents_state ON kb_documents (state);

CREATE TABLE kb_chunks (
    id            VARCHAR(255) PRIMARY KEY,
    org_id        VARCHAR(255) NOT NULL,
    kb_id         VARCHAR(255) NOT NULL,
    doc_id        VARCHAR(255) NOT NULL,
    position      BIGINT NOT NULL,
    start_offset  BIGINT NOT NULL,
    end_offset    BIGINT NOT NULL,
    tokens        BIGINT NOT NULL,
    body          TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX kb_chunks_doc ON kb_chunks (doc_id, position);

CREATE TABLE memories (
    id            VARCHAR(255) PRIMARY KEY,
    org_id        VARCHAR(255) NOT NULL,
    agent_id      VARCHAR(255) NOT NULL,
    kind          VARCHAR(64) NOT NULL,
    content       MEDIUMTEXT NOT NULL,
    importance    BIGINT NOT NULL,
    source_task   VARCHAR(255),
    expires_at    BIGINT,
    state         VARCHAR(64) NOT NULL,
    created_at    BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX memories_agent ON memories (org_id, agent_id, id);
CREATE INDEX memories_expiry ON memories (expires_at);
CREATE INDEX memories_state ON memories (state);

-- Embeddings of chunks and memories (when an embedding provider is
-- configured): little-endian f32s, base64. The in-process vector index is
-- built from these rows on start.
CREATE TABLE kb_vectors (
    id            VARCHAR(255) PRIMARY KEY,
    org_id        VARCHAR(255) NOT NULL,
    scope         VARCHAR(64) NOT NULL,
    owner_id      VARCHAR(255) NOT NULL,
    doc_id        VARCHAR(255),
    expires_at    BIGINT,
    vector        TEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX kb_vectors_doc ON kb_vectors (doc_id);
