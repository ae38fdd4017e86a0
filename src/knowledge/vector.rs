//! Vector search, when an embedding provider is configured: the
//! embeddings client (the OpenAI-compatible `POST {base_url}/embeddings`)
//! and the in-process approximate index (HNSW, `hnsw_rs`), one graph per
//! organization so that no search ever walks another tenant's vectors.
//!
//! The vectors themselves are rows (`kb_vectors`, written in the same
//! transaction as their chunk or memory). The graphs live in memory and
//! are kept in the data dir as snapshots (see [`super::snapshot`]): on
//! start each organization's graph is read from its snapshot when that is
//! whole, then made to agree with the rows (entries whose row is gone are
//! taken out, rows the snapshot lacks are added); without a usable
//! snapshot the graph is built from the rows. A removed entry is a
//! tombstone the search skips; a graph with more tombstones than live
//! entries is rebuilt from its live ones.

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// The cosine distance of unit vectors (every vector is normalized before
/// it reaches a graph or a search): 1 − a·b. The dot product runs in eight
/// lanes, which the compiler turns into SIMD; anndists' own `DistCosine`
/// sums three f64 products one after another, and computes norms that are
/// 1 here. Its `DistDot` would do, but it `assert!`s that the distance is
/// not negative, and rounding can make it so. This one clamps to 0 and
/// never panics (vectors of unequal length are compared over the shorter
/// one; the index never holds them).
#[derive(Debug, Default, Clone, Copy)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let (xa, xb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = xa
            .remainder()
            .iter()
            .zip(xb.remainder())
            .map(|(x, y)| x * y)
            .sum();
        let mut lanes = [0f32; 8];
        for (x, y) in xa.zip(xb) {
            for i in 0..8 {
                lanes[i] += x[i] * y[i];
            }
        }
        (1.0 - (lanes.iter().sum::<f32>() + tail)).max(0.0)
    }
}

/// One organization's graph. Data id `i` of the graph is `entries[i]`.
pub(super) struct Space {
    pub(super) graph: Hnsw<'static, f32, UnitCosine>,
    /// Dimensions of every vector in it (0 while empty).
    pub(super) dims: usize,
    pub(super) entries: Vec<Entry>,
    pub(super) by_id: HashMap<String, usize>,
    pub(super) dead: HashSet<usize>,
    /// Changed since its snapshot was written (or read).
    pub(super) changed: AtomicBool,
}

fn graph(expected: usize) -> Hnsw<'static, f32, UnitCosine> {
    // 16 links per node and ef_construction 200: the usual HNSW defaults.
    Hnsw::new(16, expected.max(1024), 16, 200, UnitCosine)
}

/// Below this many, points go in one by one; above, on all cores.
const PARALLEL: usize = 64;

impl Space {
    fn new(expected: usize) -> Space {
        Space {
            graph: graph(expected),
            dims: 0,
            entries: Vec::new(),
            by_id: HashMap::new(),
            dead: HashSet::new(),
            changed: AtomicBool::new(false),
        }
    }

    /// Adds (or replaces) entries; their vectors normalized already.
    fn add(&mut self, items: Vec<(Entry, Vec<f32>)>) {
        let mut points: Vec<(Vec<f32>, usize)> = Vec::with_capacity(items.len());
        for (e, v) in items {
            if self.dims == 0 {
                self.dims = v.len();
            }
            // A provider that changed its dimensions: the entry is not
            // searchable by vector (lexically it still is) until a rebuild
            // after a reindex.
            if v.is_empty() || v.len() != self.dims {
                tracing::warn!(id = %e.id, "embedding of other dimensions than the index; not added");
                continue;
            }
            if let Some(old) = self.by_id.remove(&e.id) {
                self.dead.insert(old);
            }
            let n = self.entries.len();
            self.by_id.insert(e.id.clone(), n);
            self.entries.push(e);
            points.push((v, n));
        }
        if points.is_empty() {
            return;
        }
        if points.len() >= PARALLEL {
            let refs: Vec<(&Vec<f32>, usize)> = points.iter().map(|(v, n)| (v, *n)).collect();
            self.graph.parallel_insert(&refs);
        } else {
            for (v, n) in &points {
                self.graph.insert((v.as_slice(), *n));
            }
        }
        self.changed.store(true, Ordering::Release);
    }

    /// Tombstones the live entries `pred` picks; how many.
    fn remove(&mut self, pred: &impl Fn(&Entry) -> bool) -> usize {
        let gone: Vec<usize> = self
            .by_id
            .values()
            .copied()
            .filter(|&i| pred(&self.entries[i]))
            .collect();
        for &i in &gone {
            self.by_id.remove(&self.entries[i].id);
            self.dead.insert(i);
        }
        if !gone.is_empty() {
            self.changed.store(true, Ordering::Release);
        }
        if self.dead.len() > 64 && self.dead.len() > self.by_id.len() {
            self.compact();
        }
        gone.len()
    }

    /// A new graph of the live entries only (their vectors read back from
    /// the old graph).
    fn compact(&mut self) {
        let mut live: HashMap<usize, Vec<f32>> = HashMap::with_capacity(self.by_id.len());
        let keep: HashSet<usize> = self.by_id.values().copied().collect();
        for p in self.graph.get_point_indexation() {
            let i = p.get_origin_id();
            if keep.contains(&i) {
                live.insert(i, p.get_v().to_vec());
            }
        }
        let mut order: Vec<usize> = live.keys().copied().collect();
        order.sort_unstable();
        let items: Vec<(Entry, Vec<f32>)> = order
            .into_iter()
            .filter_map(|i| {
                let v = live.remove(&i)?;
                Some((self.entries[i].clone(), v))
            })
            .collect();
        let mut fresh = Space::new(items.len());
        fresh.add(items);
        fresh.changed.store(true, Ordering::Release);
        *self = fresh;
    }
}

/// How the in-process index came up on start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Started {
    /// Entries read from snapshots.
    pub snapshot: u64,
    /// Entries added from stored rows (no snapshot, or newer than it).
    pub database: u64,
    /// Snapshot entries taken out because their row is gone.
    pub removed: u64,
    /// Snapshots refused (damaged, of another format) and rebuilt.
    pub rejected: u64,
}

/// Every organization's graph.
#[derive(Default)]
pub struct Vectors {
    spaces: RwLock<HashMap<String, Space>>,
    /// Where the snapshots are kept (none: in memory only).
    dir: Option<PathBuf>,
    started: Mutex<Started>,
    /// One snapshot write at a time (the writer's, or the one at stop).
    saving: Mutex<()>,
}

impl std::fmt::Debug for Vectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vectors")
    }
}

impl Vectors {
    /// Graphs kept as snapshots in `dir`.
    pub fn persistent(dir: PathBuf) -> Vectors {
        Vectors {
            dir: Some(dir),
            ..Vectors::default()
        }
    }

    /// Adds (or replaces) an entry of `org`.
    pub fn add(&self, org: &str, e: Entry, v: Vec<f32>) {
        self.add_many(org, vec![(e, v)]);
    }

    /// Adds (or replaces) entries of `org`, many at once on all cores.
    pub fn add_many(&self, org: &str, items: Vec<(Entry, Vec<f32>)>) {
        let items = items
            .into_iter()
            .map(|(e, v)| (e, normalized(v)))
            .collect::<Vec<_>>();
        if let Ok(mut s) = self.spaces.write() {
            s.entry(org.to_string())
                .or_insert_with(|| Space::new(items.len()))
                .add(items);
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

    /// Removes everything, snapshots too (a rebuild from the rows).
    pub fn clear(&self) -> Result<(), String> {
        if let Ok(mut s) = self.spaces.write() {
            s.clear();
        }
        match &self.dir {
            Some(dir) => super::snapshot::remove_all(dir),
            None => Ok(()),
        }
    }

    /// Reads every whole snapshot (on start, before any entry is added);
    /// entries read and snapshots refused.
    pub fn load_snapshots(&self) -> (u64, u64) {
        let Some(dir) = &self.dir else {
            return (0, 0);
        };
        let (found, rejected) = super::snapshot::load(dir);
        let mut n = 0;
        if let Ok(mut s) = self.spaces.write() {
            for (org, space) in found {
                n += space.by_id.len() as u64;
                s.insert(org, space);
            }
        }
        (n, rejected)
    }

    /// Makes the graphs agree with the stored rows (`rows`: ids by
    /// organization): entries without a row are taken out. Returns the
    /// ids of the rows no graph holds, and how many were taken out.
    pub fn reconcile(&self, rows: &HashMap<String, HashSet<String>>) -> (Vec<String>, u64) {
        let mut missing = Vec::new();
        let mut removed = 0;
        let Ok(mut s) = self.spaces.write() else {
            return (missing, removed);
        };
        let none = HashSet::new();
        for (org, space) in s.iter_mut() {
            let ids = rows.get(org).unwrap_or(&none);
            removed += space.remove(&|e: &Entry| !ids.contains(&e.id)) as u64;
        }
        for (org, ids) in rows {
            let held = s.get(org);
            missing.extend(
                ids.iter()
                    .filter(|id| held.is_none_or(|sp| !sp.by_id.contains_key(*id)))
                    .cloned(),
            );
        }
        (missing, removed)
    }

    /// Writes the snapshot of every graph changed since its last one;
    /// how many were written. Called by the knowledge writer (the one
    /// that changes the graphs), so searches go on while it writes.
    pub fn save(&self) -> Result<usize, String> {
        let Some(dir) = &self.dir else {
            return Ok(0);
        };
        let _one = self
            .saving
            .lock()
            .map_err(|_| "vector snapshot lock poisoned".to_string())?;
        let s = self
            .spaces
            .read()
            .map_err(|_| "vector index lock poisoned".to_string())?;
        let mut written = 0;
        for (org, space) in s.iter() {
            if !space.changed.swap(false, Ordering::AcqRel) {
                continue;
            }
            if let Err(e) = super::snapshot::save(dir, org, space) {
                space.changed.store(true, Ordering::Release);
                return Err(e);
            }
            written += 1;
        }
        Ok(written)
    }

    /// How this index came up.
    pub fn started(&self) -> Started {
        self.started.lock().map(|s| *s).unwrap_or_default()
    }

    pub(super) fn set_started(&self, s: Started) {
        if let Ok(mut x) = self.started.lock() {
            *x = s;
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
        if space.dims != q.len() || space.by_id.is_empty() {
            return Vec::new();
        }
        let filter = |i: &usize| {
            space
                .entries
                .get(*i)
                .is_some_and(|e| space.by_id.get(&e.id) == Some(i) && keep(e))
        };
        let ef = (k * 8).max(64);
        space
            .graph
            .search_filter(&q, k, ef, Some(&filter))
            .into_iter()
            .filter_map(|n| Some((space.entries.get(n.d_id)?.id.clone(), 1.0 - n.distance)))
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
                tokio::task::spawn_blocking(move || v.add_many(&org, items))
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
pub(super) mod tests {
    use super::*;

    /// A chunk entry of knowledge base `owner` (and document `doc-<id>`).
    pub(in crate::knowledge) fn e(id: &str, owner: &str) -> Entry {
        Entry {
            id: id.into(),
            scope: "kb".into(),
            owner: owner.into(),
            doc: Some(format!("doc-{id}")),
            expires_at: None,
        }
    }

    #[test]
    fn unit_cosine_is_one_minus_the_dot_product_and_never_negative() {
        let d = UnitCosine;
        let x = normalized((0..13).map(|i| i as f32 - 6.5).collect());
        let neg: Vec<f32> = x.iter().map(|v| -v).collect();
        assert!(d.eval(&x, &x).abs() < 1e-6);
        assert!((d.eval(&x, &neg) - 2.0).abs() < 1e-5);
        let (a, b) = (normalized(vec![1.0; 9]), {
            let mut v = vec![0.0; 9];
            v[8] = 1.0;
            v
        });
        assert!(
            (d.eval(&a, &b) - (1.0 - 1.0 / 3.0)).abs() < 1e-6,
            "the tail counts"
        );
        // Rounding puts a·a of a unit vector just above 1: clamped to 0.
        let u = vec![0.6f32, 0.800_000_1];
        assert!(u.iter().map(|v| v * v).sum::<f32>() > 1.0);
        assert_eq!(d.eval(&u, &u), 0.0);
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
