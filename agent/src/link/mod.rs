//! The agent's end of the replication link: one connection
//! ([`connect`], [`connect_with_backoff`]), one-shot queries, and the
//! [`Sender`] (in `sender.rs`) that keeps the link up and change sets flowing.

pub mod adapt;
mod sender;
pub mod tcpinfo;

pub use sender::{SendError, Sender, SenderStats};

mod second;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use standin_builder::changeset::Record;
use standin_link::frame::{read_frame, write_frame, FrameError, DEFAULT_MAX_FRAME};
use standin_link::message::{
    Ack, ErrorMsg, Heartbeat, Hello, Message, MirrorDone, MirrorEnd, MirrorStart, Role, Welcome,
};
use standin_link::status::Status;
use standin_link::{
    tls, with_default_port, Fingerprint, Identity, PROTOCOL_VERSION, STANDIN_VERSION,
};
use tokio::io::{AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_rustls::client::TlsStream;
use tracing::{debug, info, warn};

/// How to reach and authenticate the target.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `host[:port]`, port 6320 by default.
    pub target: String,
    pub identity: Identity,
    /// Fingerprints the target's certificate may have.
    pub trust: Vec<Fingerprint>,
    /// This source's id (names its staging directory on the target).
    pub source_id: String,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// The target's second heartbeat address (`host[:port]`, its
    /// `--heartbeat-listen`): a second authenticated connection that
    /// carries only heartbeats, so the target can tell a dead source from
    /// a dead replication link.
    pub heartbeat_target: Option<String>,
    /// zstd level for frames (0 = off).
    pub compress: i32,
    /// Adapt the level of change sets to what is the bottleneck, the
    /// compressor or the link ([`adapt`]), instead of keeping `compress`.
    pub compress_adaptive: bool,
    pub max_frame: u32,
    /// First and largest wait between reconnection attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Largest in-memory queue of unacknowledged change sets, in bytes.
    pub queue_max_bytes: u64,
    /// Where change sets go when the in-memory queue is full (the agent's
    /// state directory); `None` keeps everything in memory.
    pub spill_dir: Option<PathBuf>,
    /// Largest on-disk queue, in bytes. When both queues are full, `send`
    /// says `QueueFull` and the caller falls back to a difference mirror.
    pub spill_max_bytes: u64,
    /// Time allowed for connecting, the handshake and the welcome.
    pub connect_timeout: Duration,
    /// Reconnect when nothing arrived from the target for this long
    /// (the target answers every heartbeat; a long apply delays answers).
    pub dead_after: Duration,
}

impl LinkConfig {
    /// Defaults for everything but the essentials.
    pub fn new(
        target: &str,
        identity: Identity,
        trust: Vec<Fingerprint>,
        source_id: &str,
    ) -> LinkConfig {
        LinkConfig {
            target: with_default_port(target),
            identity,
            trust,
            source_id: source_id.to_string(),
            heartbeat: Duration::from_secs(5),
            heartbeat_target: None,
            compress: 3,
            compress_adaptive: false,
            max_frame: DEFAULT_MAX_FRAME,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            queue_max_bytes: 256 << 20,
            spill_dir: None,
            spill_max_bytes: 4 << 30,
            connect_timeout: Duration::from_secs(30),
            dead_after: Duration::from_secs(60),
        }
    }
}

/// One authenticated connection after Hello/Welcome.
pub struct Connection {
    rd: ReadHalf<TlsStream<TcpStream>>,
    wr: WriteHalf<TlsStream<TcpStream>>,
    /// The target's answer to Hello.
    pub welcome: Welcome,
    /// The target's certificate fingerprint (one of the trusted ones).
    pub peer: Fingerprint,
    max_frame: u32,
    compress: i32,
    /// The TCP socket (a duplicate descriptor), for its stall times
    /// ([`tcpinfo`]); `None` if it could not be duplicated.
    tcp: Option<std::os::fd::OwnedFd>,
}

/// Connect once: TCP, pinned mutual TLS, Hello, Welcome.
pub async fn connect(cfg: &LinkConfig, role: Role) -> Result<Connection> {
    tokio::time::timeout(cfg.connect_timeout, connect_inner(cfg, role))
        .await
        .with_context(|| format!("connecting to {}: timed out", cfg.target))?
}

async fn connect_inner(cfg: &LinkConfig, role: Role) -> Result<Connection> {
    let tcp = TcpStream::connect(&cfg.target)
        .await
        .with_context(|| format!("connecting to {}", cfg.target))?;
    let _ = tcp.set_nodelay(true);
    let tcp_fd = std::os::fd::AsFd::as_fd(&tcp).try_clone_to_owned().ok();
    let connector =
        tokio_rustls::TlsConnector::from(tls::client_config(&cfg.identity, &cfg.trust)?);
    let stream = connector.connect(tls::server_name(), tcp).await.map_err(|e| {
        anyhow::anyhow!(
            "TLS handshake with {} failed: {e}; check that the target trusts this source's fingerprint {} and that --trust names the target's",
            cfg.target,
            cfg.identity.fingerprint
        )
    })?;
    let peer = tls::peer_fingerprint(stream.get_ref().1.peer_certificates())
        .context("the target presented no certificate")?;
    info!(target = cfg.target, offered = %peer, "target authenticated");
    let (rd, wr) = tokio::io::split(stream);
    let mut c = Connection {
        rd,
        wr,
        welcome: Welcome {
            protocol: 0,
            standin_version: String::new(),
            last_applied_seq: 0,
            mirror_complete: false,
        },
        peer,
        max_frame: cfg.max_frame,
        compress: cfg.compress,
        tcp: tcp_fd,
    };
    c.send(&Message::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        standin_version: STANDIN_VERSION.to_string(),
        source_id: cfg.source_id.clone(),
        role,
    }))
    .await?;
    // In TLS 1.3 the target checks our certificate after our side of the
    // handshake is done, so a refusal shows up here: as an alert, or as a
    // reset/close when the alert is lost with the unread Hello.
    let first = c.recv().await.map_err(|e| {
        if e.downcast_ref::<TargetError>().is_some() {
            e
        } else if format!("{e:#}").contains("alert") {
            e.context(format!(
                "the target refused this source's certificate {}; on the target add --trust {}",
                cfg.identity.fingerprint, cfg.identity.fingerprint
            ))
        } else {
            e.context(format!(
                "the target closed the connection before answering; if it does not trust this source's certificate {}, add --trust {} on the target",
                cfg.identity.fingerprint, cfg.identity.fingerprint
            ))
        }
    })?;
    match first {
        Message::Welcome(w) => c.welcome = w,
        other => bail!("expected welcome from {}, got {}", cfg.target, other.name()),
    }
    Ok(c)
}

impl Connection {
    /// Send one message. Returns the bytes on the wire.
    pub async fn send(&mut self, msg: &Message) -> Result<usize> {
        send_on(&mut self.wr, msg, self.compress).await
    }

    /// Receive one message; an Error message from the target becomes an error.
    pub async fn recv(&mut self) -> Result<Message> {
        recv_on(&mut self.rd, self.max_frame).await
    }

    /// Write raw bytes on the authenticated stream, bypassing framing. Only
    /// for tests of how the target treats hostile input.
    #[doc(hidden)]
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        self.wr.write_all(bytes).await?;
        self.wr.flush().await?;
        Ok(())
    }

    /// Send and wait for the answer.
    pub async fn request(&mut self, msg: &Message) -> Result<Message> {
        self.send(msg).await?;
        self.recv().await
    }
}

async fn send_on<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message, level: i32) -> Result<usize> {
    let (k, p) = msg.encode()?;
    write_frame(w, k, &p, level)
        .await
        .with_context(|| format!("sending {}", msg.name()))
}

async fn recv_on(rd: &mut ReadHalf<TlsStream<TcpStream>>, max: u32) -> Result<Message> {
    let f = match read_frame(rd, max).await {
        Ok(f) => f,
        Err(FrameError::Closed) => bail!("the target closed the connection"),
        Err(e) => return Err(e.into()),
    };
    match Message::decode(f.kind, &f.payload)? {
        Message::Error(ErrorMsg { reason, retry }) => Err(TargetError { reason, retry }.into()),
        m => Ok(m),
    }
}

/// An error the target reported.
#[derive(Debug, thiserror::Error)]
#[error("the target refused: {reason}")]
pub struct TargetError {
    pub reason: String,
    /// Whether retrying later can help.
    pub retry: bool,
}

/// Ask the target for its status.
pub async fn query_status(cfg: &LinkConfig) -> Result<Status> {
    let mut c = connect(cfg, Role::Status).await?;
    match c.request(&Message::StatusRequest).await? {
        Message::StatusResponse(s) => Ok(*s),
        other => bail!("expected a status response, got {}", other.name()),
    }
}

/// Ask the target for its profile.
pub async fn query_profile(cfg: &LinkConfig) -> Result<serde_json::Value> {
    let mut c = connect(cfg, Role::Validate).await?;
    match c.request(&Message::ProfileRequest).await? {
        Message::ProfileResponse(v) => Ok(v),
        other => bail!("expected a profile response, got {}", other.name()),
    }
}

/// Milliseconds since the epoch now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether retrying a failed connection can help (not for a refused
/// certificate or a refusal the target marks as final).
pub fn is_retryable(e: &anyhow::Error) -> bool {
    if let Some(t) = e.downcast_ref::<TargetError>() {
        return t.retry;
    }
    let text = format!("{e:#}");
    !(text.contains("refused this source's certificate")
        || text.contains("which is not trusted")
        || text.contains("protocol version"))
}

/// [`connect`] with backoff (`cfg.backoff_min` doubling up to
/// `cfg.backoff_max`, jittered) while the error is retryable.
pub async fn connect_with_backoff(
    cfg: &LinkConfig,
    role: Role,
    attempts: Option<u32>,
) -> Result<Connection> {
    let mut backoff = cfg.backoff_min;
    let mut n = 0u32;
    loop {
        match connect(cfg, role).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                n += 1;
                if !is_retryable(&e) || attempts.is_some_and(|a| n >= a) {
                    return Err(e);
                }
                debug!(
                    "connecting to {} (attempt {n}): {e:#}; retrying",
                    cfg.target
                );
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
        }
    }
}

fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms / 2 + rand::random::<u64>() % (ms / 2 + 1))
}
