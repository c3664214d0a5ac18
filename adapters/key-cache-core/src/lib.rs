//! What keygate's key-cache adapters share: a verdict with its fresh and stale windows, the
//! rule that turns an entry and the current time into `fresh` / `stale` / `miss` (the same as
//! the keygate host's cache), and a compact byte encoding for key-value stores.
//!
//! Times are milliseconds on whatever clock the adapter uses (monotonic within one instance,
//! wall clock when entries are shared through a store). The adapters turn these plain types
//! into their generated WIT types.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

/// Who a valid key belongs to (`keygate:gateway/key-cache.consumer`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consumer {
    pub id: Option<String>,
    pub username: Option<String>,
    pub custom_id: Option<String>,
    pub credential_id: Option<String>,
}

/// `keygate:gateway/key-cache.verdict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid(Consumer),
    Invalid,
}

/// How usable an entry is at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within its time to live: use it.
    Fresh,
    /// Past it, but within the stale window: refresh it, and fall back to it if that fails.
    Stale,
    /// Past both: as good as absent (drop it).
    Expired,
}

/// A verdict and until when it is fresh, then stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub verdict: Verdict,
    pub fresh_until_ms: u64,
    pub stale_until_ms: u64,
}

/// First byte of an encoded entry; a different one (an older or newer adapter's) is a miss.
const FORMAT: u8 = 1;

impl Entry {
    /// An entry stored at `now_ms`: fresh for `ttl_ms`, then stale for `stale_ms` more.
    pub fn new(verdict: Verdict, now_ms: u64, ttl_ms: u64, stale_ms: u64) -> Self {
        let fresh_until_ms = now_ms.saturating_add(ttl_ms);
        Self {
            verdict,
            fresh_until_ms,
            stale_until_ms: fresh_until_ms.saturating_add(stale_ms),
        }
    }

    /// The keygate host's rule: fresh while `now < fresh_until`, stale while `now < stale_until`.
    pub fn freshness(&self, now_ms: u64) -> Freshness {
        if now_ms < self.fresh_until_ms {
            Freshness::Fresh
        } else if now_ms < self.stale_until_ms {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }

    /// Bytes for a key-value store: format, both deadlines, then the verdict.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(FORMAT);
        out.extend_from_slice(&self.fresh_until_ms.to_le_bytes());
        out.extend_from_slice(&self.stale_until_ms.to_le_bytes());
        match &self.verdict {
            Verdict::Invalid => out.push(0),
            Verdict::Valid(consumer) => {
                out.push(1);
                for field in [
                    &consumer.id,
                    &consumer.username,
                    &consumer.custom_id,
                    &consumer.credential_id,
                ] {
                    match field {
                        None => out.push(0),
                        Some(text) => {
                            out.push(1);
                            let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
                            out.extend_from_slice(&len.to_le_bytes());
                            out.extend_from_slice(&text.as_bytes()[..len as usize]);
                        }
                    }
                }
            }
        }
        out
    }

    /// The inverse of [`Entry::encode`]; `None` for anything else (treated as a miss).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader(bytes);
        if reader.byte()? != FORMAT {
            return None;
        }
        let fresh_until_ms = reader.u64()?;
        let stale_until_ms = reader.u64()?;
        let verdict = match reader.byte()? {
            0 => Verdict::Invalid,
            1 => Verdict::Valid(Consumer {
                id: reader.text()?,
                username: reader.text()?,
                custom_id: reader.text()?,
                credential_id: reader.text()?,
            }),
            _ => return None,
        };
        reader.0.is_empty().then_some(Self {
            verdict,
            fresh_until_ms,
            stale_until_ms,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }

    /// An optional string: presence byte, then length and UTF-8 bytes.
    fn text(&mut self) -> Option<Option<String>> {
        match self.byte()? {
            0 => Some(None),
            1 => {
                let len = usize::try_from(self.u32()?).ok()?;
                let bytes = self.take(len)?;
                Some(Some(String::from(core::str::from_utf8(bytes).ok()?)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn ann() -> Verdict {
        Verdict::Valid(Consumer {
            id: Some("c-1".to_string()),
            username: Some("ann".to_string()),
            custom_id: None,
            credential_id: Some("cr\u{e9}d".to_string()),
        })
    }

    #[test]
    fn fresh_then_stale_then_expired() {
        let entry = Entry::new(ann(), 1_000, 50, 100);
        assert_eq!(entry.freshness(1_000), Freshness::Fresh);
        assert_eq!(entry.freshness(1_049), Freshness::Fresh);
        assert_eq!(entry.freshness(1_050), Freshness::Stale);
        assert_eq!(entry.freshness(1_149), Freshness::Stale);
        assert_eq!(entry.freshness(1_150), Freshness::Expired);
        let no_stale = Entry::new(Verdict::Invalid, 0, 10, 0);
        assert_eq!(no_stale.freshness(10), Freshness::Expired);
        let forever = Entry::new(Verdict::Invalid, u64::MAX - 1, u64::MAX, u64::MAX);
        assert_eq!(forever.freshness(u64::MAX - 1), Freshness::Fresh);
    }

    #[test]
    fn entries_round_trip_through_bytes() {
        for entry in [
            Entry::new(ann(), 7, 300_000, 3_600_000),
            Entry::new(Verdict::Invalid, 7, 30_000, 0),
            Entry::new(Verdict::Valid(Consumer::default()), 0, 0, 0),
        ] {
            assert_eq!(Entry::decode(&entry.encode()), Some(entry));
        }
    }

    #[test]
    fn foreign_or_damaged_bytes_are_no_entry() {
        let bytes = Entry::new(ann(), 7, 1, 1).encode();
        assert_eq!(Entry::decode(&[]), None);
        assert_eq!(Entry::decode(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Entry::decode(&longer), None);
        let mut other_format = bytes;
        other_format[0] = 2;
        assert_eq!(Entry::decode(&other_format), None);
        assert_eq!(Entry::decode(b"{\"valid\":true}"), None);
    }
}
