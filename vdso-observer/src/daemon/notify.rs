//! systemd's notify protocol (sd_notify(3)) without libsystemd: READY=1 once
//! the first metrics are out, WATCHDOG=1 while the collection loop lives.
//! Without NOTIFY_SOCKET (not under systemd) every call does nothing.

use std::{os::unix::net::UnixDatagram, time::Duration};

/// Sends one state line to NOTIFY_SOCKET, if there is one.
fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket: the name after the '@'.
            use std::os::linux::net::SocketAddrExt as _;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &address)?;
        } else {
            socket.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(err) = result {
        log::warn!("telling systemd {state:?} failed: {err}");
    }
}

/// Type=notify: start-up is over (programs attached, first metrics written).
pub fn ready() {
    send("READY=1");
}

pub fn watchdog() {
    send("WATCHDOG=1");
}

/// Half of WatchdogSec= (WATCHDOG_USEC), as sd_watchdog_enabled(3) advises;
/// None when systemd set no watchdog for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_reach_a_notify_socket() {
        let path = std::env::temp_dir().join(format!("vdso-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        // SAFETY: this test alone reads or writes NOTIFY_SOCKET in this binary.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        ready();
        watchdog();
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        std::fs::remove_file(&path).unwrap();
    }
}
