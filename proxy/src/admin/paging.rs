//! List paging: `?limit=N&after=CURSOR` in, `{"object":"list","data","has_more","next_after"}` out.
//!
//! Lists are sorted by id (model name) bytewise. The cursor is opaque to clients (today the hex
//! of the last id of the previous page); pass `next_after` back as `after`.

use std::collections::HashMap;

use serde_json::Value;

use super::errors::AdminError;
use crate::store::Page;

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest accepted `limit`.
pub const MAX_LIMIT: usize = 500;

/// A parsed page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    /// Page size, 1..=MAX_LIMIT.
    pub limit: usize,
    /// Start after this id.
    pub after: Option<String>,
}

impl PageQuery {
    /// Parse the query parameters (unknown parameters are rejected).
    pub fn parse(query: &HashMap<String, String>) -> Result<Self, AdminError> {
        if let Some(name) = query.keys().find(|k| *k != "limit" && *k != "after") {
            return Err(AdminError::Invalid {
                param: Some(name.clone()),
                message: format!(
                    "Unknown query parameter `{name}`; lists accept `limit` and `after`."
                ),
                code: "unknown_field",
            });
        }
        let limit = match query.get("limit") {
            None => DEFAULT_LIMIT,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| AdminError::Invalid {
                    param: Some("limit".into()),
                    message: format!("`limit` must be an integer between 1 and {MAX_LIMIT} (default {DEFAULT_LIMIT})."),
                    code: "invalid_value",
                })?,
        };
        let after = match query.get("after") {
            None => None,
            Some(c) if c.is_empty() => None,
            Some(c) => Some(decode_cursor(c).ok_or_else(|| AdminError::Invalid {
                param: Some("after".into()),
                message: "`after` must be a `next_after` value returned by a previous page.".into(),
                code: "invalid_value",
            })?),
        };
        Ok(Self { limit, after })
    }
}

/// Opaque cursor for an id.
pub fn encode_cursor(id: &str) -> String {
    hex::encode(id.as_bytes())
}

fn decode_cursor(cursor: &str) -> Option<String> {
    String::from_utf8(hex::decode(cursor).ok()?).ok()
}

/// The list response of a page, each entity rendered by `view`.
pub fn render<E>(page: &Page<E>, view: impl Fn(&E) -> Value) -> Value {
    serde_json::json!({
        "object": "list",
        "data": page.data.iter().map(view).collect::<Vec<_>>(),
        "has_more": page.has_more,
        "next_after": page.next_after.as_deref().map(encode_cursor),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<PageQuery, AdminError> {
        PageQuery::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_bounds_and_cursor() {
        assert_eq!(q(&[]).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(q(&[("limit", "0")]).unwrap_err().param(), Some("limit"));
        assert_eq!(q(&[("limit", "501")]).unwrap_err().param(), Some("limit"));
        assert_eq!(q(&[("after", "zz")]).unwrap_err().param(), Some("after"));
        assert_eq!(q(&[("page", "2")]).unwrap_err().param(), Some("page"));
        let c = encode_cursor("openai/gpt-4o");
        assert_eq!(
            q(&[("after", &c)]).unwrap().after.as_deref(),
            Some("openai/gpt-4o")
        );
    }
}
