//! Knowledge bases, their documents, search, and agents' memories:
//! `/knowledge-bases…`, `/documents/{id}`, `POST /knowledge/search`,
//! `POST /knowledge/rebuild`, `GET /knowledge/status`, `/agents/{id}/memories…`. Changes go to the
//! knowledge writer (which persists them with their audit entries and
//! indexes them before answering); reads come from the store and the index.

use super::agents::{agent_id, page_limit};
use super::error::{ApiError, ApiJson, ApiQuery};
use super::guard::Routes;
use super::input::{cursor, path_id};
use super::state::AppState;
use crate::identity::{Action, Principal};
use crate::knowledge::index::{ChunkQuery, MemoryQuery};
use crate::knowledge::{self, chunk};
use crate::store::{Document, KnowledgeBase, Memory};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use cadre_actors::audit::AuditEntry;
use cadre_actors::domain::{AgentId, rfc3339};
use cadre_actors::ports::{Clock, SystemClock};
use serde::Deserialize;
use serde_json::{Map, Value, json};

fn kb_json(kb: &KnowledgeBase) -> Value {
    json!({
        "id": kb.id,
        "name": kb.name,
        "description": kb.description,
        "created_by": kb.created_by,
        "created_at": rfc3339(kb.created_at),
        "updated_at": rfc3339(kb.updated_at),
    })
}

fn doc_json(d: &Document, content: bool) -> Value {
    let mut v = json!({
        "id": d.id,
        "knowledge_base_id": d.kb_id,
        "title": d.title,
        "source": d.source,
        "content_type": d.content_type,
        "metadata": d.metadata,
        "bytes": d.bytes,
        "chunk_count": d.chunk_count,
        "version": d.version,
        "state": d.state,
        "content_hash": d.content_hash,
        "created_by": d.created_by,
        "created_at": rfc3339(d.created_at),
        "updated_at": rfc3339(d.updated_at),
    });
    if content {
        v["content"] = d.content.clone().into();
    }
    v
}

/// A memory as the API shows it.
pub fn memory_json(m: &Memory) -> Value {
    json!({
        "id": m.id,
        "agent_id": m.agent_id,
        "kind": m.kind,
        "content": m.content,
        "importance": m.importance as f64 / 1000.0,
        "source_task": m.source_task,
        "expires_at": m.expires_at.map(rfc3339),
        "created_at": rfc3339(m.created_at),
    })
}

fn now() -> i64 {
    SystemClock.now_ms()
}

fn text(field: &str, raw: &str, max: usize) -> Result<String, ApiError> {
    let t = raw.trim();
    if t.is_empty() || t.chars().count() > max {
        return Err(ApiError::invalid(field, format!("1-{max} characters")));
    }
    Ok(t.to_string())
}

fn audit(p: &Principal, action: &str, target: String, summary: Value) -> AuditEntry {
    AuditEntry::new(&p.org, &p.who(), action, target, summary, now())
}

fn page(mut items: Vec<Value>, limit: usize, id: impl Fn(&Value) -> Option<String>) -> Response {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more {
        items.last().and_then(id)
    } else {
        None
    };
    Json(json!({ "items": items, "next_cursor": next })).into_response()
}

fn value_id(v: &Value) -> Option<String> {
    v.get("id").and_then(Value::as_str).map(String::from)
}

use super::agents::PageParams;

// ---------- knowledge bases ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KbIn {
    name: String,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KbPatch {
    name: Option<String>,
    description: Option<String>,
}

fn description(raw: Option<&str>) -> Result<String, ApiError> {
    match raw {
        Some(d) if d.chars().count() > 2000 => {
            Err(ApiError::invalid("description", "at most 2000 characters"))
        }
        Some(d) => Ok(d.trim().to_string()),
        None => Ok(String::new()),
    }
}

async fn create_kb(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(body): ApiJson<KbIn>,
) -> Result<Response, ApiError> {
    let at = now();
    let kb = KnowledgeBase {
        id: uuid::Uuid::now_v7().to_string(),
        org_id: p.org.to_string(),
        name: text("name", &body.name, 200)?,
        description: description(body.description.as_deref())?,
        created_by: p.who().to_text(),
        created_at: at,
        updated_at: at,
    };
    let a = audit(
        &p,
        "knowledge_base.create",
        format!("knowledge_base:{}", kb.id),
        json!({ "name": kb.name }),
    );
    state.knowledge.create_kb(kb.clone(), a).await?;
    Ok((StatusCode::CREATED, Json(kb_json(&kb))).into_response())
}

async fn list_kbs(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    let (after, limit) = (cursor(q.cursor.as_deref())?, page_limit(q.limit)?);
    let rows = state
        .store
        .tables()
        .kbs_page(p.org.as_str(), &after, limit as i64 + 1)
        .await?;
    Ok(page(rows.iter().map(kb_json).collect(), limit, value_id))
}

async fn find_kb(state: &AppState, p: &Principal, raw: &str) -> Result<KnowledgeBase, ApiError> {
    let id = path_id("knowledge base", raw)?;
    state
        .store
        .tables()
        .kb(p.org.as_str(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("knowledge base"))
}

async fn get_kb(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(kb_json(&find_kb(&state, &p, &id).await?)).into_response())
}

async fn patch_kb(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<KbPatch>,
) -> Result<Response, ApiError> {
    let mut kb = find_kb(&state, &p, &id).await?;
    if body.name.is_none() && body.description.is_none() {
        return Err(ApiError::invalid("body", "nothing to change"));
    }
    if let Some(n) = &body.name {
        kb.name = text("name", n, 200)?;
    }
    if body.description.is_some() {
        kb.description = description(body.description.as_deref())?;
    }
    kb.updated_at = now();
    let a = audit(
        &p,
        "knowledge_base.update",
        format!("knowledge_base:{}", kb.id),
        json!({ "name": body.name, "description": body.description.is_some() }),
    );
    if !state.knowledge.update_kb(kb.clone(), a).await? {
        return Err(ApiError::not_found("knowledge base"));
    }
    Ok(Json(kb_json(&kb)).into_response())
}

async fn delete_kb(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let kb = find_kb(&state, &p, &id).await?;
    let a = audit(
        &p,
        "knowledge_base.delete",
        format!("knowledge_base:{}", kb.id),
        json!({ "name": kb.name }),
    );
    if !state.knowledge.delete_kb(p.org.as_str(), &kb.id, a).await? {
        return Err(ApiError::not_found("knowledge base"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------- documents ----------

/// A document: its text (`content`, with `content_type`), its bytes
/// (`content_base64`: a PDF), or a `url` the control plane fetches.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocIn {
    title: Option<String>,
    content: Option<String>,
    content_base64: Option<String>,
    content_type: Option<String>,
    url: Option<String>,
    metadata: Option<Map<String, Value>>,
}

fn metadata(m: Option<Map<String, Value>>) -> Result<Map<String, Value>, ApiError> {
    let m = m.unwrap_or_default();
    if m.len() > 32 {
        return Err(ApiError::invalid("metadata", "at most 32 keys"));
    }
    for (k, v) in &m {
        let key_ok = !k.is_empty()
            && k.len() <= 64
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if !key_ok {
            return Err(ApiError::invalid(
                "metadata",
                format!("key {k:?}: 1-64 of a-z 0-9 _ . -"),
            ));
        }
        match v.as_str() {
            Some(s) if s.chars().count() <= 200 => {}
            _ => {
                return Err(ApiError::invalid(
                    "metadata",
                    format!("value of {k:?}: a string of at most 200 characters"),
                ));
            }
        }
    }
    Ok(m)
}

/// One client for every fetch (its connection pool and TLS setup are
/// reused), built on first use.
fn fetch_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let c = crate::tools::http_client()?;
    Ok(CLIENT.get_or_init(|| c))
}

/// Fetches `url` from an allowed host: (content type, body).
async fn fetch(state: &AppState, url: &str) -> Result<(&'static str, Vec<u8>), ApiError> {
    let cfg = &state.config.knowledge;
    let host = cadre_actors::governance::engine::url_host(url)
        .ok_or_else(|| ApiError::invalid("url", "an http:// or https:// URL"))?;
    if !cadre_actors::governance::engine::host_allowed(&cfg.fetch_hosts, &host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            format!("documents are not fetched from {host} (knowledge.fetch_hosts)"),
        ));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|e| ApiError::invalid("url", format!("bad url: {e}")))?;
    // The host fetched must be the host that was judged.
    if parsed.host_str().map(|h| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    }) != Some(host.clone())
    {
        return Err(ApiError::invalid("url", "the url's host is ambiguous"));
    }
    let failed = |why: String| ApiError::new(StatusCode::BAD_GATEWAY, "fetch_failed", why);
    let client = fetch_client().map_err(failed)?;
    let mut resp = client
        .get(parsed)
        .timeout(std::time::Duration::from_secs(
            cfg.fetch_timeout_seconds.max(1),
        ))
        .send()
        .await
        .map_err(|e| failed(format!("fetching {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(failed(format!(
            "fetching {url}: HTTP {} (redirects are not followed)",
            resp.status().as_u16()
        )));
    }
    let header = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let kind = chunk::media_type(&header).ok_or_else(|| unsupported(&header))?;
    let mut body = Vec::new();
    while let Some(part) = resp
        .chunk()
        .await
        .map_err(|e| failed(format!("reading {url}: {e}")))?
    {
        if body.len() + part.len() > cfg.max_document_bytes {
            return Err(too_large(cfg.max_document_bytes));
        }
        body.extend_from_slice(&part);
    }
    Ok((kind, body))
}

fn unsupported(t: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_content_type",
        format!(
            "content type {t:?} is not read; one of {}",
            chunk::CONTENT_TYPES.join(", ")
        ),
    )
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "document_too_large",
        format!("a document has at most {max} bytes (knowledge.max_document_bytes)"),
    )
}

/// The document's text from the request: (title, source, content type, text).
async fn document_text(
    state: &AppState,
    body: &DocIn,
    old_title: Option<&str>,
) -> Result<(String, String, String, String), ApiError> {
    let declared = || match body.content_type.as_deref() {
        None => Ok("text/plain"),
        Some(t) => chunk::media_type(t).ok_or_else(|| unsupported(t)),
    };
    let (source, kind, raw) = match (&body.content, &body.content_base64, &body.url) {
        (Some(c), None, None) => ("upload".to_string(), declared()?, c.as_bytes().to_vec()),
        (None, Some(b), None) => {
            use base64::Engine;
            // Base64 is a third longer than what it holds: refuse a body
            // past the limit before decoding it.
            let max = state.config.knowledge.max_document_bytes;
            if b.len() / 4 * 3 > max + 3 {
                return Err(too_large(max));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| ApiError::invalid("content_base64", format!("not base64: {e}")))?;
            ("upload".to_string(), declared()?, raw)
        }
        (None, None, Some(u)) => {
            if body.content_type.is_some() {
                return Err(ApiError::invalid(
                    "content_type",
                    "a fetched document's type is what its server answers",
                ));
            }
            let (kind, raw) = fetch(state, u).await?;
            (u.clone(), kind, raw)
        }
        _ => {
            return Err(ApiError::invalid(
                "content",
                "give one of content (text, with content_type), content_base64 \
                 (bytes, e.g. a PDF, with content_type) or url",
            ));
        }
    };
    if raw.len() > state.config.knowledge.max_document_bytes {
        return Err(too_large(state.config.knowledge.max_document_bytes));
    }
    let text = chunk::extract(kind, &raw).map_err(|e| ApiError::invalid("content", e))?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid("content", "the document has no text"));
    }
    let title = match (&body.title, old_title) {
        (Some(t), _) => text_title(t)?,
        (None, Some(t)) => t.to_string(),
        (None, None) if source != "upload" => source.chars().take(500).collect(),
        (None, None) => return Err(ApiError::invalid("title", "1-500 characters")),
    };
    Ok((title, source, kind.to_string(), text))
}

fn text_title(t: &str) -> Result<String, ApiError> {
    text("title", t, 500)
}

async fn chunked(state: &AppState, doc: &Document) -> Result<Vec<crate::store::Chunk>, ApiError> {
    let chunker = state.knowledge.chunker().clone();
    let (kind, content) = (doc.content_type.clone(), doc.content.clone());
    let pieces = tokio::task::spawn_blocking(move || chunker.split(&kind, &content))
        .await
        .map_err(ApiError::internal)?;
    Ok(knowledge::chunk_rows(doc, &pieces))
}

async fn add_document(
    State(state): State<AppState>,
    p: Principal,
    Path(kb): Path<String>,
    ApiJson(body): ApiJson<DocIn>,
) -> Result<Response, ApiError> {
    let kb = find_kb(&state, &p, &kb).await?;
    let meta = metadata(body.metadata.clone())?;
    let (title, source, content_type, content) = document_text(&state, &body, None).await?;
    let at = now();
    let mut doc = Document {
        id: uuid::Uuid::now_v7().to_string(),
        org_id: p.org.to_string(),
        kb_id: kb.id.clone(),
        title,
        source,
        content_type,
        metadata: meta,
        content_hash: knowledge::content_hash(&content),
        bytes: content.len() as i64,
        content,
        chunk_count: 0,
        version: 1,
        state: "pending".into(),
        created_by: p.who().to_text(),
        created_at: at,
        updated_at: at,
    };
    let chunks = chunked(&state, &doc).await?;
    doc.chunk_count = chunks.len() as i64;
    let a = audit(
        &p,
        "document.create",
        format!("document:{}", doc.id),
        json!({ "knowledge_base_id": kb.id, "title": doc.title, "source": doc.source, "chunks": doc.chunk_count }),
    );
    if !state.knowledge.put_document(doc.clone(), chunks, a).await? {
        return Err(ApiError::not_found("knowledge base"));
    }
    doc.state = "indexed".into();
    Ok((StatusCode::CREATED, Json(doc_json(&doc, false))).into_response())
}

async fn list_documents(
    State(state): State<AppState>,
    p: Principal,
    Path(kb): Path<String>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    let kb = find_kb(&state, &p, &kb).await?;
    let (after, limit) = (cursor(q.cursor.as_deref())?, page_limit(q.limit)?);
    let rows = state
        .store
        .tables()
        .documents_page(p.org.as_str(), &kb.id, &after, limit as i64 + 1)
        .await?;
    Ok(page(
        rows.iter().map(|d| doc_json(d, false)).collect(),
        limit,
        value_id,
    ))
}

async fn find_doc(state: &AppState, p: &Principal, raw: &str) -> Result<Document, ApiError> {
    let id = path_id("document", raw)?;
    state
        .store
        .tables()
        .document(p.org.as_str(), &id)
        .await?
        .filter(|d| d.state != "deleting")
        .ok_or_else(|| ApiError::not_found("document"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocParams {
    chunks: Option<bool>,
}

async fn get_document(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DocParams>,
) -> Result<Response, ApiError> {
    let d = find_doc(&state, &p, &id).await?;
    let mut v = doc_json(&d, true);
    if q.chunks.unwrap_or(false) {
        let chunks = state.store.tables().document_chunks(&d.id).await?;
        v["chunks"] = chunks
            .iter()
            .map(|c| {
                json!({ "id": c.id, "position": c.position, "start": c.start, "end": c.end, "tokens": c.tokens, "text": c.text })
            })
            .collect();
    }
    Ok(Json(v).into_response())
}

async fn put_document(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DocIn>,
) -> Result<Response, ApiError> {
    let old = find_doc(&state, &p, &id).await?;
    let meta = match body.metadata.clone() {
        Some(m) => metadata(Some(m))?,
        None => old.metadata.clone(),
    };
    let (title, source, content_type, content) =
        document_text(&state, &body, Some(&old.title)).await?;
    let mut doc = Document {
        title,
        source,
        content_type,
        metadata: meta,
        content_hash: knowledge::content_hash(&content),
        bytes: content.len() as i64,
        content,
        version: old.version + 1,
        state: "pending".into(),
        updated_at: now(),
        ..old.clone()
    };
    let chunks = chunked(&state, &doc).await?;
    doc.chunk_count = chunks.len() as i64;
    let a = audit(
        &p,
        "document.update",
        format!("document:{}", doc.id),
        json!({ "title": doc.title, "source": doc.source, "version": doc.version, "chunks": doc.chunk_count }),
    );
    if !state.knowledge.put_document(doc.clone(), chunks, a).await? {
        // Changed or deleted meanwhile: the caller reads it again.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "document_changed",
            "the document changed or was deleted meanwhile; read it and try again",
        ));
    }
    doc.state = "indexed".into();
    Ok(Json(doc_json(&doc, false)).into_response())
}

async fn delete_document(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let d = find_doc(&state, &p, &id).await?;
    let a = audit(
        &p,
        "document.delete",
        format!("document:{}", d.id),
        json!({ "knowledge_base_id": d.kb_id, "title": d.title }),
    );
    if !state
        .knowledge
        .delete_document(p.org.as_str(), &d.id, a)
        .await?
    {
        return Err(ApiError::not_found("document"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------- search ----------

/// A search: `query`, optionally only some knowledge bases, one document,
/// or documents with some metadata values.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchIn {
    /// Words to look for.
    pub query: String,
    /// Only these knowledge bases.
    #[serde(default)]
    pub knowledge_base_ids: Vec<String>,
    /// Only this document.
    pub document_id: Option<String>,
    /// Only documents whose metadata has these values.
    pub metadata: Option<Map<String, Value>>,
    /// How many results (default 10, at most 50).
    pub limit: Option<usize>,
    /// `auto` (default: hybrid when embeddings are configured, else
    /// lexical), `lexical`, `vector` or `hybrid`.
    pub mode: Option<String>,
}

impl SearchIn {
    /// The validated query for organization `org`.
    pub fn into_query(self, org: &str) -> Result<ChunkQuery, ApiError> {
        let text = text("query", &self.query, 2000)?;
        let limit = match self.limit {
            None => 10,
            Some(n) if (1..=50).contains(&n) => n,
            Some(_) => return Err(ApiError::invalid("limit", "1-50")),
        };
        if self.knowledge_base_ids.len() > 50 {
            return Err(ApiError::invalid(
                "knowledge_base_ids",
                "at most 50 knowledge bases",
            ));
        }
        let kbs = self
            .knowledge_base_ids
            .iter()
            .map(|k| {
                path_id("knowledge base", k).map_err(|_| {
                    ApiError::invalid("knowledge_base_ids", format!("{k:?} is not an id"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let doc = self
            .document_id
            .as_deref()
            .map(|d| {
                path_id("document", d)
                    .map_err(|_| ApiError::invalid("document_id", format!("{d:?} is not an id")))
            })
            .transpose()?;
        let meta = metadata(self.metadata)?
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
            .collect();
        Ok(ChunkQuery {
            org: org.to_string(),
            text,
            kbs,
            doc,
            meta,
            limit,
        })
    }
}

async fn search(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(body): ApiJson<SearchIn>,
) -> Result<Response, ApiError> {
    let mode = pick(&state, body.mode.as_deref())?;
    let q = body.into_query(p.org.as_str())?;
    let hits = state.knowledge.search(q, mode).await?;
    Ok(Json(json!({ "items": hits, "mode": mode })).into_response())
}

fn pick(state: &AppState, raw: Option<&str>) -> Result<knowledge::Mode, ApiError> {
    knowledge::Mode::pick(raw, state.knowledge.has_vectors())
        .map_err(|e| ApiError::invalid("mode", e))
}

async fn rebuild(State(state): State<AppState>, p: Principal) -> Result<Response, ApiError> {
    let a = audit(&p, "knowledge.rebuild", "knowledge:index".into(), json!({}));
    let r = state.knowledge.rebuild(Some(a)).await?;
    Ok(Json(json!(r)).into_response())
}

/// `GET /knowledge/status`: what the index holds (every organization's:
/// instance administrators only) and how it searches.
async fn status(State(state): State<AppState>, _p: Principal) -> Result<Response, ApiError> {
    let k = &state.knowledge;
    Ok(Json(json!({
        "lexical": { "engine": "tantivy", "entries": k.indexed() },
        "vector": {
            "embeddings": k.has_vectors(),
            "index": k.vector_index(),
            "entries": k.vectors().await?,
            // In process: how the graphs came up on start (read from
            // their snapshots, added from the rows, taken out, refused).
            "start": k.vector_start(),
        },
    }))
    .into_response())
}

// ---------- memories ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryParams {
    kind: Option<String>,
    q: Option<String>,
    mode: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn the_agent(state: &AppState, p: &Principal, raw: &str) -> Result<AgentId, ApiError> {
    let agent = agent_id(raw)?;
    if state.cadre.get_agent(&p.org, &agent).await.is_err() {
        return Err(ApiError::not_found("agent"));
    }
    Ok(agent)
}

fn kind(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    match raw {
        None => Ok(None),
        Some(k) if knowledge::KINDS.contains(&k) => Ok(Some(k.to_string())),
        Some(_) => Err(ApiError::invalid(
            "kind",
            format!("one of {}", knowledge::KINDS.join(", ")),
        )),
    }
}

async fn list_memories(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<MemoryParams>,
) -> Result<Response, ApiError> {
    let agent = the_agent(&state, &p, &id).await?;
    let kind = kind(q.kind.as_deref()).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("kind: one of {}", knowledge::KINDS.join(", ")),
        )
    })?;
    let limit = page_limit(q.limit)?;
    if let Some(words) = q.q.as_deref() {
        let mode = pick(&state, q.mode.as_deref())?;
        let hits = state
            .knowledge
            .recall(
                MemoryQuery {
                    org: p.org.to_string(),
                    agent: agent.to_string(),
                    text: text("q", words, 2000)?,
                    kinds: kind.into_iter().collect(),
                    now: now(),
                    limit,
                },
                mode,
            )
            .await?;
        return Ok(
            Json(json!({ "items": hits, "next_cursor": null, "mode": mode })).into_response(),
        );
    }
    let before = cursor(q.cursor.as_deref())?;
    let rows = state
        .store
        .tables()
        .memories_page(
            p.org.as_str(),
            agent.as_str(),
            kind.as_deref(),
            (!before.is_empty()).then_some(before.as_str()),
            now(),
            limit as i64 + 1,
        )
        .await?;
    Ok(page(
        rows.iter().map(memory_json).collect(),
        limit,
        value_id,
    ))
}

/// A memory to keep.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryIn {
    /// `episodic`, `semantic`, `procedural` or `working`.
    pub kind: String,
    /// What to remember.
    pub content: String,
    /// 0.0–1.0 (default 0.5).
    pub importance: Option<f64>,
    /// Seconds until it expires (default: 24 h for `working`, none else).
    pub ttl_seconds: Option<u64>,
    /// The task it came from.
    pub source_task: Option<String>,
}

impl MemoryIn {
    /// The memory of `agent` this asks for, validated.
    pub fn into_memory(
        self,
        org: &str,
        agent: &str,
        working_ttl_hours: u64,
        now: i64,
    ) -> Result<Memory, ApiError> {
        let kind = kind(Some(&self.kind))?.unwrap_or_default();
        let content = text("content", &self.content, 8000)?;
        let importance = match self.importance {
            None => 500,
            Some(i) if (0.0..=1.0).contains(&i) => (i * 1000.0).round() as i64,
            Some(_) => return Err(ApiError::invalid("importance", "0.0-1.0")),
        };
        let ttl_ms = match self.ttl_seconds {
            Some(0) => return Err(ApiError::invalid("ttl_seconds", "at least 1")),
            Some(s) => Some(s.min(100 * 365 * 86_400) as i64 * 1000),
            None if kind == "working" => {
                Some(working_ttl_hours.min(100 * 365 * 24) as i64 * 3_600_000)
            }
            None => None,
        };
        let source_task = self
            .source_task
            .as_deref()
            .map(|t| path_id("task", t).map_err(|_| ApiError::invalid("source_task", "a task id")))
            .transpose()?;
        Ok(Memory {
            id: uuid::Uuid::now_v7().to_string(),
            org_id: org.to_string(),
            agent_id: agent.to_string(),
            kind,
            content,
            importance,
            source_task,
            expires_at: ttl_ms.map(|t| now.saturating_add(t)),
            state: "pending".into(),
            created_at: now,
        })
    }
}

async fn add_memory(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MemoryIn>,
) -> Result<Response, ApiError> {
    let agent = the_agent(&state, &p, &id).await?;
    let m = body.into_memory(
        p.org.as_str(),
        agent.as_str(),
        state.config.knowledge.working_ttl_hours,
        now(),
    )?;
    let a = audit(
        &p,
        "memory.create",
        format!("memory:{}", m.id),
        json!({ "agent_id": agent.as_str(), "kind": m.kind }),
    );
    state.knowledge.store_memory(m.clone(), Some(a)).await?;
    Ok((StatusCode::CREATED, Json(memory_json(&m))).into_response())
}

async fn delete_memory(
    State(state): State<AppState>,
    p: Principal,
    Path((id, mid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let agent = the_agent(&state, &p, &id).await?;
    let mid = path_id("memory", &mid)?;
    let m = state
        .store
        .tables()
        .memory(p.org.as_str(), agent.as_str(), &mid)
        .await?
        .filter(|m| m.state != "deleting")
        .ok_or_else(|| ApiError::not_found("memory"))?;
    let a = audit(
        &p,
        "memory.delete",
        format!("memory:{}", m.id),
        json!({ "agent_id": agent.as_str(), "kind": m.kind }),
    );
    if state.knowledge.delete_memories(vec![m.id], Some(a)).await? == 0 {
        return Err(ApiError::not_found("memory"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The routes.
pub fn routes(r: Routes) -> Routes {
    r.add(
        Method::POST,
        "/knowledge-bases",
        Action::AgentsWrite,
        post(create_kb),
    )
    .add(
        Method::GET,
        "/knowledge-bases",
        Action::AgentsRead,
        get(list_kbs),
    )
    .add(
        Method::GET,
        "/knowledge-bases/{id}",
        Action::AgentsRead,
        get(get_kb),
    )
    .add(
        Method::PATCH,
        "/knowledge-bases/{id}",
        Action::AgentsWrite,
        patch(patch_kb),
    )
    .add(
        Method::DELETE,
        "/knowledge-bases/{id}",
        Action::AgentsWrite,
        delete(delete_kb),
    )
    .add(
        Method::POST,
        "/knowledge-bases/{id}/documents",
        Action::AgentsWrite,
        post(add_document),
    )
    .add(
        Method::GET,
        "/knowledge-bases/{id}/documents",
        Action::AgentsRead,
        get(list_documents),
    )
    .add(
        Method::GET,
        "/documents/{id}",
        Action::AgentsRead,
        get(get_document),
    )
    .add(
        Method::PUT,
        "/documents/{id}",
        Action::AgentsWrite,
        put(put_document),
    )
    .add(
        Method::DELETE,
        "/documents/{id}",
        Action::AgentsWrite,
        delete(delete_document),
    )
    .add(
        Method::POST,
        "/knowledge/search",
        Action::AgentsRead,
        post(search),
    )
    .add(
        Method::POST,
        "/knowledge/rebuild",
        Action::InstanceAdmin,
        post(rebuild),
    )
    .add(
        Method::GET,
        "/knowledge/status",
        Action::InstanceAdmin,
        get(status),
    )
    .add(
        Method::GET,
        "/agents/{id}/memories",
        Action::AgentsRead,
        get(list_memories),
    )
    .add(
        Method::POST,
        "/agents/{id}/memories",
        Action::AgentsWrite,
        post(add_memory),
    )
    .add(
        Method::DELETE,
        "/agents/{id}/memories/{memory_id}",
        Action::AgentsWrite,
        delete(delete_memory),
    )
}
