//! Our own client-side check of an RPC endpoint, run before ggml connects to it.
//!
//! ggml's RPC client blocks without a timeout on every read and aborts the process on
//! any protocol error (`RPC_STATUS_ASSERT` / `GGML_ABORT` in `ggml-rpc.cpp`), so an
//! endpoint that is not a live, compatible ggml RPC server must be caught here, with
//! socket timeouts, before ggml ever sees it.
//!
//! Wire format (pinned llama.cpp, RPC protocol 7.x), all integers little-endian:
//! a request is `cmd: u8 | size: u64 | size bytes`, a reply is `size: u64 | size bytes`.
//! The first command on a connection must be HELLO (14) with 24 bytes of transport
//! capabilities (zeros: plain TCP); its reply is `major, minor, patch, pad: u8` plus 24
//! bytes of capabilities. DEVICE_COUNT (15) has an empty request and a `u32` reply.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The protocol version of the pinned ggml: a server must have this major version and a
/// minor version not above ours (ggml's own rule in `negotiate_hello`).
pub(super) const PROTOCOL_MAJOR: u8 = 7;
pub(super) const PROTOCOL_MINOR: u8 = 0;

const CMD_HELLO: u8 = 14;
const CMD_DEVICE_COUNT: u8 = 15;
/// Size of the transport-capability block in HELLO requests and replies.
const CAPS_SIZE: usize = 24;
const HELLO_REPLY_SIZE: u64 = 4 + CAPS_SIZE as u64;
const DEVICE_COUNT_REPLY_SIZE: u64 = 4;

/// What went wrong during the check; `client.rs` adds the endpoint.
#[derive(Debug)]
pub(super) enum HandshakeFailure {
    /// No TCP connection (refused, unroutable, or not accepted before the deadline).
    Connect(io::Error),
    /// The peer did not answer (or accept the request) before the deadline.
    TimedOut { during: &'static str },
    /// The peer closed or reset the connection.
    Closed { during: &'static str },
    /// The peer answered something that is not ggml RPC.
    NotRpc { reply: String },
    /// A ggml RPC server of an incompatible protocol version.
    Version { major: u8, minor: u8, patch: u8 },
    /// A ggml RPC server with nothing to serve.
    NoDevices,
    /// Any other socket error.
    Io {
        during: &'static str,
        source: io::Error,
    },
}

/// The server's answers to a successful check.
#[derive(Debug)]
pub(super) struct ServerInfo {
    pub(super) devices: u32,
}

/// Connects to `addr`, says HELLO and asks for the device count, all within `timeout`,
/// then disconnects (ggml's server serves one client at a time and goes back to
/// `accept` when we leave).
pub(super) fn check(addr: SocketAddr, timeout: Duration) -> Result<ServerInfo, HandshakeFailure> {
    let deadline = Instant::now() + timeout;
    let mut conn = Conn::connect(addr, deadline)?;

    let mut hello = Vec::with_capacity(1 + 8 + CAPS_SIZE);
    hello.push(CMD_HELLO);
    hello.extend_from_slice(&(CAPS_SIZE as u64).to_le_bytes());
    hello.extend_from_slice(&[0; CAPS_SIZE]);
    conn.write(&hello, "sending HELLO")?;

    let size = conn.read_array::<8>("reading the HELLO reply")?;
    if u64::from_le_bytes(size) != HELLO_REPLY_SIZE {
        return Err(not_rpc(&size, &mut conn));
    }
    let reply = conn.read_array::<{ HELLO_REPLY_SIZE as usize }>("reading the HELLO reply")?;
    let (major, minor, patch) = (reply[0], reply[1], reply[2]);
    if major != PROTOCOL_MAJOR || minor > PROTOCOL_MINOR {
        return Err(HandshakeFailure::Version {
            major,
            minor,
            patch,
        });
    }

    let mut count = Vec::with_capacity(1 + 8);
    count.push(CMD_DEVICE_COUNT);
    count.extend_from_slice(&0u64.to_le_bytes());
    conn.write(&count, "asking for the device count")?;
    let size = conn.read_array::<8>("reading the device count")?;
    if u64::from_le_bytes(size) != DEVICE_COUNT_REPLY_SIZE {
        return Err(not_rpc(&size, &mut conn));
    }
    let devices = u32::from_le_bytes(conn.read_array::<4>("reading the device count")?);
    if devices == 0 {
        return Err(HandshakeFailure::NoDevices);
    }
    Ok(ServerInfo { devices })
}

/// A reply that is not ggml RPC: show what came, with whatever follows if it arrives
/// at once (an HTTP status line, say), without waiting for more.
fn not_rpc(first: &[u8], conn: &mut Conn) -> HandshakeFailure {
    let mut shown = first.to_vec();
    let mut more = [0u8; 56];
    if conn
        .stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .is_ok()
    {
        if let Ok(n) = conn.stream.read(&mut more) {
            shown.extend_from_slice(&more[..n]);
        }
    }
    HandshakeFailure::NotRpc {
        reply: describe(&shown),
    }
}

/// How many bytes of a binary reply an error shows.
const SHOWN_BYTES: usize = 16;

/// Printable text as text (first line), anything else as hex (the first bytes).
fn describe(bytes: &[u8]) -> String {
    let printable = bytes
        .iter()
        .all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\r' || b == b'\n');
    if printable {
        let text = String::from_utf8_lossy(bytes);
        let line = text.lines().next().unwrap_or_default();
        format!("{line:?}")
    } else if bytes.len() > SHOWN_BYTES {
        format!("{:02x?}...", &bytes[..SHOWN_BYTES])
    } else {
        format!("{bytes:02x?}")
    }
}

struct Conn {
    stream: TcpStream,
    deadline: Instant,
}

impl Conn {
    fn connect(addr: SocketAddr, deadline: Instant) -> Result<Conn, HandshakeFailure> {
        let left = remaining(deadline).unwrap_or(Duration::from_millis(1));
        let stream = TcpStream::connect_timeout(&addr, left).map_err(HandshakeFailure::Connect)?;
        // Like ggml's client: small messages must not wait for Nagle.
        stream
            .set_nodelay(true)
            .map_err(|source| HandshakeFailure::Io {
                during: "connecting",
                source,
            })?;
        Ok(Conn { stream, deadline })
    }

    fn write(&mut self, bytes: &[u8], during: &'static str) -> Result<(), HandshakeFailure> {
        let left = remaining(self.deadline).ok_or(HandshakeFailure::TimedOut { during })?;
        self.stream
            .set_write_timeout(Some(left))
            .map_err(|source| HandshakeFailure::Io { during, source })?;
        self.stream
            .write_all(bytes)
            .map_err(|e| classify(e, during))
    }

    /// Reads exactly N bytes, giving up at the deadline however the peer trickles them.
    fn read_array<const N: usize>(
        &mut self,
        during: &'static str,
    ) -> Result<[u8; N], HandshakeFailure> {
        let mut buf = [0u8; N];
        let mut filled = 0;
        while filled < N {
            let left = remaining(self.deadline).ok_or(HandshakeFailure::TimedOut { during })?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|source| HandshakeFailure::Io { during, source })?;
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Err(HandshakeFailure::Closed { during }),
                // A short reply that then ends is not a ggml reply.
                Ok(0) => {
                    return Err(HandshakeFailure::NotRpc {
                        reply: describe(&buf[..filled]),
                    })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify(e, during)),
            }
        }
        Ok(buf)
    }
}

/// Time left before the deadline; `None` once it has passed (a zero timeout would mean
/// "block forever" to the socket API).
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn classify(e: io::Error, during: &'static str) -> HandshakeFailure {
    use io::ErrorKind::*;
    match e.kind() {
        // Socket timeouts surface as WouldBlock on Unix and TimedOut on Windows.
        WouldBlock | TimedOut => HandshakeFailure::TimedOut { during },
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
            HandshakeFailure::Closed { during }
        }
        _ => HandshakeFailure::Io { during, source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn replies_are_shown_as_text_or_hex() {
        assert_eq!(
            describe(b"HTTP/1.1 400 Bad Request\r\nServer: x\r\n"),
            "\"HTTP/1.1 400 Bad Request\""
        );
        assert_eq!(describe(&[0xde, 0xad, 1]), "[de, ad, 01]");
        assert!(describe(&[0xa5; 64]).ends_with("a5]..."));
    }
}
