//! The process's open-file limit: every client connection, origin connection, listener and
//! open file takes a descriptor, and a gateway that runs out cannot accept (the acceptor backs
//! off and logs `accept failed`).
//!
//! Many systems start services with a low soft limit (1024) under a high hard one, which
//! any process may raise itself to, as nginx's `worker_rlimit_nofile` (Kong sets it to `auto`,
//! from `ulimit -n`) and Go's runtime do: keygate raises its soft limit to the hard one at
//! start, logs it, and warns when it is below what `server.max_connections` may need.

/// Descriptors one client connection may take: its own and an origin connection's.
const PER_CONNECTION: u64 = 2;

/// Descriptors beyond the connections: listeners, the auth API's and Redis's connections, the
/// component and cache files, the runtime's own (epoll, eventfds, timers).
const HEADROOM: u64 = 256;

/// Descriptors `max_connections` client connections may need at once.
pub fn open_files_needed(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(PER_CONNECTION)
        .saturating_add(HEADROOM)
}

/// Raise the open-file soft limit to the hard limit, log the result, and warn when it is
/// below [`open_files_needed`]. Returns the soft limit now in force (`None`: it could not be
/// read; nothing changed).
pub fn raise_open_files(max_connections: usize) -> Option<u64> {
    let limit = raise()?;
    let needed = open_files_needed(max_connections);
    if limit < needed {
        tracing::warn!(
            open_files = limit,
            needed,
            "the open-file limit is below what server.max_connections = {max_connections} may need \
             (a client and an origin connection each, + {HEADROOM}); past it new connections fail \
             to be accepted. Raise the hard limit (systemd LimitNOFILE=, ulimit -Hn, docker \
             --ulimit nofile=) or lower server.max_connections"
        );
    } else {
        tracing::info!(open_files = limit, "open-file limit");
    }
    Some(limit)
}

#[cfg(unix)]
fn raise() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(
            "could not read the open-file limit: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` through a pointer to a live local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            // macOS refuses a soft limit above OPEN_MAX with an unlimited hard limit; what
            // was there stays.
            tracing::warn!(
                soft = limit.rlim_cur,
                hard = limit.rlim_max,
                "could not raise the open-file limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    // RLIM_INFINITY is u64::MAX: as large as it gets.
    Some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn raise() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_max_connections_needs_two_descriptors_each_and_headroom() {
        assert_eq!(open_files_needed(10_000), 20_256);
        assert_eq!(open_files_needed(usize::MAX), u64::MAX);
    }
}
