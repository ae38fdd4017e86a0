//! Validation shared by the identity routes.

use super::error::ApiError;
use crate::identity::{Role, Scope};

/// An email address, normalized to lower case.
pub fn email(field: &str, raw: &str) -> Result<String, ApiError> {
    crate::identity::normalize_email(raw).map_err(|why| ApiError::invalid(field, why))
}

/// A new password: 8 to 1024 characters.
pub fn password(field: &str, raw: &str) -> Result<String, ApiError> {
    crate::identity::check_password(raw).map_err(|why| ApiError::invalid(field, why))?;
    Ok(raw.to_string())
}

/// A role name.
pub fn role(field: &str, raw: &str) -> Result<Role, ApiError> {
    Role::parse(raw)
        .ok_or_else(|| ApiError::invalid(field, "expected owner, admin, member or viewer"))
}

/// A slug: 2 to 63 of `a-z`, `0-9`, `-`, starting with a letter or digit.
pub fn slug(field: &str, raw: &str) -> Result<String, ApiError> {
    let ok = (2..=63).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !raw.starts_with('-');
    if ok {
        Ok(raw.to_string())
    } else {
        Err(ApiError::invalid(
            field,
            "2 to 63 characters of a-z, 0-9 and -, not starting with -",
        ))
    }
}

/// A non-empty list of distinct scopes.
pub fn scopes(field: &str, raw: &[String]) -> Result<Vec<Scope>, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid(field, "at least one scope is needed"));
    }
    let mut out = Vec::new();
    for s in raw {
        let scope = Scope::parse(s).ok_or_else(|| {
            ApiError::invalid(
                field,
                format!(
                    "unknown scope {s:?}; known: {}",
                    Scope::ALL.map(Scope::as_str).join(", ")
                ),
            )
        })?;
        if !out.contains(&scope) {
            out.push(scope);
        }
    }
    Ok(out)
}

/// An RFC 3339 time in the future, as unix milliseconds.
pub fn future_time(field: &str, raw: &str, now_ms: i64) -> Result<i64, ApiError> {
    let ms = time(field, raw)?;
    if ms <= now_ms {
        return Err(ApiError::invalid(field, "must be in the future"));
    }
    Ok(ms)
}

/// An RFC 3339 time, as unix milliseconds.
pub fn time(field: &str, raw: &str) -> Result<i64, ApiError> {
    let t = time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ApiError::invalid(field, "expected an RFC 3339 time"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| ApiError::invalid(field, "out of range"))
}

/// Hashes a password on the blocking pool.
pub async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || crate::auth::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// An id from a path: UUIDs (with or without dashes); anything else cannot exist.
pub fn path_id(what: &str, raw: &str) -> Result<String, ApiError> {
    let ok = (raw.len() == 36 || raw.len() == 32)
        && raw.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if ok {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(ApiError::not_found(what))
    }
}

/// A numeric cursor (a row id): the text rule of [`cursor`], then a
/// non-negative number.
pub fn numeric_cursor(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    let text = cursor(raw)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_query",
                "invalid cursor",
            )
        })
}

/// A text cursor (an id): at most 64 safe characters. Every list's cursor
/// goes through this one rule.
pub fn cursor(raw: Option<&str>) -> Result<String, ApiError> {
    match raw {
        None => Ok(String::new()),
        Some(c) if c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            Ok(c.to_string())
        }
        Some(_) => Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            "invalid cursor",
        )),
    }
}
