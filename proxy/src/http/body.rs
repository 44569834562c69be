//! Reading request bodies within the size limit.

use axum::extract::Request;
use axum::http::header;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use super::error::ApiError;

/// Read the body up to `limit`. A larger body is drained (up to 8x the limit) before the 413,
/// so that a client still writing can read the answer instead of a reset connection.
pub async fn read_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let drain_cap = limit.saturating_mul(8);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > drain_cap) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    let mut body = req.into_body();
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::InvalidRequest {
            message: "The request body could not be read.".into(),
            param: None,
        })?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= limit {
                buf.extend_from_slice(&data);
            } else if total > drain_cap {
                return Err(ApiError::BodyTooLarge(limit));
            }
        }
    }
    if total > limit {
        return Err(ApiError::BodyTooLarge(limit));
    }
    Ok(buf.freeze())
}
