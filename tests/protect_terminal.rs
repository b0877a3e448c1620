//! What `standin protect` draws (loopback, root). On a pseudo-terminal
//! (`script` from bsdutils): the mirror's bar (bytes of a total, ETA,
//! terminal escape codes), then the live status line (state, sequence
//! numbers, lag, queue) rewritten in place with `\r` and updated when the
//! source changes. On a pipe: plain lines, no escape codes, no `\r`.

mod protect_support;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protect_support::common::{bin, require_root, require_tool, tempdir};
use protect_support::*;

/// Collects everything a reader gives, on its own thread.
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn start(mut r: impl Read + Send + 'static) -> Capture {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Capture(buf)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Poll `f` every 200 ms, at most `tries` times; panic with `what` and the output.
fn wait_for(what: &str, tries: u32, out: &Capture, mut f: impl FnMut(&str) -> bool) {
    for _ in 0..tries {
        if f(&out.text()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}; output:\n{:?}", out.text());
}

/// The sequence numbers of the live status lines in `text`, in order.
fn status_seqs(text: &str) -> Vec<u64> {
    text.split(['\r', '\n'])
        .filter_map(|seg| {
            let rest = &seg[seg.find("protecting: seq ")? + "protecting: seq ".len()..];
            let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            // A whole line: it goes on with the rest of the state.
            (rest.contains(" acked ") && rest.contains(", lag ") && rest.contains(", queue "))
                .then(|| n.parse().ok())?
        })
        .collect()
}

/// Whether a segment is the mirror's bar: bytes of a total, rate, ETA.
fn is_bar(seg: &str) -> bool {
    seg.contains(" ETA ") && seg.contains("B/s") && seg.contains("iB/") && seg.contains(" files")
}

fn protect_args(addr: &str, sid: &Path, tf: &str, src: &Path) -> Vec<String> {
    [
        "protect",
        "--target",
        addr,
        "--identity",
        sid.to_str().unwrap(),
        "--trust",
        tf,
        "--root",
        src.to_str().unwrap(),
        "--source-id",
        "web1",
        "--compress",
        "0",
        "--bwlimit",
        "1M",
        "--mirror",
        "full",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A child leading its own process group, killed with its group when
/// dropped: also when a check panics, so no `protect` outlives the test.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        stop_group(&mut self.0);
    }
}

fn stop_group(child: &mut Child) {
    // The child leads its own process group (script and protect under it).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
}

#[test]
fn bar_then_live_status_line_on_a_terminal_plain_lines_on_a_pipe() {
    require_root();
    require_tool("script", "bsdutils");
    let d = tempdir();
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    for i in 0..6u32 {
        // Incompressible, so --bwlimit makes the mirror last a few seconds.
        let data: Vec<u8> = (0..(512u32 << 10))
            .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i * 7919) >> 13) as u8)
            .collect();
        std::fs::write(src.join(format!("etc/f{i}")), data).unwrap();
    }
    let troot = target_root(d.path(), &src, true);
    let (tid, tf) = keys(d.path(), "target");
    let (sid, sf) = keys(d.path(), "source");
    let state = d.path().join("state");
    let daemon = Daemon::start(
        None,
        &state,
        &tid,
        &sf,
        "127.0.0.1:0",
        &troot,
        &d.path().join("d.log"),
    );
    let args = protect_args(&daemon.addr, &sid, &tf, &src);

    // On a terminal.
    let line: Vec<String> = std::iter::once(bin().display().to_string())
        .chain(args.iter().cloned())
        .map(|a| format!("'{a}'"))
        .collect();
    let mut pty = Group(
        Command::new("script")
            .args(["-q", "-f", "-e", "-c", &line.join(" "), "/dev/null"])
            .env("TERM", "xterm")
            .env("STANDIN_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let screen = Capture::start(pty.0.stdout.take().unwrap());
    wait_for("the mirror's bar", 600, &screen, |t| {
        t.split(['\r', '\n']).any(is_bar)
    });
    wait_for("the live status line", 600, &screen, |t| {
        !status_seqs(t).is_empty()
    });
    let first = *status_seqs(&screen.text()).last().unwrap();
    std::fs::write(src.join("data/new"), b"a change\n").unwrap();
    wait_for(
        "the status line to show a newer change set",
        600,
        &screen,
        |t| status_seqs(t).last().is_some_and(|&s| s > first),
    );
    drop(pty);
    let text = screen.text();
    let mut bar_at = None;
    let mut pos = 0;
    for seg in text.split_inclusive(['\r', '\n']) {
        if is_bar(seg) {
            bar_at = Some(pos);
            break;
        }
        pos += seg.len();
    }
    let line_at = text.find("protecting: seq ");
    assert!(
        bar_at.is_some() && line_at.is_some() && bar_at < line_at,
        "the bar did not come before the status line:\n{text:?}"
    );
    assert!(
        text.contains("\x1b["),
        "no terminal escape codes on a terminal:\n{text:?}"
    );
    assert!(
        text.contains("\rprotecting: seq "),
        "the status line is not rewritten in place:\n{text:?}"
    );
    assert!(
        status_seqs(&text).len() >= 2,
        "the status line was drawn once:\n{text:?}"
    );

    // On a pipe: plain lines.
    let mut piped = Group(
        Command::new(bin())
            .args(&args)
            .env("STANDIN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let log = Capture::start(piped.0.stderr.take().unwrap());
    wait_for("a plain status line", 600, &log, |t| {
        t.lines().any(|l| !status_seqs(l).is_empty())
    });
    drop(piped);
    let text = log.text();
    assert!(!text.contains('\x1b'), "escape codes on a pipe:\n{text}");
    assert!(!text.contains('\r'), "carriage returns on a pipe:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(" files, ") && l.contains("done in")),
        "no plain mirror progress line:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("protecting: seq ") && status_seqs(l).len() == 1),
        "no plain status line:\n{text}"
    );
    drop(daemon);
}
