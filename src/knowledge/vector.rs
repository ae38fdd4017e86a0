//! Vector search, when an embedding provider is configured: the
//! embeddings client (the OpenAI-compatible `POST {base_url}/embeddings`)
//! and the in-process approximate index (HNSW, `hnsw_rs`), one graph per
//! organization so that no search ever walks another tenant's vectors.
//!
//! The vectors themselves are rows (`kb_vectors`, written in the same
//! transaction as their chunk or memory); the graphs live in memory and
//! are built from those rows on every start. A removed entry is a
//! tombstone the search skips; a graph with more tombstones than live
//! entries is rebuilt from its live ones.

use hnsw_rs::anndists::dist::DistCosine;
use hnsw_rs::hnsw::Hnsw;
use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::Duration;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Chunk or memory id.
    pub id: String,
    /// `kb` or `mem`.
    pub scope: String,
    /// Knowledge base (chunks) or agent (memories).
    pub owner: String,
    /// Document (chunks).
    pub doc: Option<String>,
    /// Unix ms after which a memory is not returned.
    pub expires_at: Option<i64>,
}

/// Bytes of a vector as stored (little-endian f32s, base64).
pub fn encode(v: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A stored vector read back.
pub fn decode(s: &str) -> Option<Vec<f32>> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        for x in &mut v {
            *x /= n;
        }
    }
    v
}

struct Space {
    graph: Hnsw<'static, f32, DistCosine>,
    entries: Vec<Entry>,
    vectors: Vec<Vec<f32>>,
    by_id: HashMap<String, usize>,
    dead: HashSet<usize>,
}

fn graph(expected: usize) -> Hnsw<'static, f32, DistCosine> {
    // 16 links per node and ef_construction 200: the usual HNSW defaults.
    Hnsw::new(16, expected.max(1024), 16, 200, DistCosine {})
}

impl Space {
    fn new() -> Space {
        Space {
            graph: graph(0),
            entries: Vec::new(),
            vectors: Vec::new(),
            by_id: HashMap::new(),
            dead: HashSet::new(),
        }
    }

    fn add(&mut self, e: Entry, v: Vec<f32>) {
        // A provider that changed its dimensions: the entry is not searchable
        // by vector (lexically it still is) until a rebuild after a reindex.
        if self
            .vectors
            .iter()
            .find(|x| !x.is_empty())
            .is_some_and(|x| x.len() != v.len())
        {
            tracing::warn!(id = %e.id, "embedding of other dimensions than the index; not added");
            return;
        }
        if let Some(old) = self.by_id.remove(&e.id) {
            self.dead.insert(old);
        }
        let n = self.entries.len();
        self.graph.insert((v.as_slice(), n));
        self.by_id.insert(e.id.clone(), n);
        self.entries.push(e);
        self.vectors.push(v);
    }

    fn remove(&mut self, pred: &impl Fn(&Entry) -> bool) {
        let gone: Vec<usize> = self
            .by_id
            .values()
            .copied()
            .filter(|&i| pred(&self.entries[i]))
            .collect();
        for i in gone {
            self.by_id.remove(&self.entries[i].id);
            self.dead.insert(i);
        }
        if self.dead.len() > 64 && self.dead.len() > self.by_id.len() {
            self.compact();
        }
    }

    /// A new graph of the live entries only.
    fn compact(&mut self) {
        let mut live: Vec<usize> = self.by_id.values().copied().collect();
        live.sort_unstable();
        let mut fresh = Space {
            graph: graph(live.len()),
            ..Space::new()
        };
        for i in live {
            let e = std::mem::replace(
                &mut self.entries[i],
                Entry {
                    id: String::new(),
                    scope: String::new(),
                    owner: String::new(),
                    doc: None,
                    expires_at: None,
                },
            );
            let v = std::mem::take(&mut self.vectors[i]);
            fresh.add(e, v);
        }
        *self = fresh;
    }
}

/// Every organization's graph.
#[derive(Default)]
pub struct Vectors {
    spaces: RwLock<HashMap<String, Space>>,
}

impl std::fmt::Debug for Vectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vectors")
    }
}

impl Vectors {
    /// Adds (or replaces) an entry of `org`.
    pub fn add(&self, org: &str, e: Entry, v: Vec<f32>) {
        if let Ok(mut s) = self.spaces.write() {
            s.entry(org.to_string())
                .or_insert_with(Space::new)
                .add(e, normalized(v));
        }
    }

    /// Removes the entries `pred` picks, of `org` (or of every one).
    pub fn remove(&self, org: Option<&str>, pred: impl Fn(&Entry) -> bool) {
        if let Ok(mut s) = self.spaces.write() {
            for (o, space) in s.iter_mut() {
                if org.is_none_or(|org| org == o) {
                    space.remove(&pred);
                }
            }
        }
    }

    /// Removes everything (a rebuild).
    pub fn clear(&self) {
        if let Ok(mut s) = self.spaces.write() {
            s.clear();
        }
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.spaces
            .read()
            .map(|s| s.values().map(|sp| sp.by_id.len()).sum())
            .unwrap_or(0)
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` nearest live entries of `org` that `keep` accepts:
    /// (id, cosine similarity), nearest first.
    pub fn search(
        &self,
        org: &str,
        query: Vec<f32>,
        k: usize,
        keep: impl Fn(&Entry) -> bool,
    ) -> Vec<(String, f32)> {
        let Ok(spaces) = self.spaces.read() else {
            return Vec::new();
        };
        let Some(space) = spaces.get(org) else {
            return Vec::new();
        };
        let q = normalized(query);
        if space.vectors.first().is_some_and(|v| v.len() != q.len()) {
            return Vec::new();
        }
        let filter = |i: &usize| {
            space.by_id.get(&space.entries[*i].id) == Some(i) && keep(&space.entries[*i])
        };
        let ef = (k * 8).max(64);
        space
            .graph
            .search_filter(&q, k, ef, Some(&filter))
            .into_iter()
            .map(|n| (space.entries[n.d_id].id.clone(), 1.0 - n.distance))
            .collect()
    }
}

/// Which entries a vector search may return.
#[derive(Debug, Clone)]
pub enum Near {
    /// Chunks of these knowledge bases (any, when empty), of one document
    /// when given.
    Chunks {
        /// Knowledge bases.
        kbs: Vec<String>,
        /// Document.
        doc: Option<String>,
    },
    /// An agent's memories, live at `now`.
    Memories {
        /// The agent.
        agent: String,
        /// Unix ms.
        now: i64,
    },
}

impl Near {
    fn keeps(&self, e: &Entry) -> bool {
        match self {
            Near::Chunks { kbs, doc } => {
                e.scope == "kb"
                    && (kbs.is_empty() || kbs.contains(&e.owner))
                    && doc.as_ref().is_none_or(|d| e.doc.as_ref() == Some(d))
            }
            Near::Memories { agent, now } => {
                e.scope == "mem" && &e.owner == agent && e.expires_at.is_none_or(|x| x > *now)
            }
        }
    }
}

/// What leaves the vector index.
#[derive(Debug, Clone)]
pub enum Gone {
    /// A document's chunks.
    Doc(String),
    /// A knowledge base's chunks.
    Kb(String),
    /// Memories.
    Memories(Vec<String>),
}

/// Where vectors are searched: the in-process graphs, or pgvector in the
/// PostgreSQL database (see [`super::pgvector`]).
#[derive(Debug, Clone)]
pub enum VectorIndex {
    /// HNSW graphs in this process, built from `kb_vectors` on start.
    Hnsw(std::sync::Arc<Vectors>),
    /// The `embedding` column of `kb_vectors`, searched by PostgreSQL.
    Pg(std::sync::Arc<super::pgvector::PgVectors>),
}

/// The entry of a stored embedding.
pub fn entry_of(r: &crate::store::VectorRow) -> Entry {
    Entry {
        id: r.id.clone(),
        scope: r.scope.clone(),
        owner: r.owner_id.clone(),
        doc: r.doc_id.clone(),
        expires_at: r.expires_at,
    }
}

impl VectorIndex {
    /// `hnsw` or `pgvector`.
    pub fn name(&self) -> &'static str {
        match self {
            VectorIndex::Hnsw(_) => "hnsw",
            VectorIndex::Pg(_) => "pgvector",
        }
    }

    /// Adds entries of `org` whose rows are committed.
    pub async fn add(&self, org: &str, items: Vec<(Entry, Vec<f32>)>) -> Result<(), String> {
        match self {
            VectorIndex::Hnsw(v) => {
                let (v, org) = (v.clone(), org.to_string());
                tokio::task::spawn_blocking(move || {
                    for (e, x) in items {
                        v.add(&org, e, x);
                    }
                })
                .await
                .map_err(|e| e.to_string())
            }
            VectorIndex::Pg(p) => {
                let rows: Vec<(String, Vec<f32>)> =
                    items.into_iter().map(|(e, v)| (e.id, v)).collect();
                p.set(&rows).await
            }
        }
    }

    /// Takes entries out (of `org`, or of any). On pgvector a no-op: the
    /// rows go in the transaction that deletes their chunk or memory.
    pub fn remove(&self, org: Option<&str>, gone: &Gone) {
        if let VectorIndex::Hnsw(v) = self {
            match gone {
                Gone::Doc(d) => v.remove(org, |e| e.doc.as_deref() == Some(d.as_str())),
                Gone::Kb(kb) => v.remove(org, |e| e.scope == "kb" && &e.owner == kb),
                Gone::Memories(ids) => v.remove(org, |e| e.scope == "mem" && ids.contains(&e.id)),
            }
        }
    }

    /// The `k` nearest entries of `org` that `near` admits: (id, cosine
    /// similarity), nearest first.
    pub async fn search(
        &self,
        org: &str,
        query: Vec<f32>,
        k: usize,
        near: Near,
    ) -> Result<Vec<(String, f32)>, String> {
        match self {
            VectorIndex::Hnsw(v) => {
                let (v, org) = (v.clone(), org.to_string());
                tokio::task::spawn_blocking(move || v.search(&org, query, k, |e| near.keeps(e)))
                    .await
                    .map_err(|e| e.to_string())
            }
            VectorIndex::Pg(p) => p.search(org, &query, k, &near).await,
        }
    }

    /// Entries searchable.
    pub async fn count(&self) -> Result<u64, String> {
        match self {
            VectorIndex::Hnsw(v) => Ok(v.len() as u64),
            VectorIndex::Pg(p) => p.count().await,
        }
    }
}

/// The embeddings client: an OpenAI-compatible `/embeddings` endpoint.
#[derive(Debug, Clone)]
pub struct Embedder {
    client: reqwest::Client,
    url: String,
    model: String,
    key: Option<String>,
}

/// Inputs per request.
const BATCH: usize = 64;

impl Embedder {
    /// A client of `base_url` (…/v1) for `model`, with the API key if any.
    pub fn new(
        base_url: &str,
        model: &str,
        key: Option<String>,
        timeout: Duration,
    ) -> Result<Embedder, String> {
        crate::init_tls();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Embedder {
            client,
            url: format!("{}/embeddings", base_url.trim_end_matches('/')),
            model: model.to_string(),
            key,
        })
    }

    /// One vector per text, in order.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH) {
            let mut req = self
                .client
                .post(&self.url)
                .json(&serde_json::json!({ "model": self.model, "input": batch }));
            if let Some(k) = &self.key {
                req = req.bearer_auth(k);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("embeddings request: {e}"))?;
            let status = resp.status();
            let body: serde_json::Value = resp
                .json()
                .await
                .map_err(|e| format!("embeddings response: {e}"))?;
            if !status.is_success() {
                return Err(format!(
                    "embeddings provider answered HTTP {}: {}",
                    status.as_u16(),
                    body["error"]["message"].as_str().unwrap_or("")
                ));
            }
            let mut data: Vec<(usize, Vec<f32>)> = body["data"]
                .as_array()
                .ok_or("embeddings response has no data")?
                .iter()
                .map(|d| {
                    let i = d["index"].as_u64().unwrap_or(0) as usize;
                    let v = d["embedding"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_f64())
                                .map(|x| x as f32)
                                .collect()
                        })
                        .unwrap_or_default();
                    (i, v)
                })
                .collect();
            data.sort_by_key(|(i, _)| *i);
            if data.len() != batch.len() || data.iter().any(|(_, v)| v.is_empty()) {
                return Err(format!(
                    "embeddings provider answered {} vectors for {} inputs",
                    data.len(),
                    batch.len()
                ));
            }
            out.extend(data.into_iter().map(|(_, v)| v));
        }
        if let Some(first) = out.first()
            && out.iter().any(|v| v.len() != first.len())
        {
            return Err("embeddings of different lengths".into());
        }
        Ok(out)
    }
}

/// Reciprocal rank fusion (k = 60) of ranked id lists: ids by fused
/// score, best first.
pub fn fuse(lists: &[Vec<String>]) -> Vec<(String, f32)> {
    let mut score: HashMap<&str, f32> = HashMap::new();
    for list in lists {
        for (rank, id) in list.iter().enumerate() {
            *score.entry(id.as_str()).or_default() += 1.0 / (60.0 + rank as f32 + 1.0);
        }
    }
    let mut out: Vec<(String, f32)> = score.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, owner: &str) -> Entry {
        Entry {
            id: id.into(),
            scope: "kb".into(),
            owner: owner.into(),
            doc: Some(format!("doc-{id}")),
            expires_at: None,
        }
    }

    #[test]
    fn nearest_first_per_organization_with_filters_removals_and_compaction() {
        let v = Vectors::default();
        for i in 0..300 {
            let angle = i as f32 / 300.0;
            v.add(
                "a",
                e(&format!("a{i}"), if i % 2 == 0 { "kb1" } else { "kb2" }),
                vec![1.0 - angle, angle, 0.0],
            );
        }
        v.add("b", e("b0", "kb9"), vec![1.0, 0.0, 0.0]);
        let hits = v.search("a", vec![1.0, 0.0, 0.0], 3, |_| true);
        assert_eq!(hits[0].0, "a0");
        assert!(hits[0].1 > 0.99);
        assert!(hits.iter().all(|(id, _)| id.starts_with('a')));
        let odd = v.search("a", vec![1.0, 0.0, 0.0], 2, |e| e.owner == "kb2");
        assert_eq!(odd[0].0, "a1");
        v.remove(Some("a"), |e| e.id == "a0");
        assert_eq!(v.search("a", vec![1.0, 0.0, 0.0], 1, |_| true)[0].0, "a1");
        v.remove(Some("a"), |e| e.id != "a299");
        assert_eq!(v.len(), 2);
        assert_eq!(v.search("a", vec![1.0, 0.0, 0.0], 5, |_| true).len(), 1);
        assert!(v.search("c", vec![1.0, 0.0, 0.0], 5, |_| true).is_empty());
        // Wrong dimensions find nothing rather than panicking.
        assert!(v.search("b", vec![1.0, 0.0], 5, |_| true).is_empty());
        assert_eq!(decode(&encode(&[0.5, -2.0])), Some(vec![0.5, -2.0]));
        let f = fuse(&[vec!["x".into(), "y".into()], vec!["y".into(), "z".into()]]);
        assert_eq!(f[0].0, "y");
    }
}
