//! The dashboard: `dashboard/index.html`, one file with its CSS and
//! JavaScript inline, embedded in the binary at build time and served at
//! `/`. It uses only the public API and the live stream, so it works
//! air-gapped: nothing is fetched from anywhere but this server.
//!
//! Its Content-Security-Policy allows the same origin only, and of inline
//! code exactly the page's own `<script>` and `<style>` blocks, named by
//! their SHA-256 (computed once, from the embedded page): an injected
//! script or style, inline handler or `style` attribute does not run.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::sync::LazyLock;

/// The page, as built into the binary.
pub const PAGE: &str = include_str!("../../dashboard/index.html");

static POLICY: LazyLock<Option<HeaderValue>> =
    LazyLock::new(|| HeaderValue::from_str(&policy(PAGE)).ok());

/// The contents of every `<tag>…</tag>` block of `page` (tags without
/// attributes, as the dashboard writes them).
fn blocks<'a>(page: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

/// `'sha256-…'` sources for each `<tag>` block of `page`.
fn hashes(page: &str, tag: &str) -> String {
    let sources: Vec<String> = blocks(page, tag)
        .into_iter()
        .map(|b| {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b.as_bytes());
            let b64 = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
            format!("'sha256-{b64}'")
        })
        .collect();
    if sources.is_empty() {
        "'none'".into()
    } else {
        sources.join(" ")
    }
}

/// The Content-Security-Policy for `page`.
pub fn policy(page: &str) -> String {
    format!(
        "default-src 'self'; script-src {}; style-src {}; img-src 'self' data: blob:; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'",
        hashes(page, "script"),
        hashes(page, "style"),
    )
}

/// `GET /`: the dashboard.
pub async fn index() -> Response {
    let mut resp = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response();
    let h = resp.headers_mut();
    if let Some(p) = POLICY.as_ref() {
        h.insert(header::CONTENT_SECURITY_POLICY, p.clone());
    }
    // nosniff, frame and referrer headers come from the guard, as on every response.
    // A new binary may bring a new page: revalidate rather than cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_each_inline_block_and_nothing_else() {
        let page = "<style>a{}</style><script>x()</script><script>y()</script>";
        let p = policy(page);
        assert_eq!(p.matches("'sha256-").count(), 3, "{p}");
        assert!(!p.contains("unsafe-inline"), "{p}");
        assert!(policy("<p>no code</p>").contains("script-src 'none'"));
        // The shipped page has one script and one style block, both hashed.
        assert_eq!(blocks(PAGE, "script").len(), 1);
        assert_eq!(blocks(PAGE, "style").len(), 1);
    }

    #[test]
    fn the_page_fetches_nothing_from_elsewhere() {
        // The SVG namespace is a name the charts are created in, never
        // fetched; any other URL would be.
        let page = PAGE.replace("\"http://www.w3.org/2000/svg\"", "\"svg-namespace\"");
        for needle in ["http://", "https://", "//cdn", "@import", "src=\""] {
            assert!(!page.contains(needle), "the dashboard names {needle}");
        }
    }
}
