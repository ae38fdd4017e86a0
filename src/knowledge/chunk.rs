//! From an upload to chunks: the text of a document (plain text, Markdown,
//! HTML turned into Markdown-like text, or the text of a PDF), split along its structure
//! (headings, paragraphs, sentences) into pieces of at most `chunk_tokens`
//! cl100k tokens that overlap by `overlap_tokens` (text-splitter).

use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};
use tiktoken_rs::CoreBPE;

/// The content types a document may have (what an upload declares, or
/// what a fetched URL answered).
pub const CONTENT_TYPES: [&str; 4] = [
    "text/plain",
    "text/markdown",
    "text/html",
    "application/pdf",
];

/// A content type header's media type, lower case, if it is one we read.
pub fn media_type(header: &str) -> Option<&'static str> {
    let t = header
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match t.as_str() {
        "text/plain" | "" => Some("text/plain"),
        "text/markdown" | "text/x-markdown" => Some("text/markdown"),
        "text/html" | "application/xhtml+xml" => Some("text/html"),
        "application/pdf" => Some("application/pdf"),
        _ => None,
    }
}

/// The text a document of `content_type` holds.
pub fn extract(content_type: &str, raw: &[u8]) -> Result<String, String> {
    match content_type {
        "text/html" => {
            html2text::from_read(raw, 200).map_err(|e| format!("the HTML could not be read: {e}"))
        }
        "application/pdf" => pdf_text(raw),
        _ => {
            String::from_utf8(raw.to_vec()).map_err(|_| "the content is not UTF-8 text".to_string())
        }
    }
}

/// The text of a PDF (its text layer; a scan without one has none).
/// The parser panics on some malformed files: a panic is a refusal of the
/// file, never of the process.
fn pdf_text(raw: &[u8]) -> Result<String, String> {
    if !raw.starts_with(b"%PDF-") {
        return Err("the content is not a PDF (no %PDF- header)".into());
    }
    match std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(raw)) {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(e)) => Err(format!("the PDF could not be read: {e}")),
        Err(_) => Err("the PDF could not be read (malformed)".into()),
    }
}

/// One piece of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Byte offset of its start.
    pub start: usize,
    /// Its text.
    pub text: String,
    /// Its tokens.
    pub tokens: usize,
}

/// The splitter, built once (the tokenizer's tables take a while).
#[derive(Clone)]
pub struct Chunker {
    bpe: &'static CoreBPE,
    max_tokens: usize,
    overlap: usize,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("max_tokens", &self.max_tokens)
            .field("overlap", &self.overlap)
            .finish()
    }
}

impl Chunker {
    /// Chunks of at most `max_tokens`, overlapping by `overlap` (less than
    /// `max_tokens`).
    pub fn new(max_tokens: usize, overlap: usize) -> Result<Chunker, String> {
        if max_tokens == 0 || overlap >= max_tokens {
            return Err(format!(
                "knowledge.chunk_tokens ({max_tokens}) must be above 0 and above knowledge.overlap_tokens ({overlap})"
            ));
        }
        Ok(Chunker {
            bpe: tiktoken_rs::cl100k_base_singleton(),
            max_tokens,
            overlap,
        })
    }

    /// Tokens of `text`.
    pub fn tokens(&self, text: &str) -> usize {
        self.bpe.encode_ordinary(text).len()
    }

    fn config(&self) -> ChunkConfig<&'static CoreBPE> {
        // `new` checked overlap < capacity, the only way this can fail.
        ChunkConfig::new(self.max_tokens)
            .with_sizer(self.bpe)
            .with_overlap(self.overlap)
            .unwrap_or_else(|_| ChunkConfig::new(self.max_tokens).with_sizer(self.bpe))
    }

    /// Splits a document's text; Markdown (and HTML, which arrives as
    /// Markdown-like text) along headings first.
    pub fn split(&self, content_type: &str, text: &str) -> Vec<Piece> {
        // A PDF's text has no markup: split as plain text.
        let plain = matches!(content_type, "text/plain" | "application/pdf");
        let pieces: Vec<(usize, &str)> = if plain {
            TextSplitter::new(self.config())
                .chunk_indices(text)
                .collect()
        } else {
            MarkdownSplitter::new(self.config())
                .chunk_indices(text)
                .collect()
        };
        pieces
            .into_iter()
            .filter(|(_, t)| !t.trim().is_empty())
            .map(|(start, t)| Piece {
                start,
                text: t.to_string(),
                tokens: self.tokens(t),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_follow_headings_stay_under_the_size_and_overlap() {
        let c = Chunker::new(40, 8).expect("chunker");
        let mut doc = String::new();
        for s in 0..4 {
            doc.push_str(&format!("# Section {s}\n\n"));
            for p in 0..3 {
                doc.push_str(&format!(
                    "Paragraph {p} of section {s} says something about topic {s}{p}. \
                     It has a second sentence that adds words.\n\n"
                ));
            }
        }
        let pieces = c.split("text/markdown", &doc);
        assert!(pieces.len() >= 4, "{pieces:?}");
        for p in &pieces {
            assert!(p.tokens <= 40, "{} tokens: {:?}", p.tokens, p.text);
            assert_eq!(&doc[p.start..p.start + p.text.len()], p.text);
        }
        // Every heading starts a chunk: sections are not glued together.
        for s in 0..4 {
            assert!(
                pieces
                    .iter()
                    .any(|p| p.text.starts_with(&format!("# Section {s}"))),
                "section {s} does not start a chunk"
            );
        }
        // Neighbouring chunks of plain text share their overlap.
        let long = "word ".repeat(200);
        let plain = c.split("text/plain", &long);
        assert!(plain.len() > 2);
        assert!(plain[1].start < plain[0].start + plain[0].text.len());
    }

    #[test]
    fn html_becomes_text_and_bad_bytes_are_refused() {
        let t = extract(
            "text/html",
            b"<html><body><h1>Refunds</h1><p>Within <b>30 days</b>.</p><script>x()</script></body></html>",
        )
        .expect("html");
        assert!(t.contains("Refunds") && t.contains("30 days"), "{t}");
        assert!(!t.contains("<p>"));
        assert!(extract("text/plain", &[0xff, 0xfe, 0x00]).is_err());
        assert_eq!(media_type("text/html; charset=utf-8"), Some("text/html"));
        assert_eq!(media_type("application/pdf"), Some("application/pdf"));
        assert_eq!(media_type("image/png"), None);
        // Not a PDF, or a broken one: refused, never a panic.
        assert!(extract("application/pdf", b"plain words").is_err());
        assert!(extract("application/pdf", b"%PDF-1.4\n1 0 obj\n<<").is_err());
        assert!(Chunker::new(10, 10).is_err());
    }
}
