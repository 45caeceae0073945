//! Tokio's implementations of the engine's `Spawner` and `Clock` now live
//! in `cache-core` (feature `tokio`); re-exported here for existing users.

pub use cache_core::runtime::TokioRuntime;
