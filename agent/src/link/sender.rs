//! The [`Sender`]: queue, heartbeats, reconnection, resume.

use super::adapt::{Level, START_LEVEL};
use super::*;
use standin_builder::changeset::SetEncoder;
use standin_link::frame::FLAG_ZSTD;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::AsyncWriteExt;

struct Queued {
    seq: u64,
    created_unix_ms: i64,
    len: u64,
    body: Body,
}

/// Where a queued change set is kept.
enum Body {
    /// Shared so that sending does not copy it.
    Memory(std::sync::Arc<Vec<u8>>),
    Disk(PathBuf),
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Queued>,
    /// All queued bytes (memory and disk).
    bytes: u64,
    spilled_sets: u64,
    spilled_bytes: u64,
    next_seq: u64,
    acked: u64,
    resync_needed: bool,
}

/// Counters of a [`Sender`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SenderStats {
    pub connected: bool,
    pub reconnects: u64,
    /// Bytes put on the wire (frames, after compression).
    pub bytes_sent: u64,
    /// Change-set bytes before compression.
    pub payload_bytes_sent: u64,
    pub sets_sent: u64,
    pub last_acked: u64,
    pub next_seq: u64,
    pub queue_sets: u64,
    pub queue_bytes: u64,
    /// Of those, change sets and bytes spilled to disk.
    pub spilled_sets: u64,
    pub spilled_bytes: u64,
    /// The target lost change sets this agent no longer holds: a difference mirror is needed.
    pub resync_needed: bool,
    pub last_error: Option<String>,
    /// When the oldest unacknowledged change set was cut (for the lag).
    pub oldest_pending_unix_ms: Option<i64>,
    /// The second heartbeat path: `None` when not configured.
    pub second_path_connected: Option<bool>,
    /// Heartbeats the target acknowledged on the second path.
    pub second_path_heartbeats: u64,
    pub second_path_error: Option<String>,
}

impl SenderStats {
    /// Seconds since the oldest unacknowledged change set was cut (0 when none).
    pub fn lag_seconds(&self) -> f64 {
        self.oldest_pending_unix_ms
            .map(|t| (now_ms() - t).max(0) as f64 / 1000.0)
            .unwrap_or(0.0)
    }
}

/// Why [`Sender::send`] did not queue a change set.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(
        "the queue is full ({bytes} bytes queued, limit {max} in memory and {spill_max} on disk); fall back to a difference mirror"
    )]
    QueueFull {
        bytes: u64,
        max: u64,
        spill_max: u64,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

enum Control {
    MirrorStart(MirrorStart, oneshot::Sender<Result<()>>),
    MirrorEnd(MirrorEnd, oneshot::Sender<Result<MirrorDone>>),
}

pub(super) struct Shared {
    pub(super) cfg: LinkConfig,
    queue: Mutex<Queue>,
    stats: Mutex<SenderStats>,
    wake: Notify,
    acked: watch::Sender<u64>,
    /// Replication's counters, once it runs (carried in heartbeats).
    counters: Mutex<Option<Arc<crate::replicate::ReplicateCounters>>>,
    /// Buffers of acknowledged in-memory sets, for the next ones, while
    /// `keep_buffers` is set.
    buffers: Mutex<Vec<Vec<u8>>>,
    keep_buffers: AtomicBool,
}

/// Most set buffers kept for reuse (the mirror keeps about three sets
/// unacknowledged; replication's sets are small).
const BUFFERS_KEPT: usize = 4;
/// Largest buffer kept for reuse (a mirror's set, with room to spare).
const BUFFER_KEPT_MAX: usize = 24 << 20;

impl Shared {
    pub(super) fn stats_mut(&self) -> std::sync::MutexGuard<'_, SenderStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The heartbeat to send now (both paths send the same).
    pub(super) fn heartbeat(&self) -> Heartbeat {
        let replication = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.heartbeat_counters());
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        Heartbeat {
            sent_unix_ms: now_ms(),
            source_seq: q.next_seq - 1,
            queue_sets: q.items.len() as u64,
            queue_bytes: q.bytes,
            oldest_pending_unix_ms: q.items.front().map(|i| i.created_unix_ms),
            format: standin_link::message::HEARTBEAT_FORMAT,
            interval_ms: Some(self.cfg.heartbeat.as_millis() as u64),
            spilled_sets: q.spilled_sets,
            spilled_bytes: q.spilled_bytes,
            last_acked: q.acked,
            replication,
        }
    }
}

/// Sends change sets in order and keeps the link up.
///
/// `send` cuts a numbered change set and queues it; a background task sends
/// queued sets, heartbeats every `cfg.heartbeat`, drops sets when the target
/// acknowledges them, and on any link error reconnects with backoff and
/// resends everything above the target's last applied number.
pub struct Sender {
    shared: Arc<Shared>,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
    second: Option<tokio::task::JoinHandle<()>>,
}

impl Sender {
    /// Connect (one attempt, so a wrong address or fingerprint fails fast),
    /// learn the target's last applied number, and start the background task.
    pub async fn start(cfg: LinkConfig) -> Result<Sender> {
        let conn = connect(&cfg, Role::Agent).await?;
        Self::start_on(cfg, conn)
    }

    /// Like [`Sender::start`], but retry with backoff while the target is
    /// unreachable (up to `attempts`, `None` = forever). Refused
    /// certificates and refusals the target says retrying cannot fix end
    /// at once.
    pub async fn start_with_backoff(cfg: LinkConfig, attempts: Option<u32>) -> Result<Sender> {
        let conn = connect_with_backoff(&cfg, Role::Agent, attempts).await?;
        Self::start_on(cfg, conn)
    }

    fn start_on(cfg: LinkConfig, conn: Connection) -> Result<Sender> {
        if let Some(dir) = &cfg.spill_dir {
            // Spilled sets of an earlier run do not fit the numbering of
            // this one (a difference mirror catches up instead): drop them.
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "cs") {
                    std::fs::remove_file(&p)
                        .with_context(|| format!("removing {}", p.display()))?;
                }
            }
        }
        let last = conn.welcome.last_applied_seq;
        info!(last_applied = last, "replication link up");
        let (acked, _) = watch::channel(last);
        let shared = Arc::new(Shared {
            cfg,
            queue: Mutex::new(Queue {
                next_seq: last + 1,
                acked: last,
                ..Default::default()
            }),
            stats: Mutex::new(SenderStats {
                connected: true,
                last_acked: last,
                next_seq: last + 1,
                ..Default::default()
            }),
            wake: Notify::new(),
            acked,
            counters: Mutex::new(None),
            buffers: Mutex::new(Vec::new()),
            keep_buffers: AtomicBool::new(false),
        });
        let (control, rx) = mpsc::channel(8);
        let task = tokio::spawn(drive(shared.clone(), conn, rx));
        let second = shared.cfg.heartbeat_target.clone().map(|addr| {
            shared.stats_mut().second_path_connected = Some(false);
            tokio::spawn(super::second::run(shared.clone(), addr))
        });
        Ok(Sender {
            shared,
            control,
            task,
            second,
        })
    }

    /// Cut the next change set from `records` and queue it. Returns its sequence number.
    pub fn send(&self, records: Vec<Record>) -> Result<u64, SendError> {
        let data: u64 = records.iter().map(Record::data_len).sum();
        let mut enc = SetEncoder::with_buffer(Vec::with_capacity(
            64 + 32 + data as usize + 256 * records.len(),
        ));
        for r in &records {
            enc.push(r).map_err(|e| SendError::Other(e.into()))?;
        }
        self.send_encoded(enc)
    }

    /// Whether buffers of acknowledged sets are kept for [`Sender::buffer`]
    /// (while a mirror sends big sets); `false` frees the kept ones.
    pub fn keep_buffers(&self, keep: bool) {
        self.shared.keep_buffers.store(keep, Ordering::Relaxed);
        if !keep {
            self.shared
                .buffers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    /// An empty buffer for [`SetEncoder::with_buffer`]: one of an
    /// acknowledged set when there is one (no fresh pages to fault in).
    pub fn buffer(&self) -> Vec<u8> {
        self.shared
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// Cut the next change set from the records encoded in `enc` and queue
    /// it. Returns its sequence number.
    pub fn send_encoded(&self, enc: SetEncoder) -> Result<u64, SendError> {
        let max_frame = self.shared.cfg.max_frame as usize;
        if enc.len() + 32 + 2 > max_frame {
            return Err(SendError::Other(anyhow::anyhow!(
                "a change set of {} bytes is larger than the frame limit {max_frame}; split it",
                enc.len() + 32
            )));
        }
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        let seq = q.next_seq;
        let created = now_ms();
        let payload = enc.finish(seq, created);
        let len = payload.len() as u64;
        let cfg = &self.shared.cfg;
        let in_memory = q.bytes - q.spilled_bytes;
        let body = if in_memory + len <= cfg.queue_max_bytes
            || (q.items.is_empty() && cfg.spill_dir.is_none())
        {
            Body::Memory(std::sync::Arc::new(payload))
        } else if let Some(dir) = cfg
            .spill_dir
            .as_ref()
            .filter(|_| q.spilled_bytes + len <= cfg.spill_max_bytes)
        {
            let path = dir.join(format!("{seq:020}.cs"));
            std::fs::write(&path, &payload)
                .with_context(|| format!("spilling change set {seq} to {}", path.display()))?;
            q.spilled_sets += 1;
            q.spilled_bytes += len;
            Body::Disk(path)
        } else {
            return Err(SendError::QueueFull {
                bytes: q.bytes,
                max: cfg.queue_max_bytes,
                spill_max: if cfg.spill_dir.is_some() {
                    cfg.spill_max_bytes
                } else {
                    0
                },
            });
        };
        q.bytes += len;
        q.items.push_back(Queued {
            seq,
            created_unix_ms: created,
            len,
            body,
        });
        q.next_seq += 1;
        drop(q);
        self.shared.wake.notify_one();
        Ok(seq)
    }

    /// Wait until the target acknowledged `seq` (applied and durable).
    pub async fn wait_acked(&self, seq: u64) -> Result<()> {
        let mut rx = self.shared.acked.subscribe();
        rx.wait_for(|&a| a >= seq)
            .await
            .context("the sender stopped")?;
        Ok(())
    }

    /// Tell the target a mirror starts (its data follows as change sets).
    pub async fn mirror_start(&self, m: MirrorStart) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::MirrorStart(m, tx))
            .await
            .context("the sender stopped")?;
        rx.await.context("the sender stopped")?
    }

    /// Tell the target the mirror ended (call after `wait_acked(last_seq)`).
    pub async fn mirror_end(&self, m: MirrorEnd) -> Result<MirrorDone> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::MirrorEnd(m, tx))
            .await
            .context("the sender stopped")?;
        rx.await.context("the sender stopped")?
    }

    /// The sequence number the next `send` will use.
    pub fn next_seq(&self) -> u64 {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_seq
    }

    /// Counters and queue state.
    pub fn stats(&self) -> SenderStats {
        let mut s = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        s.last_acked = q.acked;
        s.next_seq = q.next_seq;
        s.queue_sets = q.items.len() as u64;
        s.queue_bytes = q.bytes;
        s.spilled_sets = q.spilled_sets;
        s.spilled_bytes = q.spilled_bytes;
        s.resync_needed = q.resync_needed;
        s.oldest_pending_unix_ms = q.items.front().map(|i| i.created_unix_ms);
        s
    }

    /// Carry replication's counters (sweeps, queue-full fallbacks) in the
    /// heartbeats from now on.
    pub fn attach_counters(&self, counters: Arc<crate::replicate::ReplicateCounters>) {
        *self
            .shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(counters);
    }

    /// Stop the background tasks (queued, unacknowledged sets are dropped).
    pub async fn close(self) {
        if let Some(t) = self.second {
            t.abort();
            let _ = t.await;
        }
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn drive(shared: Arc<Shared>, first: Connection, mut control: mpsc::Receiver<Control>) {
    let mut conn = Some(first);
    let mut backoff = shared.cfg.backoff_min;
    loop {
        let c = match conn.take() {
            Some(c) => c,
            None => match connect(&shared.cfg, Role::Agent).await {
                Ok(c) => {
                    let mut st = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                    st.reconnects += 1;
                    info!(
                        last_applied = c.welcome.last_applied_seq,
                        "replication link up again"
                    );
                    c
                }
                Err(e) => {
                    if is_retryable(&e) {
                        debug!("reconnecting: {e:#}");
                    } else {
                        warn!("reconnecting keeps failing and retrying will not help until this is fixed: {e:#}");
                    }
                    shared
                        .stats
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .last_error = Some(format!("{e:#}"));
                    let wait = jitter(backoff);
                    backoff = (backoff * 2).min(shared.cfg.backoff_max);
                    if !wait_while_down(&mut control, wait).await {
                        return;
                    }
                    continue;
                }
            },
        };
        shared
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .connected = true;
        let acked_before = *shared.acked.borrow();
        let started = tokio::time::Instant::now();
        let err = session(&shared, c, &mut control).await;
        {
            let mut st = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
            st.connected = false;
            match err {
                Ok(()) => return,
                Err(e) => {
                    warn!("replication link lost: {e:#}; reconnecting");
                    st.last_error = Some(format!("{e:#}"));
                }
            }
        }
        // A session that lasted or made progress resets the backoff; one the
        // target ended at once without acknowledging anything (a refused
        // change set) backs off, so a refusal cannot become a tight
        // reconnect-and-resend loop.
        let progressed = *shared.acked.borrow() > acked_before;
        if progressed || started.elapsed() >= QUICK_FAILURE {
            backoff = shared.cfg.backoff_min;
        } else {
            let wait = jitter(backoff);
            backoff = (backoff * 2).min(shared.cfg.backoff_max);
            if !wait_while_down(&mut control, wait).await {
                return;
            }
        }
    }
}

/// A session shorter than this that acknowledged nothing counts as a failure
/// to connect for the backoff.
const QUICK_FAILURE: Duration = Duration::from_secs(2);

/// Wait `wait` while the link is down, failing control requests at once.
/// Returns false when the sender was dropped.
async fn wait_while_down(control: &mut mpsc::Receiver<Control>, wait: Duration) -> bool {
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return true,
            c = control.recv() => match c {
                Some(Control::MirrorStart(_, tx)) => {
                    let _ = tx.send(Err(anyhow::anyhow!("the link to the target is down")));
                }
                Some(Control::MirrorEnd(_, tx)) => {
                    let _ = tx.send(Err(anyhow::anyhow!("the link to the target is down")));
                }
                None => return false,
            }
        }
    }
}

fn on_ack(shared: &Shared, seq: u64) {
    let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    let mut freed = Vec::new();
    while q.items.front().is_some_and(|i| i.seq <= seq) {
        let i = q.items.pop_front().expect("checked");
        q.bytes -= i.len;
        match i.body {
            Body::Disk(path) => {
                q.spilled_sets -= 1;
                q.spilled_bytes -= i.len;
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!("removing spilled change set {}: {e}", path.display());
                }
            }
            // Still being written by a session: it drops its copy.
            Body::Memory(p) => freed.extend(Arc::try_unwrap(p).ok()),
        }
    }
    q.acked = q.acked.max(seq);
    let a = q.acked;
    drop(q);
    if !freed.is_empty() && shared.keep_buffers.load(Ordering::Relaxed) {
        let mut pool = shared.buffers.lock().unwrap_or_else(|e| e.into_inner());
        for b in freed {
            if pool.len() < BUFFERS_KEPT && b.capacity() <= BUFFER_KEPT_MAX {
                pool.push(b);
            }
        }
    }
    shared.acked.send_replace(a);
}

async fn session(
    shared: &Arc<Shared>,
    c: Connection,
    control: &mut mpsc::Receiver<Control>,
) -> Result<()> {
    let last = c.welcome.last_applied_seq;
    {
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        let first_queued = q.items.front().map(|i| i.seq).unwrap_or(q.next_seq);
        if last + 1 < first_queued {
            warn!(
                target_at = last,
                first_queued,
                "the target is behind what this agent still holds; a difference mirror is needed"
            );
            q.resync_needed = true;
        }
    }
    on_ack(shared, last);
    let Connection {
        mut rd,
        mut wr,
        max_frame,
        compress,
        tcp,
        ..
    } = c;
    // Reading is not cancel-safe, so a task reads and hands messages over.
    let (tx, mut inbox) = mpsc::channel::<Result<Message>>(64);
    let reader = tokio::spawn(async move {
        loop {
            let m = recv_on(&mut rd, max_frame).await;
            let stop = m.is_err();
            if tx.send(m).await.is_err() || stop {
                return;
            }
        }
    });
    let _guard = AbortOnDrop(reader);
    let mut sent_upto = last;
    let mut level = if shared.cfg.compress_adaptive {
        Level::new(START_LEVEL, true)
    } else {
        Level::new(compress, false)
    };
    let mut tick = tokio::time::interval(shared.cfg.heartbeat);
    let mut last_rx = tokio::time::Instant::now();
    let mut pending_end: VecDeque<oneshot::Sender<Result<MirrorDone>>> = VecDeque::new();
    // The compressed frame body, reused from set to set.
    let mut zbuf = Zbuf::default();
    loop {
        // Send everything queued beyond what this connection sent.
        loop {
            let next = {
                let q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.items.iter().find(|i| i.seq > sent_upto).map(|i| {
                    let body = match &i.body {
                        Body::Memory(p) => Ok(p.clone()),
                        Body::Disk(path) => Err(path.clone()),
                    };
                    (i.seq, body)
                })
            };
            let Some((seq, body)) = next else { break };
            let payload = match body {
                Ok(p) => p,
                Err(path) => {
                    std::sync::Arc::new(tokio::fs::read(&path).await.with_context(|| {
                        format!("reading spilled change set {}", path.display())
                    })?)
                }
            };
            let t0 = std::time::Instant::now();
            let body = frame_body(&mut zbuf, &payload, level.get())
                .with_context(|| format!("compressing change set {seq}"))?;
            let t1 = std::time::Instant::now();
            let n = write_change_set(&mut wr, body)
                .await
                .with_context(|| format!("sending change set {seq}"))?;
            // The socket is asked only by an adaptive level.
            let stalls = || {
                tcp.as_ref()
                    .and_then(|fd| super::tcpinfo::stalls(std::os::fd::AsFd::as_fd(fd)))
            };
            level.record(payload.len() as u64, t1 - t0, t1.elapsed(), stalls);
            sent_upto = seq;
            let mut st = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
            st.bytes_sent += n as u64;
            st.payload_bytes_sent += payload.len() as u64;
            st.sets_sent += 1;
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tick.tick() => {
                if last_rx.elapsed() > shared.cfg.dead_after {
                    bail!("nothing from the target for {} s", last_rx.elapsed().as_secs());
                }
                let hb = shared.heartbeat();
                let n = send_on(&mut wr, &Message::Heartbeat(hb), 0).await?;
                shared.stats.lock().unwrap_or_else(|e| e.into_inner()).bytes_sent += n as u64;
            }
            c = control.recv() => match c {
                None => return Ok(()),
                Some(Control::MirrorStart(m, tx)) => {
                    let r = send_on(&mut wr, &Message::MirrorStart(m), compress).await.map(|_| ());
                    let failed = r.is_err();
                    let _ = tx.send(r);
                    if failed { bail!("sending mirror start failed"); }
                }
                Some(Control::MirrorEnd(m, tx)) => {
                    match send_on(&mut wr, &Message::MirrorEnd(m), compress).await {
                        Ok(_) => pending_end.push_back(tx),
                        Err(e) => { let _ = tx.send(Err(anyhow::anyhow!("{e:#}"))); bail!("sending mirror end failed"); }
                    }
                }
            },
            m = inbox.recv() => {
                last_rx = tokio::time::Instant::now();
                match m {
                    None => bail!("the reader stopped"),
                    Some(Err(e)) => {
                        for tx in pending_end.drain(..) { let _ = tx.send(Err(anyhow::anyhow!("{e:#}"))); }
                        return Err(e);
                    }
                    Some(Ok(Message::Ack(Ack { seq }))) => on_ack(shared, seq),
                    Some(Ok(Message::MirrorDone(d))) => {
                        if let Some(tx) = pending_end.pop_front() { let _ = tx.send(Ok(d)); }
                    }
                    Some(Ok(other)) => bail!("unexpected {} from the target", other.name()),
                }
            }
        }
    }
}

/// Frame payloads shorter than this are sent as they are.
const MIN_COMPRESS: usize = 128;

/// A change set's frame body and flags: compressed with zstd at `level`
/// into `zbuf` when that helps, else the payload itself (not copied).
fn frame_body<'a>(
    z: &'a mut Zbuf,
    payload: &'a [u8],
    level: i32,
) -> std::io::Result<(u8, &'a [u8])> {
    if level > 0 && payload.len() >= MIN_COMPRESS {
        let c = match &mut z.cctx {
            Some((c, l)) if *l == level => c,
            slot => {
                let (c, _) = slot.insert((zstd::bulk::Compressor::new(level)?, level));
                c
            }
        };
        z.out.clear();
        z.out
            .reserve(zstd::zstd_safe::compress_bound(payload.len()));
        let n = c.compress_to_buffer(payload, &mut z.out)?;
        if n < payload.len() {
            return Ok((FLAG_ZSTD, &z.out[..]));
        }
    }
    Ok((0, payload))
}

/// The compressor of a session and its output buffer, kept from set to
/// set (a fresh context and buffer per set cost page faults).
#[derive(Default)]
struct Zbuf {
    cctx: Option<(zstd::bulk::Compressor<'static>, i32)>,
    out: Vec<u8>,
}

/// Write one change-set frame (the layout of `standin_link::frame`) from
/// its body without copying it into a frame buffer first. Returns the
/// bytes put on the wire.
async fn write_change_set<W: AsyncWrite + Unpin>(
    w: &mut W,
    (flags, body): (u8, &[u8]),
) -> std::io::Result<usize> {
    let len = u32::try_from(body.len() + 2)
        .map_err(|_| std::io::Error::other("frame larger than 4 GiB"))?;
    let mut head = [0u8; 6];
    head[..4].copy_from_slice(&len.to_be_bytes());
    head[4] = standin_link::message::kind::CHANGE_SET;
    head[5] = flags;
    w.write_all(&head).await?;
    w.write_all(body).await?;
    w.flush().await?;
    Ok(body.len() + 6)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use standin_link::frame::{read_frame, DEFAULT_MAX_FRAME};

    #[test]
    fn change_set_frames_are_read_back_whole_at_every_level() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let compressible = vec![7u8; 300_000];
        let random: Vec<u8> = (0..300_000u64)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
            .collect();
        let tiny = b"short".to_vec();
        let mut z = Zbuf::default();
        rt.block_on(async {
            // One compressor reused across sets and levels, as a session does.
            for level in [0, 1, 3, 1, 0] {
                for payload in [&compressible, &random, &tiny] {
                    let body = frame_body(&mut z, payload, level).unwrap();
                    let flags = body.0;
                    let mut wire = Vec::new();
                    let n = write_change_set(&mut wire, body).await.unwrap();
                    assert_eq!(n, wire.len());
                    if level > 0 && payload == &compressible {
                        assert_eq!(flags, FLAG_ZSTD);
                        assert!(n < 10_000, "compressed to {n} bytes");
                    }
                    if level == 0 || payload == &tiny {
                        assert_eq!(flags, 0);
                    }
                    let f = read_frame(&mut &wire[..], DEFAULT_MAX_FRAME).await.unwrap();
                    assert_eq!(f.kind, standin_link::message::kind::CHANGE_SET);
                    assert_eq!(&f.payload, payload, "level {level}");
                }
            }
        });
    }
}
