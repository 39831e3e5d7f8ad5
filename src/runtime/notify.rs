//! The service manager's readiness protocol (sd_notify), in the few lines
//! it takes rather than through libsystemd: one datagram per state change,
//! sent to the `AF_UNIX` socket named in `NOTIFY_SOCKET` (a path, or with
//! a leading `@` a name in Linux's abstract namespace).
//!
//! systemd runs `pgtier.service` as `Type=notify`: it holds back units
//! ordered after pgtier until `READY=1`, which the proxy sends once every
//! listener is bound, so a dependent unit never meets a refused
//! connection. Around a reload it sends `RELOADING=1` (with
//! `MONOTONIC_USEC=`, which `Type=notify-reload` on systemd 253 and later
//! requires to tell this reload from an earlier one) and `READY=1` again;
//! when draining begins, `STOPPING=1`.
//!
//! Without `NOTIFY_SOCKET` (run by hand, in tests, under another
//! supervisor) every call does nothing. A failed send is logged and
//! otherwise ignored: the proxy serves whether or not its manager hears.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// `READY=1`: every listener is bound; connections are accepted.
pub fn ready() {
    send("READY=1\nSTATUS=accepting connections");
}

/// `RELOADING=1`: a configuration reload begins now.
pub fn reloading() {
    send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
        monotonic_usec()
    ));
}

/// `READY=1` after a reload; `failed` says so in the status line (the
/// previous configuration stays in force, the error is in the log).
pub fn reloaded(failed: bool) {
    send(if failed {
        "READY=1\nSTATUS=reload failed: the previous configuration stays in force (see the log)"
    } else {
        "READY=1\nSTATUS=accepting connections"
    });
}

/// `STOPPING=1`: draining begins; no new connections.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining: no new connections");
}

/// Sends `message` to `NOTIFY_SOCKET`, if set.
fn send(message: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&target, message) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Sends one datagram to the socket `target` names.
pub fn send_to(target: &std::ffi::OsStr, message: &str) -> io::Result<()> {
    let addr = address(target)?;
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(message.as_bytes(), &addr)?;
    if sent != message.len() {
        return Err(io::Error::other("the notification was cut short"));
    }
    Ok(())
}

/// A `NOTIFY_SOCKET` value as a socket address: an absolute path, or `@`
/// and an abstract name. Anything else (systemd also knows `vsock:`) is
/// refused rather than guessed at.
fn address(target: &std::ffi::OsStr) -> io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = target.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(target),
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "NOTIFY_SOCKET is neither a path nor an abstract (@) name",
        )),
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares reloads by.
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_abstract_addresses_receive_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("pgtier-notify-test-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send_to(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn other_addresses_are_refused() {
        for target in ["", "relative/path", "vsock:2:1234"] {
            assert!(send_to(std::ffi::OsStr::new(target), "READY=1").is_err());
        }
    }

    #[test]
    fn the_monotonic_clock_moves_forward_and_is_not_wall_time() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(b >= a);
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        assert!(a < wall / 2, "{a} looks like wall-clock time");
    }
}
