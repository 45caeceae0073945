//! htpasswd files, as `htpasswd -B` writes them: `USER:HASH` lines with
//! bcrypt hashes, for `[auth] htpasswd`.

use std::collections::HashMap;
use std::path::Path;

/// `user -> bcrypt hash` from the file at `path`; an error names the file
/// and the line (never a hash).
pub fn read(path: &Path) -> Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("auth.htpasswd = {:?}: {e}", path.display().to_string()))?;
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("auth.htpasswd {}: line {}", path.display(), n + 1);
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("{at} is not USER:HASH"));
        };
        if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
            return Err(format!(
                "{at} (user {user:?}) is not a bcrypt hash (use htpasswd -B)"
            ));
        }
        out.insert(user.to_owned(), hash.to_owned());
    }
    Ok(out)
}
