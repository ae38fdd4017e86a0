//! Typed records carried by activity events: a `tool_call` event is also a
//! row of `tool_calls`, a `message` event a row of `messages` (opening or
//! updating its conversation). They are validated at ingest, their secrets
//! redacted, and written in the same transaction as the event itself.
//!
//! Payloads keep fields Cadre does not know (runtimes may add some); only
//! the tool call's `arguments` are rewritten, with secret values replaced by
//! `"[redacted]"`.

use crate::store::{MessageRecord, Record, ToolCallRecord};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// The event kind of a tool call.
pub const TOOL_CALL: &str = "tool_call";
/// The event kind of a conversation message.
pub const MESSAGE: &str = "message";
/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";
/// Tool call statuses.
pub const STATUSES: [&str; 4] = ["ok", "error", "denied", "timeout"];
/// Message roles.
pub const ROLES: [&str; 4] = ["user", "assistant", "system", "tool"];
/// Characters of a result summary or conversation title.
const MAX_SUMMARY: usize = 4096;
/// Characters of an identifier (tool, call, conversation).
const MAX_ID: usize = 200;

/// Argument keys whose values are secrets: a key is redacted when, lower
/// case and without `_`/`-`, it ends with one of these (`api_key`,
/// `GITHUB_TOKEN`, `db-password`, `Authorization`; not `max_tokens`).
const SECRET_SUFFIXES: [&str; 12] = [
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "authorization",
    "credential",
    "credentials",
    "privatekey",
    "cookie",
    "sessionid",
    "accesskey",
];

/// A field of the payload that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Path below the payload (`tool_id`, `arguments`, …).
    pub field: &'static str,
    /// What is expected.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// Whether an argument key names a secret (`extra`: configured names,
/// compared the same way).
pub fn secret_key(key: &str, extra: &[String]) -> bool {
    let norm: String = key
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_SUFFIXES.iter().any(|s| norm.ends_with(s))
        || extra.iter().any(|e| {
            let e: String = e
                .chars()
                .filter(|c| !matches!(c, '_' | '-' | '.' | ' '))
                .flat_map(char::to_lowercase)
                .collect();
            norm == e
        })
}

/// Replaces every secret in `v`: values under secret keys, and strings
/// that carry a bearer or basic credential, at any depth. Answers whether
/// anything was replaced.
pub fn redact(v: &mut Value, extra: &[String]) -> bool {
    match v {
        Value::Object(m) => {
            let mut changed = false;
            for (k, v) in m.iter_mut() {
                if secret_key(k, extra) && !v.is_null() {
                    if v.as_str() != Some(REDACTED) {
                        *v = Value::String(REDACTED.into());
                        changed = true;
                    }
                } else {
                    changed |= redact(v, extra);
                }
            }
            changed
        }
        Value::Array(a) => a.iter_mut().fold(false, |c, v| redact(v, extra) | c),
        Value::String(s) if credential(s) => {
            *v = Value::String(REDACTED.into());
            true
        }
        _ => false,
    }
}

/// Whether raw JSON may hold something [`redact`] replaces: a cheap scan
/// that lets most arguments through without being parsed and rewritten.
fn may_hold_secrets(raw: &str, extra: &[String]) -> bool {
    const HINTS: [&str; 10] = [
        "pass",
        "secret",
        "token",
        "key",
        "auth",
        "credential",
        "cookie",
        "session",
        "bearer",
        "basic",
    ];
    if !extra.is_empty() {
        return true;
    }
    let lower = raw.to_ascii_lowercase();
    HINTS.iter().any(|h| lower.contains(h))
}

fn credential(s: &str) -> bool {
    let t = s.trim_start();
    ["bearer ", "basic "].iter().any(|p| {
        t.get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    })
}

/// A payload's top-level fields, their values left unparsed.
type Fields<'a> = BTreeMap<String, &'a RawValue>;

fn field<'a>(m: &Fields<'a>, name: &str) -> Option<&'a RawValue> {
    m.get(name).copied().filter(|v| v.get() != "null")
}

fn text(
    m: &Fields<'_>,
    name: &'static str,
    max: usize,
    required: bool,
) -> Result<Option<String>, Invalid> {
    let bad = || {
        invalid(
            name,
            format!(
                "{} string of 1 to {max} characters",
                if required { "a" } else { "null or a" }
            ),
        )
    };
    match field(m, name) {
        None if !required => Ok(None),
        None => Err(bad()),
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Ok(s) if !s.is_empty() && s.chars().count() <= max => Ok(Some(s)),
            _ => Err(bad()),
        },
    }
}

/// An identifier (a conversation, tool or call id): [`text`] without any
/// control character, refused as names are, so a NUL or a line break never
/// reaches a filter, a log line or the dashboard.
fn ident(m: &Fields<'_>, name: &'static str, required: bool) -> Result<Option<String>, Invalid> {
    let value = text(m, name, MAX_ID, required)?;
    if value
        .as_deref()
        .is_some_and(|v| v.chars().any(char::is_control))
    {
        return Err(invalid(name, "must not contain control characters"));
    }
    Ok(value)
}

fn count(m: &Fields<'_>, name: &'static str) -> Result<i64, Invalid> {
    match field(m, name) {
        None => Ok(0),
        Some(raw) => serde_json::from_str::<u64>(raw.get())
            .ok()
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(|| invalid(name, "a whole number of at least 0")),
    }
}

fn one_of(m: &Fields<'_>, name: &'static str, allowed: &[&str]) -> Result<String, Invalid> {
    match field(m, name).and_then(|raw| serde_json::from_str::<String>(raw.get()).ok()) {
        Some(s) if allowed.contains(&s.as_str()) => Ok(s),
        _ => Err(invalid(name, format!("one of {}", allowed.join(", ")))),
    }
}

/// The record of an event of `kind`, and the payload to store when it
/// differs from the one given (a tool call whose arguments held secrets).
/// `None` for kinds without a record.
pub fn parse(
    kind: &str,
    payload: &str,
    redact_keys: &[String],
) -> Result<Option<(Record, Option<String>)>, Invalid> {
    if kind != TOOL_CALL && kind != MESSAGE {
        return Ok(None);
    }
    let Ok(mut m) = serde_json::from_str::<Fields<'_>>(payload) else {
        return Err(invalid("payload", format!("a {kind} payload is an object")));
    };
    if kind == MESSAGE {
        let conversation_id = ident(&m, "conversation_id", true)?.unwrap_or_default();
        one_of(&m, "role", &ROLES)?;
        // Valid JSON starting with a quote is a string.
        if !field(&m, "content").is_some_and(|c| c.get().starts_with('"')) {
            return Err(invalid("content", "a string"));
        }
        let title = text(&m, "title", MAX_SUMMARY, false)?;
        let tokens = count(&m, "tokens")?;
        let record = Record::Message(MessageRecord {
            conversation_id,
            title,
            tokens,
        });
        return Ok(Some((record, None)));
    }
    let tool_id = ident(&m, "tool_id", true)?.unwrap_or_default();
    ident(&m, "call_id", false)?;
    text(&m, "result_summary", MAX_SUMMARY, false)?;
    let status = one_of(&m, "status", &STATUSES)?;
    count(&m, "duration_ms")?;
    let tokens = count(&m, "tokens")?;
    let cost_micros = match field(&m, "cost_usd") {
        None => 0,
        Some(raw) => serde_json::from_str::<f64>(raw.get())
            .ok()
            .filter(|c| c.is_finite() && (0.0..=1e9).contains(c))
            .map(|c| (c * 1_000_000.0).round() as i64)
            .ok_or_else(|| invalid("cost_usd", "a number from 0 to 1e9"))?,
    };
    let record = Record::ToolCall(ToolCallRecord {
        tool_id,
        status,
        tokens,
        cost_micros,
    });
    let Some(args) = field(&m, "arguments").filter(|a| may_hold_secrets(a.get(), redact_keys))
    else {
        return Ok(Some((record, None)));
    };
    let mut value: Value =
        serde_json::from_str(args.get()).map_err(|_| invalid("arguments", "JSON"))?;
    if !redact(&mut value, redact_keys) {
        return Ok(Some((record, None)));
    }
    let redacted =
        serde_json::value::to_raw_value(&value).map_err(|_| invalid("arguments", "JSON"))?;
    m.insert("arguments".into(), &redacted);
    let stored = serde_json::to_string(&m).map_err(|_| invalid("payload", "JSON"))?;
    Ok(Some((record, Some(stored))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_keys_are_recognised_without_catching_ordinary_ones() {
        for k in [
            "password",
            "api_key",
            "GITHUB_TOKEN",
            "db-password",
            "Authorization",
            "client_secret",
            "accessToken",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(secret_key(k, &[]), "{k} is a secret");
        }
        for k in ["max_tokens", "query", "path", "tokenizer", "author", "url"] {
            assert!(!secret_key(k, &[]), "{k} is not a secret");
        }
        assert!(secret_key("X-Org-Pin", &["x_org_pin".into()]));
    }

    #[test]
    fn redaction_reaches_every_depth_and_keeps_the_rest() {
        let v = json!({
            "url": "https://example.test",
            "headers": {"Authorization": "Bearer abc", "Accept": "json"},
            "auth": ["Basic dXNlcjpwYXNz", "plain"],
            "nested": [{"password": "hunter2", "user": "ann"}],
            "api_key": null,
            "max_tokens": 100
        });
        let mut r = v;
        assert!(redact(&mut r, &[]));
        assert_eq!(
            r,
            json!({
                "url": "https://example.test",
                "headers": {"Authorization": REDACTED, "Accept": "json"},
                "auth": [REDACTED, "plain"],
                "nested": [{"password": REDACTED, "user": "ann"}],
                "api_key": null,
                "max_tokens": 100
            })
        );
    }

    #[test]
    fn a_tool_call_is_parsed_its_arguments_redacted_and_unknown_fields_kept() {
        let p = json!({
            "tool_id": "github.create_issue",
            "arguments": {"repo": "a/b", "token": "ghp_x"},
            "status": "ok",
            "duration_ms": 12,
            "tokens": 30,
            "cost_usd": 0.0015,
            "model_step": 4
        })
        .to_string();
        let (rec, stored) = parse(TOOL_CALL, &p, &[]).unwrap().unwrap();
        let stored = stored.expect("rewritten: a secret was replaced");
        let Record::ToolCall(t) = rec else {
            panic!("a tool call record")
        };
        assert_eq!(t.tool_id, "github.create_issue");
        assert_eq!(t.cost_micros, 1500);
        let stored: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(
            stored["arguments"],
            json!({"repo": "a/b", "token": REDACTED})
        );
        assert_eq!(stored["model_step"], 4);
        assert!(!stored.to_string().contains("ghp_x"));
        // Arguments without secrets are stored exactly as sent.
        let plain =
            json!({"tool_id": "t", "status": "ok", "arguments": {"q": "keyless"}}).to_string();
        assert_eq!(parse(TOOL_CALL, &plain, &[]).unwrap().unwrap().1, None);
        let quiet =
            json!({"tool_id": "t", "status": "ok", "arguments": {"q": "weather"}}).to_string();
        assert_eq!(parse(TOOL_CALL, &quiet, &[]).unwrap().unwrap().1, None);
    }

    #[test]
    fn bad_records_name_the_field() {
        let bad = |kind: &str, p: Value| parse(kind, &p.to_string(), &[]).unwrap_err().field;
        assert_eq!(bad(TOOL_CALL, json!({"status": "ok"})), "tool_id");
        for id in ["a\u{0}b", "line\nbreak", "tab\tbed", "\u{1b}[31m"] {
            assert_eq!(
                bad(TOOL_CALL, json!({"tool_id": id, "status": "ok"})),
                "tool_id"
            );
            assert_eq!(
                bad(
                    TOOL_CALL,
                    json!({"tool_id": "t", "call_id": id, "status": "ok"})
                ),
                "call_id"
            );
            assert_eq!(
                bad(
                    MESSAGE,
                    json!({"conversation_id": id, "role": "user", "content": "hi"})
                ),
                "conversation_id"
            );
        }
        assert_eq!(
            bad(TOOL_CALL, json!({"tool_id": "t", "status": "maybe"})),
            "status"
        );
        assert_eq!(
            bad(
                TOOL_CALL,
                json!({"tool_id": "t", "status": "ok", "tokens": -1})
            ),
            "tokens"
        );
        assert_eq!(
            bad(
                TOOL_CALL,
                json!({"tool_id": "t", "status": "ok", "cost_usd": "1"})
            ),
            "cost_usd"
        );
        assert_eq!(bad(TOOL_CALL, json!([1])), "payload");
        assert_eq!(
            bad(MESSAGE, json!({"role": "user", "content": "hi"})),
            "conversation_id"
        );
        assert_eq!(
            bad(
                MESSAGE,
                json!({"conversation_id": "c", "role": "bot", "content": "hi"})
            ),
            "role"
        );
        assert_eq!(
            bad(MESSAGE, json!({"conversation_id": "c", "role": "user"})),
            "content"
        );
        assert!(parse("step", "{}", &[]).unwrap().is_none());
    }
}
