//! `standin target serve`: the target daemon.
//!
//! One task per connection: TLS handshake (pinned mutual TLS), Hello, then
//! requests, with the next frame read and decoded while the current
//! request runs. Change sets go through the [`Store`] on a blocking thread,
//! one at a time. Any malformed, oversized or unknown frame closes only that
//! connection, with the reason logged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use standin_link::frame::{read_frame, write_frame, FrameError, FrameReader, DEFAULT_MAX_FRAME};
use standin_link::message::{check_source_id, ErrorMsg, Hello, Message, Role, Welcome};
use standin_link::{tls, Fingerprint, Identity, PROTOCOL_VERSION, STANDIN_VERSION};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::heartbeat::Beats;
use crate::state::TargetState;
use crate::status::{Journal, StatusOptions};
use crate::store::{ReceiveError, Received, Store};

/// Settings of the daemon.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on, e.g. `0.0.0.0:6320` (port 0 picks a free one).
    pub listen: String,
    pub state_dir: PathBuf,
    pub identity: Identity,
    /// Fingerprints of the agents (and status clients) allowed to connect.
    pub trust: Vec<Fingerprint>,
    pub max_frame: u32,
    /// zstd level for frames this side sends (0 = off).
    pub compress: i32,
    /// Heartbeat silence after which status reports the failover condition.
    pub heartbeat_silence: Duration,
    /// Replication lag above which status reports a Warning.
    pub lag_warning: Duration,
    /// A second address to listen on for the agent's heartbeat-only
    /// connection (the second heartbeat path; any role is served there).
    pub heartbeat_listen: Option<String>,
    /// Time allowed for the TLS handshake and the Hello.
    pub handshake_timeout: Duration,
    /// How often a paused apply is retried.
    pub retry_interval: Duration,
    /// Connections served at once; more are closed at once (logged).
    pub max_connections: usize,
    /// The target's own system tree, whose profile is served (`/`).
    pub target_root: PathBuf,
    /// Failover condition hook, automatic failover, periodic snapshots.
    pub monitor: crate::monitor::MonitorConfig,
    /// How often the heartbeat times are written to `heartbeats.json` (when
    /// they changed; no fsync, see [`crate::heartbeat`]).
    pub heartbeat_flush: Duration,
    /// Test hook: while this file exists, a change set waits before it is
    /// applied, holding the store; `<file>.held` exists while it waits (set
    /// from `STANDIN_TEST_HOLD_APPLY`).
    pub hold_apply_while: Option<PathBuf>,
}

impl ServeConfig {
    /// Defaults for everything but the essentials.
    pub fn new(
        listen: String,
        state_dir: PathBuf,
        identity: Identity,
        trust: Vec<Fingerprint>,
    ) -> ServeConfig {
        ServeConfig {
            listen,
            state_dir,
            identity,
            trust,
            max_frame: DEFAULT_MAX_FRAME,
            compress: 3,
            heartbeat_silence: crate::status::DEFAULT_SILENCE,
            lag_warning: crate::status::DEFAULT_LAG_WARNING,
            heartbeat_listen: None,
            handshake_timeout: Duration::from_secs(30),
            retry_interval: Duration::from_secs(5),
            max_connections: 64,
            target_root: PathBuf::from("/"),
            monitor: crate::monitor::MonitorConfig::default(),
            heartbeat_flush: crate::heartbeat::DEFAULT_FLUSH,
            hold_apply_while: std::env::var_os(HOLD_APPLY_ENV).map(PathBuf::from),
        }
    }
}

/// Environment variable of the [`ServeConfig::hold_apply_while`] test hook.
pub const HOLD_APPLY_ENV: &str = "STANDIN_TEST_HOLD_APPLY";

struct Shared {
    cfg: ServeConfig,
    store: Mutex<Store>,
    /// The state and journal backlog as of the last store operation, so a
    /// status request never waits for an apply in progress.
    snapshot: Mutex<(TargetState, Journal)>,
    /// Heartbeat times, recorded without the store (see [`crate::heartbeat`]).
    beats: Mutex<Beats>,
    /// Bumped by every recorded heartbeat; the flusher writes when it moved.
    beats_version: AtomicU64,
    /// The target's profile, served from memory.
    profile: crate::profile::ProfileCache,
}

impl Shared {
    fn beats(&self) -> std::sync::MutexGuard<'_, Beats> {
        self.beats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state as status and the monitor see it: the last store
    /// snapshot with the live heartbeat times.
    fn view(&self) -> (TargetState, Journal) {
        let (mut st, j) = self
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.beats().set_in(&mut st);
        (st, j)
    }

    /// Write `heartbeats.json` if a heartbeat arrived since the last write.
    fn flush_beats(&self, written: &mut u64) {
        let v = self.beats_version.load(Ordering::Acquire);
        if v == *written {
            return;
        }
        let beats = self.beats().clone();
        match beats.write(&self.cfg.state_dir) {
            Ok(()) => *written = v,
            Err(e) => debug!("writing {}: {e}", crate::heartbeat::HEARTBEAT_FILE),
        }
    }
}

fn journal_of(store: &Store, dir: &std::path::Path) -> Journal {
    crate::status::journal_info(&dir.join("journal"), store.state().last_applied_seq)
}

impl ServeConfig {
    /// The status thresholds.
    pub fn status_options(&self) -> StatusOptions {
        StatusOptions {
            silence: self.heartbeat_silence,
            lag_warning: self.lag_warning,
        }
    }
}

/// Run `f` on the store on a blocking thread, then publish the snapshot.
async fn with_store<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Store) -> T + Send + 'static,
) -> Result<T> {
    let sh = shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = sh.store.lock().unwrap_or_else(|e| e.into_inner());
        // Durable saves carry the heartbeat times as of now.
        store.set_beats(&sh.beats());
        let r = f(&mut store);
        let snap = (store.state().clone(), journal_of(&store, &sh.cfg.state_dir));
        *sh.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = snap;
        r
    })
    .await
    .context("state task")
}

/// Sync the filesystem of the replica at `root` after mirror `mirror_id`
/// completed, without the store's lock (change sets go on meanwhile: they
/// are journaled), then record the mirror durable ([`Store::mirror_flushed`]).
/// The digest cache is saved first (after the agent got its answer).
async fn flush_mirror(shared: Arc<Shared>, mirror_id: String, root: std::path::PathBuf) {
    let t0 = std::time::Instant::now();
    let dir = shared.cfg.state_dir.clone();
    let synced = tokio::task::spawn_blocking(move || {
        crate::mirror::save_digest_cache(&dir, &root);
        crate::store::sync_filesystem(&root)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    debug!(
        ms = t0.elapsed().as_millis() as u64,
        "mirror end: replica synced"
    );
    match with_store(&shared, move |store| {
        store.mirror_flushed(&mirror_id, synced)
    })
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => warn!("{e:#}"),
    }
}

/// Run the daemon until SIGINT/SIGTERM. `ready` gets the bound address
/// (after recovery, before the first connection is accepted).
pub async fn serve(cfg: ServeConfig, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    serve_until(cfg, ready, std::future::pending()).await
}

/// [`serve`] that also stops when `stop` completes (for tests and
/// embedding). The heartbeat times are written once more on the way out.
pub async fn serve_until(
    cfg: ServeConfig,
    ready: impl FnOnce(SocketAddr),
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let dir = cfg.state_dir.clone();
    crate::durable::create_dirs(&dir)?;
    // One daemon per state directory, held for its life: `standin target seed`
    // refuses while it runs, and failover and snapshot then know whether a
    // journaled change set is this daemon's to apply or left by a crash.
    let _running = crate::lock::daemon(&dir)?;
    let store = tokio::task::spawn_blocking(move || -> Result<Store> {
        let store = Store::open(&dir)?;
        crate::mirror::load_digest_cache(&store);
        Ok(store)
    })
    .await
    .context("opening the state directory")??;
    let tls_config = tls::server_config(&cfg.identity, &cfg.trust)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    info!(%addr, identity = %cfg.identity.fingerprint, trusted = cfg.trust.len(), "target listening");
    let second = match &cfg.heartbeat_listen {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .with_context(|| format!("listening for heartbeats on {a}"))?;
            info!(addr = %l.local_addr()?, "listening for the second heartbeat path");
            Some(l)
        }
        None => None,
    };
    let snapshot = Mutex::new((store.state().clone(), journal_of(&store, &cfg.state_dir)));
    let mut beats = Beats::of(store.state());
    beats.watching_since_unix_ms = Some(crate::state::now_ms());
    // The new watching time is on disk before the daemon says it listens,
    // so nothing in the state directory changes behind a caller's back.
    if let Err(e) = beats.write(&cfg.state_dir) {
        warn!("writing {}: {e}", crate::heartbeat::HEARTBEAT_FILE);
    }
    ready(addr);
    let profile = crate::profile::ProfileCache::new(&cfg.target_root, &cfg.state_dir);
    let shared = Arc::new(Shared {
        cfg,
        store: Mutex::new(store),
        snapshot,
        beats: Mutex::new(beats),
        // The flusher writes when a heartbeat moves this.
        beats_version: AtomicU64::new(0),
        profile,
    });
    {
        // Collect the profile now, so the first validation gets it at once.
        let sh = shared.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = sh.profile.get() {
                tracing::warn!("collecting the target's profile: {e:#}");
            }
        });
    }
    let hb_listen = match &second {
        Some(l) => Some(l.local_addr()?.to_string()),
        None => None,
    };
    if let Err(e) = with_store(&shared, move |store| store.set_heartbeat_listen(hb_listen)).await? {
        warn!("recording the second heartbeat path in state.json: {e:#}");
    }
    let retry = tokio::spawn(retry_loop(shared.clone()));
    let monitor = tokio::spawn(monitor_loop(shared.clone()));
    let flusher = tokio::spawn(flush_loop(shared.clone()));
    tokio::pin!(stop);
    let slots = Arc::new(tokio::sync::Semaphore::new(shared.cfg.max_connections));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            r = accept_either(&listener, second.as_ref()) => {
                let (stream, peer) = match r {
                    Ok(x) => x,
                    Err(e) => { warn!("accepting a connection: {e}"); continue; }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    warn!(%peer, "refusing a connection: {} connections are open already", shared.cfg.max_connections);
                    continue;
                };
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, peer, acceptor, shared).await {
                        warn!(%peer, "connection closed: {e:#}");
                    }
                    drop(slot);
                });
            }
            _ = tokio::signal::ctrl_c() => { info!("interrupted; stopping"); break; }
            _ = term.recv() => { info!("terminated; stopping"); break; }
            _ = &mut stop => { info!("stopping"); break; }
        }
    }
    retry.abort();
    monitor.abort();
    flusher.abort();
    let _ = flusher.await;
    let sh = shared.clone();
    let _ = tokio::task::spawn_blocking(move || sh.flush_beats(&mut 0)).await;
    // A mirror that completed just before: sync its replica now, so that
    // a daemon stopped on purpose keeps it complete (a kill leaves it
    // incomplete; the next mirror compares it).
    let pending = with_store(&shared, |store| {
        let id = store.flush_pending()?;
        Some((id, store.staging_root(store.state().source_id.as_deref()?)))
    })
    .await;
    if let Ok(Some((id, root))) = pending {
        flush_mirror(shared.clone(), id, root).await;
    }
    Ok(())
}

/// Write the heartbeat times every [`ServeConfig::heartbeat_flush`] when
/// they changed: at most one write per interval however many heartbeats
/// arrive, never an fsync.
async fn flush_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.heartbeat_flush);
    let mut written = 0;
    loop {
        tick.tick().await;
        let sh = shared.clone();
        written = match tokio::task::spawn_blocking(move || {
            sh.flush_beats(&mut written);
            written
        })
        .await
        {
            Ok(w) => w,
            Err(_) => written,
        };
    }
}

/// The next connection on the main listener or the second heartbeat path's.
async fn accept_either(
    main: &TcpListener,
    second: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    match second {
        Some(l) => tokio::select! {
            r = main.accept() => r,
            r = l.accept() => r,
        },
        None => main.accept().await,
    }
}

/// The failover condition, its hook, automatic failover, periodic snapshots
/// (see [`crate::monitor`]).
async fn monitor_loop(shared: Arc<Shared>) {
    use crate::monitor::{Action, Monitor};
    let cfg = shared.cfg.monitor.clone();
    let dir = shared.cfg.state_dir.clone();
    let mut mon = Monitor::default();
    let mut tick = tokio::time::interval(cfg.tick);
    loop {
        tick.tick().await;
        let st = shared.view().0;
        let failed_over = matches!(crate::failover::load_record(&dir), Ok(Some(r)) if r.state != crate::failover::RecordState::RolledBack);
        let now = crate::state::now_ms();
        for action in mon.tick(&cfg, &st, failed_over, now, shared.cfg.heartbeat_silence) {
            match action {
                Action::ConditionMet { silent_ms } => {
                    warn!(
                        silent_s = silent_ms / 1000,
                        "failover condition met: no heartbeat from the source"
                    );
                    if let Some(cmd) = &cfg.on_condition {
                        info!(cmd, "running the failover-condition hook");
                        let cmd = cmd.clone();
                        let dir = dir.clone();
                        tokio::task::spawn_blocking(move || {
                            match std::process::Command::new("sh")
                                .arg("-c")
                                .arg(&cmd)
                                .env("STANDIN_STATE_DIR", &dir)
                                .status()
                            {
                                Ok(st) if st.success() => {}
                                Ok(st) => warn!(cmd, "the failover-condition hook failed: {st}"),
                                Err(e) => warn!(cmd, "running the failover-condition hook: {e}"),
                            }
                        });
                    }
                }
                Action::ConditionCleared => {
                    info!("heartbeats are back: failover condition cleared")
                }
                Action::AutoFailover => {
                    let Some(a) = cfg.auto_failover.clone() else {
                        continue;
                    };
                    warn!(target_root = %a.target_root.display(), "automatic failover: the condition held long enough");
                    let mut opts =
                        crate::failover::FailoverOptions::new(dir.clone(), a.target_root);
                    opts.graceful = false;
                    opts.reboot = a.reboot;
                    opts.heartbeat_silence = shared.cfg.heartbeat_silence;
                    let r = tokio::task::spawn_blocking(move || {
                        crate::failover::failover(
                            &opts,
                            &mut |ds| {
                                warn!(
                                    "automatic failover with a possibly incomplete replica: {}",
                                    ds.missing.join("; ")
                                );
                                true
                            },
                            &standin_builder::progress::NoProgress,
                        )
                    })
                    .await;
                    match r {
                        Ok(Ok(rep)) => warn!(id = rep.record.id, "automatic failover complete"),
                        Ok(Err(e)) => warn!("automatic failover failed: {e:#}"),
                        Err(e) => warn!("automatic failover task: {e}"),
                    }
                }
                Action::Snapshot => {
                    let dir2 = dir.clone();
                    let r = with_store(&shared, move |store| {
                        // The last mirror's ledger stays usable (the next
                        // difference mirror compares from it).
                        let replica = store
                            .state()
                            .source_id
                            .clone()
                            .map(|id| store.staging_root(&id));
                        let snapshot = || {
                            let meta = crate::snapshot::take(
                                &dir2,
                                None,
                                &standin_builder::progress::NoProgress,
                            )?;
                            let gone = crate::snapshot::retention::prune(
                                &dir2,
                                crate::state::now_ms(),
                                &Default::default(),
                            )?;
                            anyhow::Ok((meta, gone))
                        };
                        // A change set left half applied is finished first,
                        // so the snapshot changes nothing but links.
                        let replayed = crate::lock::for_apply(&dir2)
                            .and_then(|lock| crate::store::replay_locked(&dir2, &lock));
                        match (replica, replayed) {
                            (Some(root), Ok(_)) => {
                                crate::mirror::ledger::across_snapshot(&root, snapshot)
                            }
                            _ => snapshot(),
                        }
                    })
                    .await;
                    match r {
                        Ok(Ok((meta, gone))) => info!(
                            id = meta.id,
                            seq = meta.seq,
                            pruned = gone.len(),
                            "snapshot taken"
                        ),
                        Ok(Err(e)) => warn!("taking a periodic snapshot: {e:#}"),
                        Err(e) => warn!("snapshot task: {e}"),
                    }
                }
            }
        }
    }
}

/// The [`ServeConfig::hold_apply_while`] test hook: wait (holding the
/// store) while the file exists.
fn hold_apply(hold: Option<&std::path::Path>, seq: u64) {
    if let Some(p) = hold {
        crate::test_hook::hold_while(p, seq, "the apply");
    }
}

async fn retry_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.retry_interval);
    loop {
        tick.tick().await;
        let _ = with_store(&shared, |store| {
            if store.state().paused.is_some() {
                match store.retry_paused() {
                    Ok(true) => info!("apply resumed"),
                    Ok(false) => debug!("apply still paused"),
                    Err(e) => warn!("retrying a paused apply: {e:#}"),
                }
            }
        })
        .await;
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message, level: i32) -> Result<()> {
    let (k, p) = msg.encode()?;
    write_frame(w, k, &p, level)
        .await
        .with_context(|| format!("sending {}", msg.name()))?;
    Ok(())
}

async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, reason: String, retry: bool) -> anyhow::Error {
    let _ = send(
        w,
        &Message::Error(ErrorMsg {
            reason: reason.clone(),
            retry,
        }),
        0,
    )
    .await;
    anyhow::anyhow!("{reason}")
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) -> Result<()> {
    let cfg = &shared.cfg;
    let _ = stream.set_nodelay(true);
    let mut tls = match tokio::time::timeout(cfg.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => anyhow::bail!("TLS handshake refused: {e}"),
        Err(_) => anyhow::bail!("TLS handshake timed out"),
    };
    let fpr = tls::peer_fingerprint(tls.get_ref().1.peer_certificates())
        .context("the peer presented no certificate")?;
    info!(%peer, offered = %fpr, "authenticated connection");
    let first = tokio::time::timeout(cfg.handshake_timeout, read_frame(&mut tls, cfg.max_frame))
        .await
        .context("waiting for hello")??;
    let hello: Hello = match Message::decode(first.kind, &first.payload) {
        Ok(Message::Hello(h)) => h,
        Ok(m) => {
            return Err(refuse(&mut tls, format!("expected hello, got {}", m.name()), false).await)
        }
        Err(e) => return Err(refuse(&mut tls, format!("bad first frame: {e}"), false).await),
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(refuse(
            &mut tls,
            format!(
                "protocol version {} is not supported by this target (standin {STANDIN_VERSION} speaks {PROTOCOL_VERSION}); install the same standin version on both sides",
                hello.protocol
            ),
            false,
        )
        .await);
    }
    if let Err(e) = check_source_id(&hello.source_id) {
        return Err(refuse(&mut tls, e, false).await);
    }
    info!(%peer, source = hello.source_id, role = ?hello.role, version = hello.standin_version, "hello");
    let bound = if hello.role == Role::Agent {
        let source = hello.source_id.clone();
        with_store(&shared, move |store| {
            store.bind_source(&source, fpr).map(|_| {
                (
                    store.state().last_applied_seq,
                    store.state().mirror_complete,
                )
            })
        })
        .await?
    } else {
        let snap = shared.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        match &snap.0.source_id {
            // Heartbeats count only from the source this target stages.
            Some(s) if hello.role == Role::Heartbeat && *s != hello.source_id => Err(format!(
                "this target stages source {s:?}, not {:?}; heartbeats from another source are refused",
                hello.source_id
            )),
            _ => Ok((snap.0.last_applied_seq, snap.0.mirror_complete)),
        }
    };
    let (last_applied_seq, mirror_complete) = match bound {
        Ok(x) => x,
        Err(e) => return Err(refuse(&mut tls, e, false).await),
    };
    let welcome = Welcome {
        protocol: PROTOCOL_VERSION,
        standin_version: STANDIN_VERSION.to_string(),
        last_applied_seq,
        mirror_complete,
    };
    send(&mut tls, &Message::Welcome(welcome), 0).await?;
    let (rd, mut wr) = tokio::io::split(tls);
    let pool = standin_link::frame::BufferPool::default();
    let (frames, reader) = read_ahead(rd, cfg.max_frame, pool.clone());
    let r = serve_requests(frames, &mut wr, &hello, peer, &shared, &pool).await;
    // The reader holds the read half: stop it so the connection closes now.
    reader.abort();
    r
}

/// A frame read and decoded ahead of the request loop: its payload, the
/// message, and for a change set the content digest (BLAKE3) of each
/// `File` record's data.
type Incoming = Result<(Vec<u8>, Result<Message, String>, FileDigests), FrameError>;

/// [`crate::store::file_data_digests`] of a change set (empty otherwise).
type FileDigests = Vec<Option<standin_builder::changeset::Digest32>>;

/// Read and decode frames on their own task, one frame ahead of the
/// request loop: while a change set applies on a blocking thread, the next
/// one is decrypted, decompressed and checked (its checksum, limits and
/// paths), and its files' data hashed (the apply compares these digests
/// with the records' before writing, see [`Store::receive_hashed`]). At
/// most one decoded frame waits, so memory stays bounded. The task ends
/// with the connection or after the first error. Payload buffers come
/// from `pool`; the request loop gives them back.
fn read_ahead<R: AsyncRead + Unpin + Send + 'static>(
    mut rd: R,
    max_frame: u32,
    pool: standin_link::frame::BufferPool,
) -> (
    tokio::sync::mpsc::Receiver<Incoming>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Incoming>(1);
    let task = tokio::spawn(async move {
        let mut reader = FrameReader::new(pool);
        loop {
            let item = match reader.read(&mut rd, max_frame).await {
                Ok(f) => {
                    let large = f.payload.len() >= 64 << 10;
                    let payload = f.payload;
                    let kind = f.kind;
                    let decode = move || {
                        let m = Message::decode(kind, &payload).map_err(|e| e.to_string());
                        // Hashed here, while the previous set applies.
                        let digests = match &m {
                            Ok(Message::ChangeSet(cs)) => crate::store::file_data_digests(cs),
                            _ => Vec::new(),
                        };
                        (payload, m, digests)
                    };
                    if large {
                        // Decoding a large change set hashes it (its checksum and
                        // its files' data): off the runtime's threads.
                        tokio::task::spawn_blocking(decode)
                            .await
                            .map_err(|e| FrameError::Io(std::io::Error::other(e)))
                    } else {
                        Ok(decode())
                    }
                }
                Err(e) => Err(e),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    (rx, task)
}

async fn serve_requests<S: AsyncWrite + Unpin>(
    mut frames: tokio::sync::mpsc::Receiver<Incoming>,
    s: &mut S,
    hello: &Hello,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    pool: &standin_link::frame::BufferPool,
) -> Result<()> {
    let cfg = &shared.cfg;
    let agent = hello.role == Role::Agent;
    let beats = agent || hello.role == Role::Heartbeat;
    let path = if agent {
        crate::state::PATH_LINK
    } else {
        crate::state::PATH_SECOND
    };
    let mut diff: Option<crate::mirror::DiffSession> = None;
    loop {
        let waiting = std::time::Instant::now();
        let (payload, decoded, digests) = match frames.recv().await {
            Some(Ok(f)) => f,
            None | Some(Err(FrameError::Closed)) => {
                debug!(source = hello.source_id, "peer closed the connection");
                return Ok(());
            }
            Some(Err(e)) => return Err(refuse(s, format!("{e}"), false).await),
        };
        let msg = match decoded {
            Ok(m) => m,
            Err(e) => return Err(refuse(s, e, false).await),
        };
        // Only a change set's encoding is kept (it may be journaled).
        let payload = if matches!(msg, Message::ChangeSet(_)) {
            payload
        } else {
            pool.give(payload);
            Vec::new()
        };
        let reply = match msg {
            Message::StatusRequest => {
                let status = {
                    let (st, journal) = shared.view();
                    crate::status::compute(
                        &st,
                        &journal,
                        crate::state::now_ms(),
                        &cfg.status_options(),
                    )
                };
                Message::StatusResponse(Box::new(status))
            }
            Message::ProfileRequest => {
                let sh = shared.clone();
                let p = tokio::task::spawn_blocking(move || sh.profile.get())
                    .await
                    .context("profile task")?;
                match p {
                    Ok(v) => Message::ProfileResponse(v),
                    Err(e) => {
                        return Err(refuse(
                            s,
                            format!("collecting the target's profile: {e:#}"),
                            true,
                        )
                        .await)
                    }
                }
            }
            Message::FixRequest(fixes) if !agent => {
                let sh = shared.clone();
                let r = tokio::task::spawn_blocking(move || sh.profile.apply_fixes(fixes))
                    .await
                    .context("fix task")?;
                match r {
                    Ok(v) => Message::FixResponse(v),
                    Err(e) => {
                        return Err(refuse(
                            s,
                            format!("applying fixes on the target: {e:#}"),
                            false,
                        )
                        .await)
                    }
                }
            }
            Message::Heartbeat(hb) if beats => {
                // Recorded without the store, so an apply in progress does
                // not hold it up; answered with the last applied number, so
                // the agent can tell a live link from a dead one.
                shared
                    .beats()
                    .record(&hb, path, Some(peer.to_string()), crate::state::now_ms());
                shared.beats_version.fetch_add(1, Ordering::AcqRel);
                let seq = shared
                    .snapshot
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .0
                    .last_applied_seq;
                Message::Ack(standin_link::message::Ack { seq })
            }
            Message::ChangeSet(cs) if agent => {
                let raw = payload;
                let seq = cs.seq;
                let hold = cfg.hold_apply_while.clone();
                let pool = pool.clone();
                // How long the loop waited for this set, and its apply took
                // (which of the two sides is the bottleneck).
                let wait_ms = waiting.elapsed().as_millis() as u64;
                let t0 = std::time::Instant::now();
                match with_store(shared, move |store| {
                    hold_apply(hold.as_deref(), seq);
                    let r = store.receive_hashed(&raw, &cs, &digests);
                    // The next frames reuse the buffer (no fresh pages).
                    pool.give(raw);
                    r
                })
                .await?
                {
                    Ok(Received::Applied { seq, problems }) => {
                        if problems.is_empty() {
                            let apply_ms = t0.elapsed().as_millis() as u64;
                            debug!(seq, wait_ms, apply_ms, "change set applied");
                        }
                        Message::Ack(standin_link::message::Ack { seq })
                    }
                    Ok(Received::Duplicate { seq }) => {
                        Message::Ack(standin_link::message::Ack { seq })
                    }
                    Err(ReceiveError::Paused(reason)) => {
                        return Err(refuse(s, format!("change set {seq}: {reason}"), true).await)
                    }
                    Err(e) => return Err(refuse(s, format!("change set {seq}: {e}"), false).await),
                }
            }
            Message::MirrorStart(m) if agent => {
                with_store(shared, move |store| store.mirror_start(&m)).await??;
                continue;
            }
            Message::MirrorEnd(m) if agent => {
                let source = hello.source_id.clone();
                let (done, flush) = with_store(shared, move |store| {
                    let done = crate::mirror::end(store, &source, &m)?;
                    let root = store.staging_root(&source);
                    anyhow::Ok((done, store.flush_pending().map(|id| (id, root))))
                })
                .await??;
                if let Some((mirror_id, root)) = flush {
                    tokio::spawn(flush_mirror(shared.clone(), mirror_id, root));
                }
                Message::MirrorDone(done)
            }
            Message::MirrorBase(b) if agent => {
                // The source offers its last mirror as the base of a sparse
                // mirror: accepted only while the replica is what it left.
                let source = hello.source_id.clone();
                let (root, verdict) = with_store(shared, move |store| {
                    let root = store.staging_root(&source);
                    let v = crate::mirror::base::accept(store.state(), &root, &b);
                    (root, v)
                })
                .await?;
                match verdict {
                    Ok(()) => {
                        diff = Some(crate::mirror::DiffSession::new_sparse(&root)?);
                        info!("sparse mirror: the source's base accepted");
                        Message::MirrorBaseAnswer(standin_link::message::MirrorBaseAnswer {
                            accepted: true,
                            reason: None,
                        })
                    }
                    Err(why) => {
                        info!("sparse mirror refused: {why}; the source compares the whole tree");
                        Message::MirrorBaseAnswer(standin_link::message::MirrorBaseAnswer {
                            accepted: false,
                            reason: Some(why),
                        })
                    }
                }
            }
            Message::MirrorEntries(m) if agent => {
                // A batch with no entries ends a listing; the next batch
                // starts another one (the source's empty-replica probe lists
                // the root alone, then the whole tree).
                let ends = m.entries.is_empty();
                let mut session = match diff.take() {
                    Some(d) => d,
                    None => crate::mirror::DiffSession::new(
                        &cfg.state_dir
                            .join("staging")
                            .join(&hello.source_id)
                            .join("root"),
                    )?,
                };
                let (session, r) = tokio::task::spawn_blocking(move || {
                    let r = session.diff(&m);
                    (session, r)
                })
                .await
                .context("mirror diff task")?;
                diff = (!ends).then_some(session);
                match r {
                    Ok(d) => Message::MirrorDiff(d),
                    Err(e) => return Err(refuse(s, format!("{e:#}"), false).await),
                }
            }
            other => {
                return Err(refuse(
                    s,
                    format!(
                        "unexpected {} from a {:?} connection",
                        other.name(),
                        hello.role
                    ),
                    false,
                )
                .await)
            }
        };
        send(s, &reply, cfg.compress).await?;
    }
}
