//! Two network namespaces joined by a veth pair, for end-to-end tests:
//! source 198.18.0.1/24, target 198.18.0.2/24, no default route. Deleted on
//! drop, also when the test fails.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    pub src: String,
    pub tgt: String,
    pub veth: String,
}

impl Netns {
    /// Create the pair; `prefix` (2–3 characters) keeps names of different
    /// test binaries apart, a counter keeps tests of one binary apart.
    pub fn create(prefix: &str) -> Netns {
        let id = (std::process::id() % 10_000) * 10 + COUNTER.fetch_add(1, Ordering::SeqCst);
        let n = Netns {
            src: format!("{prefix}-s{id}"),
            tgt: format!("{prefix}-t{id}"),
            veth: format!("{prefix}v{id}"),
        };
        let ip = |args: &[&str]| {
            super::run_ok(Command::new("ip").args(args), None);
        };
        ip(&["netns", "add", &n.src]);
        ip(&["netns", "add", &n.tgt]);
        let (a, b) = (format!("{}a", n.veth), format!("{}b", n.veth));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", &n.src]);
        ip(&["link", "set", &b, "netns", &n.tgt]);
        ip(&["-n", &n.src, "addr", "add", "198.18.0.1/24", "dev", &a]);
        ip(&["-n", &n.tgt, "addr", "add", "198.18.0.2/24", "dev", &b]);
        for (ns, dev) in [(&n.src, &a), (&n.tgt, &b)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        n
    }

    /// Cut (`false`) or restore (`true`) the link on the source side.
    pub fn set_link(&self, up: bool) {
        super::run_ok(
            Command::new("ip").args([
                "-n",
                &self.src,
                "link",
                "set",
                &format!("{}a", self.veth),
                if up { "up" } else { "down" },
            ]),
            None,
        );
    }

    /// Add a second veth pair between the two namespaces (a second network
    /// path): source 198.18.0.5, target 198.18.0.6, point-to-point, so it
    /// stays usable while the first pair is cut. Returns (source, target).
    pub fn add_second_path(&self) -> (&'static str, &'static str) {
        let ip = |args: &[&str]| {
            super::run_ok(Command::new("ip").args(args), None);
        };
        let (c, d) = (format!("{}c", self.veth), format!("{}d", self.veth));
        ip(&["link", "add", &c, "type", "veth", "peer", "name", &d]);
        ip(&["link", "set", &c, "netns", &self.src]);
        ip(&["link", "set", &d, "netns", &self.tgt]);
        ip(&[
            "-n",
            &self.src,
            "addr",
            "add",
            "198.18.0.5",
            "peer",
            "198.18.0.6",
            "dev",
            &c,
        ]);
        ip(&[
            "-n",
            &self.tgt,
            "addr",
            "add",
            "198.18.0.6",
            "peer",
            "198.18.0.5",
            "dev",
            &d,
        ]);
        ip(&["-n", &self.src, "link", "set", &c, "up"]);
        ip(&["-n", &self.tgt, "link", "set", &d, "up"]);
        ("198.18.0.5", "198.18.0.6")
    }

    /// Cut (`false`) or restore (`true`) the second path on the source side.
    pub fn set_second_link(&self, up: bool) {
        super::run_ok(
            Command::new("ip").args([
                "-n",
                &self.src,
                "link",
                "set",
                &format!("{}c", self.veth),
                if up { "up" } else { "down" },
            ]),
            None,
        );
    }

    /// The `standin` binary run inside namespace `ns`.
    pub fn exec(ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(super::bin())
            .env("NO_COLOR", "1");
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.src, &self.tgt] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
