//! Vector search inside PostgreSQL, when the pgvector extension is there
//! (or can be created by Cadre's login): the embeddings stay the
//! `kb_vectors` rows every backend keeps, and gain an `embedding vector`
//! column, filled after each write commits, with an HNSW index per
//! dimension count (`kb_vectors_hnsw_<dims>`, cosine distance, partial on
//! `dims`), so that searches run in the database next to the filters.
//!
//! The column is added at start rather than by a migration: the
//! migrations are the same on every PostgreSQL, with the extension or
//! without. Rows whose column is still empty (a crash between the row's
//! commit and the fill, a database imported by `cadre import`, a server
//! that had no pgvector before) are filled on start. Deleting a chunk or
//! memory deletes its row in the same transaction, so nothing is left to
//! take out of this index.

use super::vector::{Near, decode};
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Mutex;

/// Rows filled per statement.
const FILL: i64 = 500;
/// pgvector's largest HNSW-indexable `vector`; longer ones are searched
/// exactly (a scan), still in the database.
const MAX_INDEXED_DIMS: usize = 2000;

/// The pgvector index of one database.
#[derive(Debug)]
pub struct PgVectors {
    pool: PgPool,
    /// Dimension counts whose HNSW index exists.
    indexed: Mutex<HashSet<usize>>,
    /// pgvector 0.8 and later: filtered searches scan on until they have
    /// `k` rows (`hnsw.iterative_scan`).
    iterative: bool,
    /// The extension's version.
    pub version: String,
}

fn text(e: sqlx::Error) -> String {
    format!("pgvector: {e}")
}

/// A vector as pgvector reads it: `[0.1,0.2]`.
fn literal(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 10 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        // Non-finite values are refused by pgvector; no provider sends
        // them (JSON has none), but a zero is safer than a failed fill.
        let x = if x.is_finite() { *x } else { 0.0 };
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

fn at_least_0_8(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (0, 8)
}

impl PgVectors {
    /// The index on `pool`'s database; `None` when the extension is not
    /// installed there and Cadre's login may not create it.
    pub async fn open(pool: PgPool) -> Result<Option<PgVectors>, String> {
        let installed = || async {
            sqlx::query_scalar::<_, String>(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
            )
            .fetch_optional(&pool)
            .await
            .map_err(text)
        };
        let version = match installed().await? {
            Some(v) => v,
            None => {
                if let Err(e) = sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
                    .execute(&pool)
                    .await
                {
                    tracing::info!(error = %e, "pgvector is not installed in this database; vectors are searched in process");
                    return Ok(None);
                }
                match installed().await? {
                    Some(v) => v,
                    None => return Ok(None),
                }
            }
        };
        sqlx::query(
            "ALTER TABLE kb_vectors ADD COLUMN IF NOT EXISTS embedding vector, \
             ADD COLUMN IF NOT EXISTS dims INTEGER",
        )
        .execute(&pool)
        .await
        .map_err(text)?;
        let me = PgVectors {
            iterative: at_least_0_8(&version),
            version,
            pool,
            indexed: Mutex::new(HashSet::new()),
        };
        let dims: Vec<i32> = sqlx::query_scalar(
            "SELECT DISTINCT dims FROM kb_vectors WHERE dims IS NOT NULL ORDER BY dims",
        )
        .fetch_all(&me.pool)
        .await
        .map_err(text)?;
        for d in dims {
            me.ensure_index(d.max(0) as usize).await?;
        }
        Ok(Some(me))
    }

    async fn ensure_index(&self, dims: usize) -> Result<(), String> {
        if dims == 0 || dims > MAX_INDEXED_DIMS {
            return Ok(());
        }
        if self
            .indexed
            .lock()
            .map(|s| s.contains(&dims))
            .unwrap_or(false)
        {
            return Ok(());
        }
        // `dims` is a number of ours, never text from outside.
        sqlx::query(&format!(
            "CREATE INDEX IF NOT EXISTS kb_vectors_hnsw_{dims} ON kb_vectors \
             USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WHERE dims = {dims}"
        ))
        .execute(&self.pool)
        .await
        .map_err(text)?;
        if let Ok(mut s) = self.indexed.lock() {
            s.insert(dims);
        }
        Ok(())
    }

    /// Sets the embeddings of rows already written. A new dimension
    /// count's index is created first, so the rows are searched through it
    /// from their commit on.
    pub async fn set(&self, rows: &[(String, Vec<f32>)]) -> Result<(), String> {
        let dims: HashSet<usize> = rows.iter().map(|(_, v)| v.len()).collect();
        for d in dims {
            self.ensure_index(d).await?;
        }
        self.update(rows).await.map(drop)
    }

    /// Writes the embeddings of `rows`; the dimension counts written.
    async fn update(&self, rows: &[(String, Vec<f32>)]) -> Result<HashSet<usize>, String> {
        let mut dims = HashSet::new();
        let (mut ids, mut vecs, mut lens) = (
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
            Vec::with_capacity(rows.len()),
        );
        for (id, v) in rows {
            if v.is_empty() {
                continue;
            }
            dims.insert(v.len());
            ids.push(id.as_str());
            vecs.push(literal(v));
            lens.push(v.len() as i32);
        }
        if ids.is_empty() {
            return Ok(dims);
        }
        sqlx::query(
            "UPDATE kb_vectors AS k SET embedding = v.e::vector, dims = v.d \
             FROM UNNEST($1::text[], $2::text[], $3::int4[]) AS v(id, e, d) WHERE k.id = v.id",
        )
        .bind(&ids)
        .bind(&vecs)
        .bind(&lens)
        .execute(&self.pool)
        .await
        .map_err(text)?;
        Ok(dims)
    }

    /// Fills every row whose embedding column is empty; how many (at
    /// start, and in a rebuild after `clear`). A dimension count without an
    /// index yet (a database that just gained the extension, an import)
    /// gets it in one bulk build after its rows are filled, not one
    /// insertion per row; one with an index keeps it up to date as rows
    /// are filled.
    pub async fn fill(&self) -> Result<u64, String> {
        let mut after = String::new();
        let mut n = 0u64;
        let mut dims = HashSet::new();
        loop {
            let page: Vec<(String, String)> = sqlx::query_as(
                "SELECT id, vector FROM kb_vectors WHERE embedding IS NULL AND id > $1 \
                 ORDER BY id LIMIT $2",
            )
            .bind(&after)
            .bind(FILL)
            .fetch_all(&self.pool)
            .await
            .map_err(text)?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            let rows: Vec<(String, Vec<f32>)> = page
                .into_iter()
                .filter_map(|(id, v)| decode(&v).map(|v| (id, v)))
                .collect();
            n += rows.len() as u64;
            dims.extend(self.update(&rows).await?);
        }
        for d in dims {
            self.ensure_index(d).await?;
        }
        Ok(n)
    }

    /// Empties the column (a rebuild fills it again).
    pub async fn clear(&self) -> Result<(), String> {
        sqlx::query("UPDATE kb_vectors SET embedding = NULL, dims = NULL")
            .execute(&self.pool)
            .await
            .map_err(text)?;
        Ok(())
    }

    /// Rows with an embedding.
    pub async fn count(&self) -> Result<u64, String> {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM kb_vectors WHERE embedding IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .map(|n| n.max(0) as u64)
            .map_err(text)
    }

    /// The `k` nearest rows of `org` that `near` admits: (id, cosine
    /// similarity), nearest first.
    pub async fn search(
        &self,
        org: &str,
        query: &[f32],
        k: usize,
        near: &Near,
    ) -> Result<Vec<(String, f32)>, String> {
        let d = query.len();
        if d == 0 {
            return Ok(Vec::new());
        }
        // The expression and the `dims` literal are those of the partial
        // index, so the planner can use it.
        let dist = format!("embedding::vector({d}) <=> $1::vector({d})");
        let filter = match near {
            Near::Chunks { .. } => {
                "scope = 'kb' AND (cardinality($3::text[]) = 0 OR owner_id = ANY($3)) \
                 AND ($4::text IS NULL OR doc_id = $4)"
            }
            Near::Memories { .. } => {
                "scope = 'mem' AND owner_id = $3 AND (expires_at IS NULL OR expires_at > $4)"
            }
        };
        let sql = format!(
            "SELECT id, ({dist})::float8 AS distance FROM kb_vectors \
             WHERE dims = {d} AND org_id = $2 AND {filter} ORDER BY {dist} LIMIT $5"
        );
        let mut tx = self.pool.begin().await.map_err(text)?;
        let ef = (k * 4).clamp(40, 1000);
        sqlx::query(&format!("SET LOCAL hnsw.ef_search = {ef}"))
            .execute(&mut *tx)
            .await
            .map_err(text)?;
        if self.iterative {
            sqlx::query("SET LOCAL hnsw.iterative_scan = strict_order")
                .execute(&mut *tx)
                .await
                .map_err(text)?;
        }
        let q = sqlx::query_as::<_, (String, f64)>(&sql)
            .bind(literal(query))
            .bind(org);
        let q = match near {
            Near::Chunks { kbs, doc } => q.bind(kbs).bind(doc.as_deref()),
            Near::Memories { agent, now } => q.bind(agent.as_str()).bind(*now),
        };
        let rows = q.bind(k as i64).fetch_all(&mut *tx).await.map_err(text)?;
        tx.commit().await.map_err(text)?;
        Ok(rows
            .into_iter()
            .map(|(id, dist)| (id, (1.0 - dist) as f32))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_versions() {
        assert_eq!(literal(&[0.5, -2.0, f32::NAN]), "[0.5,-2,0]");
        assert!(at_least_0_8("0.8.0"));
        assert!(at_least_0_8("1.0"));
        assert!(!at_least_0_8("0.7.4"));
        assert!(!at_least_0_8("weird"));
    }
}
