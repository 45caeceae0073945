//! `registry-proxy`: the OCI pull-through registry server built on
//! `cache-core`, `cache-store` and `cache-upstream`. It serves the pull side
//! of the OCI Distribution API for the repositories its caching rules
//! declare. The server arrives with the engine and the upstream client;
//! until then this binary only says so.

fn main() {
    eprintln!("registry-proxy: not implemented yet (see README.md, Status)");
    std::process::exit(2);
}
