//! OS, architecture, CPUs, memory, boot mode and boot loader.

use crate::collect::KNOWN_BOOT_LOADERS;
use crate::profile::Profile;
use crate::report::{Finding, Severity};

use super::{bytes, Options};

pub(super) fn os(s: &Profile, t: &Profile, f: &mut Vec<Finding>) {
    let (so, to) = (&s.os, &t.os);
    let both = format!(
        "source {} {}, target {} {}",
        so.id, so.version_id, to.id, to.version_id
    );
    if so.id != to.id || so.major() != to.major() {
        f.push(
            Finding::new("os.match", Severity::Error, format!("operating systems differ: {both}"))
                .details("the target runs the source's system after failover and keeps its own kernel and modules; OS id and major version must be equal")
                .manual(format!("install {} {} on the target", so.id, so.major())),
        );
    } else {
        f.push(Finding::new(
            "os.match",
            Severity::Ok,
            format!("same OS and major version: {both}"),
        ));
    }
}

pub(super) fn arch(s: &Profile, t: &Profile, f: &mut Vec<Finding>) {
    if s.arch != t.arch {
        f.push(
            Finding::new(
                "arch.match",
                Severity::Error,
                format!("architectures differ: source {}, target {}", s.arch, t.arch),
            )
            .details("binaries of one architecture do not run on the other")
            .manual(format!("use a {} machine as the target", s.arch)),
        );
    } else {
        f.push(Finding::new(
            "arch.match",
            Severity::Ok,
            format!("same architecture: {}", s.arch),
        ));
    }
}

pub(super) fn cpus(s: &Profile, t: &Profile, f: &mut Vec<Finding>) {
    let msg = format!("source {} CPUs, target {} CPUs", s.cpus, t.cpus);
    if t.cpus < s.cpus {
        f.push(
            Finding::new(
                "cpu.count",
                Severity::Warning,
                format!("target has fewer CPUs: {msg}"),
            )
            .details("after failover the source's workload runs on fewer CPUs")
            .manual(format!("give the target at least {} CPUs", s.cpus)),
        );
    } else {
        f.push(Finding::new("cpu.count", Severity::Ok, msg));
    }
}

pub(super) fn memory(s: &Profile, t: &Profile, o: &Options, f: &mut Vec<Finding>) {
    let both = format!(
        "source {}, target {}",
        bytes(s.memory_bytes),
        bytes(t.memory_bytes)
    );
    if s.memory_bytes == 0 {
        f.push(
            Finding::new(
                "memory.size",
                Severity::Warning,
                format!("source memory unknown: {both}"),
            )
            .manual("collect the source profile again on the running source"),
        );
        return;
    }
    let pct = (t.memory_bytes as f64 - s.memory_bytes as f64) / s.memory_bytes as f64 * 100.0;
    if pct.abs() > o.memory_tolerance_percent {
        f.push(
            Finding::new(
                "memory.size",
                Severity::Warning,
                format!(
                    "target memory differs by {pct:+.1}% (more than ±{}%): {both}",
                    o.memory_tolerance_percent
                ),
            )
            .details(if pct < 0.0 {
                "the source's workload may not fit in the target's memory"
            } else {
                "the target has much more memory than the source; fine for failover, wasteful as a standby"
            })
            .manual("give the target about as much memory as the source"),
        );
    } else {
        f.push(Finding::new(
            "memory.size",
            Severity::Ok,
            format!(
                "target memory within ±{}% ({pct:+.1}%): {both}",
                o.memory_tolerance_percent
            ),
        ));
    }
}

pub(super) fn boot_mode(s: &Profile, t: &Profile, f: &mut Vec<Finding>) {
    let both = format!("source {}, target {}", s.boot_mode, t.boot_mode);
    if s.boot_mode != t.boot_mode {
        f.push(
            Finding::new("boot.mode", Severity::Error, format!("boot modes differ: {both}"))
                .details("the staged system keeps the target's boot loader, which must boot the same way as the source")
                .manual(format!("switch the target's firmware to {} boot", s.boot_mode)),
        );
    } else {
        f.push(Finding::new(
            "boot.mode",
            Severity::Ok,
            format!("same boot mode: {both}"),
        ));
    }
}

pub(super) fn boot_loader(s: &Profile, t: &Profile, f: &mut Vec<Finding>) {
    let known = KNOWN_BOOT_LOADERS.join(", ");
    let src = s.boot_loader.as_deref().unwrap_or("none found");
    match t.boot_loader.as_deref() {
        Some(b) if KNOWN_BOOT_LOADERS.contains(&b) => f.push(Finding::new(
            "boot.loader",
            Severity::Ok,
            format!("target boot loader {b} is kept by the swap (source: {src})"),
        )),
        other => f.push(
            Finding::new(
                "boot.loader",
                Severity::Error,
                format!(
                    "target boot loader {} is not one the swap can keep ({known}); source: {src}",
                    other.unwrap_or("none found")
                ),
            )
            .details("failover keeps the target's kernel, modules and boot loader; it knows how to keep grub and systemd-boot")
            .manual("install grub or systemd-boot on the target"),
        ),
    }
}
