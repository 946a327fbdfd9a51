use super::*;

#[test]
fn empty_config_is_the_defaults() {
    let config: CollectorConfig = toml::from_str("").unwrap();
    assert_eq!(config, CollectorConfig::default());
    let config: CollectorConfig = toml::from_str(
        "root = \"/tmp/r\"\nnft = [\"ip\", \"netns\", \"exec\", \"lab\", \"nft\"]\nbackup_marker = \"/var/backups/done\"\n",
    )
    .unwrap();
    assert_eq!(config.root, PathBuf::from("/tmp/r"));
    assert_eq!(config.nft.len(), 5);
    assert_eq!(config.apt_get, ["apt-get"]);
    assert!(toml::from_str::<CollectorConfig>("nfts = [\"x\"]").is_err());
}

/// A configuration in which no source exists: every parameter must be unknown, with its reason.
fn nothing_there(root: &std::path::Path) -> CollectorConfig {
    let missing = |name: &str| vec![format!("/nonexistent/{name}")];
    CollectorConfig {
        root: root.to_path_buf(),
        state_dir: root.join("state"),
        nft: missing("nft"),
        iptables_save: missing("iptables-save"),
        apt_get: missing("apt-get"),
        disk_path: PathBuf::from("/no-volume"),
        ..CollectorConfig::default()
    }
}

#[tokio::test]
async fn nothing_there_is_all_unknown() {
    let root = tempfile::tempdir().unwrap();
    let report = Collectors::new(nothing_there(root.path())).collect().await;
    assert_eq!(report.firewall, Reading::unknown("neither nft nor iptables-save is installed"));
    assert_eq!(report.antivirus, Reading::unknown("ClamAV is not installed"));
    assert_eq!(report.last_full_scan, Reading::unknown("/var/log/clamav/clamscan.log: no such file"));
    assert_eq!(report.updates, Reading::unknown("apt-get is not installed"));
    assert_eq!(report.backup, Reading::unknown("no backup source configured"));
    assert_eq!(report.os_version, Reading::unknown("/etc/os-release: no such file"));
    assert_eq!(report.boot_time, Reading::unknown("/proc/stat: no such file"));
    #[cfg(unix)]
    assert_eq!(report.disk, Reading::unknown("/no-volume: no such file"));
    assert_eq!(report.agent_version, env!("CARGO_PKG_VERSION"));
}

#[cfg(unix)]
#[tokio::test]
async fn a_machine_in_a_directory() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let write = |path: &str, text: &str| {
        let path = r.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n");
    write("proc/stat", "cpu 1 2 3\nbtime 1796004847\n");
    write("proc/77/comm", "freshclam\n");
    write("usr/bin/freshclam", "");
    write(
        "var/log/clamav/clamscan.log",
        "----------- SCAN SUMMARY -----------\nInfected files: 0\nEnd Date:   2026:11:30 02:14:07\n",
    );
    write("var/backups/done", "");
    let print = |text: &str| vec!["sh".to_string(), "-c".to_string(), format!("printf '{text}'")];
    let config = CollectorConfig {
        root: r.to_path_buf(),
        state_dir: r.join("state"),
        nft: print(r#"{"nftables": []}"#),
        iptables_save: vec!["/nonexistent/iptables-save".into()],
        apt_get: print("Inst libssl3 [1] (2 Debian-Security:12/stable-security [amd64])\\n"),
        backup_marker: Some(PathBuf::from("/var/backups/done")),
        ..CollectorConfig::default()
    };
    let collectors: Arc<dyn Collect> = Arc::new(Collectors::new(config));
    let report = collectors.collect().await;
    assert_eq!(report.firewall.value().map(|f| f.active), Some(false));
    assert_eq!(report.antivirus.value().map(|a| (a.running, a.updater_running)), Some((false, true)));
    assert_eq!(report.last_full_scan.value().map(|s| s.finished_at), Some(1_796_004_847));
    assert_eq!(report.updates.value().map(|u| (u.pending, u.security_pending)), Some((1, 1)));
    assert!(report.updates.value().unwrap().security_pending_since.is_some());
    assert!(r.join("state/security-pending.json").exists());
    assert!(report.backup.value().is_some());
    assert_eq!(report.os_version, Reading::Value("Debian GNU/Linux 12 (bookworm)".into()));
    assert_eq!(report.boot_time, Reading::Value(1_796_004_847));
    assert!(report.disk.value().is_some());
}

#[tokio::test]
async fn synthetic_collectors_plug_in() {
    let synthetic = || Report {
        firewall: Reading::unknown("synthetic"),
        antivirus: Reading::unknown("synthetic"),
        last_full_scan: Reading::unknown("synthetic"),
        updates: Reading::unknown("synthetic"),
        backup: Reading::unknown("synthetic"),
        os_version: Reading::Value("Synthetic OS".into()),
        boot_time: Reading::Value(0),
        disk: Reading::unknown("synthetic"),
        agent_version: "0.0.0".into(),
    };
    let collectors: Vec<Box<dyn Collect>> = vec![Box::new(synthetic)];
    for collector in &collectors {
        assert_eq!(collector.collect().await.os_version, Reading::Value("Synthetic OS".into()));
    }
}
