//! PostgreSQL's wire framing: splitting a byte stream into messages however the bytes arrive,
//! and reading the few fields of a message the proxy acts on.
//!
//! A connection opens with untagged packets from the client (`Int32 length, Int32 code, ..`):
//! an `SSLRequest` or `GSSENCRequest` (answered with one byte, after which the client starts
//! over), a `CancelRequest`, or the `StartupMessage`. Every later message, in both directions,
//! is `Byte1 tag, Int32 length, body`, the length counting itself but not the tag.

/// The code of an `SSLRequest`.
pub(crate) const SSL_REQUEST: u32 = 80_877_103;
/// The code of a `GSSENCRequest`.
pub(crate) const GSSENC_REQUEST: u32 = 80_877_104;
/// The code of a `CancelRequest` (forwarded like a `StartupMessage`: the server closes after it).
#[cfg(test)]
pub(crate) const CANCEL_REQUEST: u32 = 80_877_102;

/// The largest message accepted: PostgreSQL's own limit for one value is 1 GiB.
const MAX_LENGTH: usize = (1 << 30) + 1024;

/// A byte stream that is not PostgreSQL's framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FramingError(pub(crate) String);

/// One complete message, as it was on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The type byte; `None` for the untagged packets that open a connection.
    pub(crate) tag: Option<u8>,
    /// The whole message: tag (if any), length and body.
    pub(crate) bytes: Vec<u8>,
}

impl Frame {
    /// The message without its tag and length.
    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[if self.tag.is_some() { 5 } else { 4 }..]
    }

    /// An untagged packet's code: the protocol version of a `StartupMessage`, or a request code.
    pub(crate) fn code(&self) -> Option<u32> {
        match (self.tag, self.body()) {
            (None, [a, b, c, d, ..]) => Some(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => None,
        }
    }

    /// Whether this is an `SSLRequest` or `GSSENCRequest`: the server answers it with one byte
    /// and the client then sends another untagged packet.
    pub(crate) fn is_encryption_request(&self) -> bool {
        matches!(self.code(), Some(SSL_REQUEST | GSSENC_REQUEST))
    }
}

/// Splits a byte stream into [`Frame`]s, whatever the reads that deliver it: a message split
/// over several reads, or several messages in one.
#[derive(Debug)]
pub(crate) struct Framer {
    buf: Vec<u8>,
    /// Where the next message starts in `buf`.
    start: usize,
    /// Whether the next message is an untagged packet.
    untagged: bool,
}

impl Framer {
    /// The client's side of a connection: untagged packets until the `StartupMessage`.
    pub(crate) fn frontend() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            untagged: true,
        }
    }

    /// The server's side of a connection: tagged messages only.
    pub(crate) fn backend() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            untagged: false,
        }
    }

    /// Adds bytes as they were read.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `None` until its last byte has arrived.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, FramingError> {
        let pending = &self.buf[self.start..];
        let header = if self.untagged { 4 } else { 5 };
        if pending.len() < header {
            return Ok(None);
        }
        let at = header - 4;
        let length = u32::from_be_bytes([
            pending[at],
            pending[at + 1],
            pending[at + 2],
            pending[at + 3],
        ]);
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        // An untagged packet carries at least its code.
        let least = if self.untagged { 8 } else { 4 };
        if !(least..=MAX_LENGTH).contains(&length) {
            return Err(FramingError(format!(
                "message length {length} (tag {:?}) is not PostgreSQL's framing",
                (!self.untagged).then(|| char::from(pending[0]))
            )));
        }
        let total = at + length;
        if pending.len() < total {
            return Ok(None);
        }
        let frame = Frame {
            tag: (!self.untagged).then_some(pending[0]),
            bytes: pending[..total].to_vec(),
        };
        self.start += total;
        if self.untagged && !frame.is_encryption_request() {
            // The StartupMessage (or a CancelRequest, after which nothing follows).
            self.untagged = false;
        }
        Ok(Some(frame))
    }
}

/// What a client message asks of the server, as far as faults care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `Parse`: prepares `sql` as the statement `name` (`""` is the unnamed statement).
    Parse { name: String, sql: String },
    /// `Bind`: runs the prepared statement `statement` (with the `Execute` that follows).
    Bind { statement: String },
    /// `Query`: runs `sql` with the simple protocol; the server answers with `ReadyForQuery`.
    Query { sql: String },
    /// `Sync` (or a `FunctionCall`): the server answers with `ReadyForQuery`.
    Sync,
    /// Anything else.
    Other,
}

impl Request {
    /// The request `frame` makes (a tagged client message).
    pub(crate) fn of(frame: &Frame) -> Self {
        let mut fields = frame.body().split(|&b| b == 0);
        let mut text = || String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
        match frame.tag {
            Some(b'P') => {
                let name = text();
                Self::Parse { name, sql: text() }
            }
            Some(b'B') => {
                let _portal = text();
                Self::Bind { statement: text() }
            }
            Some(b'Q') => Self::Query { sql: text() },
            Some(b'S' | b'F') => Self::Sync,
            _ => Self::Other,
        }
    }

    /// Whether the server answers this message with `ReadyForQuery`.
    pub(crate) fn ends_request(&self) -> bool {
        matches!(self, Self::Query { .. } | Self::Sync)
    }
}

/// Whether a server message is `ReadyForQuery`: the end of the answer to one `Query` or `Sync`.
pub(crate) fn is_ready_for_query(frame: &Frame) -> bool {
    frame.tag == Some(b'Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    fn untagged(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut bytes = u32::try_from(rest.len() + 8)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        bytes.extend_from_slice(&code.to_be_bytes());
        bytes.extend_from_slice(rest);
        bytes
    }

    /// What a client sends: an `SSLRequest`, the `StartupMessage`, then the extended and simple
    /// protocols (a prepared INSERT, its Bind/Execute/Sync, then COMMIT).
    fn client_stream() -> Vec<Vec<u8>> {
        vec![
            untagged(SSL_REQUEST, &[]),
            untagged(196_608, b"user\0postgres\0database\0app\0\0"),
            tagged(b'P', b"sqlx_s_1\0INSERT INTO t VALUES ($1)\0\0\0"),
            tagged(b'D', b"Ssqlx_s_1\0"),
            tagged(b'S', b""),
            tagged(b'B', b"\0sqlx_s_1\0\0\0\0\x01\0\0\0\x04\0\0\0\x07\0\0"),
            tagged(b'E', b"\0\0\0\0\0"),
            tagged(b'S', b""),
            tagged(b'Q', b"COMMIT\0"),
            tagged(b'X', b""),
        ]
    }

    /// What a server answers: authentication, parameters, results and `ReadyForQuery`.
    fn server_stream() -> Vec<Vec<u8>> {
        vec![
            tagged(b'R', &[0, 0, 0, 0]),
            tagged(b'S', b"server_version\x0016.4\0"),
            tagged(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]),
            tagged(b'Z', b"I"),
            tagged(b'1', b""),
            tagged(b'D', &[0, 1, 0, 0, 0, 1, b'7']),
            tagged(b'C', b"INSERT 0 1\0"),
            tagged(b'Z', b"T"),
        ]
    }

    /// Feeds `stream` to `framer` in the given chunks, collecting every frame as it completes.
    fn frames(mut framer: Framer, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk);
            while let Some(frame) = framer.next_frame().unwrap() {
                out.push(frame.bytes);
            }
        }
        out
    }

    fn check_every_split(framer: fn() -> Framer, messages: &[Vec<u8>]) {
        let stream = messages.concat();
        // Two reads, split at every position.
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(frames(framer(), &[a, b]), messages, "split at {cut}");
        }
        // Three reads, split at every pair of positions.
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let chunks = [&stream[..i], &stream[i..j], &stream[j..]];
                assert_eq!(frames(framer(), &chunks), messages, "split at {i}, {j}");
            }
        }
        // One byte per read.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(frames(framer(), &bytes), messages, "byte by byte");
    }

    #[test]
    fn client_messages_split_at_every_position_frame_the_same() {
        check_every_split(Framer::frontend, &client_stream());
    }

    #[test]
    fn server_messages_split_at_every_position_frame_the_same() {
        check_every_split(Framer::backend, &server_stream());
    }

    #[test]
    fn a_cancel_request_is_one_untagged_packet() {
        let cancel = untagged(CANCEL_REQUEST, &[0, 0, 0, 1, 0, 0, 0, 2]);
        let mut framer = Framer::frontend();
        framer.push(&cancel);
        let frame = framer.next_frame().unwrap().unwrap();
        assert_eq!((frame.tag, frame.code()), (None, Some(CANCEL_REQUEST)));
        assert_eq!(framer.next_frame().unwrap(), None);
    }

    #[test]
    fn requests_name_their_sql_and_statement() {
        let messages = client_stream();
        let mut framer = Framer::frontend();
        framer.push(&messages.concat());
        let mut requests = Vec::new();
        while let Some(frame) = framer.next_frame().unwrap() {
            if frame.tag.is_some() {
                requests.push(Request::of(&frame));
            } else {
                assert_eq!(
                    frame.is_encryption_request(),
                    frame.code() == Some(SSL_REQUEST)
                );
            }
        }
        assert_eq!(
            requests,
            [
                Request::Parse {
                    name: "sqlx_s_1".into(),
                    sql: "INSERT INTO t VALUES ($1)".into()
                },
                Request::Other,
                Request::Sync,
                Request::Bind {
                    statement: "sqlx_s_1".into()
                },
                Request::Other,
                Request::Sync,
                Request::Query {
                    sql: "COMMIT".into()
                },
                Request::Other,
            ]
        );
        let ends = requests.iter().filter(|r| r.ends_request()).count();
        assert_eq!(ends, 3);
    }

    #[test]
    fn a_length_that_cannot_be_is_an_error() {
        let mut framer = Framer::backend();
        framer.push(&[b'Z', 0, 0, 0, 3]);
        assert!(framer.next_frame().is_err());
        let mut framer = Framer::frontend();
        framer.push(&[0, 0, 0, 4, 0, 0, 0, 0]);
        assert!(framer.next_frame().is_err());
    }

    #[test]
    fn ready_for_query_ends_an_answer() {
        let mut framer = Framer::backend();
        framer.push(&server_stream().concat());
        let mut ready = 0;
        while let Some(frame) = framer.next_frame().unwrap() {
            ready += usize::from(is_ready_for_query(&frame));
        }
        assert_eq!(ready, 2);
    }
}
