//! The stream follower on hand-made wires, fed in pieces of every size.

use super::*;

/// The verdicts for `wire` fed in pieces of `piece` bytes, and whether the follower
/// still follows.
fn verdicts(wire: &str, piece: usize) -> (Vec<Option<&'static str>>, bool) {
    let (mut sniffing, verdicts) = Sniffing::new((), |_: &Refused<'_>| Vec::new());
    for chunk in wire.as_bytes().chunks(piece) {
        assert_eq!(sniffing.follower.feed(chunk), None);
    }
    let following = !matches!(sniffing.follower.state, State::Lost);
    (verdicts.lock().unwrap().drain(..).collect(), following)
}

const SMUGGLED: Option<&str> = Some("Content-Length with Transfer-Encoding");

#[test]
fn bodies_are_skipped_and_every_head_gets_a_verdict_in_order() {
    let wire = "\r\nPOST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n\
        GET / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n\
        POST / HTTP/1.1\nTransfer-Encoding: gzip, chunked\n\n\
        4;x=y\r\nabcd\r\n0\r\nt: 1\r\n\r\n\
        GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    for piece in [1, 2, 7, wire.len()] {
        assert_eq!(
            verdicts(wire, piece),
            (vec![None, None, None], true),
            "{piece}"
        );
    }
}

#[test]
fn smuggling_shapes_are_found_and_end_the_following() {
    for head in [
        "GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ] {
        assert_eq!(verdicts(head, 3), (vec![SMUGGLED], false));
    }
    let two = "GET / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n";
    assert_eq!(
        verdicts(two, 5),
        (vec![Some("more than one Content-Length")], false)
    );
}

#[test]
fn an_upgrade_ends_the_following() {
    let wire = "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x01\x05hello\r\n\r\n";
    assert_eq!(verdicts(wire, 4), (vec![None], false));
}

/// Where `wire`, fed in pieces of `piece` bytes, is cut and why, with what the refused
/// head said.
fn cut(wire: &[u8], piece: usize) -> Option<(usize, &'static str, bool, Option<Vec<u8>>)> {
    let (mut sniffing, _) = Sniffing::new((), |_: &Refused<'_>| Vec::new());
    let mut offset = 0;
    for chunk in wire.chunks(piece) {
        if let Some((kept, reason)) = sniffing.follower.feed(chunk) {
            assert!(kept <= chunk.len());
            let refused = sniffing.follower.refused(reason);
            return Some((
                offset + kept,
                reason,
                refused.head,
                refused.accept.map(<[u8]>::to_vec),
            ));
        }
        offset += chunk.len();
    }
    None
}

/// A `HEAD` request's head of `lines` header lines (`accept` first, `x-pad` last) padded to
/// `size` bytes in all.
fn head_of(size: usize, lines: usize) -> Vec<u8> {
    let mut head = b"HEAD / HTTP/1.1\r\naccept: text/html\r\n".to_vec();
    for i in 2..lines {
        head.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    let pad = size - head.len() - "x-pad: \r\n\r\n".len();
    head.extend_from_slice(format!("x-pad: {}\r\n\r\n", "p".repeat(pad)).as_bytes());
    head
}

#[test]
fn a_head_of_32k_passes_and_one_byte_more_is_cut_at_the_limit() {
    let limit = crate::server::MAX_HEAD_BYTES;
    for piece in [1, 5, 4096, usize::MAX] {
        assert_eq!(cut(&head_of(limit, 10), piece.min(limit)), None, "{piece}");
        let over = head_of(limit + 1, 10);
        assert_eq!(
            cut(&over, piece.min(over.len())),
            Some((
                limit,
                "request head over 32 KiB",
                true,
                Some(b"text/html".to_vec())
            )),
            "{piece}"
        );
    }
    // Blank lines before the request line count: hyper holds them too.
    let mut blank_first = b"\r\n".repeat(limit / 2);
    blank_first.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(cut(&blank_first, 1000).map(|c| c.0), Some(limit));
}

#[test]
fn the_101st_header_line_is_cut_at_its_first_byte() {
    let hundred = head_of(4000, 100);
    assert_eq!(cut(&hundred, 7), None);
    let over = head_of(4000, 101);
    let at = over
        .windows(6)
        .position(|w| w == b"x-pad:")
        .expect("the last line");
    for piece in [1, 7, over.len()] {
        assert_eq!(
            cut(&over, piece).map(|c| (c.0, c.1)),
            Some((at, "more than 100 header lines")),
            "{piece}"
        );
    }
}

#[test]
fn a_refused_head_is_answered_after_hyper_flushed_then_the_stream_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (mut sniffing, _) = Sniffing::new(server, |refused: &Refused<'_>| {
            format!("refused: {}", refused.reason).into_bytes()
        });
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut wire = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        wire.extend(head_of(64 * 1024, 5));
        client_write.write_all(&wire).await.unwrap();
        let mut seen = Vec::new();
        let mut chunk = [0u8; 1000];
        let mut waited = false;
        loop {
            let mut read = ReadBuf::new(&mut chunk);
            let polled = std::future::poll_fn(|cx| {
                Poll::Ready(Pin::new(&mut sniffing).poll_read(cx, &mut read))
            })
            .await;
            let Poll::Ready(done) = polled else {
                // The refusal waits for hyper's answer before it to be flushed.
                assert!(!waited && seen.len() > 1000, "{}", seen.len());
                waited = true;
                sniffing.flush().await.unwrap();
                continue;
            };
            done.unwrap();
            if read.filled().is_empty() {
                break;
            }
            seen.extend_from_slice(read.filled());
            // An answer to the first request, written and not yet flushed.
            if seen.len() <= 1000 {
                sniffing.write_all(b"earlier answer; ").await.unwrap();
            }
        }
        assert!(waited);
        assert_eq!(
            seen.len(),
            "GET / HTTP/1.1\r\n\r\n".len() + crate::server::MAX_HEAD_BYTES
        );
        let mut answer = String::new();
        client_read.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "earlier answer; refused: request head over 32 KiB");
    });
}
