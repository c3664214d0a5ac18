//! `server.max_connections_per_ip`: client connections one IP address may hold at once.
//!
//! Checked by the acceptor as it accepts: a connection beyond the limit is closed at once,
//! before a byte is read (no answer: writing one would mean reading the request first, which
//! is what a flood of connections wants the gateway to spend), and counted in
//! `keygate_connections_refused_total{reason="per_ip"}`. nginx's `limit_conn` answers 503
//! after reading the head instead; neither nginx nor Kong limits by default, nor does keygate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedSemaphorePermit;

/// Open connections by client address.
pub struct PerIp {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// `None` for no limit (0).
    pub fn new(limit: usize) -> Option<Arc<Self>> {
        (limit > 0).then(|| {
            Arc::new(Self {
                limit,
                open: Mutex::default(),
            })
        })
    }

    /// One more connection from `ip`, unless it holds the limit already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        // An IPv4 client on a dual-stack socket arrives as `::ffff:a.b.c.d`.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            table: Arc::clone(self),
            ip,
        })
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap();
        open.get(&ip).copied().unwrap_or(0)
    }
}

/// A connection counted against its address until dropped.
pub struct Slot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What an accepted connection holds for its life: one of `server.max_connections`, and its
/// address's slot when there is a per-IP limit.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    _slot: Option<Slot>,
}

impl Admission {
    pub fn new(permit: OwnedSemaphorePermit, slot: Option<Slot>) -> Self {
        Self {
            _permit: permit,
            _slot: slot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_the_limit_and_a_closed_slot_frees_one() {
        let table = PerIp::new(2).expect("a limit");
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = table.admit(a).expect("first");
        let _second = table.admit(a).expect("second");
        assert!(table.admit(a).is_none(), "a third from one address");
        // The same address over a dual-stack socket counts as the same client.
        assert!(table.admit("::ffff:192.0.2.1".parse().unwrap()).is_none());
        let _other = table.admit(b).expect("another address has its own count");
        drop(first);
        assert_eq!(table.open(a), 1);
        assert!(table.admit(a).is_some());
        assert!(PerIp::new(0).is_none(), "0 = no limit");
    }
}
