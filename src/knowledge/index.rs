//! The lexical index (tantivy, BM25) in `<data_dir>/knowledge/index`: one
//! index for every organization's chunks and memories, each entry tagged
//! with its organization (and knowledge base, document, agent) so that a
//! search always filters on them. Only the knowledge writer changes it.

use crate::store::{Chunk, Document, Memory};
use std::ops::Bound;
use std::path::Path;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// The analyzer of titles, chunks, memories and queries.
const ANALYZER: &str = "cadre_en";

/// The index's fields.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    id: Field,
    scope: Field,
    org: Field,
    kb: Field,
    doc: Field,
    agent: Field,
    kind: Field,
    meta: Field,
    title: Field,
    body: Field,
    source: Field,
    expires: Field,
    pos: Field,
    importance: Field,
    task: Field,
    created: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(ANALYZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let f = Fields {
        id: b.add_text_field("id", STRING | STORED),
        scope: b.add_text_field("scope", STRING),
        org: b.add_text_field("org", STRING),
        kb: b.add_text_field("kb", STRING | STORED),
        doc: b.add_text_field("doc", STRING | STORED),
        agent: b.add_text_field("agent", STRING),
        kind: b.add_text_field("kind", STRING | STORED),
        meta: b.add_text_field("meta", STRING),
        title: b.add_text_field("title", text.clone()),
        body: b.add_text_field("body", text),
        source: b.add_text_field("source", STORED),
        expires: b.add_i64_field("expires", INDEXED | FAST | STORED),
        pos: b.add_i64_field("pos", STORED),
        importance: b.add_i64_field("importance", STORED),
        task: b.add_text_field("task", STORED),
        created: b.add_i64_field("created", STORED),
    };
    (b.build(), f)
}

fn analyzer() -> TextAnalyzer {
    let mut b = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .dynamic();
    if let Some(stop) = StopWordFilter::new(Language::English) {
        b = b.filter_dynamic(stop);
    }
    b.filter_dynamic(Stemmer::new(Language::English)).build()
}

fn err(e: impl std::fmt::Display) -> String {
    format!("knowledge index: {e}")
}

/// The index, its writer (held by the knowledge writer only) and reader.
pub struct Lexical {
    index: Index,
    reader: IndexReader,
    f: Fields,
}

impl std::fmt::Debug for Lexical {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lexical")
    }
}

/// A search over knowledge chunks.
#[derive(Debug, Clone, Default)]
pub struct ChunkQuery {
    /// Organization (always a filter).
    pub org: String,
    /// Words to look for.
    pub text: String,
    /// Only these knowledge bases (empty: all of the organization's).
    pub kbs: Vec<String>,
    /// Only this document.
    pub doc: Option<String>,
    /// Only documents with these metadata values (`key=value`).
    pub meta: Vec<(String, String)>,
    /// How many.
    pub limit: usize,
}

/// A search over an agent's memories.
#[derive(Debug, Clone, Default)]
pub struct MemoryQuery {
    /// Organization.
    pub org: String,
    /// Agent.
    pub agent: String,
    /// Words to look for.
    pub text: String,
    /// Only these kinds (empty: all).
    pub kinds: Vec<String>,
    /// Unix ms: memories expired by then are never returned.
    pub now: i64,
    /// How many.
    pub limit: usize,
}

/// A chunk found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChunkHit {
    /// Chunk id.
    pub chunk_id: String,
    /// Knowledge base.
    pub knowledge_base_id: String,
    /// Document.
    pub document_id: String,
    /// Document title.
    pub title: String,
    /// `upload` or the URL.
    pub source: String,
    /// Position in the document.
    pub position: i64,
    /// The chunk's text.
    pub text: String,
    /// BM25 score (or the fused score of a hybrid search).
    pub score: f32,
}

/// A memory found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryHit {
    /// Memory id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// What is remembered.
    pub content: String,
    /// 0.0–1.0.
    pub importance: f64,
    /// The task it came from.
    pub source_task: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms, if it expires.
    pub expires_at: Option<i64>,
    /// BM25 score.
    pub score: f32,
}

/// Unset expiry, as indexed (never expires).
const NEVER: i64 = i64::MAX;

impl Lexical {
    /// Opens the index in `dir`, creating it when missing; `true` when it
    /// was created (the caller then rebuilds it from the database). An
    /// index of another schema (an older build) or one that cannot be read
    /// is replaced.
    pub fn open(dir: &Path) -> Result<(Lexical, bool), String> {
        let (schema, f) = schema();
        std::fs::create_dir_all(dir).map_err(err)?;
        let fresh = !dir.join("meta.json").exists();
        let index = match Index::open_in_dir(dir) {
            Ok(i) if i.schema() == schema => i,
            Ok(_) => {
                tracing::warn!(dir = %dir.display(), "knowledge index of another schema; rebuilding it");
                std::fs::remove_dir_all(dir).map_err(err)?;
                std::fs::create_dir_all(dir).map_err(err)?;
                return Self::create(dir, schema, f).map(|l| (l, true));
            }
            Err(_) if fresh => return Self::create(dir, schema, f).map(|l| (l, true)),
            // Derived data: an index that cannot be opened is replaced and
            // rebuilt from the database (a held lock is not that: another
            // process is using it).
            Err(tantivy::TantivyError::LockFailure(..)) => {
                return Err(err("the index is locked by another process"));
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "knowledge index unreadable; rebuilding it");
                std::fs::remove_dir_all(dir).map_err(err)?;
                std::fs::create_dir_all(dir).map_err(err)?;
                return Self::create(dir, schema, f).map(|l| (l, true));
            }
        };
        Self::with(index, f).map(|l| (l, false))
    }

    fn create(dir: &Path, schema: Schema, f: Fields) -> Result<Lexical, String> {
        let index = Index::create_in_dir(dir, schema).map_err(err)?;
        Self::with(index, f)
    }

    fn with(index: Index, f: Fields) -> Result<Lexical, String> {
        index.tokenizers().register(ANALYZER, analyzer());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(err)?;
        Ok(Lexical { index, reader, f })
    }

    /// The writer (one per index; the knowledge writer holds it).
    pub fn writer(&self) -> Result<IndexWriter, String> {
        self.index
            .writer_with_num_threads(1, 64 * 1024 * 1024)
            .map_err(err)
    }

    /// Makes the last commit visible to searches.
    pub fn reload(&self) -> Result<(), String> {
        self.reader.reload().map_err(err)
    }

    /// Adds a document's chunks.
    pub fn add_chunks(
        &self,
        w: &IndexWriter,
        doc: &Document,
        chunks: &[Chunk],
    ) -> Result<(), String> {
        let f = &self.f;
        for c in chunks {
            let mut d = TantivyDocument::default();
            d.add_text(f.id, &c.id);
            d.add_text(f.scope, "kb");
            d.add_text(f.org, &c.org_id);
            d.add_text(f.kb, &c.kb_id);
            d.add_text(f.doc, &c.doc_id);
            for (k, v) in &doc.metadata {
                if let Some(v) = v.as_str() {
                    d.add_text(f.meta, format!("{k}={v}"));
                }
            }
            d.add_text(f.title, &doc.title);
            d.add_text(f.body, &c.text);
            d.add_text(f.source, &doc.source);
            d.add_i64(f.expires, NEVER);
            d.add_i64(f.pos, c.position);
            w.add_document(d).map_err(err)?;
        }
        Ok(())
    }

    /// Adds a memory.
    pub fn add_memory(&self, w: &IndexWriter, m: &Memory) -> Result<(), String> {
        let f = &self.f;
        let mut d = TantivyDocument::default();
        d.add_text(f.id, &m.id);
        d.add_text(f.scope, "mem");
        d.add_text(f.org, &m.org_id);
        d.add_text(f.agent, &m.agent_id);
        d.add_text(f.kind, &m.kind);
        d.add_text(f.body, &m.content);
        d.add_i64(f.expires, m.expires_at.unwrap_or(NEVER));
        d.add_i64(f.importance, m.importance);
        if let Some(t) = &m.source_task {
            d.add_text(f.task, t);
        }
        d.add_i64(f.created, m.created_at);
        w.add_document(d).map_err(err)?;
        Ok(())
    }

    /// Removes a document's chunks.
    pub fn delete_doc(&self, w: &IndexWriter, doc: &str) {
        w.delete_term(Term::from_field_text(self.f.doc, doc));
    }

    /// Removes a knowledge base's chunks.
    pub fn delete_kb(&self, w: &IndexWriter, kb: &str) {
        w.delete_term(Term::from_field_text(self.f.kb, kb));
    }

    /// Removes a memory.
    pub fn delete_memory(&self, w: &IndexWriter, id: &str) {
        w.delete_term(Term::from_field_text(self.f.id, id));
    }

    /// Removes everything (a rebuild).
    pub fn clear(&self, w: &IndexWriter) -> Result<(), String> {
        w.delete_all_documents().map(|_| ()).map_err(err)
    }

    /// The query's words after analysis (stop words dropped, stemmed).
    fn terms(&self, field: Field, text: &str) -> Vec<Term> {
        let mut a = analyzer();
        let mut stream = a.token_stream(text);
        let mut out: Vec<Term> = Vec::new();
        while stream.advance() {
            let t = Term::from_field_text(field, &stream.token().text);
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out.truncate(64);
        out
    }

    fn exact(&self, field: Field, value: &str) -> Box<dyn Query> {
        Box::new(TermQuery::new(
            Term::from_field_text(field, value),
            IndexRecordOption::Basic,
        ))
    }

    fn any_of(&self, field: Field, values: &[String]) -> Box<dyn Query> {
        Box::new(BooleanQuery::new(
            values
                .iter()
                .map(|v| (Occur::Should, self.exact(field, v)))
                .collect(),
        ))
    }

    /// BM25 over the words (any of them), in `fields` with their boosts.
    fn words(&self, text: &str, fields: &[(Field, f32)]) -> Option<Box<dyn Query>> {
        let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for &(field, boost) in fields {
            for t in self.terms(field, text) {
                let q: Box<dyn Query> = Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs));
                should.push((Occur::Should, Box::new(BoostQuery::new(q, boost))));
            }
        }
        (!should.is_empty()).then(|| Box::new(BooleanQuery::new(should)) as Box<dyn Query>)
    }

    fn ids(&self, ids: &[String]) -> Box<dyn Query> {
        self.any_of(self.f.id, ids)
    }

    fn chunk_filters(&self, q: &ChunkQuery) -> Vec<(Occur, Box<dyn Query>)> {
        let f = &self.f;
        let mut must: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, self.exact(f.scope, "kb")),
            (Occur::Must, self.exact(f.org, &q.org)),
        ];
        if !q.kbs.is_empty() {
            must.push((Occur::Must, self.any_of(f.kb, &q.kbs)));
        }
        if let Some(d) = &q.doc {
            must.push((Occur::Must, self.exact(f.doc, d)));
        }
        for (k, v) in &q.meta {
            must.push((Occur::Must, self.exact(f.meta, &format!("{k}={v}"))));
        }
        must
    }

    fn run_chunks(&self, query: BooleanQuery, limit: usize) -> Result<Vec<ChunkHit>, String> {
        let f = &self.f;
        let searcher = self.reader.searcher();
        let top = searcher
            .search(&query, &TopDocs::with_limit(limit.max(1)).order_by_score())
            .map_err(err)?;
        let text = |d: &TantivyDocument, field: Field| {
            d.get_first(field)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let mut hits = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let d: TantivyDocument = searcher.doc(addr).map_err(err)?;
            hits.push(ChunkHit {
                chunk_id: text(&d, f.id),
                knowledge_base_id: text(&d, f.kb),
                document_id: text(&d, f.doc),
                title: text(&d, f.title),
                source: text(&d, f.source),
                position: d.get_first(f.pos).and_then(|v| v.as_i64()).unwrap_or(0),
                text: text(&d, f.body),
                score,
            });
        }
        Ok(hits)
    }

    /// The best chunks for `q` (BM25), best first.
    pub fn search_chunks(&self, q: &ChunkQuery) -> Result<Vec<ChunkHit>, String> {
        let f = &self.f;
        let Some(words) = self.words(&q.text, &[(f.body, 1.0), (f.title, 0.5)]) else {
            return Ok(Vec::new());
        };
        let mut must = self.chunk_filters(q);
        must.push((Occur::Must, words));
        self.run_chunks(BooleanQuery::new(must), q.limit)
    }

    /// The chunks of `ids` that pass `q`'s filters (a vector search's
    /// hits, read back with their text), by id.
    pub fn chunks_by_id(
        &self,
        ids: &[String],
        q: &ChunkQuery,
    ) -> Result<std::collections::HashMap<String, ChunkHit>, String> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let mut must = self.chunk_filters(q);
        must.push((Occur::Must, self.ids(ids)));
        Ok(self
            .run_chunks(BooleanQuery::new(must), ids.len())?
            .into_iter()
            .map(|h| (h.chunk_id.clone(), h))
            .collect())
    }

    fn memory_filters(&self, q: &MemoryQuery) -> Vec<(Occur, Box<dyn Query>)> {
        let f = &self.f;
        let mut must: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, self.exact(f.scope, "mem")),
            (Occur::Must, self.exact(f.org, &q.org)),
            (Occur::Must, self.exact(f.agent, &q.agent)),
            (
                Occur::Must,
                Box::new(RangeQuery::new(
                    Bound::Excluded(Term::from_field_i64(f.expires, q.now)),
                    Bound::Unbounded,
                )),
            ),
        ];
        if !q.kinds.is_empty() {
            must.push((Occur::Must, self.any_of(f.kind, &q.kinds)));
        }
        must
    }

    fn run_memories(&self, query: BooleanQuery, limit: usize) -> Result<Vec<MemoryHit>, String> {
        let f = &self.f;
        let searcher = self.reader.searcher();
        let top = searcher
            .search(&query, &TopDocs::with_limit(limit.max(1)).order_by_score())
            .map_err(err)?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let d: TantivyDocument = searcher.doc(addr).map_err(err)?;
            let int = |field| d.get_first(field).and_then(|v| v.as_i64());
            let text = |field| {
                d.get_first(field)
                    .and_then(|v| v.as_str())
                    .map(String::from)
            };
            hits.push(MemoryHit {
                id: text(f.id).unwrap_or_default(),
                kind: text(f.kind).unwrap_or_default(),
                content: text(f.body).unwrap_or_default(),
                importance: int(f.importance).unwrap_or(0) as f64 / 1000.0,
                source_task: text(f.task),
                created_at: int(f.created).unwrap_or(0),
                expires_at: int(f.expires).filter(|e| *e != NEVER),
                score,
            });
        }
        Ok(hits)
    }

    /// The most relevant live memories for `q` (BM25), best first.
    pub fn search_memories(&self, q: &MemoryQuery) -> Result<Vec<MemoryHit>, String> {
        let Some(words) = self.words(&q.text, &[(self.f.body, 1.0)]) else {
            return Ok(Vec::new());
        };
        let mut must = self.memory_filters(q);
        must.push((Occur::Must, words));
        self.run_memories(BooleanQuery::new(must), q.limit)
    }

    /// The live memories of `ids` that pass `q`'s filters, by id.
    pub fn memories_by_id(
        &self,
        ids: &[String],
        q: &MemoryQuery,
    ) -> Result<std::collections::HashMap<String, MemoryHit>, String> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let mut must = self.memory_filters(q);
        must.push((Occur::Must, self.ids(ids)));
        Ok(self
            .run_memories(BooleanQuery::new(must), ids.len())?
            .into_iter()
            .map(|h| (h.id.clone(), h))
            .collect())
    }

    /// Entries in the index (chunks and memories), as of the last reload.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
