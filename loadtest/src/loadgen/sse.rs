//! Minimal incremental parser of `text/event-stream` bodies.

/// Splits a byte stream into SSE events and yields each event's `data`
/// (multiple `data:` lines of one event are joined with `\n`). Other fields
/// (`event:`, `id:`, comments) are ignored. Tolerates `\r\n` line endings and
/// chunk boundaries anywhere, including inside UTF-8 sequences.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Option<String>,
}

impl SseParser {
    /// A parser with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk of the body; returns the data of every event completed
    /// by it.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let mut line = &self.buf[start..end];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.buf.drain(..start);
        events
    }

    /// Ends the body: returns the data of a last event not followed by a
    /// blank line, if any.
    pub fn finish(mut self) -> Option<String> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let line = String::from_utf8_lossy(&rest).into_owned();
            let line = line.strip_suffix('\r').unwrap_or(&line).to_owned();
            if let Some(event) = self.line(&line) {
                return Some(event);
            }
        }
        self.data.take()
    }

    fn line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: {\"a\"").is_empty());
        assert_eq!(p.push(b":1}\n\nda"), vec!["{\"a\":1}".to_owned()]);
        assert_eq!(
            p.push(b"ta: [DONE]\r\n\r\n: comment\n\n"),
            vec!["[DONE]".to_owned()]
        );
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn joins_multiline_data_and_flushes_at_end() {
        let mut p = SseParser::new();
        assert_eq!(
            p.push(b"event: x\ndata: a\ndata:b\n\n"),
            vec!["a\nb".to_owned()]
        );
        assert!(p.push(b"data: tail").is_empty());
        assert_eq!(p.finish(), Some("tail".to_owned()));
    }

    #[test]
    fn survives_split_utf8() {
        let bytes = "data: héllo\n\n".as_bytes();
        let mut p = SseParser::new();
        let (a, b) = bytes.split_at(8); // inside 'é'
        assert!(p.push(a).is_empty());
        assert_eq!(p.push(b), vec!["héllo".to_owned()]);
    }
}
