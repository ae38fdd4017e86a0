//! The documentation and the code agree: every served route is in a route
//! table of README.md or docs/, and every route those tables name is served.

use crate::common::spawn_app;
use std::collections::BTreeSet;

/// `/agents/{id}/{deploy,start}?x=` → `/agents/{}/{}`: parameters compared
/// by position only, query strings dropped.
fn normalize(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    let mut out = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '{' => {
                if depth == 0 {
                    out.push_str("{}");
                }
                depth += 1;
            }
            '}' => depth -= 1,
            _ if depth > 0 => {}
            c => out.push(c),
        }
    }
    out
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn methods(words: &str) -> Vec<String> {
    words
        .split(['/', ',', ' '])
        .map(str::trim)
        .filter(|w| METHODS.contains(w))
        .map(String::from)
        .collect()
}

/// The `(METHOD, path)` pairs of a table row: either `METHOD /path` in
/// backticks in its first cell, or a method cell then a cell of paths.
fn routes_of_row(row: &str) -> Vec<(String, String)> {
    let cells: Vec<&str> = row
        .trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, s)| s.to_string())
            .collect()
    };
    let mut out = Vec::new();
    let Some(first) = cells.first() else {
        return out;
    };
    if !methods(first).is_empty() && !first.contains('`') {
        // `| GET, POST | `/a`, `/b` | … |`
        let paths = cells.get(1).map(|c| ticked(c)).unwrap_or_default();
        for m in methods(first) {
            for p in paths.iter().filter(|p| p.starts_with('/')) {
                out.push((m.clone(), normalize(p)));
            }
        }
        return out;
    }
    // `| `GET/PATCH /a`, `POST /b` | … |`
    for segment in ticked(first) {
        if let Some((words, path)) = segment.split_once(' ')
            && path.starts_with('/')
        {
            for m in methods(words) {
                out.push((m, normalize(path)));
            }
        }
    }
    out
}

fn documented() -> BTreeSet<(String, String)> {
    let mut docs = vec![include_str!("../../README.md").to_string()];
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/docs")).expect("docs") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(std::fs::read_to_string(path).expect("read"));
        }
    }
    docs.iter()
        .flat_map(|d| d.lines())
        .filter(|l| l.starts_with('|'))
        .flat_map(routes_of_row)
        .collect()
}

#[test]
fn rows_are_read_as_a_reader_reads_them() {
    assert_eq!(
        routes_of_row("| `GET/PATCH /users/{id}`, `POST /users?x=` | admins |"),
        vec![
            ("GET".to_string(), "/users/{}".to_string()),
            ("PATCH".to_string(), "/users/{}".to_string()),
            ("POST".to_string(), "/users".to_string()),
        ]
    );
    assert_eq!(
        routes_of_row("| GET, DELETE | `/grants/{id}` | revoke |"),
        vec![
            ("GET".to_string(), "/grants/{}".to_string()),
            ("DELETE".to_string(), "/grants/{}".to_string()),
        ]
    );
    assert_eq!(
        routes_of_row("| `POST /agents/{id}/{deploy,start}` | 202 |"),
        vec![("POST".to_string(), "/agents/{}/{}".to_string())]
    );
    assert!(routes_of_row("| `cadre_agents` | gauge | GET | x |").is_empty());
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let app = spawn_app().await;
    let served: BTreeSet<(String, String)> = app
        .running
        .as_ref()
        .expect("running")
        .routes
        .iter()
        .map(|r| (r.method.to_string(), normalize(r.path)))
        .collect();
    let documented = documented();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but in no route table: {undocumented:#?}\ndocumented but not served: {unserved:#?}"
    );
}
