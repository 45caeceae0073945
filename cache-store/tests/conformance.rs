//! Every backend runs the whole `cache_core::testing` conformance suite.

use std::sync::Arc;

use cache_core::testing::Harness;
use cache_store::{FsStore, FsStoreOptions, MemoryStore};

mod memory_store {
    use super::*;

    async fn harness() -> Harness {
        let store = MemoryStore::new();
        let probe = store.clone();
        Harness {
            store: Arc::new(store),
            staged_leftovers: Box::new(move || probe.staged_count()),
            guard: Box::new(()),
        }
    }

    cache_core::blob_store_conformance!(harness);
}

async fn fs_harness(opts: FsStoreOptions) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open_with(dir.path(), opts).await.unwrap();
    let probe = store.clone();
    Harness {
        store: Arc::new(store),
        staged_leftovers: Box::new(move || probe.staging_count()),
        guard: Box::new(dir),
    }
}

mod fs_store {
    use super::*;

    async fn harness() -> Harness {
        fs_harness(FsStoreOptions::default()).await
    }

    cache_core::blob_store_conformance!(harness);
}

mod fs_store_without_fsync {
    use super::*;

    async fn harness() -> Harness {
        fs_harness(FsStoreOptions { fsync: false }).await
    }

    cache_core::blob_store_conformance!(harness);
}

mod object_store_in_memory {
    use super::*;
    use cache_store::ObjectBlobStore;

    async fn harness() -> Harness {
        let spool = tempfile::tempdir().unwrap();
        let store = ObjectBlobStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            "cache",
            spool.path(),
        )
        .unwrap();
        let probe = store.clone();
        Harness {
            store: Arc::new(store),
            staged_leftovers: Box::new(move || probe.open_spools()),
            guard: Box::new(spool),
        }
    }

    cache_core::blob_store_conformance!(harness);
}
