//! Knowledge bases and memories through the API, on the real store and
//! the real index in the app's data directory: documents, search and its
//! filters, isolation, updates and deletes in both the rows and the index,
//! restarts (resumption, rebuild), memories with TTL, and an agent's
//! runtime searching and remembering through its tools.

use crate::common::{TestApp, add_user, eventually, spawn_app_with, test_backend, unavailable};
use crate::tasks::{FakeLlm, answer, app_with_llm, give, running_agent, tool_call, wait_task};
use cadre::store::backend::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn kb(app: &TestApp, token: Option<&str>, name: &str) -> String {
    let (s, v) = app
        .call_as(
            Some(token.unwrap_or(&app.token)),
            Method::POST,
            "/api/v1/knowledge-bases",
            Some(json!({ "name": name, "description": "d" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_str().expect("id").to_string()
}

async fn doc(app: &TestApp, kb: &str, body: Value) -> Value {
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/knowledge-bases/{kb}/documents"),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

async fn search(app: &TestApp, token: &str, body: Value) -> Vec<Value> {
    let want = body["mode"].as_str().unwrap_or("lexical").to_string();
    let (s, v) = app
        .call_as(
            Some(token),
            Method::POST,
            "/api/v1/knowledge/search",
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["mode"], want.as_str());
    v["items"].as_array().expect("items").clone()
}

/// A local server speaking the OpenAI embeddings protocol (no provider can
/// be reached from here) with deterministic vectors: each word, lower-cased
/// and with a plural `s` cut, adds ±1 to one of 256 dimensions picked by
/// its hash. Answers its URL and the number of requests it served.
async fn embeddings_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let app = axum::Router::new().route(
        "/v1/embeddings",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                let inputs: Vec<String> = body["input"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                let data: Vec<Value> = inputs
                    .iter()
                    .enumerate()
                    .map(|(i, t)| json!({ "object": "embedding", "index": i, "embedding": embed(t) }))
                    .collect();
                axum::Json(json!({ "object": "list", "data": data, "model": body["model"] }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, served)
}

/// The stand-in model's synonyms (the relevance set's `concepts`: a word
/// and the passage word it means).
fn concepts() -> &'static std::collections::HashMap<String, String> {
    static C: std::sync::OnceLock<std::collections::HashMap<String, String>> =
        std::sync::OnceLock::new();
    C.get_or_init(|| {
        let set: Value =
            serde_json::from_str(include_str!("../data/knowledge_relevance.json")).expect("set");
        serde_json::from_value(set["concepts"].clone()).expect("concepts")
    })
}

/// The local embeddings server's deterministic vectors: hashed words
/// (lower case, a plural `s` dropped, stop words out), each synonym of the
/// relevance set's `concepts` hashed as the word it means.
fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; 256];
    for w in text.split(|c: char| !c.is_alphanumeric()) {
        let w = w.to_lowercase();
        let w = w.strip_suffix('s').filter(|s| s.len() > 3).unwrap_or(&w);
        let w = concepts().get(w).map(String::as_str).unwrap_or(w);
        if w.len() < 3
            || [
                "the", "and", "for", "how", "what", "when", "who", "are", "can", "with",
            ]
            .contains(&w)
        {
            continue;
        }
        let h = w.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        v[(h % 256) as usize] += if h & 256 == 0 { 1.0 } else { -1.0 };
    }
    v
}

fn titles(hits: &[Value]) -> Vec<String> {
    hits.iter()
        .map(|h| h["title"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Serves `body` as `content_type` at `/page` on 127.0.0.1.
async fn page_server(body: &'static str, content_type: &'static str) -> String {
    let app = axum::Router::new().route(
        "/page",
        axum::routing::get(move || async move {
            ([(axum::http::header::CONTENT_TYPE, content_type)], body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/page", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn documents_are_chunked_searched_filtered_updated_and_deleted_per_organization() {
    let mut app = spawn_app_with(|c| c.knowledge.fetch_hosts = vec!["127.0.0.1".into()]).await;
    let handbook = kb(&app, None, "handbook").await;
    let faq = kb(&app, None, "faq").await;

    // A Markdown document with several sections becomes several chunks.
    let mut long = String::from("# Travel policy\n\n");
    for i in 0..30 {
        long.push_str(&format!(
            "## Section {i}\n\nTravellers book trains for trips under four hours; section {i} covers \
             the approval of bookings, receipts, per diem rates and what the finance team checks.\n\n"
        ));
    }
    long.push_str("## Lodging\n\nHotel nights are reimbursed up to 180 euros in capital cities.\n");
    let travel = doc(
        &app,
        &handbook,
        json!({ "title": "Travel", "content": long, "content_type": "text/markdown", "metadata": { "team": "finance" } }),
    )
    .await;
    assert!(
        travel["chunk_count"].as_i64().expect("chunks") > 2,
        "{travel}"
    );
    assert_eq!(travel["state"], "indexed");
    let refunds = doc(
        &app,
        &faq,
        json!({ "title": "Refunds", "content": "Customers get a refund within 30 days of delivery.", "metadata": { "team": "support" } }),
    )
    .await;
    // HTML by URL, from an allowed host.
    let url = page_server(
        "<html><body><h1>Holidays</h1><p>The office closes between Christmas and New Year.</p></body></html>",
        "text/html; charset=utf-8",
    )
    .await;
    let holidays = doc(
        &app,
        &faq,
        json!({ "url": url, "metadata": { "team": "support" } }),
    )
    .await;
    assert_eq!(holidays["content_type"], "text/html");
    assert_eq!(holidays["source"], url);

    let token = app.token.clone();
    let hits = search(
        &app,
        &token,
        json!({ "query": "hotel night reimbursed capital" }),
    )
    .await;
    assert_eq!(hits[0]["document_id"], travel["id"], "{hits:?}");
    assert!(
        hits[0]["text"]
            .as_str()
            .expect("text")
            .contains("180 euros")
    );
    assert!(hits[0]["score"].as_f64().expect("score") > 0.0);
    let hits = search(&app, &token, json!({ "query": "refund delivery" })).await;
    assert_eq!(titles(&hits)[0], "Refunds");
    let hits = search(&app, &token, json!({ "query": "office closes christmas" })).await;
    assert_eq!(hits[0]["document_id"], holidays["id"]);
    assert_eq!(hits[0]["source"], url);

    // Filters: knowledge base, document, metadata.
    let only_handbook = search(
        &app,
        &token,
        json!({ "query": "refund delivery receipts", "knowledge_base_ids": [handbook] }),
    )
    .await;
    assert!(
        only_handbook
            .iter()
            .all(|h| h["knowledge_base_id"] == handbook.as_str())
    );
    assert!(!only_handbook.is_empty());
    let one_doc = search(
        &app,
        &token,
        json!({ "query": "closes refund", "document_id": refunds["id"] }),
    )
    .await;
    assert_eq!(titles(&one_doc), vec!["Refunds"]);
    let support = search(
        &app,
        &token,
        json!({ "query": "refund receipts office", "metadata": { "team": "support" } }),
    )
    .await;
    assert!(!support.is_empty());
    assert!(
        support
            .iter()
            .all(|h| h["knowledge_base_id"] == faq.as_str()),
        "{support:?}"
    );

    // Another organization sees none of it.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/orgs",
            Some(json!({ "name": "Other", "slug": "other", "plan": "team",
                          "owner": { "email": "o@other.test", "password": "other-password-1", "name": "O" } })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, other, _) = app.sign_in("o@other.test", "other-password-1").await;
    assert!(
        search(
            &app,
            &other,
            json!({ "query": "refund delivery hotel christmas" })
        )
        .await
        .is_empty()
    );
    assert!(
        search(
            &app,
            &other,
            json!({ "query": "refund", "knowledge_base_ids": [faq] })
        )
        .await
        .is_empty()
    );
    for path in [
        format!("/api/v1/knowledge-bases/{faq}"),
        format!("/api/v1/documents/{}", refunds["id"].as_str().expect("id")),
    ] {
        let (s, _) = app.call_as(Some(&other), Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
    let (s, _) = app
        .call_as(
            Some(&other),
            Method::DELETE,
            &format!("/api/v1/documents/{}", refunds["id"].as_str().expect("id")),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A viewer reads but does not write.
    let (_, viewer) = add_user(&app, "v@example.test", "viewer").await;
    assert!(
        !search(&app, &viewer, json!({ "query": "refund" }))
            .await
            .is_empty()
    );
    let (s, _) = app
        .call_as(
            Some(&viewer),
            Method::POST,
            "/api/v1/knowledge-bases",
            Some(json!({ "name": "x" })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Bad input changes nothing.
    let docs_path = format!("/api/v1/knowledge-bases/{faq}/documents");
    for (body, status, code) in [
        (
            json!({ "title": "x" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({ "title": "x", "content": "  " }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({ "title": "x", "content": "a", "content_type": "image/png" }),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
        ),
        (
            json!({ "title": "x", "content": "a", "url": url }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({ "title": "x", "content": "a", "metadata": { "Team": "x" } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({ "title": "x", "content": "a", "metadata": { "n": 3 } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({ "url": "http://example.com/x" }),
            StatusCode::FORBIDDEN,
            "host_not_allowed",
        ),
        (
            json!({ "url": "ftp://127.0.0.1/x" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
    ] {
        let (s, v) = app.call(Method::POST, &docs_path, Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {v}");
        assert_eq!(v["code"], code, "{body}: {v}");
    }
    let (_, listed) = app.call(Method::GET, &docs_path, None).await;
    assert_eq!(
        listed["items"].as_array().expect("items").len(),
        2,
        "{listed}"
    );
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/knowledge-bases",
            Some(json!({ "name": "faq" })),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("name_taken"))
    );
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/knowledge/search",
            Some(json!({ "query": "x", "limit": 500 })),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // An update re-chunks and re-indexes: the old text is gone.
    let rid = refunds["id"].as_str().expect("id").to_string();
    let (s, v) = app
        .call(
            Method::PUT,
            &format!("/api/v1/documents/{rid}"),
            Some(json!({ "content": "Store credit is offered for returns after sixty days." })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 2);
    assert_eq!(v["title"], "Refunds");
    assert!(
        search(
            &app,
            &token,
            json!({ "query": "customers delivery", "document_id": rid })
        )
        .await
        .is_empty()
    );
    let hits = search(&app, &token, json!({ "query": "store credit sixty days" })).await;
    assert_eq!(hits[0]["document_id"], rid.as_str());
    let (_, full) = app
        .call(
            Method::GET,
            &format!("/api/v1/documents/{rid}?chunks=true"),
            None,
        )
        .await;
    assert_eq!(
        full["chunks"].as_array().expect("chunks").len(),
        1,
        "{full}"
    );
    assert!(
        full["content"]
            .as_str()
            .expect("content")
            .contains("sixty days")
    );

    // A restart keeps the index; a document the last run was deleting
    // when it stopped (rows marked, index not yet changed) is finished.
    app.stop().await;
    {
        let mut db = app.direct().await;
        db.execute(&format!(
            "UPDATE kb_documents SET state = 'deleting' WHERE id = '{}'",
            holidays["id"].as_str().expect("id")
        ))
        .await
        .expect("mark deleting");
    }
    app.start().await;
    let token = app.token.clone();
    assert!(
        search(&app, &token, json!({ "query": "office closes christmas" }))
            .await
            .is_empty()
    );
    assert_eq!(
        titles(&search(&app, &token, json!({ "query": "hotel capital" })).await)[0],
        "Travel"
    );
    let (s, _) = app
        .call(
            Method::GET,
            &format!("/api/v1/documents/{}", holidays["id"].as_str().expect("id")),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A lost index is rebuilt from the database on start.
    app.stop().await;
    std::fs::remove_dir_all(app.config.data_dir.join("knowledge").join("index")).expect("rm index");
    app.start().await;
    let token = app.token.clone();
    assert_eq!(
        titles(&search(&app, &token, json!({ "query": "hotel capital" })).await)[0],
        "Travel"
    );
    assert_eq!(
        titles(&search(&app, &token, json!({ "query": "store credit" })).await)[0],
        "Refunds"
    );
    let (s, r) = app
        .call(Method::POST, "/api/v1/knowledge/rebuild", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["documents"], 2, "{r}");

    // Deleting a document, then a knowledge base, removes rows and index entries.
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/documents/{rid}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(
        search(&app, &token, json!({ "query": "store credit sixty" }))
            .await
            .is_empty()
    );
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/documents/{rid}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/knowledge-bases/{handbook}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(
        search(&app, &token, json!({ "query": "hotel capital travellers" }))
            .await
            .is_empty()
    );
    let chunks = app
        .store()
        .tables()
        .document_chunks(travel["id"].as_str().expect("id"))
        .await
        .expect("chunks");
    assert!(chunks.is_empty(), "{chunks:?}");
    let (_, audit) = app.call(Method::GET, "/api/v1/audit?limit=200", None).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    for a in [
        "knowledge_base.create",
        "document.create",
        "document.update",
        "document.delete",
        "knowledge_base.delete",
        "knowledge.rebuild",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
}

/// An app whose embeddings come from the local server (its request count
/// beside it), with `tweak` applied to its configuration too.
async fn app_with_vectors(
    tweak: impl FnOnce(&mut cadre::config::Config),
) -> (TestApp, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (url, served) = embeddings_server().await;
    let app = spawn_app_with(move |c| {
        c.knowledge.embeddings.base_url = url;
        c.knowledge.embeddings.model = "hashed-words".into();
        tweak(c);
    })
    .await;
    (app, served)
}

/// Deletes document `d` (204).
async fn delete_doc(app: &TestApp, d: &Value) {
    let path = format!("/api/v1/documents/{}", d["id"].as_str().expect("id"));
    let (s, v) = app.call(Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
}

/// A knowledge base with two documents, kayaks and tents.
async fn kayaks_and_tents(app: &TestApp) -> (String, Value, Value) {
    let base = kb(app, None, "notes").await;
    let a = doc(
        app,
        &base,
        json!({ "title": "Kayaks", "content": "Kayak rentals need a deposit." }),
    )
    .await;
    let b = doc(
        app,
        &base,
        json!({ "title": "Tents", "content": "Tent poles are repaired in two weeks." }),
    )
    .await;
    (base, a, b)
}

#[tokio::test]
async fn recall_at_5_on_the_labelled_set_lexical_at_least_0_8_and_vector_and_hybrid_reported() {
    let (app, _) = app_with_vectors(|_| {}).await;
    let set: Value =
        serde_json::from_str(include_str!("../data/knowledge_relevance.json")).expect("set");
    let base = kb(&app, None, "handbook").await;
    let mut ids = std::collections::HashMap::new();
    for d in set["documents"].as_array().expect("documents") {
        let v = doc(
            &app,
            &base,
            json!({ "title": d["title"], "content": d["content"], "content_type": "text/markdown" }),
        )
        .await;
        ids.insert(
            d["title"].as_str().expect("title").to_string(),
            v["id"].clone(),
        );
    }
    let questions = set["questions"].as_array().expect("questions");
    let paraphrases = questions.iter().filter(|q| q["paraphrase"] == true).count();
    let token = app.token.clone();
    let mut recall = std::collections::BTreeMap::new();
    let mut of_paraphrases = std::collections::BTreeMap::new();
    for mode in ["lexical", "vector", "hybrid"] {
        let mut found = 0;
        let mut found_paraphrased = 0;
        for q in questions {
            let hits = search(
                &app,
                &token,
                json!({ "query": q["q"], "limit": 5, "mode": mode }),
            )
            .await;
            let want = &ids[q["doc"].as_str().expect("doc")];
            let phrase = q["phrase"].as_str().expect("phrase");
            if hits.iter().any(|h| {
                h["document_id"] == *want && h["text"].as_str().is_some_and(|t| t.contains(phrase))
            }) {
                found += 1;
                found_paraphrased += usize::from(q["paraphrase"] == true);
            } else {
                eprintln!("{mode} missed: {} → {:?}", q["q"], titles(&hits));
            }
        }
        let r = found as f64 / questions.len() as f64;
        let p = found_paraphrased as f64 / paraphrases as f64;
        eprintln!(
            "{mode} recall@5 = {r:.3} ({found}/{}); on the {paraphrases} paraphrases {p:.3}",
            questions.len()
        );
        recall.insert(mode, r);
        of_paraphrases.insert(mode, p);
    }
    assert!(recall["lexical"] >= 0.8, "lexical recall@5 {recall:?}");
    // The hashed-word vectors are a stand-in for a model: reported, and
    // held to the same bar so that a broken vector path or fusion shows.
    assert!(recall["vector"] >= 0.8, "vector recall@5 {recall:?}");
    assert!(recall["hybrid"] >= 0.8, "hybrid recall@5 {recall:?}");
    // The paraphrases share few words with their passage: the stand-in
    // model's synonyms answer more of them than BM25 does, and fusing
    // both loses none of that over lexical search alone.
    assert!(
        of_paraphrases["vector"] > of_paraphrases["lexical"],
        "paraphrases {of_paraphrases:?}"
    );
    assert!(
        of_paraphrases["hybrid"] > of_paraphrases["lexical"]
            && recall["hybrid"] >= recall["lexical"],
        "hybrid {recall:?}, paraphrases {of_paraphrases:?}"
    );
}

#[tokio::test]
async fn vector_search_is_per_organization_follows_deletes_and_is_rebuilt_on_start() {
    let (mut app, served) = app_with_vectors(|_| {}).await;
    let (_, a, b) = kayaks_and_tents(&app).await;
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    let token = app.token.clone();
    // Where the vectors are searched: pgvector on PostgreSQL (CI builds
    // the extension; `auto` falls back to the graphs in process without
    // it), in process on SQLite and MariaDB.
    let (s, st) = app
        .call(Method::GET, "/api/v1/knowledge/status", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{st}");
    let index = st["vector"]["index"].as_str().unwrap_or("").to_string();
    if test_backend() == Backend::Postgres && index != "pgvector" {
        unavailable("the pgvector extension", &st);
    }
    if test_backend() != Backend::Postgres {
        assert_eq!(index, "hnsw", "{st}");
    }
    assert_eq!(st["vector"]["entries"], 2, "{st}");
    assert_eq!(st["vector"]["embeddings"], true, "{st}");
    // `auto` is hybrid once embeddings are configured.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/knowledge/search",
            Some(json!({ "query": "kayak deposit" })),
        )
        .await;
    assert_eq!(
        (s, v["mode"].as_str()),
        (StatusCode::OK, Some("hybrid")),
        "{v}"
    );
    assert_eq!(v["items"][0]["document_id"], a["id"]);
    let near = search(
        &app,
        &token,
        json!({ "query": "kayak deposit", "mode": "vector" }),
    )
    .await;
    assert_eq!(near[0]["document_id"], a["id"], "{near:?}");
    assert!(near[0]["score"].as_f64().expect("score") > 0.5);

    // Another organization's vector search walks none of these.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/orgs",
            Some(json!({ "name": "Other", "slug": "other", "plan": "team",
                          "owner": { "email": "o@other.test", "password": "other-password-1", "name": "O" } })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, other, _) = app.sign_in("o@other.test", "other-password-1").await;
    assert!(
        search(
            &app,
            &other,
            json!({ "query": "kayak deposit", "mode": "vector" })
        )
        .await
        .is_empty()
    );

    // Deleted: gone from the vector search too.
    delete_doc(&app, &a).await;
    let near = search(
        &app,
        &token,
        json!({ "query": "kayak deposit", "mode": "vector" }),
    )
    .await;
    assert!(near.iter().all(|h| h["document_id"] != a["id"]), "{near:?}");

    // Memories recalled by vector; deleted ones are not.
    let agent = app
        .create_id(json!({ "name": "m", "role": "r", "model": "m" }))
        .await;
    let (_, m) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/memories"),
            Some(json!({ "kind": "semantic", "content": "Kayak customers prefer mornings" })),
        )
        .await;
    let (_, hits) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/memories?q=kayak%20mornings&mode=vector"),
            None,
        )
        .await;
    assert_eq!(hits["items"][0]["id"], m["id"], "{hits}");

    // The index is rebuilt from the stored vectors on start: the graphs
    // in process; pgvector's column where it is empty (here: all of it,
    // as after an import or a crash between a write and its fill).
    if index == "pgvector" {
        app.direct()
            .await
            .execute("UPDATE kb_vectors SET embedding = NULL, dims = NULL")
            .await
            .expect("empty the embedding column");
    }
    app.restart().await;
    let (_, st) = app
        .call(Method::GET, "/api/v1/knowledge/status", None)
        .await;
    // One chunk and one memory.
    assert_eq!(st["vector"]["entries"], 2, "{st}");
    let near = search(
        &app,
        &token,
        json!({ "query": "tent poles repaired", "mode": "vector" }),
    )
    .await;
    assert_eq!(near[0]["document_id"], b["id"], "{near:?}");
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!(
                "/api/v1/agents/{agent}/memories/{}",
                m["id"].as_str().expect("id")
            ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, hits) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/memories?q=kayak%20mornings&mode=vector"),
            None,
        )
        .await;
    assert_eq!(hits["items"], json!([]), "{hits}");
}

/// The in-process index came up as `start` says (entries read from
/// snapshots, added from rows, taken out, snapshots refused) and holds
/// `entries`; a vector search for `query` finds `first` first.
async fn came_up(app: &TestApp, start: [u64; 4], entries: u64, query: &str, first: &Value) {
    let (s, st) = app
        .call(Method::GET, "/api/v1/knowledge/status", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{st}");
    assert_eq!(st["vector"]["index"], "hnsw", "{st}");
    let [snapshot, database, removed, rejected] = start;
    assert_eq!(
        st["vector"]["start"],
        json!({ "snapshot": snapshot, "database": database, "removed": removed, "rejected": rejected }),
        "{st}"
    );
    assert_eq!(st["vector"]["entries"], entries, "{st}");
    let near = search(app, &app.token, json!({ "query": query, "mode": "vector" })).await;
    assert_eq!(near[0]["document_id"], *first, "{near:?}");
}

/// Copies every file of `from` into `to` (both flat directories).
fn copy_files(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("list") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[tokio::test]
async fn in_process_vector_graphs_are_kept_on_disk_and_agree_with_the_rows_after_a_crash() {
    // In process on every backend, PostgreSQL too.
    let (mut app, _) =
        app_with_vectors(|c| c.knowledge.vector_index = cadre::knowledge::VectorChoice::Hnsw).await;
    let (base, a, b) = kayaks_and_tents(&app).await;
    let tents = "tent poles repaired";
    came_up(&app, [0, 0, 0, 0], 2, tents, &b["id"]).await;

    // A clean stop writes the graph; the next start reads it and adds
    // nothing from the rows.
    let dir = app.config.data_dir.join("knowledge").join("vectors");
    app.restart().await;
    came_up(&app, [2, 0, 0, 0], 2, tents, &b["id"]).await;

    // A crash: the rows move on (one document added, one deleted) while
    // the snapshot on disk stays as it was.
    let kept = tempfile::tempdir().expect("tempdir");
    copy_files(&dir, kept.path());
    let c = doc(
        &app,
        &base,
        json!({ "title": "Canoes", "content": "Canoe paddles hang in the boathouse." }),
    )
    .await;
    delete_doc(&app, &a).await;
    app.stop().await;
    std::fs::remove_dir_all(&dir).expect("rm snapshots");
    copy_files(kept.path(), &dir);
    app.start().await;
    let canoes = "canoe paddles boathouse";
    came_up(&app, [2, 1, 1, 0], 2, canoes, &c["id"]).await;
    let near = search(
        &app,
        &app.token,
        json!({ "query": "kayak deposit", "mode": "vector" }),
    )
    .await;
    assert!(near.iter().all(|h| h["document_id"] != a["id"]), "{near:?}");

    // A damaged snapshot (cut short on disk) is refused and the graph is
    // built from the rows; the server starts and finds the same.
    app.stop().await;
    let mut cut = 0;
    for e in std::fs::read_dir(&dir).expect("list") {
        let p = e.expect("entry").path();
        if p.to_string_lossy().ends_with(".hnsw.graph") {
            let bytes = std::fs::read(&p).expect("read");
            std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
            cut += 1;
        }
    }
    assert_eq!(cut, 1, "one organization, one graph");
    app.start().await;
    came_up(&app, [0, 2, 0, 1], 2, canoes, &c["id"]).await;
}

#[tokio::test]
async fn memories_expire_are_purged_stay_with_their_agent_and_are_deleted_from_the_index() {
    let app = spawn_app_with(|c| c.knowledge.purge_interval_seconds = 1).await;
    let a = app
        .create_id(json!({ "name": "alice", "role": "r", "model": "m" }))
        .await;
    let b = app
        .create_id(json!({ "name": "bob", "role": "r", "model": "m" }))
        .await;
    let store = |agent: &str, body: Value| {
        let path = format!("/api/v1/agents/{agent}/memories");
        let app = &app;
        async move {
            let (s, v) = app.call(Method::POST, &path, Some(body)).await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            v
        }
    };
    let fact = store(&a, json!({ "kind": "semantic", "content": "The customer Acme prefers invoices in euros", "importance": 0.9 })).await;
    let how = store(
        &a,
        json!({ "kind": "procedural", "content": "To refund Acme, open the billing portal first" }),
    )
    .await;
    let soon = store(&a, json!({ "kind": "episodic", "content": "Acme called about a late invoice", "ttl_seconds": 1 })).await;
    let work = store(
        &a,
        json!({ "kind": "working", "content": "Acme draft reply in progress" }),
    )
    .await;
    store(
        &b,
        json!({ "kind": "semantic", "content": "Acme is bob's secret customer" }),
    )
    .await;
    assert_eq!(fact["importance"], 0.9);
    assert!(fact["expires_at"].is_null());
    // A working memory keeps 24 hours by default.
    let expires = time::OffsetDateTime::parse(
        work["expires_at"].as_str().expect("expires"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    let hours = (expires - time::OffsetDateTime::now_utc()).whole_minutes() as f64 / 60.0;
    assert!((23.9..=24.0).contains(&hours), "{hours}");

    let recall = |agent: String, q: &'static str| {
        let app = &app;
        async move {
            let (s, v) = app
                .call(
                    Method::GET,
                    &format!("/api/v1/agents/{agent}/memories?q={q}"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v["items"].as_array().expect("items").clone()
        }
    };
    let hits = recall(a.clone(), "acme%20invoices%20euros").await;
    assert_eq!(hits[0]["id"], fact["id"], "{hits:?}");
    assert!(
        hits.iter()
            .all(|h| !h["content"].as_str().unwrap_or("").contains("bob"))
    );
    let (_, kinds) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{a}/memories?kind=procedural"),
            None,
        )
        .await;
    assert_eq!(kinds["items"].as_array().expect("items").len(), 1);
    assert_eq!(kinds["items"][0]["id"], how["id"]);
    let (s, _) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{a}/memories?kind=dream"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    for bad in [
        json!({ "kind": "dream", "content": "x" }),
        json!({ "kind": "semantic", "content": "" }),
        json!({ "kind": "semantic", "content": "x", "importance": 2 }),
        json!({ "kind": "semantic", "content": "x", "ttl_seconds": 0 }),
    ] {
        let (s, v) = app
            .call(
                Method::POST,
                &format!("/api/v1/agents/{a}/memories"),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {v}");
    }

    // Expired: never returned (search or list), then purged from the rows.
    let sid = soon["id"].as_str().expect("id").to_string();
    eventually("the 1 s memory expires", || {
        let recall = recall(a.clone(), "late%20invoice%20called");
        let sid = sid.clone();
        async move { recall.await.iter().all(|h| h["id"] != sid.as_str()) }
    })
    .await;
    let (_, list) = app
        .call(Method::GET, &format!("/api/v1/agents/{a}/memories"), None)
        .await;
    assert!(
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|m| m["id"] != sid.as_str())
    );
    assert_eq!(list["items"].as_array().expect("items").len(), 3, "{list}");
    let org = crate::common::org_id(&app).await;
    eventually("the purge job deletes the expired memory", || {
        let (org, a, sid) = (org.clone(), a.clone(), sid.clone());
        let app = &app;
        async move {
            app.store()
                .tables()
                .memory(&org, &a, &sid)
                .await
                .expect("read")
                .is_none()
        }
    })
    .await;

    // Deleting removes it from the rows and the index; bob cannot delete alice's.
    let fid = fact["id"].as_str().expect("id");
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/agents/{b}/memories/{fid}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/agents/{a}/memories/{fid}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(recall(a.clone(), "euros").await.is_empty());
    assert!(
        app.store()
            .tables()
            .memory(&org, &a, fid)
            .await
            .expect("read")
            .is_none()
    );
}

#[tokio::test]
async fn an_agent_searches_only_its_knowledge_bases_and_remembers_across_tasks() {
    let (llm, url) = FakeLlm::start(vec![
        // Task 1: search, remember, finish.
        tool_call(
            "c1",
            "knowledge__search",
            json!({ "query": "refund window days" }),
        ),
        tool_call(
            "c2",
            "memory__store",
            json!({ "kind": "semantic", "content": "Refund window for Acme orders is 30 days" }),
        ),
        tool_call("c3", "task__finish", json!({ "result": "done" })),
        // Task 2: answers from what it recalled.
        answer("30 days"),
        tool_call("c4", "task__finish", json!({ "result": "30 days" })),
    ])
    .await;
    let app = app_with_llm(&url, |_| {}).await;
    let mine = kb(&app, None, "policies").await;
    let secret = kb(&app, None, "board").await;
    doc(
        &app,
        &mine,
        json!({ "title": "Refunds", "content": "The refund window is 30 days from delivery." }),
    )
    .await;
    doc(&app, &secret, json!({ "title": "Board", "content": "Refund window secret: the board extends it to 90 days." })).await;
    // A knowledge base of another organization cannot be named.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": "x", "knowledge": { "bases": ["0190d1a2-0000-7000-8000-000000000000"] } })),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let agent = running_agent(
        &app,
        "helper",
        json!({ "knowledge": { "bases": [mine], "recall_memories": 3 } }),
    )
    .await;
    let view = app.get(&agent).await;
    assert_eq!(view["knowledge"]["bases"], json!([mine]));

    let t1 = give(
        &app,
        &agent,
        json!({ "instruction": "Find the refund window" }),
    )
    .await;
    wait_task(&app, &t1, "succeeded").await;
    // The search result the model was given: its base only.
    let seen = llm.requests();
    let given = serde_json::to_string(&seen[1].1["messages"]).expect("json");
    assert!(given.contains("30 days from delivery"), "{given}");
    assert!(!given.contains("90 days"), "{given}");
    let (_, mems) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/memories"),
            None,
        )
        .await;
    let mems = mems["items"].as_array().expect("items").clone();
    assert_eq!(mems.len(), 1, "{mems:?}");
    assert_eq!(mems[0]["kind"], "semantic");
    assert_eq!(mems[0]["source_task"], t1.as_str());

    // The next task's context holds the memory, recalled by its instruction.
    let t2 = give(
        &app,
        &agent,
        json!({ "instruction": "How long is the refund window for Acme?" }),
    )
    .await;
    wait_task(&app, &t2, "succeeded").await;
    let seen = llm.requests();
    let first = serde_json::to_string(&seen[3].1["messages"]).expect("json");
    assert!(first.contains("What you remember"), "{first}");
    assert!(
        first.contains("Refund window for Acme orders is 30 days"),
        "{first}"
    );
}

/// A minimal one-page PDF whose text layer holds `lines` (Helvetica, one
/// line each), written object by object with a correct cross-reference
/// table, as any PDF writer would.
fn pdf(lines: &[&str]) -> Vec<u8> {
    let mut content = String::from("BT /F1 12 Tf 72 720 Td 14 TL\n");
    for l in lines {
        content.push_str(&format!("({l}) Tj T*\n"));
    }
    content.push_str("ET\n");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
         /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>"
            .to_string(),
        format!(
            "<< /Length {} >>\nstream\n{content}endstream",
            content.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_string(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

#[tokio::test]
async fn pdf_documents_are_read_by_upload_and_by_url_and_bad_ones_change_nothing() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let app = spawn_app_with(|c| c.knowledge.fetch_hosts = vec!["127.0.0.1".into()]).await;
    let base = kb(&app, None, "manuals").await;
    let file = pdf(&[
        "Warehouse forklift manual",
        "Charge the forklift battery every night before the morning shift.",
    ]);
    let up = doc(
        &app,
        &base,
        json!({ "title": "Forklift", "content_base64": b64(&file), "content_type": "application/pdf" }),
    )
    .await;
    assert_eq!(up["content_type"], "application/pdf", "{up}");
    let token = app.token.clone();
    let hits = search(&app, &token, json!({ "query": "forklift battery night" })).await;
    assert_eq!(hits[0]["document_id"], up["id"], "{hits:?}");
    assert!(
        hits[0]["text"]
            .as_str()
            .expect("text")
            .contains("morning shift"),
        "{hits:?}"
    );

    // By URL: the server's application/pdf is read the same way.
    let served: &'static str =
        String::leak(String::from_utf8(pdf(&["Loading dock opens at six."])).expect("ascii pdf"));
    let url = page_server(served, "application/pdf").await;
    let fetched = doc(&app, &base, json!({ "url": url })).await;
    assert_eq!(fetched["content_type"], "application/pdf", "{fetched}");
    let hits = search(&app, &token, json!({ "query": "loading dock six" })).await;
    assert_eq!(hits[0]["document_id"], fetched["id"], "{hits:?}");

    // Not a PDF, a broken one, bad base64, two bodies: 422, nothing added.
    let mut broken = file.clone();
    broken.truncate(file.len() / 2);
    for (body, field) in [
        (
            json!({ "title": "x", "content_base64": b64(b"plain words"), "content_type": "application/pdf" }),
            "content",
        ),
        (
            json!({ "title": "x", "content_base64": b64(&broken), "content_type": "application/pdf" }),
            "content",
        ),
        (
            json!({ "title": "x", "content_base64": "%%%", "content_type": "application/pdf" }),
            "content_base64",
        ),
        (
            json!({ "title": "x", "content": "a", "content_base64": b64(b"a") }),
            "content",
        ),
    ] {
        let (s, v) = app
            .call(
                Method::POST,
                &format!("/api/v1/knowledge-bases/{base}/documents"),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["field"], field, "{v}");
    }
    let (_, list) = app
        .call(
            Method::GET,
            &format!("/api/v1/knowledge-bases/{base}/documents"),
            None,
        )
        .await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");
}
