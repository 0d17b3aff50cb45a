//! Is the storage under a file or block device a rotating disk? Linux says
//! in sysfs (`queue/rotational`); the answer becomes `NBD_FLAG_ROTATIONAL`,
//! a hint that lets clients (the kernel's I/O scheduler above `nbd-client`)
//! order requests by position.

use std::path::Path;

/// Look up device `dev` (an `st_rdev` for block devices, an `st_dev` for
/// files) under the sysfs root `sys`. Whole disks have `queue/` themselves;
/// a partition's `dev/block/MAJ:MIN` link points inside its disk's
/// directory, whose `queue/` is one level up. Unknown means "not
/// rotational" (the flag is only a hint).
pub(super) fn is_rotational(sys: &Path, dev: u64) -> bool {
    let node = sys.join(format!(
        "dev/block/{}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    ));
    for q in [
        node.join("queue/rotational"),
        node.join("../queue/rotational"),
    ] {
        if let Ok(s) = std::fs::read_to_string(&q) {
            return s.trim() == "1";
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::is_rotational;
    use std::fs;

    /// A fake sysfs: a rotating disk sda (8:0) with partition sda1 (8:1),
    /// and a solid-state nvme0n1 (259:0), linked as the kernel links them.
    #[test]
    fn reads_disks_and_partitions() {
        let root = std::env::temp_dir().join(format!("nbdd-sysfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("devices/sda/queue")).unwrap();
        fs::create_dir_all(root.join("devices/sda/sda1")).unwrap();
        fs::create_dir_all(root.join("devices/nvme0n1/queue")).unwrap();
        fs::create_dir_all(root.join("dev/block")).unwrap();
        fs::write(root.join("devices/sda/queue/rotational"), "1\n").unwrap();
        fs::write(root.join("devices/nvme0n1/queue/rotational"), "0\n").unwrap();
        std::os::unix::fs::symlink("../../devices/sda", root.join("dev/block/8:0")).unwrap();
        std::os::unix::fs::symlink("../../devices/sda/sda1", root.join("dev/block/8:1")).unwrap();
        std::os::unix::fs::symlink("../../devices/nvme0n1", root.join("dev/block/259:0")).unwrap();
        let dev = |maj, min| rustix::fs::makedev(maj, min);
        assert!(is_rotational(&root, dev(8, 0)), "disk");
        assert!(
            is_rotational(&root, dev(8, 1)),
            "partition of a rotating disk"
        );
        assert!(!is_rotational(&root, dev(259, 0)), "solid state");
        assert!(!is_rotational(&root, dev(7, 3)), "unknown device");
        fs::remove_dir_all(&root).unwrap();
    }
}
