//! Artifacts are compiled once per sha256; the disk cache loads only code this host wrote.

use std::path::PathBuf;

use squilla_host::ComponentError;
use squilla_host::{ArtifactCache, ArtifactError, CacheStats, CompileConfig, Limits};

use crate::runtime;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("squilla-cache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_same_bytes_compile_once() {
    let cache = ArtifactCache::in_memory(runtime());
    let bytes = squilla_guests::read("filter");
    let a = cache.get_or_compile(&bytes).unwrap();
    let b = cache.get_or_compile(&bytes).unwrap();
    assert!(a.same(&b));
    assert_eq!(cache.stats(), CacheStats { compiled: 1, hits: 1, ..CacheStats::default() });
    assert!(cache.get(&a.sha256()).is_some_and(|c| c.same(&a)));
    assert!(matches!(cache.get_or_compile(b"not wasm"), Err(ArtifactError::Component(ComponentError::NotWasm))));
}

#[test]
fn compiled_code_survives_a_restart_and_only_verified_files_load() {
    let dir = temp_dir("restart");
    let bytes = squilla_guests::read("top-titles");
    let first = ArtifactCache::on_disk(runtime(), &dir).unwrap();
    let artifact = first.get_or_compile(&bytes).unwrap();
    assert_eq!(first.stats().compiled, 1);
    let file = dir.join(format!("{}.cwasm", artifact.sha256()));
    assert!(file.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("host.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the host key is readable by its owner only");
    }

    // A new cache on the same directory (an agent restart) loads instead of compiling, and
    // the loaded code works.
    let second = ArtifactCache::on_disk(runtime(), &dir).unwrap();
    let loaded = second.get_or_compile(&bytes).unwrap();
    assert_eq!(second.stats(), CacheStats { loaded: 1, ..CacheStats::default() });
    loaded.instantiate(runtime(), &Limits::default(), &[]).unwrap();

    // One flipped byte of code: the file no longer verifies, is ignored and rewritten.
    let mut tampered = std::fs::read(&file).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    std::fs::write(&file, &tampered).unwrap();
    let third = ArtifactCache::on_disk(runtime(), &dir).unwrap();
    third.get_or_compile(&bytes).unwrap();
    assert_eq!(third.stats(), CacheStats { compiled: 1, rejected: 1, ..CacheStats::default() });

    // Another host's key: its files are not ours, whatever they contain.
    std::fs::write(dir.join("host.key"), [7u8; 32]).unwrap();
    let fourth = ArtifactCache::on_disk(runtime(), &dir).unwrap();
    fourth.get_or_compile(&bytes).unwrap();
    assert_eq!(fourth.stats(), CacheStats { compiled: 1, rejected: 1, ..CacheStats::default() });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_compile_over_the_time_limit_is_refused_but_not_remembered() {
    // The agent may have been busy: a wall-clock overrun says nothing for sure of the bytes.
    let config = CompileConfig { wall: std::time::Duration::ZERO, ..CompileConfig::default() };
    let cache = ArtifactCache::in_memory(runtime()).with_compile_config(config);
    let bytes = squilla_guests::read("sentiment");
    let err = cache.get_or_compile(&bytes).unwrap_err();
    assert!(matches!(err, ArtifactError::CompileBudget { budget: "wall-clock time", .. }), "{err:?}");
    assert!(!err.is_permanent());
    assert!(cache.failure(&squilla_host::Sha256::of(&bytes)).is_none());
    assert!(cache.get_or_compile(&bytes).is_err());
    assert_eq!(cache.stats().refused, 0, "tried again, not refused from memory");
}

#[test]
fn a_component_that_cannot_be_a_stage_is_remembered_and_refused_at_once() {
    let forbidden = squilla_guests::read("fs-reader");
    let cache = ArtifactCache::in_memory(runtime());
    let err = cache.get_or_compile(&forbidden).unwrap_err();
    assert!(
        matches!(err, ArtifactError::Component(ComponentError::ForbiddenImport { .. })) && err.is_permanent(),
        "{err:?}"
    );
    let again = cache.get_or_compile(&forbidden).unwrap_err();
    assert_eq!(again.to_string(), err.to_string());
    assert_eq!(cache.stats(), CacheStats { compiled: 1, refused: 1, ..CacheStats::default() });
    assert!(cache.failure(&squilla_host::Sha256::of(&forbidden)).is_some());
}
