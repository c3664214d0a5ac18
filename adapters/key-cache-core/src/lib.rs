//! What keygate's key caches share: a verdict with its fresh and stale windows, the rule that
//! turns an entry and the current time into `fresh` / `stale` / `miss`, and a compact byte
//! encoding of verdicts. The keygate host's cache and the adapters that stand in for it on
//! other hosts both use this crate, so the rule and the encoding cannot drift apart.
//!
//! Times are milliseconds on whatever clock the cache uses (the host's: since the cache was
//! created; an adapter's: monotonic within one instance, wall clock when entries are shared
//! through a store). Each user turns these plain types into its own generated WIT types.

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

/// Until when a verdict is fresh, then stale. Kept apart from [`Entry`] so the keygate host,
/// which stores its verdicts packed, applies this same rule to its own entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub fresh_until_ms: u64,
    pub stale_until_ms: u64,
}

impl Deadlines {
    /// Stored at `now_ms`: fresh for `ttl_ms`, then stale for `stale_ms` more. Saturating, so
    /// a huge TTL means "forever" rather than a deadline that wrapped into the past.
    pub fn new(now_ms: u64, ttl_ms: u64, stale_ms: u64) -> Self {
        let fresh_until_ms = now_ms.saturating_add(ttl_ms);
        Self {
            fresh_until_ms,
            stale_until_ms: fresh_until_ms.saturating_add(stale_ms),
        }
    }

    /// Fresh while `now < fresh_until`, stale while `now < stale_until`: a zero TTL is stale at
    /// once and a zero stale window expires the moment freshness ends.
    pub fn freshness(&self, now_ms: u64) -> Freshness {
        if now_ms < self.fresh_until_ms {
            Freshness::Fresh
        } else if now_ms < self.stale_until_ms {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }
}

/// A verdict and until when it is fresh, then stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub verdict: Verdict,
    pub deadlines: Deadlines,
}

/// First byte of an encoded entry; a different one (an older or newer adapter's) is a miss.
const FORMAT: u8 = 1;

/// Bytes of an encoded entry before its verdict: format and both deadlines.
const HEADER_LEN: usize = 1 + 8 + 8;

impl Entry {
    /// An entry stored at `now_ms`: see [`Deadlines::new`].
    pub fn new(verdict: Verdict, now_ms: u64, ttl_ms: u64, stale_ms: u64) -> Self {
        Self {
            verdict,
            deadlines: Deadlines::new(now_ms, ttl_ms, stale_ms),
        }
    }

    pub fn freshness(&self, now_ms: u64) -> Freshness {
        self.deadlines.freshness(now_ms)
    }

    /// Bytes for a key-value store: format, both deadlines, a verdict tag, then for a valid
    /// verdict its consumer as [`encode_consumer`] writes it (what the host keeps in memory).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_LEN
                + 1
                + match &self.verdict {
                    Verdict::Valid(consumer) => encoded_consumer_len(consumer),
                    Verdict::Invalid => 0,
                },
        );
        out.push(FORMAT);
        out.extend_from_slice(&self.deadlines.fresh_until_ms.to_le_bytes());
        out.extend_from_slice(&self.deadlines.stale_until_ms.to_le_bytes());
        match &self.verdict {
            Verdict::Invalid => out.push(0),
            Verdict::Valid(consumer) => {
                out.push(1);
                encode_consumer(consumer, &mut out);
            }
        }
        out
    }

    /// The inverse of [`Entry::encode`]; `None` for anything else (treated as a miss).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&format, rest) = bytes.split_first()?;
        if format != FORMAT {
            return None;
        }
        let (fresh_until, rest) = rest.split_first_chunk::<8>()?;
        let (stale_until, rest) = rest.split_first_chunk::<8>()?;
        let verdict = match rest.split_first()? {
            (0, []) => Verdict::Invalid,
            (1, consumer) => Verdict::Valid(decode_consumer(consumer)?),
            _ => return None,
        };
        Some(Self {
            verdict,
            deadlines: Deadlines {
                fresh_until_ms: u64::from_le_bytes(*fresh_until),
                stale_until_ms: u64::from_le_bytes(*stale_until),
            },
        })
    }
}

/// The consumer's fields in order, each a presence byte, then (if present) a little-endian u32
/// length and the UTF-8 bytes. One flat buffer: the keygate host keeps a million of these, and
/// four `Option<String>`s would cost 96 bytes and up to four allocations each.
pub fn encode_consumer(consumer: &Consumer, out: &mut Vec<u8>) {
    // Exact, so a caller turning a fresh `Vec` into a boxed slice does not reallocate.
    out.reserve_exact(encoded_consumer_len(consumer));
    for field in fields(consumer) {
        match field {
            None => out.push(0),
            Some(text) => {
                let bytes = clamped(text);
                out.push(1);
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
}

/// The inverse of [`encode_consumer`], which must have written all of `bytes`; `None` for
/// anything else, so damaged or foreign bytes are a miss rather than a wrong consumer.
// Inline: the host decodes on every cached-key request, and crates do not inline each other's
// plain functions without it.
#[inline]
pub fn decode_consumer(bytes: &[u8]) -> Option<Consumer> {
    let mut rest = bytes;
    let mut field = || -> Option<Option<String>> {
        let (&present, tail) = rest.split_first()?;
        match present {
            0 => {
                rest = tail;
                Some(None)
            }
            1 => {
                let (len, tail) = tail.split_first_chunk::<4>()?;
                let (text, tail) = tail.split_at_checked(u32::from_le_bytes(*len) as usize)?;
                rest = tail;
                Some(Some(String::from(core::str::from_utf8(text).ok()?)))
            }
            _ => None,
        }
    };
    let consumer = Consumer {
        id: field()?,
        username: field()?,
        custom_id: field()?,
        credential_id: field()?,
    };
    rest.is_empty().then_some(consumer)
}

fn fields(consumer: &Consumer) -> [&Option<String>; 4] {
    [
        &consumer.id,
        &consumer.username,
        &consumer.custom_id,
        &consumer.credential_id,
    ]
}

fn encoded_consumer_len(consumer: &Consumer) -> usize {
    fields(consumer)
        .iter()
        .map(|field| {
            field
                .as_deref()
                .map_or(1, |text| 1 + 4 + clamped(text).len())
        })
        .sum()
}

/// At most `u32::MAX` bytes, cut on a character boundary so the stored text stays UTF-8. No
/// real consumer field comes near; this only keeps a hostile one from corrupting the length.
fn clamped(text: &str) -> &[u8] {
    let mut end = text.len().min(u32::MAX as usize);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

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
    fn deadlines_are_what_entries_use() {
        let deadlines = Deadlines::new(1_000, 50, 100);
        assert_eq!(
            deadlines,
            Deadlines {
                fresh_until_ms: 1_050,
                stale_until_ms: 1_150,
            }
        );
        assert_eq!(Entry::new(ann(), 1_000, 50, 100).deadlines, deadlines);
        assert_eq!(
            Deadlines::new(u64::MAX - 1, 5, 5),
            Deadlines {
                fresh_until_ms: u64::MAX,
                stale_until_ms: u64::MAX,
            }
        );
    }

    /// The host keeps exactly `encode_consumer`'s bytes per valid key, and the key-value
    /// adapter stores them after its header: one codec, so a change to it shows up in both
    /// (and needs a new `FORMAT`, since stores outlive adapters).
    #[test]
    fn the_host_form_is_the_stored_form_after_its_header() {
        let Verdict::Valid(consumer) = ann() else {
            unreachable!()
        };
        let mut host_form = Vec::new();
        encode_consumer(&consumer, &mut host_form);
        assert_eq!(
            host_form,
            [
                &[1, 3, 0, 0, 0][..],
                b"c-1",
                &[1, 3, 0, 0, 0],
                b"ann",
                &[0],
                &[1, 5, 0, 0, 0],
                "cr\u{e9}d".as_bytes(),
            ]
            .concat(),
            "layout: per field a presence byte, then a u32 LE length and UTF-8 bytes"
        );
        assert_eq!(
            host_form.capacity(),
            host_form.len(),
            "boxes without a copy"
        );
        assert_eq!(decode_consumer(&host_form).as_ref(), Some(&consumer));

        let stored = Entry::new(ann(), 0x0102, 1, 2).encode();
        let mut header = vec![FORMAT];
        header.extend_from_slice(&0x0103u64.to_le_bytes());
        header.extend_from_slice(&0x0105u64.to_le_bytes());
        header.push(1);
        assert_eq!(stored, [header, host_form].concat());
        assert_eq!(
            Entry::new(Verdict::Invalid, 0, 0, 0).encode()[HEADER_LEN..],
            [0],
            "an invalid verdict is its tag alone (the host keeps nothing)"
        );
    }

    #[test]
    fn damaged_consumer_bytes_are_no_consumer() {
        let mut bytes = Vec::new();
        encode_consumer(&Consumer::default(), &mut bytes);
        assert_eq!(bytes, [0, 0, 0, 0]);
        assert_eq!(decode_consumer(&bytes), Some(Consumer::default()));
        assert_eq!(decode_consumer(&[]), None);
        assert_eq!(decode_consumer(&[0, 0, 0]), None);
        assert_eq!(decode_consumer(&[0, 0, 0, 0, 0]), None, "trailing bytes");
        assert_eq!(
            decode_consumer(&[2, 0, 0, 0]),
            None,
            "unknown presence byte"
        );
        assert_eq!(
            decode_consumer(&[1, 9, 0, 0, 0, b'x', 0, 0, 0]),
            None,
            "too short"
        );
        assert_eq!(
            decode_consumer(&[1, 1, 0, 0, 0, 0xff, 0, 0, 0]),
            None,
            "not UTF-8"
        );
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
