//! Field blocks: how `block-policy` carries a header list across the component boundary, as
//! HTTP/1 field lines (`name: value\r\n`), one list instead of two strings per header.

/// The headers of `block`, in order: (name, value). A line without a `:` is skipped; the host
/// never sends one.
pub fn headers(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    block.split(|&byte| byte == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&byte| byte == b':')?;
        let value = &line[colon + 1..];
        let start = value
            .iter()
            .position(|&byte| byte != b' ' && byte != b'\t')
            .unwrap_or(value.len());
        Some((&line[..colon], &value[start..]))
    })
}

/// Add a header to `block`. A value can hold what no header value may (an auth API's consumer
/// name with a newline, say): its LFs are written as CRs, so it stays one line, which the host
/// then refuses (a 500, as for any invalid value), instead of becoming a second header.
pub fn push(block: &mut Vec<u8>, name: &str, value: &[u8]) {
    block.reserve(name.len() + value.len() + 4);
    block.extend_from_slice(name.as_bytes());
    block.extend_from_slice(b": ");
    if value.contains(&b'\n') {
        block.extend(
            value
                .iter()
                .map(|&byte| if byte == b'\n' { b'\r' } else { byte }),
        );
    } else {
        block.extend_from_slice(value);
    }
    block.extend_from_slice(b"\r\n");
}

/// Remove every header named `name` (any case) from `block`.
pub fn remove(block: &mut Vec<u8>, name: &str) {
    if !headers(block).any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())) {
        return;
    }
    let mut kept = Vec::with_capacity(block.len());
    for (n, value) in headers(block) {
        if !n.eq_ignore_ascii_case(name.as_bytes()) {
            kept.extend_from_slice(n);
            kept.extend_from_slice(b": ");
            kept.extend_from_slice(value);
            kept.extend_from_slice(b"\r\n");
        }
    }
    *block = kept;
}

/// The first value of `name` (any case) in `block`.
#[cfg(test)]
pub fn get<'a>(block: &'a [u8], name: &str) -> Option<&'a [u8]> {
    headers(block)
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, value)| value)
}

/// A header list as a field block.
#[cfg(test)]
pub fn from_pairs<V: AsRef<[u8]>>(pairs: &[(String, V)]) -> Vec<u8> {
    let size = pairs
        .iter()
        .map(|(name, value)| name.len() + value.as_ref().len() + 4)
        .sum();
    let mut block = Vec::with_capacity(size);
    for (name, value) in pairs {
        push(&mut block, name, value.as_ref());
    }
    block
}

/// A name or value as text, U+FFFD for what is not UTF-8 (`String::from_utf8_lossy`): valid
/// text (every name the host sends, every key in practice) is checked once and copied, which
/// in wasm costs less than the lossy decoder's chunking.
pub fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// A field block as a header list.
pub fn to_pairs(block: &[u8]) -> Vec<(String, Vec<u8>)> {
    headers(block)
        .map(|(name, value)| (text(name), value.to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_list_survives_the_block_in_order_with_repeats() {
        let pairs = vec![
            ("a".to_string(), b"1".to_vec()),
            ("set-cookie".to_string(), b"x=1; Path=/".to_vec()),
            ("a".to_string(), b"".to_vec()),
            ("b".to_string(), b"v: with colon".to_vec()),
        ];
        let block = from_pairs(&pairs);
        assert_eq!(
            block,
            b"a: 1\r\nset-cookie: x=1; Path=/\r\na: \r\nb: v: with colon\r\n"
        );
        assert_eq!(to_pairs(&block), pairs);
    }

    #[test]
    fn a_value_with_a_newline_stays_one_line_and_cannot_add_a_header() {
        let block = from_pairs(&[(
            "x-consumer-username".to_string(),
            b"a\r\nx-admin: 1".to_vec(),
        )]);
        assert_eq!(block, b"x-consumer-username: a\r\rx-admin: 1\r\n");
        assert_eq!(headers(&block).count(), 1);
    }

    #[test]
    fn removing_a_name_drops_all_its_values_and_keeps_the_order_of_the_rest() {
        let mut block = b"a: 1\r\nVary: x\r\nb: 2\r\nvary: y\r\n".to_vec();
        remove(&mut block, "vary");
        assert_eq!(block, b"a: 1\r\nb: 2\r\n");
        assert_eq!(get(&block, "B"), Some(&b"2"[..]));
        assert_eq!(get(&block, "vary"), None);
    }

    #[test]
    fn bare_lf_lines_and_lines_without_a_colon_are_read_leniently() {
        let pairs = to_pairs(b"a:1\nnot a header\r\nb:\t 2\r\n");
        assert_eq!(
            pairs,
            vec![
                ("a".to_string(), b"1".to_vec()),
                ("b".to_string(), b"2".to_vec())
            ]
        );
        assert!(to_pairs(b"").is_empty());
        assert_eq!(
            to_pairs(b"\n\r\n: v\r\na\r\nb:\nc: x: y\r\r\nd"),
            vec![
                (String::new(), b"v".to_vec()),
                ("b".to_string(), b"".to_vec()),
                ("c".to_string(), b"x: y\r".to_vec())
            ]
        );
        assert_eq!(
            to_pairs(b"\xffa: 1"),
            vec![("\u{fffd}a".to_string(), b"1".to_vec())]
        );
    }
}
