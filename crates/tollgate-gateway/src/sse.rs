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
    /// How far into `buffer` no event's end was found: a push searches on from there, so each
    /// byte is looked at once however the stream is cut.
    searched: usize,
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
        let mut start = 0;
        let mut from = self.searched;
        while let Some((end, separator)) = find_event_end(&self.buffer, start, from) {
            if let Some(event) = decode_block(&self.buffer[start..end]) {
                events.push(event);
            }
            start = end + separator;
            from = start;
        }
        self.buffer.drain(..start);
        // A separator may have begun in the last three bytes and end in the next push.
        self.searched = self.buffer.len().saturating_sub(3);
        if self.buffer.len() > MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        Ok(events)
    }

    /// The event left in the buffer when the stream ends without a final blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let block = std::mem::take(&mut self.buffer);
        self.searched = 0;
        decode_block(&block)
    }
}

/// The first event end in `buffer[start..]` whose line feed is at `from` or later: where its
/// blank line's separator (`\n\n` or `\r\n\r\n`) begins, and the separator's length.
fn find_event_end(buffer: &[u8], start: usize, from: usize) -> Option<(usize, usize)> {
    let mut at = from.max(start);
    while let Some(offset) = memchr::memchr(b'\n', buffer.get(at..)?) {
        let lf = at + offset;
        if buffer.get(lf + 1) == Some(&b'\n') {
            return Some((lf, 2));
        }
        if lf > start && buffer[lf - 1] == b'\r' && buffer.get(lf + 1..lf + 3) == Some(b"\r\n") {
            return Some((lf - 1, 4));
        }
        at = lf + 1;
    }
    None
}

fn decode_block(block: &[u8]) -> Option<SseEvent> {
    // Nearly every event is one `data:` line: taken whole, without splitting it into lines.
    if let Some(value) = block.strip_prefix(b"data:")
        && memchr::memchr2(b'\n', b'\r', value).is_none()
        && let Ok(value) = std::str::from_utf8(value)
    {
        return Some(data_event(value.strip_prefix(' ').unwrap_or(value).to_owned()));
    }
    decode_lines(block)
}

/// Any event: its `data:` lines joined.
fn decode_lines(block: &[u8]) -> Option<SseEvent> {
    let text = match std::str::from_utf8(block) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(block),
    };
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
    data.map(data_event)
}

fn data_event(data: String) -> SseEvent {
    if data.trim() == "[DONE]" {
        SseEvent::Done
    } else {
        SseEvent::Data(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-line event, taken whole, decodes as the line-by-line reading decodes it.
    #[test]
    fn a_one_line_event_decodes_as_lines_do() {
        for block in [
            &b"data: {\"a\":1}"[..],
            b"data:{\"a\":1}",
            b"data:  two spaces",
            b"data: [DONE]",
            b"data:  [DONE] ",
            b"data:",
            b"data: ",
            b"data: caf\xc3\xa9",
            b"data: not \xff utf-8",
            b"data: a\rb",
            b"data: a\r\ndata: b",
            b"data: a\ndata: b",
            b"event: x",
            b": comment",
            b"",
            b"dat: x",
        ] {
            assert_eq!(
                decode_block(block),
                decode_lines(block),
                "{}",
                String::from_utf8_lossy(block)
            );
        }
    }

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
    fn events_cut_into_any_pieces_come_out_whole_and_in_order() {
        let stream: &[u8] =
            b"data: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\n: ping\r\n\r\n\ndata: \xff\n\ndata: [DONE]\r\n\r\n";
        let expected = vec![
            SseEvent::Data("{\"a\":1}".into()),
            SseEvent::Data("x\ny".into()),
            SseEvent::Data("\u{fffd}".into()),
            SseEvent::Done,
        ];
        for size in 1..=stream.len() {
            let mut decoder = SseDecoder::default();
            let mut events = Vec::new();
            for piece in stream.chunks(size) {
                events.extend(decoder.push(piece).unwrap());
            }
            assert_eq!(events, expected, "pieces of {size}");
            assert_eq!(decoder.finish(), None);
        }
    }

    #[test]
    fn finishes_an_unterminated_event() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: x").unwrap().is_empty());
        assert_eq!(decoder.finish(), Some(SseEvent::Data("x".into())));
    }
}
