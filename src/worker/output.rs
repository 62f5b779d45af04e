//! Bounded output handling for child processes.
//!
//! Two pieces, one per concern:
//!
//! - [`TailBuffer`] keeps the last `cap` bytes of a stream and counts everything that went
//!   through it, so a task's result can carry "the end of the log" of any size of output;
//! - `Coalescer` (crate-private) turns the bytes read from a pipe into [`OutputChunk`]s of at
//!   most [`MAX_CHUNK_BYTES`], at most one per flush, cut at line ends when it can. What does not
//!   fit before the next flush is counted as dropped, never queued without bound.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use tokio::sync::mpsc::{error::TrySendError, Sender};

/// Largest text one [`OutputChunk`] carries, in bytes of the child's output.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Which output stream of the child a chunk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output (and, under a pseudo-terminal, standard error too).
    Stdout,
    /// Standard error.
    Stderr,
}

/// A piece of a child's output, as delivered while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// The stream it was read from.
    pub stream: Stream,
    /// The text (UTF-8, invalid bytes replaced); at most [`MAX_CHUNK_BYTES`] of output bytes.
    pub text: String,
    /// 0-based index, within the stream's whole output, of the line this chunk starts in.
    pub first_line: u64,
    /// Bytes of this stream not delivered since the previous chunk (over the per-flush cap);
    /// they still count in the totals and in the tail.
    pub dropped_bytes: u64,
}

/// The last `cap` bytes of a stream, plus the count of every byte pushed.
#[derive(Debug, Clone, Default)]
pub struct TailBuffer {
    cap: usize,
    buf: VecDeque<u8>,
    total: u64,
}

impl TailBuffer {
    /// An empty buffer keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            buf: VecDeque::with_capacity(cap.min(64 * 1024)),
            total: 0,
        }
    }

    /// Appends bytes, forgetting the oldest ones beyond the cap.
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if data.len() >= self.cap {
            self.buf.clear();
            self.buf.extend(&data[data.len() - self.cap..]);
            return;
        }
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    /// The kept bytes as text (invalid UTF-8 replaced). When older bytes were forgotten, the text
    /// starts at the first character boundary, so a character cut in half is left out.
    pub fn tail(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut bytes = Vec::with_capacity(self.buf.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        let start = if self.total > bytes.len() as u64 {
            bytes
                .iter()
                .take(3)
                .take_while(|b| is_continuation(**b))
                .count()
        } else {
            0
        };
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Every byte ever pushed, including those no longer kept.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The most bytes kept.
    pub fn cap(&self) -> usize {
        self.cap
    }
}

fn is_continuation(b: u8) -> bool {
    b & 0b1100_0000 == 0b1000_0000
}

/// How many leading bytes hold only whole characters: a multibyte character still missing its
/// last bytes at the end is left out (it may be completed by the next read).
fn complete_prefix(bytes: &[u8]) -> usize {
    let len = bytes.len();
    let cont = bytes
        .iter()
        .rev()
        .take(3)
        .take_while(|b| is_continuation(**b))
        .count();
    let Some(&lead) = bytes.len().checked_sub(cont + 1).map(|i| &bytes[i]) else {
        return len;
    };
    let needed = match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => return len,
    };
    if cont + 1 < needed {
        len - cont - 1
    } else {
        len
    }
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

/// Collects one stream's bytes between flushes and cuts them into chunks.
#[derive(Debug)]
pub(crate) struct Coalescer {
    stream: Stream,
    tail: TailBuffer,
    /// Bytes waiting for the next flush (at most [`MAX_CHUNK_BYTES`]).
    pending: Vec<u8>,
    /// Line index of `pending[0]` within the whole stream.
    pending_line: u64,
    /// Bytes that did not fit in `pending`; once non-zero, `pending` is sealed until sent.
    dropped: u64,
    /// Newlines among the dropped bytes.
    dropped_lines: u64,
}

impl Coalescer {
    /// A collector for `stream` whose tail keeps `tail_cap` bytes.
    pub(crate) fn new(stream: Stream, tail_cap: usize) -> Self {
        Self {
            stream,
            tail: TailBuffer::new(tail_cap),
            pending: Vec::new(),
            pending_line: 0,
            dropped: 0,
            dropped_lines: 0,
        }
    }

    /// Takes bytes read from the child; never blocks and never grows past the cap.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.tail.push(data);
        let room = if self.dropped > 0 {
            0 // sealed: keep the chunk's text contiguous
        } else {
            MAX_CHUNK_BYTES - self.pending.len()
        };
        let take = room.min(data.len());
        self.pending.extend_from_slice(&data[..take]);
        let rest = &data[take..];
        self.dropped += rest.len() as u64;
        self.dropped_lines += newlines(rest);
    }

    /// The chunk the next flush would send and how many pending bytes it covers. Unless `all`,
    /// it ends at the last newline (or, with none, at the last whole character).
    fn next_chunk(&self, all: bool) -> Option<(OutputChunk, usize)> {
        let cut = if all || self.dropped > 0 {
            self.pending.len()
        } else if let Some(i) = self.pending.iter().rposition(|b| *b == b'\n') {
            i + 1
        } else {
            complete_prefix(&self.pending)
        };
        if cut == 0 && self.dropped == 0 {
            return None;
        }
        let chunk = OutputChunk {
            stream: self.stream,
            text: String::from_utf8_lossy(&self.pending[..cut]).into_owned(),
            first_line: self.pending_line,
            dropped_bytes: self.dropped,
        };
        Some((chunk, cut))
    }

    /// Marks the first `cut` pending bytes (and every dropped byte) as delivered.
    fn commit(&mut self, cut: usize) {
        self.pending_line += newlines(&self.pending[..cut]);
        self.pending.drain(..cut);
        if self.dropped > 0 {
            // Dropped bytes came after all of `pending`, which a sealed flush sends whole.
            self.pending_line += self.dropped_lines;
            self.dropped = 0;
            self.dropped_lines = 0;
        }
    }

    /// Sends what is pending if the channel has room right now; otherwise keeps it for the next
    /// flush. A closed channel discards the output (the tail still keeps it).
    pub(crate) fn flush(&mut self, tx: &Sender<OutputChunk>) {
        if let Some((chunk, cut)) = self.next_chunk(false) {
            match tx.try_send(chunk) {
                Ok(()) | Err(TrySendError::Closed(_)) => self.commit(cut),
                Err(TrySendError::Full(_)) => {}
            }
        }
    }

    /// Sends everything still pending, waiting for room until `deadline` at the latest.
    pub(crate) async fn flush_final(
        &mut self,
        tx: &Sender<OutputChunk>,
        deadline: tokio::time::Instant,
    ) {
        if let Some((chunk, cut)) = self.next_chunk(true) {
            let _ = tokio::time::timeout_at(deadline, tx.send(chunk)).await;
            self.commit(cut);
        }
    }

    /// The stream's tail buffer.
    pub(crate) fn tail(&self) -> &TailBuffer {
        &self.tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_buffer_keeps_the_last_cap_bytes_and_counts_all() {
        let mut t = TailBuffer::new(5);
        t.push(b"abc");
        assert_eq!((t.tail().as_str(), t.total()), ("abc", 3));
        t.push(b"defg");
        assert_eq!((t.tail().as_str(), t.total()), ("cdefg", 7));
        t.push(b"0123456789");
        assert_eq!((t.tail().as_str(), t.total()), ("56789", 17));
        assert_eq!(t.cap(), 5);
    }

    #[test]
    fn a_tail_cut_inside_a_multibyte_character_starts_at_the_next_one() {
        let mut t = TailBuffer::new(4);
        t.push("aé€".as_bytes()); // 1 + 2 + 3 bytes: the cut falls inside "é"
        assert_eq!(t.tail(), "€");
        assert_eq!(t.total(), 6);
        let mut t = TailBuffer::new(5);
        t.push("aé€".as_bytes());
        assert_eq!(t.tail(), "é€");
    }

    #[test]
    fn an_uncut_tail_keeps_even_invalid_leading_bytes() {
        let mut t = TailBuffer::new(8);
        t.push(&[0x80, b'x']);
        assert_eq!(t.tail(), "\u{FFFD}x");
    }

    #[test]
    fn a_zero_cap_tail_buffer_only_counts() {
        let mut t = TailBuffer::new(0);
        t.push(b"hello");
        assert_eq!((t.tail().as_str(), t.total()), ("", 5));
    }

    #[test]
    fn a_flush_sends_whole_lines_and_keeps_the_partial_one() {
        let mut c = Coalescer::new(Stream::Stdout, 1024);
        c.push(b"one\ntwo\nthr");
        let (chunk, cut) = c.next_chunk(false).unwrap();
        assert_eq!((chunk.text.as_str(), chunk.first_line), ("one\ntwo\n", 0));
        c.commit(cut);
        let (chunk, cut) = c.next_chunk(false).unwrap();
        assert_eq!((chunk.text.as_str(), chunk.first_line), ("thr", 2));
        c.commit(cut);
        c.push(b"ee\nfour\n");
        let (chunk, _) = c.next_chunk(false).unwrap();
        assert_eq!((chunk.text.as_str(), chunk.first_line), ("ee\nfour\n", 2));
    }

    #[test]
    fn a_flush_holds_back_a_half_received_character() {
        let mut c = Coalescer::new(Stream::Stderr, 1024);
        let euro = "€".as_bytes();
        c.push(&[b'a', euro[0], euro[1]]);
        let (chunk, cut) = c.next_chunk(false).unwrap();
        assert_eq!(chunk.text, "a");
        c.commit(cut);
        c.push(&euro[2..]);
        assert_eq!(c.next_chunk(false).unwrap().0.text, "€");
    }

    #[test]
    fn a_long_line_is_split_at_the_cap_and_the_rest_counted_as_dropped() {
        let mut c = Coalescer::new(Stream::Stdout, 16);
        let mut line = vec![b'x'; MAX_CHUNK_BYTES + 10];
        line.extend_from_slice(b"\n\nz\n");
        c.push(&line);
        let (chunk, cut) = c.next_chunk(false).unwrap();
        assert_eq!(chunk.text.len(), MAX_CHUNK_BYTES);
        assert_eq!(chunk.dropped_bytes, 14);
        c.commit(cut);
        assert!(c.next_chunk(false).is_none());
        c.push(b"after\n");
        let (chunk, _) = c.next_chunk(false).unwrap();
        assert_eq!((chunk.text.as_str(), chunk.first_line), ("after\n", 3));
        assert_eq!(c.tail().total(), MAX_CHUNK_BYTES as u64 + 20);
        assert_eq!(c.tail().tail(), "xxxxxx\n\nz\nafter\n");
    }

    #[tokio::test]
    async fn a_full_channel_keeps_the_chunk_pending_until_there_is_room() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let mut c = Coalescer::new(Stream::Stdout, 1024);
        c.push(b"a\n");
        c.flush(&tx);
        c.push(b"b\n");
        c.flush(&tx); // full: "b\n" stays pending
        c.push(b"c\n");
        assert_eq!(rx.recv().await.unwrap().text, "a\n");
        c.flush(&tx);
        let chunk = rx.recv().await.unwrap();
        assert_eq!((chunk.text.as_str(), chunk.first_line), ("b\nc\n", 1));
    }
}
