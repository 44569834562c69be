//! Path-aware accessors over `serde_json` values, producing [`TranslateError`]s that name the
//! offending field.

use serde_json::{Map, Value};

use super::TranslateError;

/// A JSON object.
pub(crate) type Obj = Map<String, Value>;

/// `path.key`, or `key` at the root.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `path[i]`.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn type_error(path: &str, expected: &'static str) -> TranslateError {
    TranslateError::Type {
        path: if path.is_empty() {
            "(body)".to_owned()
        } else {
            path.to_owned()
        },
        expected,
    }
}

/// `v` as an object.
pub(crate) fn as_obj<'a>(v: &'a Value, path: &str) -> Result<&'a Obj, TranslateError> {
    v.as_object().ok_or_else(|| type_error(path, "an object"))
}

/// `o[key]`, treating `null` as absent.
pub(crate) fn get<'a>(o: &'a Obj, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

/// A required string field.
pub(crate) fn req_str<'a>(o: &'a Obj, key: &str, path: &str) -> Result<&'a str, TranslateError> {
    opt_str(o, key, path)?.ok_or_else(|| TranslateError::Missing(join(path, key)))
}

/// An optional string field.
pub(crate) fn opt_str<'a>(
    o: &'a Obj,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, TranslateError> {
    match get(o, key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| type_error(&join(path, key), "a string")),
    }
}

/// An optional non-negative integer field.
pub(crate) fn opt_u64(o: &Obj, key: &str, path: &str) -> Result<Option<u64>, TranslateError> {
    match get(o, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| type_error(&join(path, key), "a non-negative integer")),
    }
}

/// An optional number field.
pub(crate) fn opt_f64(o: &Obj, key: &str, path: &str) -> Result<Option<f64>, TranslateError> {
    match get(o, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| type_error(&join(path, key), "a number")),
    }
}

/// An optional boolean field.
pub(crate) fn opt_bool(o: &Obj, key: &str, path: &str) -> Result<Option<bool>, TranslateError> {
    match get(o, key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| type_error(&join(path, key), "a boolean")),
    }
}

/// A required array field.
pub(crate) fn req_array<'a>(
    o: &'a Obj,
    key: &str,
    path: &str,
) -> Result<&'a [Value], TranslateError> {
    opt_array(o, key, path)?.ok_or_else(|| TranslateError::Missing(join(path, key)))
}

/// An optional array field.
pub(crate) fn opt_array<'a>(
    o: &'a Obj,
    key: &str,
    path: &str,
) -> Result<Option<&'a [Value]>, TranslateError> {
    match get(o, key) {
        None => Ok(None),
        Some(v) => v
            .as_array()
            .map(|a| Some(a.as_slice()))
            .ok_or_else(|| type_error(&join(path, key), "an array")),
    }
}

/// A required object field.
pub(crate) fn req_obj<'a>(o: &'a Obj, key: &str, path: &str) -> Result<&'a Obj, TranslateError> {
    match get(o, key) {
        None => Err(TranslateError::Missing(join(path, key))),
        Some(v) => as_obj(v, &join(path, key)),
    }
}

/// An "unsupported value" error.
pub(crate) fn unsupported(path: String, reason: impl Into<String>) -> TranslateError {
    TranslateError::Unsupported {
        path,
        reason: reason.into(),
    }
}

/// Parses text that must hold JSON.
pub(crate) fn parse_json(text: &str, path: &str) -> Result<Value, TranslateError> {
    serde_json::from_str(text).map_err(|e| TranslateError::Json {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A JSON object from `(key, value)` pairs, skipping `None` values.
pub(crate) fn object<const N: usize>(pairs: [(&str, Option<Value>); N]) -> Value {
    let mut m = Obj::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_paths() {
        let v = json!({"a": 1, "s": "x", "n": null});
        let o = as_obj(&v, "").unwrap();
        assert_eq!(req_str(o, "a", "m[0]").unwrap_err().path(), Some("m[0].a"));
        assert_eq!(
            req_str(o, "n", "").unwrap_err(),
            TranslateError::Missing("n".into())
        );
        assert_eq!(opt_str(o, "s", "").unwrap(), Some("x"));
        assert_eq!(opt_u64(o, "missing", "").unwrap(), None);
        assert_eq!(as_obj(&json!(1), "").unwrap_err().path(), Some("(body)"));
        assert_eq!(index("messages", 2), "messages[2]");
        assert_eq!(
            object([("a", Some(json!(1))), ("b", None)]),
            json!({"a": 1})
        );
    }
}
