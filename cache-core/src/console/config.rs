//! The console as configured (features `console` and `serde`).

use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

use crate::config::ConfigError;

/// `[console]`: where the console is served and how long its pages are.
///
/// * `admin_listener` (default `true`): on an operator's own listener (the
///   server's loopback `admin_listen`), open to whoever reaches it;
/// * `main_listener` (default `false`): on the listener clients pull
///   from, at `/ui/`, behind the same authentication as pulls, showing
///   each viewer only what they may read;
/// * `page_size` (default 50, from 10 to 500): rows per page.
///
/// ```
/// use cache_core::console::ConsoleConfig;
///
/// let c: ConsoleConfig = toml::from_str("main_listener = true")?;
/// assert!(c.main_listener && c.admin_listener);
/// assert_eq!(c.page_size, 50);
/// let e = toml::from_str::<ConsoleConfig>("page_size = 5").unwrap_err();
/// assert!(e.message().contains("page_size = 5"), "{e}");
/// # Ok::<(), toml::de::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Serve it on the admin listener.
    pub admin_listener: bool,
    /// Serve it on the main listener, behind pull-side authentication.
    pub main_listener: bool,
    /// Rows per page.
    pub page_size: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            admin_listener: true,
            main_listener: false,
            page_size: 50,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    admin_listener: Option<bool>,
    main_listener: Option<bool>,
    page_size: Option<usize>,
}

impl<'de> Deserialize<'de> for ConsoleConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawConsole::deserialize(d)?;
        let default = ConsoleConfig::default();
        let page_size = r.page_size.unwrap_or(default.page_size);
        if !(10..=super::MAX_PAGE_SIZE).contains(&page_size) {
            return Err(D::Error::custom(ConfigError::new(format!(
                "page_size = {page_size}: from 10 to {}",
                super::MAX_PAGE_SIZE
            ))));
        }
        Ok(ConsoleConfig {
            admin_listener: r.admin_listener.unwrap_or(default.admin_listener),
            main_listener: r.main_listener.unwrap_or(default.main_listener),
            page_size,
        })
    }
}
