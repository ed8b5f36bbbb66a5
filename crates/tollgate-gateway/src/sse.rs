//! A minimal server-sent-events decoder: enough for OpenAI-style streams (`data:` lines,
//! events separated by a blank line, `[DONE]` at the end). Comments and other fields are
//! skipped.

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// A `data:` payload (several `data:` lines joined with `\n`).
    Data(String),
    /// `data: [DONE]`.
    Done,
}

/// Incremental decoder: feed it bytes as they arrive, take complete events out.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
}

/// Most bytes one event may take before the stream is judged broken.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The upstream sent an event too large to be a chat chunk.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("server-sent event larger than {MAX_EVENT_BYTES} bytes")]
pub struct EventTooLarge;

impl SseDecoder {
    /// Adds `bytes` and returns every event now complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, EventTooLarge> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some((end, separator_len)) = find_event_end(&self.buffer) {
            let block: Vec<u8> = self.buffer.drain(..end + separator_len).take(end).collect();
            if let Some(event) = decode_block(&block) {
                events.push(event);
            }
        }
        if self.buffer.len() > MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        Ok(events)
    }

    /// The event left in the buffer when the stream ends without a final blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let block = std::mem::take(&mut self.buffer);
        decode_block(&block)
    }
}

fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn decode_block(block: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(block);
    let mut data: Option<String> = None;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut data {
                Some(existing) => {
                    existing.push('\n');
                    existing.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
    }
    let data = data?;
    if data.trim() == "[DONE]" {
        Some(SseEvent::Done)
    } else {
        Some(SseEvent::Data(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_events_split_anywhere() {
        let stream = b"data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut decoder = SseDecoder::default();
            let mut events = decoder.push(&stream[..split]).unwrap();
            events.extend(decoder.push(&stream[split..]).unwrap());
            assert_eq!(
                events,
                vec![
                    SseEvent::Data("{\"a\":1}".into()),
                    SseEvent::Data("{\"b\":2}".into()),
                    SseEvent::Done
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn finishes_an_unterminated_event() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: x").unwrap().is_empty());
        assert_eq!(decoder.finish(), Some(SseEvent::Data("x".into())));
    }
}
