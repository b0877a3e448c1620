//! `/etc/fstab` after failover.
//!
//! Rule: the target's entries for `/`, `/boot`, `/boot/efi` and swap stay
//! (they name the target's own volumes by UUID); every other entry comes
//! from the source. Source entries for block devices get `nofail`, so a
//! volume that exists only on the source does not stop the boot (its files
//! were replicated into the root tree and stay visible there).

/// Mount points whose entries come from the target.
pub const TARGET_MOUNTS: &[&str] = &["/", "/boot", "/boot/efi"];

fn fields(line: &str) -> Option<Vec<&str>> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    Some(t.split_whitespace().collect())
}

/// Whether an fstab line belongs to the target (root, boot, EFI, swap).
pub fn is_target_entry(line: &str) -> bool {
    match fields(line) {
        Some(f) if f.len() >= 2 => {
            let mp = f[1].trim_end_matches('/');
            let mp = if mp.is_empty() { "/" } else { mp };
            TARGET_MOUNTS.contains(&mp) || f.get(2) == Some(&"swap") || f[1] == "swap"
        }
        _ => false,
    }
}

fn is_block_spec(spec: &str) -> bool {
    ["UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/"]
        .iter()
        .any(|p| spec.starts_with(p))
}

fn with_nofail(line: &str) -> String {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 4 || !is_block_spec(f[0]) || f[3].split(',').any(|o| o == "nofail") {
        return line.to_string();
    }
    let mut out: Vec<String> = f.iter().map(|s| s.to_string()).collect();
    out[3] = format!("{},nofail", f[3]);
    out.join("\t")
}

/// The fstab for the failed-over system.
pub fn merge(target: &str, source: &str) -> String {
    let mut out = String::from(
        "# /etc/fstab written by standin failover:\n# /, /boot, /boot/efi and swap are the target's own volumes; the other entries are the source's.\n",
    );
    for line in target.lines().filter(|l| is_target_entry(l)) {
        out.push_str(line);
        out.push('\n');
    }
    for line in source.lines() {
        if fields(line).is_some() && !is_target_entry(line) {
            out.push_str(&with_nofail(line));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_target_root_boot_swap_and_source_rest() {
        let t = "# t\nUUID=t-root / ext4 errors=remount-ro 0 1\nUUID=t-boot /boot ext4 defaults 0 2\nUUID=t-efi /boot/efi vfat umask=0077 0 1\nUUID=t-swap none swap sw 0 0\nUUID=t-home /home ext4 defaults 0 2\n";
        let s = "UUID=s-root / ext4 defaults 0 1\nUUID=s-swap none swap sw 0 0\nUUID=s-data /data xfs defaults 0 2\ntmpfs /tmp tmpfs defaults 0 0\n";
        let m = merge(t, s);
        assert!(m.contains("UUID=t-root / ext4"));
        assert!(m.contains("UUID=t-boot /boot"));
        assert!(m.contains("UUID=t-efi /boot/efi"));
        assert!(m.contains("UUID=t-swap none swap"));
        assert!(!m.contains("t-home"));
        assert!(!m.contains("s-root"));
        assert!(!m.contains("s-swap"));
        assert!(m.contains("UUID=s-data\t/data\txfs\tdefaults,nofail\t0\t2"));
        assert!(m.contains("tmpfs /tmp tmpfs defaults 0 0"));
    }
}
