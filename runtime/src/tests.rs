use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn runtime(limits: Limits) -> Arc<Runtime> {
    Runtime::new(limits).expect("engine starts")
}

fn labels(plugin: &str) -> Labels {
    Labels {
        tenant: "t1".into(),
        plugin: plugin.into(),
    }
}

fn batch(n: usize) -> Vec<InputRecord> {
    (0..n)
        .map(|i| InputRecord {
            key: Some(format!("k{i}").into_bytes()),
            value: (i % 3 != 2).then(|| format!("value {i}").into_bytes()),
            headers: vec![Header {
                key: "h".into(),
                value: Some(vec![i as u8]),
            }],
            timestamp: 1_700_000_000_000 + i as i64,
            offset: 100 + i as i64,
            partition: 2,
        })
        .collect()
}

struct Empty;
impl StateRead for Empty {
    fn get(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

struct Fixed(Vec<u8>, Vec<u8>);
impl StateRead for Fixed {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        (key == self.0).then(|| self.1.clone())
    }
}

#[tokio::test]
async fn identity_returns_every_record_unchanged() {
    let rt = runtime(Limits::default());
    let wasm = floe_fixtures::identity();
    let mut t = rt
        .transform(&wasm, &[], labels("id"))
        .await
        .expect("starts");
    let input = batch(50);
    let out = t
        .process(&input, 1, Arc::new(Empty))
        .await
        .expect("processes");
    assert_eq!(out.outputs.len(), 50);
    for (i, o) in input.iter().zip(&out.outputs) {
        assert_eq!(o.output, 0);
        assert_eq!(o.key, i.key);
        assert_eq!(o.value, i.value);
        assert_eq!(o.headers, i.headers);
        assert_eq!(o.timestamp, i.timestamp);
    }
    assert!(out.fuel > 0);
    assert!(out.writes.is_empty());
    // The instance is reused: a second batch, and an empty one.
    assert_eq!(
        t.process(&batch(3), 1, Arc::new(Empty))
            .await
            .expect("again")
            .outputs
            .len(),
        3
    );
    assert!(t
        .process(&[], 1, Arc::new(Empty))
        .await
        .expect("empty")
        .outputs
        .is_empty());
}

#[tokio::test]
async fn a_guest_built_for_an_older_0_1_runs() {
    let rt = runtime(Limits::default());
    let wasm = floe_fixtures::counter_v0_1_0();
    assert!(String::from_utf8_lossy(&wasm).contains("floe:plugin/state@0.1.0"));
    rt.check(World::Transform, &wasm).expect("accepted");
    let mut t = rt
        .transform(&wasm, &[], labels("old"))
        .await
        .expect("starts");
    let out = t
        .process(&batch(5), 1, Arc::new(Empty))
        .await
        .expect("processes");
    assert_eq!(out.outputs.len(), 5);
}

#[tokio::test]
async fn fanout_names_two_outputs_and_is_refused_with_one() {
    let rt = runtime(Limits::default());
    let wasm = floe_fixtures::fanout();
    let mut t = rt
        .transform(&wasm, &[], labels("fan"))
        .await
        .expect("starts");
    let out = t
        .process(&batch(4), 2, Arc::new(Empty))
        .await
        .expect("processes");
    let to: Vec<u8> = out.outputs.iter().map(|o| o.output).collect();
    assert_eq!(to, vec![0, 1, 0, 1, 0, 1, 0, 1]);
    let e = t
        .process(&batch(4), 1, Arc::new(Empty))
        .await
        .expect_err("output 1 not deployed");
    assert_eq!(e.kind, FailureKind::Outputs, "{e:?}");
    // Not a trap: the instance goes on.
    assert!(!t.poisoned());
}

#[tokio::test]
async fn counter_state_is_read_through_and_written_per_batch() {
    let rt = runtime(Limits::default());
    let wasm = floe_fixtures::counter();
    let mut t = rt
        .transform(&wasm, &[], labels("count"))
        .await
        .expect("starts");
    let first = t
        .process(&batch(3), 1, Arc::new(Empty))
        .await
        .expect("processes");
    let values: Vec<u64> = first
        .outputs
        .iter()
        .map(|o| u64::from_le_bytes(o.value.clone().expect("value").try_into().expect("8 bytes")))
        .collect();
    assert_eq!(values, vec![1, 2, 3]);
    assert_eq!(
        first.writes,
        vec![(b"n".to_vec(), Some(3u64.to_le_bytes().to_vec()))]
    );
    // The next batch sees what the host says is durable, not the guest's
    // memory: from 10, the count goes on at 11.
    let durable = Arc::new(Fixed(b"n".to_vec(), 10u64.to_le_bytes().to_vec()));
    let second = t.process(&batch(2), 1, durable).await.expect("processes");
    let last = second
        .outputs
        .last()
        .and_then(|o| o.value.clone())
        .expect("value");
    assert_eq!(u64::from_le_bytes(last.try_into().expect("8 bytes")), 12);
}

/// What the residue fixture saw on its call: the far words it found, and
/// its data segment's word.
async fn residue_seen(t: &mut Transform) -> (u64, Vec<u8>) {
    let out = t
        .process(&batch(1), 1, Arc::new(Empty))
        .await
        .expect("processes");
    let value = out.outputs[0].value.clone().expect("value");
    let (far, data) = value.split_at(8);
    (
        u64::from_le_bytes(far.try_into().expect("8 bytes")),
        data.to_vec(),
    )
}

/// A pool of one slot: every instance reuses the slot the last one dirtied
/// (20 pages past the first), reset by memset where it was written
/// (`pagemap_scan`, up to 64 KiB) and given back to the kernel beyond
/// that. No instance sees another's memory, and data segments read as the
/// component shipped them.
#[tokio::test]
async fn an_instance_never_sees_what_the_last_one_in_its_slot_wrote() {
    let rt = runtime(Limits {
        instances: 1,
        ..Limits::default()
    });
    let wasm = floe_fixtures::residue();
    let mut t = rt.transform(&wasm, &[], labels("r")).await.expect("starts");
    assert_eq!(residue_seen(&mut t).await, (0, b"original".to_vec()));
    // The control: within one instance the guest's writes stay.
    let (far, data) = residue_seen(&mut t).await;
    assert_ne!(far, 0);
    assert_ne!(data, b"original");
    drop(t);
    for round in 0..20 {
        let mut t = rt.transform(&wasm, &[], labels("r")).await.expect("starts");
        assert_eq!(
            residue_seen(&mut t).await,
            (0, b"original".to_vec()),
            "instance {round} saw an earlier one's memory"
        );
    }
}

fn cached(dir: &std::path::Path) -> Arc<Runtime> {
    runtime(Limits {
        cache_dir: Some(dir.to_path_buf()),
        ..Limits::default()
    })
}

fn cwasm_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect()
}

/// A second process (here, a second engine) loads what the first compiled
/// instead of compiling it; an unusable file is compiled again and
/// replaced; the world is still checked for a component read from disk.
#[tokio::test]
async fn compiled_components_are_kept_on_disk_for_the_next_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("wasm");
    let wasm = floe_fixtures::identity();

    let first = cached(&cache);
    first.check(World::Transform, &wasm).expect("valid");
    let stats = first.cache_stats();
    assert_eq!((stats.compiled(), stats.loaded()), (1, 0));
    let files = cwasm_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&cache).expect("dir").permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);

    let second = cached(&cache);
    let mut t = second
        .transform(&wasm, &[], labels("disk"))
        .await
        .expect("starts from the disk copy");
    let out = t
        .process(&batch(3), 1, Arc::new(Empty))
        .await
        .expect("runs");
    assert_eq!(out.outputs.len(), 3);
    let stats = second.cache_stats();
    assert_eq!((stats.compiled(), stats.loaded()), (0, 1));
    let Err(Error::Invalid(e)) = second.check(World::Quota, &wasm) else {
        panic!("a transform read from disk is still not a policy");
    };
    assert!(e.contains("quota"), "{e}");

    // A file others may write is not trusted: compiled again, and replaced.
    std::fs::set_permissions(
        &files[0],
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .expect("chmod");
    let open = cached(&cache);
    open.check(World::Transform, &wasm).expect("compiled again");
    assert_eq!(
        (open.cache_stats().compiled(), open.cache_stats().loaded()),
        (1, 0)
    );

    std::fs::write(&files[0], b"cut short").expect("spoil");
    let third = cached(&cache);
    third
        .check(World::Transform, &wasm)
        .expect("compiled again");
    assert_eq!(
        (third.cache_stats().compiled(), third.cache_stats().loaded()),
        (1, 0)
    );
    let fourth = cached(&cache);
    fourth.check(World::Transform, &wasm).expect("valid");
    assert_eq!(
        fourth.cache_stats().loaded(),
        1,
        "the spoilt file was replaced"
    );
}

/// Whoever can write the cache directory chooses native code this process
/// runs: one that others may write is not used (and the runtime still
/// works, compiling in memory).
#[test]
fn a_cache_directory_others_can_write_is_not_used() {
    let dir = tempfile::tempdir().expect("temp dir");
    let open = dir.path().join("shared");
    std::fs::create_dir(&open).expect("dir");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let wasm = floe_fixtures::identity();
    for _ in 0..2 {
        let rt = cached(&open);
        rt.check(World::Transform, &wasm).expect("valid");
        assert_eq!(rt.cache_stats().compiled(), 1);
    }
    assert!(cwasm_files(&open).is_empty());
}

/// The disk cache keeps the newest artifacts only.
#[test]
fn the_disk_cache_drops_its_oldest_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = disk::DiskCache::open(dir.path(), &Engine::default()).expect("opens");
    let t0 = std::time::SystemTime::now() - Duration::from_secs(10_000);
    let extra = 5;
    for i in 0..disk::MAX_FILES + extra {
        let f = std::fs::File::create(dir.path().join(format!("{i:04}.cwasm"))).expect("file");
        f.set_modified(t0 + Duration::from_secs(i as u64))
            .expect("mtime");
    }
    cache.evict();
    let mut left: Vec<String> = cwasm_files(dir.path())
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left.len(), disk::MAX_FILES);
    assert_eq!(left[0], format!("{extra:04}.cwasm"), "the oldest went");
}

#[tokio::test]
async fn a_spinning_guest_hits_its_deadline_without_blocking_the_runtime() {
    let limits = Limits {
        fuel_per_call: u64::MAX / 2,
        deadline: Duration::from_millis(300),
        ..Limits::default()
    };
    let rt = runtime(limits);
    let spin = floe_fixtures::spin();
    let identity = floe_fixtures::identity();
    let mut bad = rt
        .transform(&spin, &[], labels("spin"))
        .await
        .expect("starts");
    let mut good = rt
        .transform(&identity, &[], labels("id"))
        .await
        .expect("starts");
    // One runtime thread (this test's): the spinning guest yields at every
    // epoch tick, so the well-behaved one finishes long before it.
    let started = Instant::now();
    let spinning = async {
        let e = bad
            .process(&batch(1), 1, Arc::new(Empty))
            .await
            .expect_err("spins");
        (e, started.elapsed())
    };
    let other = async {
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            let t = Instant::now();
            good.process(&batch(10), 1, Arc::new(Empty))
                .await
                .expect("processes");
            slowest = slowest.max(t.elapsed());
        }
        started.elapsed()
    };
    let ((e, spun), other_done) = tokio::join!(spinning, other);
    assert_eq!(e.kind, FailureKind::Deadline, "{e:?}");
    assert!(spun >= Duration::from_millis(300), "{spun:?}");
    assert!(
        other_done < spun,
        "the other transform waited: {other_done:?} vs {spun:?}"
    );
    assert!(bad.poisoned());
}

#[tokio::test]
async fn a_spinning_guest_runs_out_of_fuel() {
    let limits = Limits {
        fuel_per_call: 10_000_000,
        deadline: Duration::from_secs(30),
        ..Limits::default()
    };
    let rt = runtime(limits);
    let mut t = rt
        .transform(&floe_fixtures::spin(), &[], labels("spin"))
        .await
        .expect("starts");
    let e = t
        .process(&batch(1), 1, Arc::new(Empty))
        .await
        .expect_err("spins");
    assert_eq!(e.kind, FailureKind::Fuel, "{e:?}");
    assert_eq!(e.fuel, 10_000_000);
}

#[tokio::test]
async fn a_memory_bomb_is_stopped_at_the_cap() {
    let limits = Limits {
        memory_bytes: 4 << 20,
        ..Limits::default()
    };
    let rt = runtime(limits);
    let mut t = rt
        .transform(&floe_fixtures::bomb(), &[], labels("bomb"))
        .await
        .expect("starts");
    let e = t
        .process(&batch(1), 1, Arc::new(Empty))
        .await
        .expect_err("explodes");
    assert_eq!(e.kind, FailureKind::Memory, "{e:?}");
    assert!(e.message.contains("4194304"), "{}", e.message);
}

#[tokio::test]
async fn a_trapping_guest_poisons_only_its_instance() {
    let rt = runtime(Limits::default());
    let wasm = floe_fixtures::trap();
    let mut t = rt
        .transform(&wasm, &[], labels("trap"))
        .await
        .expect("starts");
    let e = t
        .process(&batch(1), 1, Arc::new(Empty))
        .await
        .expect_err("traps");
    assert_eq!(e.kind, FailureKind::Trap, "{e:?}");
    assert!(e.message.contains("unreachable"), "{}", e.message);
    assert!(t.poisoned());
    // A new instance of the same component starts (and traps) afresh.
    let mut again = rt
        .transform(&wasm, &[], labels("trap"))
        .await
        .expect("starts");
    assert!(!again.poisoned());
    assert!(again.process(&batch(1), 1, Arc::new(Empty)).await.is_err());
}

#[tokio::test]
async fn amplification_past_the_output_limit_fails_the_batch() {
    let rt = runtime(Limits::default());
    let mut t = rt
        .transform(&floe_fixtures::amplify(), &[], labels("amp"))
        .await
        .expect("starts");
    let e = t
        .process(&batch(5), 1, Arc::new(Empty))
        .await
        .expect_err("amplifies");
    assert_eq!(e.kind, FailureKind::Outputs, "{e:?}");
    assert!(
        e.message.contains("500 outputs for 5 inputs"),
        "{}",
        e.message
    );
}

#[test]
fn uploads_outside_the_world_are_refused() {
    let rt = runtime(Limits::default());
    let e = rt
        .check(World::Transform, &floe_fixtures::sneaky())
        .expect_err("refused");
    assert!(e.to_string().contains("evil:net/socket"), "{e}");
    let e = rt
        .check(World::Transform, b"not wasm at all")
        .expect_err("refused");
    assert!(e.to_string().contains("not a WebAssembly binary"), "{e}");
    // A core module is not a component.
    let core = b"\0asm\x01\0\0\0";
    assert!(matches!(
        rt.check(World::Transform, core),
        Err(Error::Invalid(_))
    ));
    // A transform is not a quota policy, nor the other way round.
    assert!(rt.check(World::Quota, &floe_fixtures::identity()).is_err());
    assert!(rt
        .check(World::Transform, &floe_fixtures::quota_throttle())
        .is_err());
    assert!(rt
        .check(World::Transform, &floe_fixtures::identity())
        .is_ok());
}

#[test]
fn the_allow_list_grants_the_wasi_guests_link_and_nothing_else() {
    for ok in [
        "wasi:cli/environment@0.2.6",
        "wasi:io/streams@0.2.0",
        "wasi:clocks/wall-clock@0.2.6",
        "wasi:random/random@0.2.6",
        "wasi:filesystem/preopens@0.2.6",
        // Linked (componentize-py imports them) with every use refused.
        "wasi:sockets/tcp@0.2.6",
        "floe:plugin/state@0.1.0",
    ] {
        assert!(allowed(World::Transform, ok), "{ok}");
    }
    for no in [
        "wasi:http/outgoing-handler@0.2.6",
        "wasi:keyvalue/store@0.2.0",
        "floe:plugin/statex@0.1.0",
        "evil:net/socket",
    ] {
        assert!(!allowed(World::Transform, no), "{no}");
    }
    assert!(!allowed(World::Quota, "floe:plugin/state@0.1.0"));
    // A connector may go out over wasi:http (through the egress check),
    // but has no state.
    for ok in [
        "wasi:http/outgoing-handler@0.2.6",
        "wasi:http/types@0.2.12",
        "floe:plugin/connector-types@0.1.1",
    ] {
        assert!(allowed(World::Connector, ok), "{ok}");
    }
    assert!(!allowed(World::Connector, "floe:plugin/state@0.1.1"));
    assert!(!allowed(World::Connector, "wasi:keyvalue/store@0.2.0"));
}

fn query(kind: Kind, bytes_in: u64, bytes_out: u64) -> Query {
    Query {
        tenant: "t1".into(),
        plan: "free".into(),
        kind,
        request_bytes: 100,
        recent: RecentUsage {
            window_ms: 1000,
            requests: 10,
            bytes_in,
            bytes_out,
        },
    }
}

#[tokio::test]
async fn a_quota_policy_decides() {
    let rt = runtime(Limits::default());
    let mut p = rt
        .policy(&floe_fixtures::quota_throttle(), labels("plan"))
        .await
        .expect("starts");
    let (d, _) = p
        .decide(&query(Kind::Produce, 10, 0))
        .await
        .expect("decides");
    assert!(matches!(d, Decision::Allow), "{d:?}");
    let (d, _) = p
        .decide(&query(Kind::Produce, 5000, 0))
        .await
        .expect("decides");
    assert!(matches!(d, Decision::Throttle(500)), "{d:?}");
    let (d, _) = p
        .decide(&query(Kind::Produce, 200_000, 0))
        .await
        .expect("decides");
    assert!(
        matches!(&d, Decision::Reject(r) if r == "produce quota"),
        "{d:?}"
    );
    let (d, _) = p
        .decide(&query(Kind::Fetch, 0, 5000))
        .await
        .expect("decides");
    assert!(
        matches!(&d, Decision::Reject(r) if r == "fetch quota"),
        "{d:?}"
    );
}

#[tokio::test]
async fn a_quota_policy_that_spins_gives_no_decision() {
    let limits = Limits {
        deadline: Duration::from_millis(50),
        fuel_per_call: u64::MAX / 2,
        ..Limits::default()
    };
    let rt = runtime(limits);
    let mut p = rt
        .policy(&floe_fixtures::quota_spin(), labels("plan"))
        .await
        .expect("starts");
    let e = p
        .decide(&query(Kind::Produce, 0, 0))
        .await
        .expect_err("spins");
    assert_eq!(e.kind, FailureKind::Deadline);
}

#[test]
fn digests_are_content_hashes() {
    assert_eq!(
        Digest::of(b"").0,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn a_guests_randomness_is_seeded_per_tenant_and_plugin() {
    use wasmtime_wasi::p2::bindings::random::{insecure, insecure_seed, random};
    use wasmtime_wasi::random::WasiRandomView;
    // What a fresh instance of (tenant, plugin) draws first: secure bytes,
    // insecure bytes, the insecure seed.
    let draw = |tenant: &str, plugin: &str| {
        let labels = Labels {
            tenant: tenant.into(),
            plugin: plugin.into(),
        };
        let mut host = crate::host::Host::new(labels, &Limits::default());
        let r = host.random();
        (
            random::Host::get_random_bytes(r, 32).expect("bytes"),
            insecure::Host::get_insecure_random_bytes(r, 32).expect("bytes"),
            insecure_seed::Host::insecure_seed(r).expect("seed"),
        )
    };
    let first = draw("t1", "a");
    // The same after a restart, so a guest's choices replay the same.
    assert_eq!(first, draw("t1", "a"));
    // Another plugin, or another tenant's, draws otherwise.
    assert_ne!(first, draw("t1", "b"));
    assert_ne!(first, draw("t2", "a"));
    // Two streams, not one.
    assert_ne!(first.0, first.1);
}

#[tokio::test]
async fn connectors_run_under_the_same_limits() {
    let limits = Limits {
        connector_deadline: Duration::from_millis(200),
        memory_bytes: 4 << 20,
        ..Limits::default()
    };
    let rt = runtime(limits);
    let start = |wasm: Vec<u8>| {
        let rt = rt.clone();
        async move {
            let digest = crate::Digest::of(&wasm);
            rt.connector_of(&digest, &wasm, &[], labels("c"), AllowList::default())
                .await
                .expect("starts")
        }
    };
    let mut spin = start(floe_fixtures::connector_spin()).await;
    let (f, _) = spin.deliver(&batch(2)).await.expect_err("stopped");
    assert!(
        matches!(f.kind, FailureKind::Deadline | FailureKind::Fuel),
        "{f:?}"
    );
    assert!(spin.poisoned());
    let mut bomb = start(floe_fixtures::connector_bomb()).await;
    let (f, _) = bomb.deliver(&batch(2)).await.expect_err("stopped");
    assert_eq!(f.kind, FailureKind::Memory, "{f:?}");
    // A transform is not a connector.
    assert!(rt
        .check(World::Connector, &floe_fixtures::identity())
        .is_err());
    assert!(rt
        .check(World::Connector, &floe_fixtures::connector_spin())
        .is_ok());
}
