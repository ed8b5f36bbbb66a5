//! A minimal server-sent-events decoder: enough for OpenAI-style streams (`data:` lines,
//! events separated by a blank line, `[DONE]` at the end). Comments and other fields are
//! skipped.

use std::borrow::Cow;

/// One decoded event, borrowed from the decoder's buffer when it is one `data:` line (nearly
/// every event is), so relaying a stream copies no event into a string of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent<'a> {
    /// A `data:` payload (several `data:` lines joined with `\n`).
    Data(Cow<'a, str>),
    /// `data: [DONE]`.
    Done,
}

impl SseEvent<'_> {
    /// The event, owning its payload.
    pub fn into_owned(self) -> SseEvent<'static> {
        match self {
            Self::Data(data) => SseEvent::Data(Cow::Owned(data.into_owned())),
            Self::Done => SseEvent::Done,
        }
    }
}

/// Incremental decoder: feed it bytes as they arrive, take complete events out.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    /// How much of `buffer` the events taken out so far span: dropped at the next push (the
    /// events borrow it until then).
    consumed: usize,
    /// How far into `buffer` no event's end was found: a push searches on from there, so each
    /// byte is looked at once however the stream is cut.
    searched: usize,
}

/// Most bytes one event may take before the stream is judged broken.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The upstream sent an event too large to be a chat chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("server-sent event larger than {MAX_EVENT_BYTES} bytes")]
pub struct EventTooLarge;

impl SseDecoder {
    /// Adds `bytes`; the iterator gives every event now complete, in order, then, if what is
    /// left of an event has grown past the limit, [`EventTooLarge`] (the stream is broken).
    pub fn push(&mut self, bytes: &[u8]) -> Events<'_> {
        self.buffer.drain(..self.consumed);
        self.searched = self.searched.saturating_sub(self.consumed);
        self.consumed = 0;
        self.buffer.extend_from_slice(bytes);
        Events {
            buffer: &self.buffer,
            consumed: &mut self.consumed,
            searched: &mut self.searched,
            ended: false,
        }
    }

    /// The event left in the buffer when the stream ends without a final blank line.
    pub fn finish(&mut self) -> Option<SseEvent<'static>> {
        let mut block = std::mem::take(&mut self.buffer);
        block.drain(..self.consumed);
        self.consumed = 0;
        self.searched = 0;
        decode_block(&block).map(SseEvent::into_owned)
    }
}

/// The events of one [`SseDecoder::push`], borrowed from the decoder's buffer.
#[derive(Debug)]
pub struct Events<'a> {
    buffer: &'a [u8],
    consumed: &'a mut usize,
    searched: &'a mut usize,
    ended: bool,
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<SseEvent<'a>, EventTooLarge>;

    fn next(&mut self) -> Option<Self::Item> {
        let buffer: &'a [u8] = self.buffer;
        while !self.ended {
            let start = *self.consumed;
            let Some((end, separator)) = find_event_end(buffer, start, *self.searched) else {
                self.ended = true;
                // A separator may have begun in the last three bytes and end in the next push.
                *self.searched = buffer.len().saturating_sub(3).max(start);
                if buffer.len() - start > MAX_EVENT_BYTES {
                    return Some(Err(EventTooLarge));
                }
                return None;
            };
            *self.consumed = end + separator;
            *self.searched = end + separator;
            if let Some(event) = decode_block(&buffer[start..end]) {
                return Some(Ok(event));
            }
        }
        None
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

fn decode_block(block: &[u8]) -> Option<SseEvent<'_>> {
    // Nearly every event is one `data:` line: taken whole, without splitting it into lines.
    if let Some(value) = block.strip_prefix(b"data:")
        && memchr::memchr2(b'\n', b'\r', value).is_none()
        && let Ok(value) = std::str::from_utf8(value)
    {
        return Some(data_event(Cow::Borrowed(value.strip_prefix(' ').unwrap_or(value))));
    }
    decode_lines(block)
}

/// Any event: its `data:` lines joined.
fn decode_lines(block: &[u8]) -> Option<SseEvent<'static>> {
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
    data.map(|data| data_event(Cow::Owned(data)))
}

fn data_event(data: Cow<'_, str>) -> SseEvent<'_> {
    if data.trim() == "[DONE]" {
        SseEvent::Done
    } else {
        SseEvent::Data(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event of a push, owned, or the error that ends it.
    fn decode_all(decoder: &mut SseDecoder, bytes: &[u8]) -> Result<Vec<SseEvent<'static>>, EventTooLarge> {
        decoder
            .push(bytes)
            .map(|event| event.map(SseEvent::into_owned))
            .collect()
    }

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
            let mut events = decode_all(&mut decoder, &stream[..split]).unwrap();
            events.extend(decode_all(&mut decoder, &stream[split..]).unwrap());
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
                events.extend(decode_all(&mut decoder, piece).unwrap());
            }
            assert_eq!(events, expected, "pieces of {size}");
            assert_eq!(decoder.finish(), None);
        }
    }

    #[test]
    fn finishes_an_unterminated_event() {
        let mut decoder = SseDecoder::default();
        assert!(decode_all(&mut decoder, b"data: x").unwrap().is_empty());
        assert_eq!(decoder.finish(), Some(SseEvent::Data("x".into())));
    }

    /// An event is taken from the buffer it arrived in, unless several lines make it up.
    #[test]
    fn a_one_line_event_is_borrowed_not_copied() {
        let mut decoder = SseDecoder::default();
        let taken: Vec<bool> = decoder
            .push(b"data: a\n\ndata: b\ndata: c\n\n")
            .map(|event| matches!(event, Ok(SseEvent::Data(Cow::Borrowed(_)))))
            .collect();
        assert_eq!(taken, [true, false]);
    }

    /// Events complete before an event that outgrows the limit still come out, then the error;
    /// events a push's caller left untaken come out at the next push, before the new ones.
    #[test]
    fn an_event_past_the_limit_ends_the_stream_after_the_events_before_it() {
        let mut decoder = SseDecoder::default();
        let mut big = b"data: a\n\ndata: ".to_vec();
        big.resize(MAX_EVENT_BYTES + 16, b'x');
        let got: Vec<_> = decoder.push(&big).map(|e| e.map(SseEvent::into_owned)).collect();
        assert_eq!(got, [Ok(SseEvent::Data("a".into())), Err(EventTooLarge)]);

        let mut decoder = SseDecoder::default();
        let first = decoder.push(b"data: 1\n\ndata: 2\n\n").next();
        assert_eq!(first, Some(Ok(SseEvent::Data("1".into()))));
        assert_eq!(
            decode_all(&mut decoder, b"data: 3\n\n").unwrap(),
            [SseEvent::Data("2".into()), SseEvent::Data("3".into())]
        );
    }
}
