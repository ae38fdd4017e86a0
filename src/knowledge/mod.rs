//! Knowledge bases and agents' memories: documents split into chunks,
//! memories, and the lexical (BM25) index over both.
//!
//! One persistence actor, the knowledge writer, owns every change: it
//! writes the rows (durable, with their audit entries), then the index, in
//! batches of whatever jobs are waiting (one index commit for all of them),
//! and answers each caller only after both are committed. Rows are written
//! first in state `pending` (or `deleting`), so a crash between the two
//! commits is finished on the next start: pending rows are indexed again,
//! deleting ones taken out. Searches read the index directly.

pub mod chunk;
pub mod index;
pub mod pgvector;
mod snapshot;
pub mod vector;

use crate::store::{Chunk, Db, Document, KnowledgeBase, Memory, VectorRow};
use cadre_actors::Error;
use cadre_actors::audit::AuditEntry;
use index::{ChunkHit, ChunkQuery, Lexical, MemoryHit, MemoryQuery};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use vector::{Embedder, Entry, Gone, Near, VectorIndex, Vectors};

/// Jobs the writer takes in one batch at most.
const BATCH: usize = 64;
/// Rows read per page when resuming or rebuilding.
const PAGE: i64 = 500;

/// Memory kinds.
pub const KINDS: [&str; 4] = ["episodic", "semantic", "procedural", "working"];

type Done<T> = oneshot::Sender<Result<T, Error>>;

/// A document version to write: its row, chunks, their embeddings (none
/// without a provider) and the audit entry.
struct Put {
    doc: Document,
    chunks: Vec<Chunk>,
    vectors: Vec<Vec<f32>>,
    audit: AuditEntry,
}

/// What the writer is asked to do.
enum Job {
    CreateKb(KnowledgeBase, AuditEntry, Done<()>),
    UpdateKb(KnowledgeBase, AuditEntry, Done<bool>),
    DeleteKb(String, String, AuditEntry, Done<bool>),
    PutDocument(Box<Put>, Done<bool>),
    DeleteDocument(String, String, AuditEntry, Done<bool>),
    StoreMemory(Memory, Option<Vec<f32>>, Option<AuditEntry>, Done<()>),
    DeleteMemories(Vec<String>, Option<AuditEntry>, Done<u64>),
    Rebuild(Option<AuditEntry>, Done<Rebuilt>),
}

/// What a rebuild indexed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rebuilt {
    /// Documents.
    pub documents: u64,
    /// Their chunks.
    pub chunks: u64,
    /// Memories.
    pub memories: u64,
}

/// After the index commit: rows to mark or drop, then the answer.
enum After {
    MarkDoc(String, i64),
    DropDocs(Vec<String>),
    MarkMemories(Vec<String>),
    DropMemories(Vec<String>),
}

/// One job's part of a batch.
struct Step {
    after: Vec<After>,
    answer: Box<dyn FnOnce(Result<(), Error>) + Send>,
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(e.to_string())
}

/// The handle: send jobs to the writer, search the index.
#[derive(Clone)]
pub struct Knowledge {
    tx: mpsc::Sender<Job>,
    lexical: Arc<Lexical>,
    vectors: VectorIndex,
    embedder: Option<Embedder>,
    chunker: chunk::Chunker,
}

/// Where vectors are searched (`[knowledge] vector_index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VectorChoice {
    /// pgvector on a PostgreSQL database that has it (or lets Cadre
    /// create it), else in process.
    Auto,
    /// pgvector, or Cadre does not start.
    Pgvector,
    /// In process (HNSW), on any database.
    Hnsw,
}

/// The vector index's settings.
#[derive(Debug, Clone, Copy)]
pub struct VectorOptions {
    /// Where vectors are searched.
    pub index: VectorChoice,
    /// How often, at most, a changed in-process graph is written to its
    /// snapshot (and always when the writer stops).
    pub snapshot_every: std::time::Duration,
}

/// How a search ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// BM25 only.
    Lexical,
    /// Embeddings only.
    Vector,
    /// Both, fused by reciprocal rank.
    Hybrid,
}

impl Mode {
    /// The mode `raw` asks for (`auto` or none: hybrid when embeddings are
    /// configured, else lexical); `None` when it needs embeddings that
    /// are not configured, or is not a mode.
    pub fn pick(raw: Option<&str>, vectors: bool) -> Result<Mode, String> {
        match raw {
            None | Some("auto") => Ok(if vectors { Mode::Hybrid } else { Mode::Lexical }),
            Some("lexical") => Ok(Mode::Lexical),
            Some("vector" | "hybrid") if !vectors => Err(
                "vector search needs an embedding provider ([knowledge.embeddings] base_url)"
                    .into(),
            ),
            Some("vector") => Ok(Mode::Vector),
            Some("hybrid") => Ok(Mode::Hybrid),
            Some(other) => Err(format!("mode {other:?}: auto, lexical, vector or hybrid")),
        }
    }
}

impl std::fmt::Debug for Knowledge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Knowledge").finish_non_exhaustive()
    }
}

/// The writer's state.
struct Writer {
    store: Arc<Db>,
    lexical: Arc<Lexical>,
    vectors: VectorIndex,
    w: Arc<Mutex<tantivy::IndexWriter>>,
    snapshot_every: std::time::Duration,
}

impl Knowledge {
    /// Opens (or creates) the indexes under `dir` (the lexical one in
    /// `index/`, the vector snapshots in `vectors/`), finishes what a
    /// previous run left pending (or rebuilds the lexical index from the
    /// database when it was missing), reads the vector graphs back, and
    /// starts the writer.
    pub async fn start(
        store: Arc<Db>,
        dir: &Path,
        chunker: chunk::Chunker,
        embedder: Option<Embedder>,
        options: VectorOptions,
    ) -> anyhow::Result<(Knowledge, tokio::task::JoinHandle<()>)> {
        let in_process = || VectorIndex::Hnsw(Arc::new(Vectors::persistent(dir.join("vectors"))));
        let choice = options.index;
        let vectors = match (choice, store.postgres()) {
            (VectorChoice::Hnsw, _) | (VectorChoice::Auto, None) => in_process(),
            (VectorChoice::Pgvector, None) => {
                anyhow::bail!("knowledge.vector_index = \"pgvector\" needs a PostgreSQL database")
            }
            (choice, Some(pool)) => match pgvector::PgVectors::open(pool)
                .await
                .map_err(anyhow::Error::msg)?
            {
                Some(p) => {
                    tracing::info!(version = %p.version, "knowledge vectors are searched by pgvector");
                    VectorIndex::Pg(Arc::new(p))
                }
                None if choice == VectorChoice::Pgvector => anyhow::bail!(
                    "knowledge.vector_index = \"pgvector\": the extension is not installed in \
                     this database and Cadre's login may not create it (CREATE EXTENSION vector)"
                ),
                None => in_process(),
            },
        };
        let dir = dir.join("index");
        let (lexical, fresh) = tokio::task::spawn_blocking(move || Lexical::open(&dir))
            .await?
            .map_err(anyhow::Error::msg)?;
        let lexical = Arc::new(lexical);
        let w = lexical.writer().map_err(anyhow::Error::msg)?;
        let mut writer = Writer {
            store,
            lexical: lexical.clone(),
            vectors: vectors.clone(),
            w: Arc::new(Mutex::new(w)),
            snapshot_every: options.snapshot_every,
        };
        if fresh {
            // The lexical index was missing: it is built from the rows;
            // the vector graphs come back from their snapshots.
            let r = writer.rebuild(false).await.map_err(anyhow::Error::msg)?;
            if r != Rebuilt::default() {
                tracing::info!(?r, "knowledge index rebuilt from the database");
            }
        } else {
            writer.resume().await.map_err(anyhow::Error::msg)?;
            writer.load_vectors().await.map_err(anyhow::Error::msg)?;
        }
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(writer.run(rx));
        Ok((
            Knowledge {
                tx,
                lexical,
                vectors,
                embedder,
                chunker,
            },
            task,
        ))
    }

    /// The splitter.
    pub fn chunker(&self) -> &chunk::Chunker {
        &self.chunker
    }

    async fn ask<T>(&self, job: impl FnOnce(Done<T>) -> Job) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(job(tx))
            .await
            .map_err(|_| unavailable("the knowledge writer has stopped"))?;
        rx.await
            .map_err(|_| unavailable("the knowledge writer stopped before answering"))?
    }

    /// Creates a knowledge base.
    pub async fn create_kb(&self, kb: KnowledgeBase, audit: AuditEntry) -> Result<(), Error> {
        self.ask(|d| Job::CreateKb(kb, audit, d)).await
    }

    /// Renames or re-describes one; whether it exists.
    pub async fn update_kb(&self, kb: KnowledgeBase, audit: AuditEntry) -> Result<bool, Error> {
        self.ask(|d| Job::UpdateKb(kb, audit, d)).await
    }

    /// Deletes one with its documents (rows and index); whether it existed.
    pub async fn delete_kb(&self, org: &str, id: &str, audit: AuditEntry) -> Result<bool, Error> {
        let (org, id) = (org.to_string(), id.to_string());
        self.ask(|d| Job::DeleteKb(org, id, audit, d)).await
    }

    /// Adds a document (version 1) or a new version of one, with its
    /// chunks; `false` when its knowledge base (or the document) is gone.
    pub async fn put_document(
        &self,
        doc: Document,
        chunks: Vec<Chunk>,
        audit: AuditEntry,
    ) -> Result<bool, Error> {
        let texts: Vec<String> = chunks
            .iter()
            .map(|c| format!("{}\n{}", doc.title, c.text))
            .collect();
        let vectors = self.embed(&texts).await?.unwrap_or_default();
        self.ask(|d| {
            Job::PutDocument(
                Box::new(Put {
                    doc,
                    chunks,
                    vectors,
                    audit,
                }),
                d,
            )
        })
        .await
    }

    /// Whether vector search is configured.
    pub fn has_vectors(&self) -> bool {
        self.embedder.is_some()
    }

    /// Embeddings of `texts` (`None` when no provider is configured).
    pub async fn embed(&self, texts: &[String]) -> Result<Option<Vec<Vec<f32>>>, Error> {
        let Some(e) = &self.embedder else {
            return Ok(None);
        };
        if texts.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let t0 = std::time::Instant::now();
        let r = e.embed(texts).await.map_err(Error::Unavailable);
        metrics::histogram!("cadre_embeddings_seconds").record(t0.elapsed().as_secs_f64());
        r.map(Some)
    }

    /// Deletes a document (rows and index); whether it existed.
    pub async fn delete_document(
        &self,
        org: &str,
        id: &str,
        audit: AuditEntry,
    ) -> Result<bool, Error> {
        let (org, id) = (org.to_string(), id.to_string());
        self.ask(|d| Job::DeleteDocument(org, id, audit, d)).await
    }

    /// Stores a memory (with the audit entry of an operator's addition).
    pub async fn store_memory(&self, m: Memory, audit: Option<AuditEntry>) -> Result<(), Error> {
        let v = self
            .embed(std::slice::from_ref(&m.content))
            .await?
            .and_then(|mut v| v.pop());
        self.ask(|d| Job::StoreMemory(m, v, audit, d)).await
    }

    /// Deletes memories (rows and index); how many there were.
    pub async fn delete_memories(
        &self,
        ids: Vec<String>,
        audit: Option<AuditEntry>,
    ) -> Result<u64, Error> {
        self.ask(|d| Job::DeleteMemories(ids, audit, d)).await
    }

    /// Empties the index and indexes every document and memory again;
    /// `audit` (an operator's request) is written after, with what was
    /// indexed as its summary.
    pub async fn rebuild(&self, audit: Option<AuditEntry>) -> Result<Rebuilt, Error> {
        self.ask(|d| Job::Rebuild(audit, d)).await
    }

    /// The best chunks for `q`, ranked as `mode` says.
    pub async fn search(&self, q: ChunkQuery, mode: Mode) -> Result<Vec<ChunkHit>, Error> {
        let limit = q.limit.max(1);
        let wide = (limit * 4).max(20);
        let lexical = if mode == Mode::Vector {
            Vec::new()
        } else {
            let (l, q) = (
                self.lexical.clone(),
                ChunkQuery {
                    limit: wide,
                    ..q.clone()
                },
            );
            tokio::task::spawn_blocking(move || l.search_chunks(&q))
                .await
                .map_err(unavailable)?
                .map_err(unavailable)?
        };
        let near = Near::Chunks {
            kbs: q.kbs.clone(),
            doc: q.doc.clone(),
        };
        let hits = match self.nearest(mode, &q.org, &q.text, wide, near).await? {
            None => return Ok(lexical.into_iter().take(limit).collect()),
            Some(hits) => hits,
        };
        let ids: Vec<String> = hits.iter().map(|(id, _)| id.clone()).collect();
        let lex = self.lexical.clone();
        let found = tokio::task::spawn_blocking(move || lex.chunks_by_id(&ids, &q))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        Ok(ranked(mode, limit, lexical, hits, found))
    }

    /// The most relevant live memories, ranked as `mode` says.
    pub async fn recall(&self, q: MemoryQuery, mode: Mode) -> Result<Vec<MemoryHit>, Error> {
        let limit = q.limit.max(1);
        let wide = (limit * 4).max(20);
        let lexical = if mode == Mode::Vector {
            Vec::new()
        } else {
            let (l, q) = (
                self.lexical.clone(),
                MemoryQuery {
                    limit: wide,
                    ..q.clone()
                },
            );
            tokio::task::spawn_blocking(move || l.search_memories(&q))
                .await
                .map_err(unavailable)?
                .map_err(unavailable)?
        };
        let near = Near::Memories {
            agent: q.agent.clone(),
            now: q.now,
        };
        let hits = match self.nearest(mode, &q.org, &q.text, wide, near).await? {
            None => return Ok(lexical.into_iter().take(limit).collect()),
            Some(hits) => hits,
        };
        let ids: Vec<String> = hits.iter().map(|(id, _)| id.clone()).collect();
        let lex = self.lexical.clone();
        let found = tokio::task::spawn_blocking(move || lex.memories_by_id(&ids, &q))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        Ok(ranked(mode, limit, lexical, hits, found))
    }

    /// The nearest entries by embedding; `None` when `mode` is lexical or
    /// no provider is configured.
    async fn nearest(
        &self,
        mode: Mode,
        org: &str,
        text: &str,
        k: usize,
        near: Near,
    ) -> Result<Option<Vec<(String, f32)>>, Error> {
        if mode == Mode::Lexical {
            return Ok(None);
        }
        let Some(qv) = self
            .embed(&[text.to_string()])
            .await?
            .and_then(|mut v| v.pop())
        else {
            return Ok(None);
        };
        self.vectors
            .search(org, qv, k, near)
            .await
            .map(Some)
            .map_err(unavailable)
    }

    /// Where vectors are searched: `hnsw` or `pgvector`.
    pub fn vector_index(&self) -> &'static str {
        self.vectors.name()
    }

    /// Vectors searchable.
    pub async fn vectors(&self) -> Result<u64, Error> {
        self.vectors.count().await.map_err(unavailable)
    }

    /// How the in-process vector index came up (none on pgvector).
    pub fn vector_start(&self) -> Option<vector::Started> {
        match &self.vectors {
            VectorIndex::Hnsw(v) => Some(v.started()),
            VectorIndex::Pg(_) => None,
        }
    }

    /// Writes the snapshot of every changed in-process graph (on
    /// shutdown, after the writer stopped); how many were written.
    pub async fn save_vectors(&self) -> Result<usize, Error> {
        save_graphs(&self.vectors).await.map_err(unavailable)
    }

    /// Entries in the index.
    pub fn indexed(&self) -> u64 {
        self.lexical.len()
    }
}

async fn save_graphs(index: &VectorIndex) -> Result<usize, String> {
    match index {
        VectorIndex::Hnsw(v) => {
            let v = v.clone();
            tokio::task::spawn_blocking(move || v.save())
                .await
                .map_err(|e| e.to_string())?
        }
        VectorIndex::Pg(_) => Ok(0),
    }
}

/// A hit ranked by its id and score.
trait Hit {
    fn key(&self) -> &str;
    fn scored(self, score: f32) -> Self;
}

impl Hit for ChunkHit {
    fn key(&self) -> &str {
        &self.chunk_id
    }
    fn scored(self, score: f32) -> Self {
        ChunkHit { score, ..self }
    }
}

impl Hit for MemoryHit {
    fn key(&self) -> &str {
        &self.id
    }
    fn scored(self, score: f32) -> Self {
        MemoryHit { score, ..self }
    }
}

/// The vector hits (id, similarity) that are in the lexical index (which
/// has what is live, with its text), alone (`vector`) or fused with the
/// lexical ones (`hybrid`).
fn ranked<H: Hit>(
    mode: Mode,
    limit: usize,
    lexical: Vec<H>,
    hits: Vec<(String, f32)>,
    mut found: std::collections::HashMap<String, H>,
) -> Vec<H> {
    let near: Vec<H> = hits
        .into_iter()
        .filter_map(|(id, sim)| found.remove(&id).map(|h| h.scored(sim)))
        .collect();
    if mode == Mode::Vector {
        return near.into_iter().take(limit).collect();
    }
    let fused = vector::fuse(&[
        lexical.iter().map(|h| h.key().to_string()).collect(),
        near.iter().map(|h| h.key().to_string()).collect(),
    ]);
    let mut by_id: std::collections::HashMap<String, H> = lexical
        .into_iter()
        .chain(near)
        .map(|h| (h.key().to_string(), h))
        .collect();
    fused
        .into_iter()
        .take(limit)
        .filter_map(|(id, score)| by_id.remove(&id).map(|h| h.scored(score)))
        .collect()
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(BATCH);
        // Snapshots are written here, between batches: the writer is what
        // changes the graphs, so searches go on while one is written.
        let mut snapshot = tokio::time::interval(self.snapshot_every);
        snapshot.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        snapshot.tick().await;
        loop {
            let got = tokio::select! {
                n = rx.recv_many(&mut jobs, BATCH) => n,
                _ = snapshot.tick() => {
                    if let Err(e) = save_graphs(&self.vectors).await {
                        tracing::warn!(%e, "vector snapshot not written; it is tried again later");
                    }
                    continue;
                }
            };
            if got == 0 {
                break;
            }
            let mut steps = Vec::with_capacity(jobs.len());
            for job in jobs.drain(..) {
                if let Job::Rebuild(audit, done) = job {
                    // A rebuild commits on its own (after what came before).
                    self.finish(std::mem::take(&mut steps)).await;
                    let mut r = self.rebuild(true).await.map_err(unavailable);
                    if let (Ok(built), Some(mut a)) = (&r, audit) {
                        a.summary = serde_json::json!(built);
                        if let Err(e) = self.store.tables().append_audit(&a).await {
                            r = Err(unavailable(e));
                        }
                    }
                    let _ = done.send(r);
                    continue;
                }
                if let Some(step) = self.prepare(job).await {
                    steps.push(step);
                }
            }
            self.finish(steps).await;
        }
        if let Err(e) = save_graphs(&self.vectors).await {
            tracing::warn!(%e, "vector snapshot not written at stop");
        }
    }

    /// Applies a batch's index changes and commits them, then the rows'
    /// follow-ups, then answers.
    async fn finish(&mut self, steps: Vec<Step>) {
        if steps.is_empty() {
            return;
        }
        let committed = if steps.iter().any(|s| !s.after.is_empty()) {
            self.commit().await
        } else {
            Ok(())
        };
        for s in steps {
            let mut r = committed.clone().map_err(unavailable);
            if r.is_ok() {
                for a in s.after {
                    if let Err(e) = self.follow(a).await {
                        r = Err(unavailable(e));
                    }
                }
            }
            (s.answer)(r);
        }
    }

    async fn commit(&self) -> Result<(), String> {
        let (w, lexical) = (self.w.clone(), self.lexical.clone());
        tokio::task::spawn_blocking(move || {
            let mut w = w
                .lock()
                .map_err(|_| "knowledge index writer poisoned".to_string())?;
            w.commit()
                .map_err(|e| format!("knowledge index commit: {e}"))?;
            lexical.reload()
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn follow(&self, a: After) -> Result<(), String> {
        let t = self.store.tables();
        match a {
            After::MarkDoc(id, v) => t
                .mark_document_indexed(&id, v)
                .await
                .map_err(|e| e.to_string()),
            After::DropDocs(ids) => {
                for id in ids {
                    t.drop_document(&id).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            After::MarkMemories(ids) => t
                .set_memories_state(&ids, "indexed", None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            After::DropMemories(ids) => t.drop_memories(&ids).await.map_err(|e| e.to_string()),
        }
    }

    fn with_writer<T>(
        &self,
        f: impl FnOnce(&tantivy::IndexWriter, &Lexical) -> Result<T, String>,
    ) -> Result<T, String> {
        let w = self
            .w
            .lock()
            .map_err(|_| "knowledge index writer poisoned".to_string())?;
        f(&w, &self.lexical)
    }

    /// A job's rows (committed here), its index changes (committed with
    /// the batch) and what follows.
    async fn prepare(&mut self, job: Job) -> Option<Step> {
        let t = self.store.tables();
        fn step<T: Send + 'static>(after: Vec<After>, done: Done<T>, value: T) -> Step {
            Step {
                after,
                answer: Box::new(move |r| {
                    let _ = done.send(r.map(|()| value));
                }),
            }
        }
        match job {
            Job::CreateKb(kb, audit, done) => {
                let _ = done.send(t.create_kb(&kb, &audit).await.map_err(|e| match e {
                    cadre_actors::ports::StoreError::Conflict(_) => Error::Conflict(
                        "name_taken",
                        format!("a knowledge base named {:?} already exists", kb.name),
                    ),
                    other => unavailable(other),
                }));
                None
            }
            Job::UpdateKb(kb, audit, done) => {
                let _ = done.send(t.update_kb(&kb, &audit).await.map_err(|e| match e {
                    cadre_actors::ports::StoreError::Conflict(_) => Error::Conflict(
                        "name_taken",
                        format!("a knowledge base named {:?} already exists", kb.name),
                    ),
                    other => unavailable(other),
                }));
                None
            }
            Job::DeleteKb(org, id, audit, done) => {
                let now = audit.at;
                self.vectors.remove(Some(&org), &Gone::Kb(id.clone()));
                match t.delete_kb(&org, &id, now, &audit).await {
                    Ok(false) => {
                        let _ = done.send(Ok(false));
                        None
                    }
                    Err(e) => {
                        let _ = done.send(Err(unavailable(e)));
                        None
                    }
                    Ok(true) => {
                        let docs = match self.deleting(Some(&id)).await {
                            Ok(d) => d,
                            Err(e) => {
                                let _ = done.send(Err(unavailable(e)));
                                return None;
                            }
                        };
                        if let Err(e) = self.with_writer(|w, l| {
                            l.delete_kb(w, &id);
                            Ok(())
                        }) {
                            let _ = done.send(Err(unavailable(e)));
                            return None;
                        }
                        Some(step(vec![After::DropDocs(docs)], done, true))
                    }
                }
            }
            Job::PutDocument(b, done) => {
                let Put {
                    doc,
                    chunks,
                    vectors: embedded,
                    audit,
                } = *b;
                let rows: Vec<VectorRow> = chunks
                    .iter()
                    .zip(&embedded)
                    .map(|(c, v)| VectorRow {
                        id: c.id.clone(),
                        org_id: c.org_id.clone(),
                        scope: "kb".into(),
                        owner_id: c.kb_id.clone(),
                        doc_id: Some(c.doc_id.clone()),
                        expires_at: None,
                        vector: vector::encode(v),
                    })
                    .collect();
                let put = t.put_document(&doc, &chunks, &rows, &audit).await;
                if matches!(put, Ok(true)) {
                    self.vectors
                        .remove(Some(&doc.org_id), &Gone::Doc(doc.id.clone()));
                    let items = chunks.iter().map(chunk_entry).zip(embedded).collect();
                    // The rows are committed; an index that fails here is
                    // filled from them on the next start.
                    if let Err(e) = self.vectors.add(&doc.org_id, items).await {
                        tracing::warn!(error = %e, doc = %doc.id, "indexing a document's vectors");
                    }
                }
                match put {
                    Ok(false) => {
                        let _ = done.send(Ok(false));
                        None
                    }
                    Err(e) => {
                        let _ = done.send(Err(unavailable(e)));
                        None
                    }
                    Ok(true) => match self.with_writer(|w, l| {
                        l.delete_doc(w, &doc.id);
                        l.add_chunks(w, &doc, &chunks)
                    }) {
                        Ok(()) => Some(step(
                            vec![After::MarkDoc(doc.id.clone(), doc.version)],
                            done,
                            true,
                        )),
                        Err(e) => {
                            let _ = done.send(Err(unavailable(e)));
                            None
                        }
                    },
                }
            }
            Job::DeleteDocument(org, id, audit, done) => {
                match t.mark_document_deleting(&org, &id, audit.at, &audit).await {
                    Ok(false) => {
                        let _ = done.send(Ok(false));
                        None
                    }
                    Err(e) => {
                        let _ = done.send(Err(unavailable(e)));
                        None
                    }
                    Ok(true) => match self.with_writer(|w, l| {
                        l.delete_doc(w, &id);
                        Ok(())
                    }) {
                        Ok(()) => {
                            self.vectors.remove(Some(&org), &Gone::Doc(id.clone()));
                            Some(step(vec![After::DropDocs(vec![id])], done, true))
                        }
                        Err(e) => {
                            let _ = done.send(Err(unavailable(e)));
                            None
                        }
                    },
                }
            }
            Job::StoreMemory(m, v, audit, done) => {
                let vector = v.as_ref().map(|v| memory_vector(&m, v));
                if let Err(e) = t.insert_memory(&m, vector.as_ref(), audit.as_ref()).await {
                    let _ = done.send(Err(unavailable(e)));
                    return None;
                }
                if let Some(v) = v
                    && let Err(e) = self
                        .vectors
                        .add(&m.org_id, vec![(memory_entry(&m), v)])
                        .await
                {
                    tracing::warn!(error = %e, memory = %m.id, "indexing a memory's vector");
                }
                match self.with_writer(|w, l| l.add_memory(w, &m)) {
                    Ok(()) => Some(step(vec![After::MarkMemories(vec![m.id])], done, ())),
                    Err(e) => {
                        let _ = done.send(Err(unavailable(e)));
                        None
                    }
                }
            }
            Job::DeleteMemories(ids, audit, done) => {
                match t.set_memories_state(&ids, "deleting", audit.as_ref()).await {
                    Err(e) => {
                        let _ = done.send(Err(unavailable(e)));
                        None
                    }
                    Ok(n) => match self.with_writer(|w, l| {
                        for id in &ids {
                            l.delete_memory(w, id);
                        }
                        self.vectors.remove(None, &Gone::Memories(ids.clone()));
                        Ok(())
                    }) {
                        Ok(()) => Some(step(vec![After::DropMemories(ids)], done, n)),
                        Err(e) => {
                            let _ = done.send(Err(unavailable(e)));
                            None
                        }
                    },
                }
            }
            Job::Rebuild(_, done) => {
                let _ = done.send(Err(unavailable("a rebuild is not part of a batch")));
                None
            }
        }
    }

    /// Documents marked `deleting` (of one knowledge base, or all).
    async fn deleting(&self, kb: Option<&str>) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = self
                .store
                .tables()
                .documents_in("deleting", &after, PAGE)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            out.extend(
                page.into_iter()
                    .filter(|d| kb.is_none_or(|k| d.kb_id == k))
                    .map(|d| d.id),
            );
        }
        Ok(out)
    }

    /// Indexes the documents in `state` (their chunks from the database);
    /// what follows each.
    async fn index_documents(
        &self,
        state: &str,
        r: &mut Rebuilt,
        after_all: &mut Vec<After>,
    ) -> Result<(), String> {
        let t = self.store.tables();
        let mut after = String::new();
        loop {
            let page = t
                .documents_in(state, &after, PAGE)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            for doc in page {
                let chunks = t
                    .document_chunks(&doc.id)
                    .await
                    .map_err(|e| e.to_string())?;
                self.with_writer(|w, l| {
                    l.delete_doc(w, &doc.id);
                    l.add_chunks(w, &doc, &chunks)
                })?;
                r.documents += 1;
                r.chunks += chunks.len() as u64;
                if state == "pending" {
                    after_all.push(After::MarkDoc(doc.id, doc.version));
                }
            }
        }
        Ok(())
    }

    /// Indexes the memories in `state`.
    async fn index_memories(
        &self,
        state: &str,
        r: &mut Rebuilt,
        after_all: &mut Vec<After>,
    ) -> Result<(), String> {
        let t = self.store.tables();
        let mut after = String::new();
        loop {
            let page = t
                .memories_in(state, &after, PAGE)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            let mut ids = Vec::with_capacity(page.len());
            self.with_writer(|w, l| {
                for m in &page {
                    l.delete_memory(w, &m.id);
                    l.add_memory(w, m)?;
                }
                Ok(())
            })?;
            for m in page {
                r.memories += 1;
                ids.push(m.id);
            }
            if state == "pending" {
                after_all.push(After::MarkMemories(ids));
            }
        }
        Ok(())
    }

    /// Takes out what is `deleting`; commits nothing.
    async fn take_out_deleting(&self, after_all: &mut Vec<After>) -> Result<(), String> {
        let docs = self.deleting(None).await?;
        self.with_writer(|w, l| {
            for d in &docs {
                l.delete_doc(w, d);
            }
            Ok(())
        })?;
        after_all.push(After::DropDocs(docs));
        let mut after = String::new();
        loop {
            let page = self
                .store
                .tables()
                .memories_in("deleting", &after, PAGE)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            let ids: Vec<String> = page.into_iter().map(|m| m.id).collect();
            self.with_writer(|w, l| {
                for id in &ids {
                    l.delete_memory(w, id);
                }
                Ok(())
            })?;
            after_all.push(After::DropMemories(ids));
        }
        Ok(())
    }

    async fn settle(&self, after_all: Vec<After>) -> Result<(), String> {
        self.commit().await?;
        for a in after_all {
            self.follow(a).await?;
        }
        Ok(())
    }

    /// Finishes what a previous run left between its two commits.
    async fn resume(&mut self) -> Result<(), String> {
        let mut r = Rebuilt::default();
        let mut after_all = Vec::new();
        self.index_documents("pending", &mut r, &mut after_all)
            .await?;
        self.index_memories("pending", &mut r, &mut after_all)
            .await?;
        self.take_out_deleting(&mut after_all).await?;
        if !after_all.is_empty() {
            tracing::info!(?r, "knowledge index: finished pending changes");
        }
        self.settle(after_all).await
    }

    /// Brings the vector index up from the stored embeddings: the graphs
    /// in process from their snapshots, made to agree with `kb_vectors`
    /// (or built from it where a snapshot is missing or damaged); on
    /// pgvector, fills the column where it is empty.
    async fn load_vectors(&self) -> Result<(), String> {
        let vectors = match &self.vectors {
            VectorIndex::Pg(p) => {
                let n = p.fill().await?;
                if n > 0 {
                    tracing::info!(n, "pgvector: embeddings filled from kb_vectors");
                }
                return Ok(());
            }
            VectorIndex::Hnsw(v) => v.clone(),
        };
        let v = vectors.clone();
        let (snapshot, rejected) = tokio::task::spawn_blocking(move || v.load_snapshots())
            .await
            .map_err(|e| e.to_string())?;
        let t = self.store.tables();
        let mut rows: HashMap<String, HashSet<String>> = HashMap::new();
        let mut after = String::new();
        loop {
            let page = t
                .vector_keys_page(&after, PAGE * 10)
                .await
                .map_err(|e| e.to_string())?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            for (id, org) in page {
                rows.entry(org).or_default().insert(id);
            }
        }
        let v = vectors.clone();
        let (missing, removed) = tokio::task::spawn_blocking(move || v.reconcile(&rows))
            .await
            .map_err(|e| e.to_string())?;
        let mut database = 0;
        for ids in missing.chunks(PAGE as usize * 4) {
            let page = t.vectors_by_id(ids).await.map_err(|e| e.to_string())?;
            let mut by_org: HashMap<String, Vec<(Entry, Vec<f32>)>> = HashMap::new();
            for r in page {
                if let Some(x) = vector::decode(&r.vector) {
                    by_org
                        .entry(r.org_id.clone())
                        .or_default()
                        .push((vector::entry_of(&r), x));
                    database += 1;
                }
            }
            let v = vectors.clone();
            tokio::task::spawn_blocking(move || {
                for (org, items) in by_org {
                    v.add_many(&org, items);
                }
            })
            .await
            .map_err(|e| e.to_string())?;
        }
        let started = vector::Started {
            snapshot,
            database,
            removed,
            rejected,
        };
        if started != vector::Started::default() {
            tracing::info!(?started, "vector index in process is up");
        }
        vectors.set_started(started);
        Ok(())
    }

    /// Empties the lexical index and indexes every row again; with
    /// `graphs`, the vector index too (its snapshots are dropped and it is
    /// built from the stored embeddings alone).
    async fn rebuild(&mut self, graphs: bool) -> Result<Rebuilt, String> {
        self.with_writer(|w, l| l.clear(w))?;
        let mut r = Rebuilt::default();
        let mut after_all = Vec::new();
        for state in ["indexed", "pending"] {
            self.index_documents(state, &mut r, &mut after_all).await?;
            self.index_memories(state, &mut r, &mut after_all).await?;
        }
        self.take_out_deleting(&mut after_all).await?;
        self.settle(after_all).await?;
        if graphs {
            match &self.vectors {
                VectorIndex::Pg(p) => p.clear().await?,
                VectorIndex::Hnsw(v) => {
                    let v = v.clone();
                    tokio::task::spawn_blocking(move || v.clear())
                        .await
                        .map_err(|e| e.to_string())??
                }
            }
        }
        self.load_vectors().await?;
        Ok(r)
    }
}

/// Deletes expired memories every `every` (they are never returned once
/// expired; this frees their rows and index entries).
pub fn spawn_purge(
    store: Arc<Db>,
    knowledge: Knowledge,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    use cadre_actors::ports::Clock;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = cadre_actors::ports::SystemClock.now_ms();
            loop {
                match store.tables().expired_memories(now, 1000).await {
                    Ok(ids) if ids.is_empty() => break,
                    Ok(ids) => {
                        let n = ids.len();
                        if let Err(e) = knowledge.delete_memories(ids, None).await {
                            tracing::warn!(error = %e, "purging expired memories");
                            break;
                        }
                        metrics::counter!("cadre_memories_purged_total").increment(n as u64);
                        if n < 1000 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "listing expired memories");
                        break;
                    }
                }
            }
        }
    })
}

fn chunk_entry(c: &Chunk) -> Entry {
    Entry {
        id: c.id.clone(),
        scope: "kb".into(),
        owner: c.kb_id.clone(),
        doc: Some(c.doc_id.clone()),
        expires_at: None,
    }
}

fn memory_entry(m: &Memory) -> Entry {
    Entry {
        id: m.id.clone(),
        scope: "mem".into(),
        owner: m.agent_id.clone(),
        doc: None,
        expires_at: m.expires_at,
    }
}

fn memory_vector(m: &Memory, v: &[f32]) -> VectorRow {
    VectorRow {
        id: m.id.clone(),
        org_id: m.org_id.clone(),
        scope: "mem".into(),
        owner_id: m.agent_id.clone(),
        doc_id: None,
        expires_at: m.expires_at,
        vector: vector::encode(v),
    }
}

/// SHA-256 of `text`, hex.
pub fn content_hash(text: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    hex(d.as_ref())
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The rows of a document's chunks.
pub fn chunk_rows(doc: &Document, pieces: &[chunk::Piece]) -> Vec<Chunk> {
    pieces
        .iter()
        .enumerate()
        .map(|(i, p)| Chunk {
            id: format!("{}:{}:{i}", doc.id, doc.version),
            org_id: doc.org_id.clone(),
            kb_id: doc.kb_id.clone(),
            doc_id: doc.id.clone(),
            position: i as i64,
            start: p.start as i64,
            end: (p.start + p.text.len()) as i64,
            tokens: p.tokens as i64,
            text: p.text.clone(),
        })
        .collect()
}
