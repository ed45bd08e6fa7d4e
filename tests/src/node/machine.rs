//! What the machine shows: processes, cgroup hierarchies, mounts, the kubelet's log links.

use std::path::PathBuf;

/// Where libcni caches results (outside the node's folder: cleaned by name).
pub(super) const CNI_CACHE_DIR: &str = "/var/lib/cni/results";

/// Every process's pid and command line (NULs as spaces).
pub(super) fn processes() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            if cmdline.is_empty() {
                return None; // kernel thread or zombie
            }
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            Some((pid, text.trim_end().to_string()))
        })
        .collect()
}

/// The mount points of every cgroup (v1 and v2) hierarchy.
pub(super) fn cgroup_mounts() -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .filter(|(_, fstype)| fstype == "cgroup" || fstype == "cgroup2")
        .map(|(mount_point, _)| PathBuf::from(mount_point))
        .collect()
}

/// `(mount point, file system type)` of every mount in this process's namespace.
fn mountinfo() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            Some((unescape_mount(fields.get(4)?), fields.get(separator + 1)?.to_string()))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(link, target)` of the kubelet's symlinks in `/var/log/containers` (a fixed path).
pub(super) fn container_log_links() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/var/log/containers") else {
        return Vec::new();
    };
    entries.flatten().filter_map(|e| Some((e.path(), std::fs::read_link(e.path()).ok()?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
