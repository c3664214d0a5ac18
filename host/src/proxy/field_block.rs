//! Field blocks, `block-policy`'s header lists (`name: value` lines, each ended by CRLF):
//! written from the client's header map for the guest, read back from a decision into the
//! lines the host then validates like any other header from the guest.

use std::ops::Range;

/// `headers` as one field block, in the map's order, repeats kept.
pub fn from_header_map(headers: &http::HeaderMap) -> Vec<u8> {
    let size = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let mut block = Vec::with_capacity(size);
    for (name, value) in headers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    block
}

/// Whether `block` is [`from_header_map`] of `headers`, without writing it.
pub fn is_block_of(block: &[u8], headers: &http::HeaderMap) -> bool {
    let mut rest = block;
    for (name, value) in headers {
        let line = [name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"];
        for piece in line {
            match rest.strip_prefix(piece) {
                Some(after) => rest = after,
                None => return false,
            }
        }
    }
    rest.is_empty()
}

/// One line of a block: the name's bytes and where its value lies in the block.
pub struct Line<'a> {
    pub name: &'a [u8],
    pub value: Range<usize>,
}

/// The lines of `block`, in order; empty lines are skipped. A line without a `:` has the whole
/// line as its name, which no header name check accepts.
pub fn lines(block: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let mut start = 0;
    std::iter::from_fn(move || {
        while start < block.len() {
            let line_start = start;
            let end = memchr::memchr(b'\n', &block[start..]).map_or(block.len(), |at| start + at);
            start = end + 1;
            let mut line = &block[line_start..end];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if line.is_empty() {
                continue;
            }
            let Some(colon) = memchr::memchr(b':', line) else {
                return Some(Line {
                    name: line,
                    value: 0..0,
                });
            };
            let is_blank = |byte: &&u8| **byte == b' ' || **byte == b'\t';
            let value = &line[colon + 1..];
            let leading = value.iter().take_while(is_blank).count();
            let trailing = value[leading..].iter().rev().take_while(is_blank).count();
            let value_start = line_start + colon + 1;
            return Some(Line {
                name: &line[..colon],
                value: value_start + leading..value_start + value.len() - trailing,
            });
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_recognised_as_its_header_maps_and_no_other() {
        let mut headers = http::HeaderMap::new();
        headers.append("apikey", http::HeaderValue::from_static("k1"));
        headers.append("accept", http::HeaderValue::from_static("*/*"));
        headers.append("apikey", http::HeaderValue::from_static("k2"));
        let block = from_header_map(&headers);
        assert!(is_block_of(&block, &headers));
        assert!(
            !is_block_of(&block[..block.len() - 1], &headers),
            "cut short"
        );
        let mut longer = block.clone();
        longer.extend_from_slice(b"x: 1\r\n");
        assert!(!is_block_of(&longer, &headers), "more lines");
        let mut other = headers.clone();
        other.insert("accept", http::HeaderValue::from_static("*/+"));
        assert!(!is_block_of(&block, &other), "a value differs");
        assert!(is_block_of(b"", &http::HeaderMap::new()));
        // The order of repeats counts.
        let mut swapped = http::HeaderMap::new();
        swapped.append("apikey", http::HeaderValue::from_static("k2"));
        swapped.append("accept", http::HeaderValue::from_static("*/*"));
        swapped.append("apikey", http::HeaderValue::from_static("k1"));
        assert!(!is_block_of(&block, &swapped));
    }

    fn read(block: &[u8]) -> Vec<(String, String)> {
        lines(block)
            .map(|line| {
                (
                    String::from_utf8_lossy(line.name).into_owned(),
                    String::from_utf8_lossy(&block[line.value]).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_header_map_goes_out_and_comes_back_in_order_with_repeats() {
        let mut headers = http::HeaderMap::new();
        headers.append("a", "1".parse().unwrap());
        headers.append("set-cookie", "x=1; Path=/".parse().unwrap());
        headers.append("set-cookie", "y=2".parse().unwrap());
        headers.append("b", "v: with colon".parse().unwrap());
        let block = from_header_map(&headers);
        assert_eq!(
            read(&block),
            [
                ("a", "1"),
                ("set-cookie", "x=1; Path=/"),
                ("set-cookie", "y=2"),
                ("b", "v: with colon"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
    }

    #[test]
    fn blanks_around_a_value_and_empty_lines_are_dropped_a_line_without_colon_is_kept_as_a_name() {
        assert_eq!(
            read(b"a:\t 1 \r\n\r\nb:\nno colon\n"),
            [("a", "1"), ("b", ""), ("no colon", "")].map(|(n, v)| (n.to_string(), v.to_string()))
        );
        assert!(read(b"").is_empty());
    }
}
