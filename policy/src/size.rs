//! Byte sizes written the way nginx and Kong write them: `8192`, `"8k"`, `"1m"`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "SizeText", into = "u64")]
pub struct ByteSize(pub u64);

/// A number of bytes, or a string with an optional `k` / `m` suffix (powers of 1024).
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Bytes(u64),
    Text(String),
}

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl TryFrom<SizeText> for ByteSize {
    type Error = String;

    fn try_from(value: SizeText) -> Result<Self, Self::Error> {
        let text = match value {
            SizeText::Bytes(n) => return Ok(Self(n)),
            SizeText::Text(text) => text,
        };
        let trimmed = text.trim();
        let lower = trimmed.to_ascii_lowercase();
        let (digits, unit) = match lower.as_bytes().last() {
            Some(b'k') => (&lower[..lower.len() - 1], 1024),
            Some(b'm') => (&lower[..lower.len() - 1], 1024 * 1024),
            _ => (lower.as_str(), 1),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .map(Self)
            .ok_or_else(|| format!("invalid size {text:?}; write e.g. 8192, \"8k\" or \"1m\""))
    }
}

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> Self {
        size.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ByteSize, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn sizes_parse_like_nginx() {
        assert_eq!(parse("8192"), Ok(ByteSize(8192)));
        assert_eq!(parse("\"8k\""), Ok(ByteSize(8192)));
        assert_eq!(parse("\"1M\""), Ok(ByteSize(1 << 20)));
        assert_eq!(parse("\"100\""), Ok(ByteSize(100)));
        assert!(
            parse("\"8 kilobytes\"")
                .unwrap_err()
                .contains("invalid size")
        );
        assert_eq!(serde_json::to_string(&ByteSize(8192)).unwrap(), "8192");
    }
}
