//! The second heartbeat path: a separate authenticated connection to the
//! target's `--heartbeat-listen` address that carries only heartbeats (the
//! same ones as the replication link), so the target can tell a dead
//! source from a dead replication link (split-brain guard).

use super::sender::Shared;
use super::*;

/// Keep the second path up until aborted: connect with backoff, send a
/// heartbeat every `cfg.heartbeat`, expect an Ack for each.
pub(super) async fn run(shared: Arc<Shared>, addr: String) {
    let mut cfg = shared.cfg.clone();
    cfg.target = standin_link::with_port(&addr, standin_link::DEFAULT_HEARTBEAT_PORT);
    // An answer slower than this means the path is dead: reconnect.
    let answer_within = (cfg.heartbeat * 3).max(Duration::from_secs(2));
    cfg.connect_timeout = cfg.connect_timeout.min(answer_within * 2);
    let mut backoff = cfg.backoff_min;
    let mut warned = false;
    loop {
        match connect(&cfg, Role::Heartbeat).await {
            Ok(mut c) => {
                info!(target = cfg.target, "second heartbeat path up");
                warned = false;
                backoff = cfg.backoff_min;
                {
                    let mut st = shared.stats_mut();
                    st.second_path_connected = Some(true);
                    st.second_path_error = None;
                }
                let e = beat(&shared, &mut c, cfg.heartbeat, answer_within).await;
                warn!(target = cfg.target, "second heartbeat path lost: {e:#}");
                let mut st = shared.stats_mut();
                st.second_path_connected = Some(false);
                st.second_path_error = Some(format!("{e:#}"));
            }
            Err(e) => {
                if !is_retryable(&e) || format!("{e:#}").contains("malformed hello") {
                    if !warned {
                        warn!(
                            target = cfg.target,
                            "the second heartbeat path is refused and retrying will not help until this is fixed (a target older than this agent does not accept heartbeat connections; install the same standin version on both sides): {e:#}"
                        );
                        warned = true;
                    }
                } else {
                    debug!(target = cfg.target, "second heartbeat path: {e:#}");
                }
                shared.stats_mut().second_path_error = Some(format!("{e:#}"));
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// Send heartbeats until something fails; returns why.
async fn beat(
    shared: &Shared,
    c: &mut Connection,
    every: Duration,
    answer_within: Duration,
) -> anyhow::Error {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let hb = Message::Heartbeat(shared.heartbeat());
        match tokio::time::timeout(answer_within, c.request(&hb)).await {
            Ok(Ok(Message::Ack(_))) => shared.stats_mut().second_path_heartbeats += 1,
            Ok(Ok(other)) => {
                return anyhow::anyhow!("expected an ack, got {}", other.name());
            }
            Ok(Err(e)) => return e,
            Err(_) => {
                return anyhow::anyhow!(
                    "no answer to a heartbeat within {} s",
                    answer_within.as_secs()
                )
            }
        }
    }
}
