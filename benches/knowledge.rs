//! Knowledge: indexing and lexical search at 10,000 documents.
//!
//! An in-process server on a real SQLite file in `$TMPDIR` (the embedded
//! default). 10,000 synthetic documents of ~2 KB (Markdown, a heading and
//! paragraphs of words drawn from a Zipf-like vocabulary of 5,000 words)
//! are chunked (text-splitter, cl100k, 256 tokens) and written through the
//! knowledge writer, 16 in flight, each durable in the database and
//! committed to the index before it is answered. Then 2,000 queries of 2–5
//! words (mixing frequent and rare words) are searched, one at a time:
//! through the in-process handle (`Knowledge::search`, lexical) and over
//! HTTP (`POST /api/v1/knowledge/search`, reqwest on the same machine).
//!
//! Then the in-process vector index (HNSW) at start: 30,000 vectors of
//! 256 dimensions (deterministic pseudo-random) in one organization are
//! built as a start without a snapshot builds them (batches of 500 on all
//! cores), written as a snapshot, and read back as a start with one reads
//! them; 1,000 queries compare the two graphs (same top 10) and time
//! their searches. The same vectors then go into `kb_vectors` on a fresh
//! PostgreSQL database with pgvector (`PgVectors::fill`, the HNSW index
//! maintained as rows are filled), and the same queries are searched
//! there. Both indexes' recall@10 is measured against an exact scan.
//! PostgreSQL is `CADRE_TEST_POSTGRES_URL` (the tests' default otherwise);
//! without it that part is skipped with a note, unless
//! `CADRE_REQUIRE_SERVICES=1`.
//!
//! `cargo bench --bench knowledge` prints the figures; `-- --test` is the
//! CI smoke run (tiny sizes, figures not measurements).

#[path = "support/mod.rs"]
mod support;

#[path = "../tests/support/mod.rs"]
mod db;

use cadre::knowledge::Mode;
use cadre::knowledge::index::ChunkQuery;
use cadre::store::{Document, KnowledgeBase};
use cadre_actors::audit::AuditEntry;
use cadre_actors::domain::{OrgId, Who};
use std::time::Instant;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    /// A word index, frequent ones far more often (Zipf-like).
    fn word(&mut self, vocab: usize) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((vocab as f64).powf(u) as usize)
            .saturating_sub(1)
            .min(vocab - 1)
    }
}

fn vocabulary(n: usize) -> Vec<String> {
    const SYL: [&str; 24] = [
        "ka", "lo", "mi", "ter", "van", "sor", "pel", "du", "rin", "bex", "tal", "nor", "qui",
        "zam", "fo", "gre", "hal", "jun", "wex", "yor", "cle", "dra", "pu", "sen",
    ];
    (0..n)
        .map(|i| {
            let (a, b, c) = (i % 24, (i / 24) % 24, (i / 576) % 24);
            format!("{}{}{}", SYL[a], SYL[b], SYL[c])
        })
        .collect()
}

fn document(rng: &mut Rng, vocab: &[String], bytes: usize) -> String {
    let mut s = format!(
        "# {} {}\n\n",
        vocab[rng.word(vocab.len())],
        vocab[rng.word(vocab.len())]
    );
    while s.len() < bytes {
        for _ in 0..12 {
            s.push_str(&vocab[rng.word(vocab.len())]);
            s.push(' ');
        }
        s.push_str(".\n");
        if rng.next().is_multiple_of(5) {
            s.push('\n');
        }
    }
    s
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let test = std::env::args().any(|a| a == "--test");
    let (docs, queries) = if test { (200, 50) } else { (10_000, 2_000) };
    if test {
        println!("smoke run (tiny sizes): figures below are not measurements; see BENCHMARKS.md");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // `-- vectors`: the vector part only.
    if !std::env::args().any(|a| a == "vectors") {
        rt.block_on(run(docs, queries));
    }
    let set = if test {
        vectors(2_000, 32, 100)
    } else {
        vectors(30_000, 256, 1_000)
    };
    rt.block_on(pgvector(&set));
}

/// The vector set: points, queries, and each query's exact top 10.
struct Set {
    points: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    exact: Vec<Vec<usize>>,
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(f32::MIN_POSITIVE)
}

fn exact_top10(points: &[Vec<f32>], q: &[f32]) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = points
        .iter()
        .enumerate()
        .map(|(i, p)| (cosine(p, q), i))
        .collect();
    scored.select_nth_unstable_by(9, |a, b| b.0.total_cmp(&a.0));
    let mut top: Vec<(f32, usize)> = scored[..10].to_vec();
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    top.into_iter().map(|(_, i)| i).collect()
}

/// Of the exact top 10, the share found.
fn recall10(found: &[String], exact: &[usize]) -> f64 {
    let want: std::collections::HashSet<String> =
        exact.iter().map(|i| format!("c{i:06}")).collect();
    found.iter().filter(|id| want.contains(*id)).count() as f64 / exact.len() as f64
}

fn vectors(n: usize, dims: usize, queries: usize) -> Set {
    use cadre::knowledge::vector::{Entry, Vectors};
    // Embeddings are not uniform noise: a model's vectors lie near a space
    // of far fewer dimensions than they have. So each vector is a random
    // point of a 16-dimensional space, mapped into `dims` dimensions by one
    // fixed random matrix, plus a little noise of its own. (Uniform noise
    // in all 256 dimensions is HNSW's worst case, and no model's output.)
    const LATENT: usize = 16;
    let mut rng = Rng(0xA0761D6478BD642F);
    let mut unit = move || (rng.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0;
    let map: Vec<Vec<f32>> = (0..dims)
        .map(|_| (0..LATENT).map(|_| unit()).collect())
        .collect();
    let mut vector = move || {
        let z: Vec<f32> = (0..LATENT).map(|_| unit()).collect();
        map.iter()
            .map(|row| row.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() + 0.05 * unit())
            .collect::<Vec<f32>>()
    };
    let points: Vec<Vec<f32>> = (0..n).map(|_| vector()).collect();
    let qs: Vec<Vec<f32>> = (0..queries).map(|_| vector()).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let built = Vectors::persistent(dir.path().to_path_buf());
    let rss0 = rss_mib();
    let t = Instant::now();
    for (b, batch) in points.chunks(500).enumerate() {
        let items = batch
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let id = format!("c{:06}", b * 500 + i);
                (
                    Entry {
                        id,
                        scope: "kb".into(),
                        owner: "kb1".into(),
                        doc: None,
                        expires_at: None,
                    },
                    v.clone(),
                )
            })
            .collect();
        built.add_many("org", items);
    }
    let build_s = t.elapsed().as_secs_f64();
    let rss1 = rss_mib();
    let t = Instant::now();
    assert_eq!(built.save().expect("save"), 1);
    let save_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let read = Vectors::persistent(dir.path().to_path_buf());
    assert_eq!(read.load_snapshots(), (n as u64, 0));
    let load_s = t.elapsed().as_secs_f64();
    println!(
        "vectors in process ({n} × {dims}-d): build from rows {build_s:.2} s, snapshot write {save_s:.2} s ({:.1} MB), read back {load_s:.2} s: start {:.0}× faster; RSS {rss0:.0} → {rss1:.0} MiB",
        dir_bytes(dir.path()) as f64 / 1e6,
        build_s / load_s
    );
    let exact: Vec<Vec<usize>> = qs.iter().map(|q| exact_top10(&points, q)).collect();
    let mut same = 0usize;
    let mut recall = 0f64;
    let mut lat = [Vec::with_capacity(queries), Vec::with_capacity(queries)];
    for (q, want) in qs.iter().zip(&exact) {
        let mut tops = Vec::new();
        for (g, l) in [&built, &read].into_iter().zip(lat.iter_mut()) {
            let t = Instant::now();
            let top: Vec<String> = g
                .search("org", q.clone(), 10, |_| true)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            l.push(t.elapsed().as_secs_f64() * 1000.0);
            tops.push(top);
        }
        recall += recall10(&tops[0], want);
        same += usize::from(tops[0] == tops[1]);
    }
    for l in &mut lat {
        l.sort_by(|a, b| a.total_cmp(b));
    }
    println!(
        "  search top 10 ({queries} queries): built p50 {:.2} ms p99 {:.2} ms; read back p50 {:.2} ms p99 {:.2} ms; same top 10 for {same}/{queries}; recall@10 against an exact scan {:.3}",
        pct(&lat[0], 0.5),
        pct(&lat[0], 0.99),
        pct(&lat[1], 0.5),
        pct(&lat[1], 0.99),
        recall / queries as f64
    );
    assert_eq!(
        same, queries,
        "the read-back graph answers as the built one"
    );
    Set {
        points,
        queries: qs,
        exact,
    }
}

async fn pgvector(set: &Set) {
    use cadre::knowledge::pgvector::PgVectors;
    use cadre::knowledge::vector::{Near, encode};
    use cadre::store::backend::Backend;
    let Some(admin) = db::server(
        "CADRE_TEST_POSTGRES_URL",
        db::POSTGRES_URL,
        Backend::Postgres,
    )
    .await
    else {
        return;
    };
    db::on_fresh_database(Backend::Postgres, &admin, |url| async move {
        let store = cadre::store::server::PgStore::connect(&url, 8)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        let pool = store.pool().clone();
        for (b, batch) in set.points.chunks(1_000).enumerate() {
            let ids: Vec<String> = (0..batch.len())
                .map(|i| format!("c{:06}", b * 1_000 + i))
                .collect();
            let vecs: Vec<String> = batch.iter().map(|v| encode(v)).collect();
            sqlx::query(
                "INSERT INTO kb_vectors (id, org_id, scope, owner_id, vector) \
                 SELECT id, 'org', 'kb', 'kb1', v FROM UNNEST($1::text[], $2::text[]) AS t(id, v)",
            )
            .bind(&ids)
            .bind(&vecs)
            .execute(&pool)
            .await
            .expect("insert");
        }
        let Some(pg) = PgVectors::open(pool).await.expect("open") else {
            if std::env::var("CADRE_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("the pgvector extension is not installed (CADRE_REQUIRE_SERVICES=1; run .ci/services)");
            }
            eprintln!("skipped: pgvector is not installed in this PostgreSQL");
            return;
        };
        let t = Instant::now();
        let filled = pg.fill().await.expect("fill");
        let fill_s = t.elapsed().as_secs_f64();
        assert_eq!(filled as usize, set.points.len());
        let near = Near::Chunks {
            kbs: Vec::new(),
            doc: None,
        };
        let mut lat = Vec::with_capacity(set.queries.len());
        let mut recall = 0f64;
        for (q, want) in set.queries.iter().zip(&set.exact) {
            let t = Instant::now();
            let top: Vec<String> = pg
                .search("org", q, 10, &near)
                .await
                .expect("search")
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            recall += recall10(&top, want);
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "pgvector {} ({} × {}-d): fill and index {fill_s:.1} s; search top 10 ({} queries) p50 {:.2} ms p99 {:.2} ms; recall@10 against an exact scan {:.3}",
            pg.version,
            set.points.len(),
            set.points[0].len(),
            set.queries.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            recall / set.queries.len() as f64
        );
    })
    .await;
}

async fn run(docs: usize, queries: usize) {
    cadre::init_tls();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = cadre::app::start(support::config(dir.path()))
        .await
        .expect("app starts");
    let base = format!("http://{}", app.addr);
    let org = app.store.tables().all_orgs().await.expect("orgs")[0]
        .id
        .clone();
    let k = app.knowledge.clone();
    let now = 1_800_000_000_000i64;
    let audit = |what: &str| {
        AuditEntry::new(
            &OrgId(org.clone()),
            &Who::system(),
            what,
            "bench".to_string(),
            serde_json::json!({}),
            now,
        )
    };
    let kb = KnowledgeBase {
        id: uuid::Uuid::now_v7().to_string(),
        org_id: org.clone(),
        name: "bench".into(),
        description: String::new(),
        created_by: "bench".into(),
        created_at: now,
        updated_at: now,
    };
    k.create_kb(kb.clone(), audit("knowledge_base.create"))
        .await
        .expect("kb");
    let vocab = vocabulary(5_000);
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let texts: Vec<String> = (0..docs)
        .map(|_| document(&mut rng, &vocab, 2_000))
        .collect();
    let bytes: usize = texts.iter().map(String::len).sum();

    // Index: chunk (on blocking threads) and write, 16 in flight.
    let rss0 = rss_mib();
    let t0 = Instant::now();
    let mut chunks_total = 0usize;
    let mut pending = Vec::new();
    for (i, text) in texts.into_iter().enumerate() {
        let (k, kb_id, org) = (k.clone(), kb.id.clone(), org.clone());
        let a = audit("document.create");
        pending.push(tokio::spawn(async move {
            let mut doc = Document {
                id: uuid::Uuid::now_v7().to_string(),
                org_id: org,
                kb_id,
                title: format!("doc {i}"),
                source: "upload".into(),
                content_type: "text/markdown".into(),
                metadata: Default::default(),
                content_hash: cadre::knowledge::content_hash(&text),
                bytes: text.len() as i64,
                content: text,
                chunk_count: 0,
                version: 1,
                state: "pending".into(),
                created_by: "bench".into(),
                created_at: now,
                updated_at: now,
            };
            let chunker = k.chunker().clone();
            let (ct, content) = (doc.content_type.clone(), doc.content.clone());
            let pieces = tokio::task::spawn_blocking(move || chunker.split(&ct, &content))
                .await
                .expect("split");
            let chunks = cadre::knowledge::chunk_rows(&doc, &pieces);
            doc.chunk_count = chunks.len() as i64;
            let n = chunks.len();
            assert!(k.put_document(doc, chunks, a).await.expect("put"));
            n
        }));
        if pending.len() == 16 {
            chunks_total += pending.remove(0).await.expect("task");
        }
    }
    for p in pending {
        chunks_total += p.await.expect("task");
    }
    let index_s = t0.elapsed().as_secs_f64();
    println!(
        "index: {docs} documents ({:.1} MB, {chunks_total} chunks) in {index_s:.1} s: {:.0} documents/s",
        bytes as f64 / 1e6,
        docs as f64 / index_s
    );
    println!(
        "  index on disk {:.1} MB, database {:.1} MB, RSS {:.0} → {:.0} MiB",
        dir_bytes(&dir.path().join("knowledge")) as f64 / 1e6,
        std::fs::metadata(dir.path().join("cadre.db"))
            .map(|m| m.len())
            .unwrap_or(0) as f64
            / 1e6,
        rss0,
        rss_mib()
    );

    let mut rng = Rng(0xD1B54A32D192ED03);
    let qs: Vec<String> = (0..queries)
        .map(|_| {
            let n = 2 + (rng.next() % 4) as usize;
            (0..n)
                .map(|_| vocab[rng.word(vocab.len())].clone())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();

    // Search in-process, one at a time.
    let mut lat = Vec::with_capacity(queries);
    let mut empty = 0;
    for q in &qs {
        let t = Instant::now();
        let hits = k
            .search(
                ChunkQuery {
                    org: org.clone(),
                    text: q.clone(),
                    limit: 10,
                    ..Default::default()
                },
                Mode::Lexical,
            )
            .await
            .expect("search");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        empty += usize::from(hits.is_empty());
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "search in-process (lexical, top 10, {queries} queries, {empty} without hits): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );

    // Over HTTP.
    let client = reqwest::Client::new();
    let token = support::login(&client, &base).await;
    let mut lat = Vec::with_capacity(queries);
    for q in &qs {
        let t = Instant::now();
        let resp = client
            .post(format!("{base}/api/v1/knowledge/search"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "query": q, "limit": 10 }))
            .send()
            .await
            .expect("search");
        assert!(resp.status().is_success(), "{}", resp.status());
        let _ = resp.bytes().await.expect("body");
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "search over HTTP (lexical, top 10, {queries} queries): p50 {:.2} ms, p99 {:.2} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    app.shutdown().await;
}
