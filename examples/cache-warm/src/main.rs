//! `cache-warm`: pre-pulls a list of image references into a cache store
//! through the same caching rules as `registry-proxy`, and runs `gc` and
//! `scrub` on a store. Arrives with the engine and the upstream client;
//! until then this binary only says so.

fn main() {
    eprintln!("cache-warm: not implemented yet (see README.md, Status)");
    std::process::exit(2);
}
