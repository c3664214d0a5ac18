//! Raw HTTP/2 frames for tests that must decide exactly what goes on the wire (floods, resets,
//! header-list bombs), where a client library would refuse or fix what the test sends.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
pub const PROTOCOL_ERROR: u32 = 0x1;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
pub fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

pub fn hpack_string(out: &mut Vec<u8>, text: &[u8]) {
    hpack_int(out, 0, 7, text.len());
    out.extend_from_slice(text);
}

/// `GET /api/x` over https with `apikey: key`: static-table pseudo-headers, literal fields.
pub fn request_block(authority: &str, key: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x04]; // :method GET, :scheme https, :path (indexed name)
    hpack_string(&mut block, b"/api/x");
    block.push(0x01); // :authority (indexed name), not indexed
    hpack_string(&mut block, authority.as_bytes());
    block.push(0x00); // a new name, not indexed
    hpack_string(&mut block, b"apikey");
    hpack_string(&mut block, key.as_bytes());
    block
}

/// What the gateway did with a raw HTTP/2 connection after the test's frames.
#[derive(Debug, PartialEq)]
pub enum Ending {
    GoAway(u32),
    Closed,
    /// Still open, nothing final said within the wait.
    Open,
}

/// Read frames until GOAWAY, the connection's end, or `wait` without either.
pub async fn ending(stream: &mut (impl AsyncRead + Unpin), wait: Duration) -> Ending {
    let read = async {
        let mut head = [0u8; 9];
        loop {
            if stream.read_exact(&mut head).await.is_err() {
                return Ending::Closed;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return Ending::Closed;
            }
            if head[3] == GOAWAY && payload.len() >= 8 {
                let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                return Ending::GoAway(code);
            }
        }
    };
    tokio::time::timeout(wait, read)
        .await
        .unwrap_or(Ending::Open)
}

/// Read frames until one on `stream_id` that is not WINDOW_UPDATE: its type and its first
/// four payload bytes (a RST_STREAM's error code); `None` if the connection ends first.
pub async fn stream_answer(
    stream: &mut (impl AsyncRead + Unpin),
    stream_id: u32,
) -> Option<(u8, u32)> {
    let mut head = [0u8; 9];
    loop {
        stream.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.ok()?;
        let id = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
        if id == stream_id && head[3] != 0x8 {
            let code = payload
                .get(..4)
                .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()));
            return Some((head[3], code));
        }
    }
}
