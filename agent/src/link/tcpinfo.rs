//! What held a TCP connection's sending back, from the kernel's
//! chronograph in `TCP_INFO` (Linux 4.10 and later): the time the
//! connection had data to send (`busy`), and of it the time it waited for
//! the receiver's window (`rwnd`: the receiving application did not read
//! fast enough) or for room in the send buffer (`sndbuf`).
//!
//! The adaptive compression ([`super::adapt`]) uses it to tell a slow
//! receiver from a slow link: both make the sender's writes block, but only
//! a slow link is helped by sending fewer bytes.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// Cumulative times since the connection opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stalls {
    /// Time with data in flight or waiting to be sent.
    pub busy: Duration,
    /// Of `busy`, time limited by the receiver's window.
    pub rwnd: Duration,
    /// Of `busy`, time limited by the send buffer.
    pub sndbuf: Duration,
    /// The kernel's latest estimate of the rate the link delivers, bytes
    /// per second (not cumulative).
    pub delivery_rate: u64,
}

impl Stalls {
    /// The times from `earlier` to `self` (zero where a counter went back,
    /// as it does for a new connection).
    pub fn since(&self, earlier: &Stalls) -> Stalls {
        Stalls {
            busy: self.busy.saturating_sub(earlier.busy),
            rwnd: self.rwnd.saturating_sub(earlier.rwnd),
            sndbuf: self.sndbuf.saturating_sub(earlier.sndbuf),
            delivery_rate: self.delivery_rate,
        }
    }
}

/// The stall times of the TCP socket `fd`; `None` when it is not a TCP
/// socket or the kernel is too old to keep them.
pub fn stalls(fd: BorrowedFd<'_>) -> Option<Stalls> {
    // SAFETY: tcp_info is plain old data (integers only), so all zeroes is
    // a valid value; getsockopt writes at most `len` bytes into it and
    // reports how many it wrote.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_sndbuf_limited) + 8;
    if r != 0 || (len as usize) < needed {
        return None;
    }
    Some(Stalls {
        busy: Duration::from_micros(info.tcpi_busy_time),
        rwnd: Duration::from_micros(info.tcpi_rwnd_limited),
        sndbuf: Duration::from_micros(info.tcpi_sndbuf_limited),
        delivery_rate: info.tcpi_delivery_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_receiver_that_does_not_read_shows_as_window_limited() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut rx, _) = l.accept().unwrap();
        let before = stalls(tx.as_fd()).expect("TCP_INFO with its chronograph (Linux >= 4.10)");
        // Fill the receiver's buffer and window without reading, then
        // keep the sender stalled on the closed window for a while.
        tx.set_nonblocking(true).unwrap();
        let chunk = vec![7u8; 1 << 16];
        let mut sent = 0usize;
        for _ in 0..10_000 {
            match tx.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let stalled = stalls(tx.as_fd()).unwrap().since(&before);
        assert!(
            stalled.rwnd >= Duration::from_millis(100),
            "after {sent} B into a receiver that does not read: {stalled:?}"
        );
        assert!(stalled.busy >= stalled.rwnd, "{stalled:?}");
        // Drain, so the test's sockets close cleanly.
        drop(tx);
        let mut sink = Vec::new();
        rx.read_to_end(&mut sink).unwrap();
        assert_eq!(sink.len(), sent);
    }

    #[test]
    fn a_file_is_not_a_tcp_socket() {
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(stalls(f.as_fd()), None);
    }
}
