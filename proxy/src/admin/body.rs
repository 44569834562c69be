//! Request bodies: size limit, JSON syntax, and typed decoding whose errors name the field path.

use axum::body::Body;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::errors::AdminError;

/// Largest accepted body (1 MiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Read the body and parse it as a JSON object.
pub async fn read_object(body: Body) -> Result<Map<String, Value>, AdminError> {
    // A larger body is drained (up to 8x the limit) before the 413, so that a client still
    // writing reads the answer instead of a reset connection.
    let mut body = body;
    let mut bytes = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| AdminError::InvalidJson(format!("cannot read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= MAX_BODY_BYTES {
                bytes.extend_from_slice(&data);
            } else if total > MAX_BODY_BYTES.saturating_mul(8) {
                break;
            }
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(AdminError::BodyTooLarge(MAX_BODY_BYTES));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(AdminError::Invalid {
            param: None,
            message: "The request body must be a JSON object.".into(),
            code: "invalid_body",
        }),
        Err(e) => Err(AdminError::InvalidJson(e.to_string())),
    }
}

/// Decode an object into `T`; errors name the field path (`deployments[0].weight`).
pub fn decode<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, AdminError> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let join = |field: &str| {
            if path == "." || path.is_empty() {
                field.to_string()
            } else {
                format!("{path}.{field}")
            }
        };
        if inner.starts_with("unknown field") {
            AdminError::Invalid {
                message: format!("Unknown field `{path}` ({inner}). Remove it or fix its name."),
                param: Some(path),
                code: "unknown_field",
            }
        } else if let Some(field) = backticked(&inner, "missing field `") {
            let param = join(field);
            AdminError::Invalid {
                message: format!("Missing required field `{param}`."),
                param: Some(param),
                code: "missing_field",
            }
        } else {
            AdminError::Invalid {
                message: format!("Invalid value for `{path}`: {inner}."),
                param: Some(path),
                code: "invalid_type",
            }
        }
    })
}

fn backticked<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.strip_prefix(prefix)?.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::Model;

    fn err(json: &str) -> AdminError {
        let Value::Object(map) = serde_json::from_str(json).unwrap() else {
            panic!("not an object")
        };
        decode::<Model>(map).unwrap_err()
    }

    #[test]
    fn errors_name_the_path() {
        let e = err(r#"{"name":"m","deployments":[{"base_url":"http://x","wieght":1}]}"#);
        assert_eq!(e.param(), Some("deployments[0].wieght"));
        assert_eq!(e.code(), "unknown_field");
        let e = err(r#"{"deployments":[]}"#);
        assert_eq!(e.param(), Some("name"));
        assert_eq!(e.code(), "missing_field");
        let e = err(r#"{"name":"m","deployments":[{}]}"#);
        assert_eq!(e.param(), Some("deployments[0].base_url"));
        let e = err(r#"{"name":"m","pricing":{"input_per_mtok":"x"}}"#);
        assert_eq!(e.param(), Some("pricing.input_per_mtok"));
        assert_eq!(e.code(), "invalid_type");
    }
}
