//! The process's file descriptor limit: every connection is a socket, and the default soft
//! limit (often 1,024) would refuse clients long before `listeners.max_connections`.

/// Raises the soft `RLIMIT_NOFILE` to what `wanted` descriptors need: to the hard limit, and
/// above it up to `wanted` where the process may (root, `CAP_SYS_RESOURCE`). Returns the soft
/// limit in force afterwards (`None` where the platform has no such limit).
#[cfg(unix)]
pub fn raise_fd_limit(wanted: u64) -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let (soft, hard) = (now.current, now.maximum);
    // `None` is "unlimited".
    if soft.is_none() || soft.is_some_and(|s| s >= wanted) {
        return soft.or(Some(u64::MAX));
    }
    if hard.is_some_and(|h| h < wanted) {
        let both = Rlimit {
            current: Some(wanted),
            maximum: Some(wanted),
        };
        if setrlimit(Resource::Nofile, both).is_ok() {
            return Some(wanted);
        }
    }
    let target = hard.map_or(wanted, |h| h.min(wanted));
    let raised = Rlimit {
        current: Some(target),
        maximum: hard,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Some(target),
        Err(_) => soft,
    }
}

#[cfg(not(unix))]
pub fn raise_fd_limit(_wanted: u64) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_never_goes_down() {
        let before = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let after = super::raise_fd_limit(64);
        assert!(after.is_some());
        assert!(after >= before.map(|b| b.min(64)));
    }
}
