//! Knowledge bases, documents, chunks and agents' memories (written by the
//! knowledge writer, `src/knowledge/`; the API reads them here). The rows
//! are the source of truth: the lexical index is rebuilt from them.

use super::DecodeRow;
use super::server::{at_commit, retry, stmt_classify};
use super::sqlite::unavailable;
use super::tables::{Arg, Tables, placeholders};
use cadre_actors::audit::AuditEntry;
use cadre_actors::ports::StoreError;
use serde::Serialize;
use sqlx::ColumnIndex;

/// A knowledge base.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnowledgeBase {
    /// Id (UUID v7).
    pub id: String,
    /// Organization.
    pub org_id: String,
    /// Name, unique in the organization.
    pub name: String,
    /// What it holds.
    pub description: String,
    /// Who created it.
    pub created_by: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

/// A document of a knowledge base (its text as extracted, not the upload).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    /// Id (UUID v7).
    pub id: String,
    /// Organization.
    pub org_id: String,
    /// Its knowledge base.
    pub kb_id: String,
    /// Title.
    pub title: String,
    /// `upload` or the URL it was fetched from.
    pub source: String,
    /// `text/plain`, `text/markdown`, `text/html`.
    pub content_type: String,
    /// String keys to string values (search filters).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The extracted text (empty in list reads).
    pub content: String,
    /// SHA-256 of the text (hex).
    pub content_hash: String,
    /// Bytes of the text.
    pub bytes: i64,
    /// Chunks it was split into.
    pub chunk_count: i64,
    /// 1, then +1 on every update (an index pass marks only its version).
    pub version: i64,
    /// `pending`, `indexed`, `deleting`.
    pub state: String,
    /// Who added it.
    pub created_by: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chunk {
    /// `<document id>:<version>:<position>`.
    pub id: String,
    /// Organization.
    pub org_id: String,
    /// Knowledge base.
    pub kb_id: String,
    /// Document.
    pub doc_id: String,
    /// 0, 1, … in the document.
    pub position: i64,
    /// Byte offset of its start in the document's text.
    pub start: i64,
    /// Byte offset of its end.
    pub end: i64,
    /// Its tokens (cl100k).
    pub tokens: i64,
    /// Its text.
    pub text: String,
}

/// An agent's memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memory {
    /// Id (UUID v7).
    pub id: String,
    /// Organization.
    pub org_id: String,
    /// The agent it belongs to.
    pub agent_id: String,
    /// `episodic`, `semantic`, `procedural`, `working`.
    pub kind: String,
    /// What is remembered.
    pub content: String,
    /// 0–1000 (the API shows 0.0–1.0).
    pub importance: i64,
    /// The task it came from.
    pub source_task: Option<String>,
    /// Unix ms after which it is never returned; `None`: kept.
    pub expires_at: Option<i64>,
    /// `pending`, `indexed`, `deleting`.
    pub state: String,
    /// Unix ms.
    pub created_at: i64,
}

/// A stored embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorRow {
    /// The chunk's or memory's id.
    pub id: String,
    /// Organization.
    pub org_id: String,
    /// `kb` or `mem`.
    pub scope: String,
    /// Knowledge base or agent.
    pub owner_id: String,
    /// Document (chunks).
    pub doc_id: Option<String>,
    /// Memory expiry.
    pub expires_at: Option<i64>,
    /// Little-endian f32s, base64.
    pub vector: String,
}

const VECTOR_COLUMNS: &str = "id, org_id, scope, owner_id, doc_id, expires_at, vector";

fn vector_row<R: DecodeRow>(r: &R) -> Result<VectorRow, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(VectorRow {
        id: r.cell("id").map_err(bad)?,
        org_id: r.cell("org_id").map_err(bad)?,
        scope: r.cell("scope").map_err(bad)?,
        owner_id: r.cell("owner_id").map_err(bad)?,
        doc_id: r.cell("doc_id").map_err(bad)?,
        expires_at: r.cell("expires_at").map_err(bad)?,
        vector: r.cell("vector").map_err(bad)?,
    })
}

fn bad(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("unreadable knowledge row: {e}"))
}

const KB_COLUMNS: &str = "id, org_id, name, description, created_by, created_at, updated_at";

fn kb_row<R: DecodeRow>(r: &R) -> Result<KnowledgeBase, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(KnowledgeBase {
        id: r.cell("id").map_err(bad)?,
        org_id: r.cell("org_id").map_err(bad)?,
        name: r.cell("name").map_err(bad)?,
        description: r.cell("description").map_err(bad)?,
        created_by: r.cell("created_by").map_err(bad)?,
        created_at: r.cell("created_at").map_err(bad)?,
        updated_at: r.cell("updated_at").map_err(bad)?,
    })
}

/// Every column but the text, then the text or an empty string.
fn doc_columns(with_content: bool) -> String {
    format!(
        "id, org_id, kb_id, title, source, content_type, metadata, {}, content_hash, bytes, \
         chunk_count, version, state, created_by, created_at, updated_at",
        if with_content {
            "content"
        } else {
            "'' AS content"
        }
    )
}

fn doc_row<R: DecodeRow>(r: &R) -> Result<Document, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let metadata: String = r.cell("metadata").map_err(bad)?;
    Ok(Document {
        id: r.cell("id").map_err(bad)?,
        org_id: r.cell("org_id").map_err(bad)?,
        kb_id: r.cell("kb_id").map_err(bad)?,
        title: r.cell("title").map_err(bad)?,
        source: r.cell("source").map_err(bad)?,
        content_type: r.cell("content_type").map_err(bad)?,
        metadata: serde_json::from_str(&metadata).map_err(bad)?,
        content: r.cell("content").map_err(bad)?,
        content_hash: r.cell("content_hash").map_err(bad)?,
        bytes: r.cell("bytes").map_err(bad)?,
        chunk_count: r.cell("chunk_count").map_err(bad)?,
        version: r.cell("version").map_err(bad)?,
        state: r.cell("state").map_err(bad)?,
        created_by: r.cell("created_by").map_err(bad)?,
        created_at: r.cell("created_at").map_err(bad)?,
        updated_at: r.cell("updated_at").map_err(bad)?,
    })
}

const CHUNK_COLUMNS: &str =
    "id, org_id, kb_id, doc_id, position, start_offset, end_offset, tokens, body";

fn chunk_row<R: DecodeRow>(r: &R) -> Result<Chunk, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(Chunk {
        id: r.cell("id").map_err(bad)?,
        org_id: r.cell("org_id").map_err(bad)?,
        kb_id: r.cell("kb_id").map_err(bad)?,
        doc_id: r.cell("doc_id").map_err(bad)?,
        position: r.cell("position").map_err(bad)?,
        start: r.cell("start_offset").map_err(bad)?,
        end: r.cell("end_offset").map_err(bad)?,
        tokens: r.cell("tokens").map_err(bad)?,
        text: r.cell("body").map_err(bad)?,
    })
}

const MEMORY_COLUMNS: &str = "id, org_id, agent_id, kind, content, importance, source_task, \
                              expires_at, state, created_at";

fn memory_row<R: DecodeRow>(r: &R) -> Result<Memory, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(Memory {
        id: r.cell("id").map_err(bad)?,
        org_id: r.cell("org_id").map_err(bad)?,
        agent_id: r.cell("agent_id").map_err(bad)?,
        kind: r.cell("kind").map_err(bad)?,
        content: r.cell("content").map_err(bad)?,
        importance: r.cell("importance").map_err(bad)?,
        source_task: r.cell("source_task").map_err(bad)?,
        expires_at: r.cell("expires_at").map_err(bad)?,
        state: r.cell("state").map_err(bad)?,
        created_at: r.cell("created_at").map_err(bad)?,
    })
}

/// Chunks per multi-row insert (9 parameters each).
const CHUNK_BATCH: usize = 200;

on_dialects! {
    impl<D> Tables<D> {
        /// Creates a knowledge base with its audit entry (`Conflict` when
        /// the organization has one of that name).
        pub async fn create_kb(&self, kb: &KnowledgeBase, audit: &AuditEntry) -> Result<(), StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(&format!(
                    "INSERT INTO knowledge_bases ({KB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                ));
                sqlx::query(&sql)
                    .bind(kb.id.as_str())
                    .bind(kb.org_id.as_str())
                    .bind(kb.name.as_str())
                    .bind(kb.description.as_str())
                    .bind(kb.created_by.as_str())
                    .bind(kb.created_at)
                    .bind(kb.updated_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(stmt_classify)?;
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)
            })
            .await
        }

        /// Renames or re-describes a knowledge base; whether it exists.
        pub async fn update_kb(&self, kb: &KnowledgeBase, audit: &AuditEntry) -> Result<bool, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(
                    "UPDATE knowledge_bases SET name = ?, description = ?, updated_at = ? \
                     WHERE org_id = ? AND id = ?",
                );
                let done = sqlx::query(&sql)
                    .bind(kb.name.as_str())
                    .bind(kb.description.as_str())
                    .bind(kb.updated_at)
                    .bind(kb.org_id.as_str())
                    .bind(kb.id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(stmt_classify)?;
                if D::rows_affected(&done) == 0 {
                    return Ok(false);
                }
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(true)
            })
            .await
        }

        /// Deletes a knowledge base; its documents are marked `deleting`
        /// (the writer takes them out of the index, then drops their rows).
        pub async fn delete_kb(&self, org: &str, id: &str, now: i64, audit: &AuditEntry) -> Result<bool, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql("DELETE FROM knowledge_bases WHERE org_id = ? AND id = ?");
                if Self::run(&mut tx, sqlx::query(&sql).bind(org).bind(id)).await? == 0 {
                    return Ok(false);
                }
                let sql = D::sql(
                    "UPDATE kb_documents SET state = 'deleting', updated_at = ? WHERE org_id = ? AND kb_id = ?",
                );
                Self::run(&mut tx, sqlx::query(&sql).bind(now).bind(org).bind(id)).await?;
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(true)
            })
            .await
        }

        /// One knowledge base of an organization.
        pub async fn kb(&self, org: &str, id: &str) -> Result<Option<KnowledgeBase>, StoreError> {
            let sql = format!("SELECT {KB_COLUMNS} FROM knowledge_bases WHERE org_id = ? AND id = ?");
            self.row(&sql, &[org, id]).await?.as_ref().map(kb_row).transpose()
        }

        /// An organization's knowledge bases after id `after`, in id order.
        pub async fn kbs_page(&self, org: &str, after: &str, limit: i64) -> Result<Vec<KnowledgeBase>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT {KB_COLUMNS} FROM knowledge_bases WHERE org_id = ? AND id > ?{b} \
                 ORDER BY id{b} LIMIT ?",
                b = D::BYTES
            ));
            let rows = sqlx::query(&sql)
                .bind(org)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter().map(kb_row).collect()
        }

        /// Writes a document (new, or a new version of one) and its chunks,
        /// replacing the old chunks, in state `pending`; `false` when the
        /// document is being deleted (or the knowledge base is gone).
        pub async fn put_document(&self, doc: &Document, chunks: &[Chunk], vectors: &[VectorRow], audit: &AuditEntry) -> Result<bool, StoreError> {
            let metadata = serde_json::Value::Object(doc.metadata.clone()).to_string();
            let metadata = metadata.as_str();
            retry(|| async move {
                let mut tx = self.begin().await?;
                // The knowledge base row is locked (server dialects) so a
                // concurrent delete cannot leave this document behind.
                let lock = D::sql(&format!(
                    "SELECT id FROM knowledge_bases WHERE org_id = ? AND id = ?{}",
                    D::FOR_UPDATE
                ));
                let found = sqlx::query(&lock)
                    .bind(doc.org_id.as_str())
                    .bind(doc.kb_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(super::server::stmt)?;
                if found.is_none() {
                    return Ok(false);
                }
                if doc.version > 1 {
                    let sql = D::sql(
                        "UPDATE kb_documents SET title = ?, source = ?, content_type = ?, metadata = ?, \
                         content = ?, content_hash = ?, bytes = ?, chunk_count = ?, version = ?, \
                         state = 'pending', updated_at = ? \
                         WHERE org_id = ? AND id = ? AND version = ? AND state <> 'deleting'",
                    );
                    let q = sqlx::query(&sql)
                        .bind(doc.title.as_str())
                        .bind(doc.source.as_str())
                        .bind(doc.content_type.as_str())
                        .bind(metadata)
                        .bind(doc.content.as_str())
                        .bind(doc.content_hash.as_str())
                        .bind(doc.bytes)
                        .bind(doc.chunk_count)
                        .bind(doc.version)
                        .bind(doc.updated_at)
                        .bind(doc.org_id.as_str())
                        .bind(doc.id.as_str())
                        .bind(doc.version - 1);
                    if Self::run(&mut tx, q).await? == 0 {
                        return Ok(false);
                    }
                    let sql = D::sql("DELETE FROM kb_chunks WHERE doc_id = ?");
                    Self::run(&mut tx, sqlx::query(&sql).bind(doc.id.as_str())).await?;
                    let sql = D::sql("DELETE FROM kb_vectors WHERE doc_id = ?");
                    Self::run(&mut tx, sqlx::query(&sql).bind(doc.id.as_str())).await?;
                } else {
                    let sql = D::sql(&format!(
                        "INSERT INTO kb_documents ({}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        doc_columns(true)
                    ));
                    let q = sqlx::query(&sql)
                        .bind(doc.id.as_str())
                        .bind(doc.org_id.as_str())
                        .bind(doc.kb_id.as_str())
                        .bind(doc.title.as_str())
                        .bind(doc.source.as_str())
                        .bind(doc.content_type.as_str())
                        .bind(metadata)
                        .bind(doc.content.as_str())
                        .bind(doc.content_hash.as_str())
                        .bind(doc.bytes)
                        .bind(doc.chunk_count)
                        .bind(doc.version)
                        .bind("pending")
                        .bind(doc.created_by.as_str())
                        .bind(doc.created_at)
                        .bind(doc.updated_at);
                    Self::run(&mut tx, q).await?;
                }
                for batch in chunks.chunks(CHUNK_BATCH) {
                    let sql = D::sql(&format!(
                        "INSERT INTO kb_chunks ({CHUNK_COLUMNS}) VALUES {}",
                        placeholders(batch.len(), 9, None)
                    ));
                    let mut args = Vec::with_capacity(batch.len() * 9);
                    for c in batch {
                        args.extend([
                            Arg::Text(&c.id),
                            Arg::Text(&c.org_id),
                            Arg::Text(&c.kb_id),
                            Arg::Text(&c.doc_id),
                            Arg::Int(c.position),
                            Arg::Int(c.start),
                            Arg::Int(c.end),
                            Arg::Int(c.tokens),
                            Arg::Text(&c.text),
                        ]);
                    }
                    Self::run(&mut tx, Self::bind_all(sqlx::query(&sql), &args)).await?;
                }
                Self::insert_vectors(&mut tx, vectors).await?;
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(true)
            })
            .await
        }

        /// Writes embeddings on `conn` (inside the caller's transaction).
        async fn insert_vectors(conn: &mut D::Connection, vectors: &[VectorRow]) -> Result<(), super::server::Attempt> {
            for batch in vectors.chunks(CHUNK_BATCH) {
                let sql = D::sql(&format!(
                    "INSERT INTO kb_vectors ({VECTOR_COLUMNS}) VALUES {}",
                    placeholders(batch.len(), 7, None)
                ));
                let mut args = Vec::with_capacity(batch.len() * 7);
                for v in batch {
                    args.extend([
                        Arg::Text(&v.id),
                        Arg::Text(&v.org_id),
                        Arg::Text(&v.scope),
                        Arg::Text(&v.owner_id),
                        Arg::MaybeText(v.doc_id.as_deref()),
                        Arg::MaybeInt(v.expires_at),
                        Arg::Text(&v.vector),
                    ]);
                }
                Self::run(conn, Self::bind_all(sqlx::query(&sql), &args)).await?;
            }
            Ok(())
        }

        /// (id, organization) of the stored embeddings after id `after`, in
        /// id order, without the vectors (the in-process index's start
        /// compares them with its snapshots).
        pub async fn vector_keys_page(&self, after: &str, limit: i64) -> Result<Vec<(String, String)>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT id, org_id FROM kb_vectors WHERE id > ?{b} ORDER BY id{b} LIMIT ?",
                b = D::BYTES
            ));
            let rows = sqlx::query(&sql)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| Ok((r.cell("id").map_err(bad)?, r.cell("org_id").map_err(bad)?)))
                .collect()
        }

        /// Stored embeddings by id (those that still exist).
        pub async fn vectors_by_id(&self, ids: &[String]) -> Result<Vec<VectorRow>, StoreError> {
            let mut out = Vec::with_capacity(ids.len());
            for batch in ids.chunks(500) {
                let sql = format!(
                    "SELECT {VECTOR_COLUMNS} FROM kb_vectors WHERE id IN ({})",
                    vec!["?"; batch.len()].join(", ")
                );
                let args: Vec<&str> = batch.iter().map(String::as_str).collect();
                for r in self.rows(&sql, &args).await? {
                    out.push(vector_row(&r)?);
                }
            }
            Ok(out)
        }

        /// Marks a document `deleting` with its audit entry; whether it
        /// existed (and was not being deleted already).
        pub async fn mark_document_deleting(&self, org: &str, id: &str, now: i64, audit: &AuditEntry) -> Result<bool, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(
                    "UPDATE kb_documents SET state = 'deleting', updated_at = ? \
                     WHERE org_id = ? AND id = ? AND state <> 'deleting'",
                );
                if Self::run(&mut tx, sqlx::query(&sql).bind(now).bind(org).bind(id)).await? == 0 {
                    return Ok(false);
                }
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(true)
            })
            .await
        }

        /// Marks version `version` of a document `indexed` (an older
        /// version's index pass changes nothing).
        pub async fn mark_document_indexed(&self, id: &str, version: i64) -> Result<(), StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(
                    "UPDATE kb_documents SET state = 'indexed' WHERE id = ? AND version = ? AND state = 'pending'",
                );
                Self::run(&mut tx, sqlx::query(&sql).bind(id).bind(version)).await?;
                tx.commit().await.map_err(at_commit)
            })
            .await
        }

        /// Drops a `deleting` document's rows (it has left the index).
        pub async fn drop_document(&self, id: &str) -> Result<(), StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql("DELETE FROM kb_chunks WHERE doc_id = ?");
                Self::run(&mut tx, sqlx::query(&sql).bind(id)).await?;
                let sql = D::sql("DELETE FROM kb_vectors WHERE doc_id = ?");
                Self::run(&mut tx, sqlx::query(&sql).bind(id)).await?;
                let sql = D::sql("DELETE FROM kb_documents WHERE id = ? AND state = 'deleting'");
                Self::run(&mut tx, sqlx::query(&sql).bind(id)).await?;
                tx.commit().await.map_err(at_commit)
            })
            .await
        }

        /// One document of an organization, with its text.
        pub async fn document(&self, org: &str, id: &str) -> Result<Option<Document>, StoreError> {
            let sql = format!(
                "SELECT {} FROM kb_documents WHERE org_id = ? AND id = ?",
                doc_columns(true)
            );
            self.row(&sql, &[org, id]).await?.as_ref().map(doc_row).transpose()
        }

        /// A knowledge base's documents after id `after` (without their
        /// text), in id order; those being deleted are left out.
        pub async fn documents_page(&self, org: &str, kb: &str, after: &str, limit: i64) -> Result<Vec<Document>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT {} FROM kb_documents WHERE org_id = ? AND kb_id = ? AND id > ?{b} \
                 AND state <> 'deleting' ORDER BY id{b} LIMIT ?",
                doc_columns(false),
                b = D::BYTES
            ));
            let rows = sqlx::query(&sql)
                .bind(org)
                .bind(kb)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter().map(doc_row).collect()
        }

        /// Documents in `state` after id `after` (without their text), in id
        /// order, any organization (the writer's resumption and rebuild).
        pub async fn documents_in(&self, state: &str, after: &str, limit: i64) -> Result<Vec<Document>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT {} FROM kb_documents WHERE state = ? AND id > ?{b} ORDER BY id{b} LIMIT ?",
                doc_columns(false),
                b = D::BYTES
            ));
            let rows = sqlx::query(&sql)
                .bind(state)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter().map(doc_row).collect()
        }

        /// A document's chunks, in order.
        pub async fn document_chunks(&self, doc: &str) -> Result<Vec<Chunk>, StoreError> {
            let sql = format!(
                "SELECT {CHUNK_COLUMNS} FROM kb_chunks WHERE doc_id = ? ORDER BY position"
            );
            let rows = Self::rows_on(&self.write, &sql, &[doc]).await?;
            rows.iter().map(chunk_row).collect()
        }

        /// Writes a memory in state `pending`, with its embedding if any and
        /// the audit entry of an operator's addition.
        pub async fn insert_memory(&self, m: &Memory, vector: Option<&VectorRow>, audit: Option<&AuditEntry>) -> Result<(), StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(&format!(
                    "INSERT INTO memories ({MEMORY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ));
                let q = sqlx::query(&sql)
                    .bind(m.id.as_str())
                    .bind(m.org_id.as_str())
                    .bind(m.agent_id.as_str())
                    .bind(m.kind.as_str())
                    .bind(m.content.as_str())
                    .bind(m.importance)
                    .bind(m.source_task.as_deref())
                    .bind(m.expires_at)
                    .bind("pending")
                    .bind(m.created_at);
                Self::run(&mut tx, q).await?;
                Self::insert_vectors(&mut tx, vector.map(std::slice::from_ref).unwrap_or(&[])).await?;
                if let Some(a) = audit {
                    Self::audit_in(&mut tx, a).await?;
                }
                tx.commit().await.map_err(at_commit)
            })
            .await
        }

        /// Sets the state of memories (`indexed` after an index commit,
        /// `deleting` before one), with an audit entry when an operator
        /// asked; how many changed.
        pub async fn set_memories_state(&self, ids: &[String], state: &str, audit: Option<&AuditEntry>) -> Result<u64, StoreError> {
            if ids.is_empty() {
                return Ok(0);
            }
            retry(|| async move {
                let mut tx = self.begin().await?;
                let mut n = 0;
                for batch in ids.chunks(500) {
                    let sql = D::sql(&format!(
                        "UPDATE memories SET state = ? WHERE state <> 'deleting' AND id IN ({})",
                        vec!["?"; batch.len()].join(", ")
                    ));
                    let mut q = sqlx::query(&sql).bind(state);
                    for id in batch {
                        q = q.bind(id.as_str());
                    }
                    n += Self::run(&mut tx, q).await?;
                }
                if let Some(a) = audit {
                    Self::audit_in(&mut tx, a).await?;
                }
                tx.commit().await.map_err(at_commit)?;
                Ok(n)
            })
            .await
        }

        /// Drops `deleting` memories' rows (they have left the index).
        pub async fn drop_memories(&self, ids: &[String]) -> Result<(), StoreError> {
            if ids.is_empty() {
                return Ok(());
            }
            retry(|| async move {
                let mut tx = self.begin().await?;
                for batch in ids.chunks(500) {
                    let marks = vec!["?"; batch.len()].join(", ");
                    let sql = D::sql(&format!(
                        "DELETE FROM memories WHERE state = 'deleting' AND id IN ({marks})"
                    ));
                    let mut q = sqlx::query(&sql);
                    for id in batch {
                        q = q.bind(id.as_str());
                    }
                    Self::run(&mut tx, q).await?;
                    let sql = D::sql(&format!("DELETE FROM kb_vectors WHERE id IN ({marks})"));
                    let mut q = sqlx::query(&sql);
                    for id in batch {
                        q = q.bind(id.as_str());
                    }
                    Self::run(&mut tx, q).await?;
                }
                tx.commit().await.map_err(at_commit)
            })
            .await
        }

        /// One memory of an agent.
        pub async fn memory(&self, org: &str, agent: &str, id: &str) -> Result<Option<Memory>, StoreError> {
            let sql = format!(
                "SELECT {MEMORY_COLUMNS} FROM memories WHERE org_id = ? AND agent_id = ? AND id = ?"
            );
            self.row(&sql, &[org, agent, id]).await?.as_ref().map(memory_row).transpose()
        }

        /// Memories by id (any state), for search hits.
        pub async fn memories_by_id(&self, ids: &[String]) -> Result<Vec<Memory>, StoreError> {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let sql = format!(
                "SELECT {MEMORY_COLUMNS} FROM memories WHERE id IN ({})",
                vec!["?"; ids.len()].join(", ")
            );
            let args: Vec<&str> = ids.iter().map(String::as_str).collect();
            let rows = self.rows(&sql, &args).await?;
            rows.iter().map(memory_row).collect()
        }

        /// An agent's live memories, newest first, before id `before`,
        /// optionally of one kind; expired ones (at `now`) left out.
        pub async fn memories_page(
            &self,
            org: &str,
            agent: &str,
            kind: Option<&str>,
            before: Option<&str>,
            now: i64,
            limit: i64,
        ) -> Result<Vec<Memory>, StoreError> {
            let mut b = super::tables::Built::new(
                format!(
                    "SELECT {MEMORY_COLUMNS} FROM memories WHERE org_id = ? AND agent_id = ? \
                     AND state <> 'deleting' AND (expires_at IS NULL OR expires_at > ?)"
                ),
                [Arg::Text(org), Arg::Text(agent), Arg::Int(now)],
            );
            b.filter(" AND kind = ?", kind.map(Arg::Text));
            b.filter(&format!(" AND id < ?{}", D::BYTES), before.map(Arg::Text));
            b.push(&format!(" ORDER BY id{} DESC LIMIT ?", D::BYTES), Arg::Int(limit));
            let rows = self.fetch(&b).await?;
            rows.iter().map(memory_row).collect()
        }

        /// Memories (ids) in `state`, any organization, after id `after`.
        pub async fn memories_in(&self, state: &str, after: &str, limit: i64) -> Result<Vec<Memory>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT {MEMORY_COLUMNS} FROM memories WHERE state = ? AND id > ?{b} ORDER BY id{b} LIMIT ?",
                b = D::BYTES
            ));
            let rows = sqlx::query(&sql)
                .bind(state)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter().map(memory_row).collect()
        }

        /// Ids of memories expired at `now` (the purge job), at most `limit`.
        pub async fn expired_memories(&self, now: i64, limit: i64) -> Result<Vec<String>, StoreError> {
            let sql = D::sql(
                "SELECT id FROM memories WHERE expires_at IS NOT NULL AND expires_at <= ? \
                 AND state <> 'deleting' LIMIT ?",
            );
            let rows = sqlx::query(&sql)
                .bind(now)
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter().map(|r| r.cell::<String, _>("id").map_err(bad)).collect()
        }
    }
}
