//! A TCP forwarder that can be started late and stopped, to play a backend that is down at
//! start-up or goes away and comes back.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A free TCP port on 127.0.0.1 (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A free TCP port on 127.0.0.1 below the range the system picks ports from (for port 0
/// and for the local end of outgoing connections), so that nothing takes it by chance while
/// a test keeps it closed on purpose: a backend that is down at start-up, or a server that
/// is stopped and started again on the same port. (A port from [`free_port`] can meanwhile
/// become the local port of some outgoing connection, or of a client connecting to itself.)
pub fn quiet_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 12_000 {
        (10_000, low)
    } else {
        // An unusual range: fall back to what the system hands out.
        return free_port();
    };
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let candidate = from + (h.finish() % u64::from(to - from)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
    }
    free_port()
}

/// Forwards connections from `127.0.0.1:<port>` to a target until stopped.
pub struct TcpProxy {
    /// The listening port.
    pub port: u16,
    accept: JoinHandle<()>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:port` to `target`.
    ///
    /// A proxy stopped a moment ago on the same port may still hold it: its listener closes
    /// when the runtime next polls its aborted task. Binding is tried again for a while.
    pub async fn start(port: u16, target: SocketAddr) -> std::io::Result<Self> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)).await {
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                bound => break bound?,
            }
        };
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tracked = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().unwrap().push(task);
            }
        });
        Ok(Self {
            port,
            accept,
            conns,
        })
    }

    /// Stops listening and cuts every forwarded connection.
    pub fn stop(self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}
