//! Whether the kernel's random pool is ready: before it is, glibc seeds
//! malloc from CLOCK_MONOTONIC at a process's start (see `VdsoCheck`).

/// Asks getrandom(2) without blocking for one byte: EAGAIN means the pool
/// is not ready yet. None where the call itself is missing or refused.
pub fn random_pool_ready() -> Option<bool> {
    let mut byte = 0u8;
    // SAFETY: one byte into a local the call may write.
    let got = unsafe {
        libc::getrandom(
            (&raw mut byte).cast::<libc::c_void>(),
            1,
            libc::GRND_NONBLOCK,
        )
    };
    if got == 1 {
        return Some(true);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_booted_host_has_a_ready_pool() {
        // Any host that has run for more than seconds, and one with RDRAND
        // from the first instant: this one runs the tests.
        assert_eq!(super::random_pool_ready(), Some(true));
    }
}
