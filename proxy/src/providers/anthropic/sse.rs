//! Incremental server-sent-event parsing: bytes arrive in arbitrary network chunks, events
//! end at a blank line (`\n\n`, `\r\n\r\n` or mixed).

use super::TranslateError;
use crate::http::sse::MAX_EVENT_BYTES;

/// One parsed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, if any.
    pub(crate) event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub(crate) data: String,
}

/// Buffers bytes until whole events are available.
#[derive(Debug, Default)]
pub(crate) struct SseBuffer {
    buf: Vec<u8>,
    /// Start of the first line not yet checked for being blank.
    scan: usize,
    /// Events returned so far (for error paths).
    count: usize,
}

impl SseBuffer {
    /// Appends received bytes.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if one is buffered. Events without `data` are skipped. An
    /// unterminated event over [`MAX_EVENT_BYTES`] is dropped with an error.
    pub(crate) fn next_event(&mut self) -> Result<Option<(usize, SseEvent)>, TranslateError> {
        loop {
            let Some(end) = self.complete_event_end() else {
                if self.buf.len() > MAX_EVENT_BYTES {
                    self.buf = Vec::new();
                    self.scan = 0;
                    self.count += 1;
                    return Err(TranslateError::Unsupported {
                        path: format!("event[{}]", self.count - 1),
                        reason: format!("longer than {MAX_EVENT_BYTES} bytes without an end"),
                    });
                }
                return Ok(None);
            };
            let raw: Vec<u8> = self.buf.drain(..end).collect();
            self.scan = 0;
            if let Some(ev) = self.parse(&raw)? {
                return Ok(Some(ev));
            }
        }
    }

    /// At the end of the body: the last event if it lacked its blank line.
    pub(crate) fn finish(&mut self) -> Result<Option<(usize, SseEvent)>, TranslateError> {
        if let Some(ev) = self.next_event()? {
            return Ok(Some(ev));
        }
        let raw = std::mem::take(&mut self.buf);
        self.scan = 0;
        self.parse(&raw)
    }

    /// Byte offset just past the blank line ending the first event.
    fn complete_event_end(&mut self) -> Option<usize> {
        while let Some(nl) = self.buf[self.scan..].iter().position(|b| *b == b'\n') {
            let line_end = self.scan + nl;
            let line = &self.buf[self.scan..line_end];
            let blank = line.is_empty() || line == b"\r";
            self.scan = line_end + 1;
            if blank {
                return Some(self.scan);
            }
        }
        None
    }

    fn parse(&mut self, raw: &[u8]) -> Result<Option<(usize, SseEvent)>, TranslateError> {
        let n = self.count;
        let text = std::str::from_utf8(raw).map_err(|e| TranslateError::Json {
            path: format!("event[{n}]"),
            reason: e.to_string(),
        })?;
        let mut event = None;
        let mut data: Option<String> = None;
        for line in text.lines() {
            if line.is_empty() || line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = Some(value.to_owned()),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                _ => {}
            }
        }
        let Some(data) = data else {
            return Ok(None);
        };
        self.count += 1;
        Ok(Some((n, SseEvent { event, data })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut b = SseBuffer::default();
        let mut out = Vec::new();
        for c in chunks {
            b.push(c);
            while let Some((_, ev)) = b.next_event().unwrap() {
                out.push(ev);
            }
        }
        while let Some((_, ev)) = b.finish().unwrap() {
            out.push(ev);
        }
        out
    }

    #[test]
    fn an_endless_event_is_dropped_and_the_stream_goes_on() {
        let mut b = SseBuffer::default();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..8 {
            b.push(&chunk);
            assert_eq!(b.next_event().unwrap(), None, "still within the limit");
        }
        b.push(b"a");
        assert!(matches!(
            b.next_event(),
            Err(TranslateError::Unsupported { reason, .. }) if reason.contains("without an end")
        ));
        b.push(b"data: next\n\n");
        assert_eq!(b.next_event().unwrap().unwrap().1.data, "next");
    }

    #[test]
    fn parses_split_and_crlf_events() {
        let ev = |e: Option<&str>, d: &str| SseEvent {
            event: e.map(str::to_owned),
            data: d.to_owned(),
        };
        let cases: Vec<(Vec<&[u8]>, Vec<SseEvent>)> = vec![
            (vec![b"data: a\n\n"], vec![ev(None, "a")]),
            (
                vec![b"event: x\r\ndata: {}\r\n\r\n"],
                vec![ev(Some("x"), "{}")],
            ),
            (
                vec![b"event: x\nda", b"ta: 1\n", b"\nd", b"ata:2\n\n"],
                vec![ev(Some("x"), "1"), ev(None, "2")],
            ),
            (
                vec![b": comment\n\nevent: only\n\ndata: a\ndata: b\n\n"],
                vec![ev(None, "a\nb")],
            ),
            (
                vec![b"data: tail-without-blank-line\n"],
                vec![ev(None, "tail-without-blank-line")],
            ),
            (vec![b"data: \xc3", b"\xa9\n\n"], vec![ev(None, "é")]),
        ];
        for (chunks, want) in cases {
            assert_eq!(all(&chunks), want, "{chunks:?}");
        }
    }

    #[test]
    fn invalid_utf8_names_the_event() {
        let mut b = SseBuffer::default();
        b.push(b"data: 1\n\ndata: \xff\n\n");
        assert!(b.next_event().unwrap().is_some());
        assert_eq!(b.next_event().unwrap_err().path(), Some("event[1]"));
    }
}
