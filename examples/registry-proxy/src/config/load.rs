//! Reading the file: one parse for ordinary files, the rule tables in
//! batches for huge ones, and errors that name the key's path and line.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ConfigError, RawConfig, Result, err};

/// Files this large have their `[[rule]]` tables parsed in batches: a
/// parsed TOML document costs many times its text (100k rules: 100s of MB).
const BATCHED_ABOVE: usize = 1 << 20;

/// Rule tables parsed per batch.
const RULES_PER_BATCH: usize = 1000;

/// Deserialises `text`, a file or a piece from `first_line` and `first_rule`
/// on. An error is read again with its path tracked (no cost while valid),
/// to name the key (`rule[3].tag_freshness = "x": ...`), or else the line.
fn de<T: DeserializeOwned>(text: &str, first_rule: usize, first_line: usize) -> Result<T> {
    let plain = match toml::from_str::<T>(text) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let tracked = toml::Deserializer::parse(text).map(serde_path_to_error::deserialize::<_, T>);
    let e = match tracked {
        Ok(Err(e)) if e.path().iter().next().is_some() => e,
        _ if first_line == 1 => return err(format!("invalid configuration: {plain}")),
        _ => {
            let n = plain
                .span()
                .map_or(0, |s| text[..s.start].matches('\n').count())
                + first_line;
            return err(format!(
                "invalid configuration at line {n}: {}",
                plain.message()
            ));
        }
    };
    let mut path = e.path().to_string();
    // A batch's rule indexes start at 0.
    if let Some((i, rest)) = path.strip_prefix("rule[").and_then(|p| p.split_once(']'))
        && let Ok(i) = i.parse::<usize>()
    {
        path = format!("rule[{}]{rest}", i + first_rule);
    }
    Err(ConfigError::new(e.into_inner().message()).at(&path))
}

/// Deserialises a section read as a table, errors under `section`.
pub(super) fn section<T: DeserializeOwned>(section: &str, table: toml::Table) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = format!("{section}.{}", e.path());
        ConfigError::new(e.into_inner().message()).at(&path)
    })
}

/// Whether a line is a table header (`[name]`, `[[name]]`, `[a.b]`), as
/// opposed to a value line (an array element such as `[1, 2],`).
fn table_header(line: &str) -> Option<&str> {
    let t = line.split_once('#').map_or(line, |(h, _)| h).trim();
    let inner = t.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(inner);
    let name = |c: char| c.is_ascii_alphanumeric() || "_-. \"".contains(c);
    inner.chars().all(name).then(|| inner.trim())
}

/// Parses a configuration text; a large one in pieces: everything but the
/// rule tables as one document (rule lines blanked, so its line numbers
/// stay right), then the rule tables (with their `[rule.x]` sub-tables) in
/// batches.
pub(super) fn parse(text: &str) -> Result<RawConfig> {
    if text.len() < BATCHED_ABOVE {
        return de(text, 0, 1);
    }
    let mut main = String::with_capacity(text.len() / 8);
    // (first line number, text) of each rule table, in order.
    let mut blocks: Vec<(usize, String)> = Vec::new();
    let (mut in_rule, mut in_multiline) = (false, false);
    for (n, line) in text.lines().enumerate() {
        if !in_multiline && let Some(h) = table_header(line) {
            if h == "rule" && line.trim_start().starts_with("[[") {
                in_rule = true;
                blocks.push((n + 1, String::new()));
            } else if !h.starts_with("rule.") {
                in_rule = false;
            }
        }
        // Multi-line strings: an odd number of delimiters opens or closes one.
        if (line.matches("\"\"\"").count() + line.matches("'''").count()) % 2 == 1 {
            in_multiline = !in_multiline;
        }
        let into = match blocks.last_mut() {
            Some((_, block)) if in_rule => block,
            _ => &mut main,
        };
        into.push_str(line);
        into.push('\n');
        if in_rule {
            main.push('\n');
        }
    }
    let mut raw: RawConfig = de(&main, 0, 1)?;
    drop(main);
    #[derive(Deserialize)]
    struct Batch {
        #[serde(default)]
        rule: Vec<cache_core::config::RuleConfig<cache_upstream::scanner::ScanPolicy>>,
    }
    raw.rule.reserve_exact(blocks.len());
    for (b, chunk) in blocks.chunks(RULES_PER_BATCH).enumerate() {
        let (mut batch, first) = (String::new(), chunk[0].0);
        let mut at = first;
        for (line, block) in chunk {
            // Blank lines for other tables between rules keep lines in step.
            batch.extend(std::iter::repeat_n('\n', line - at));
            batch.push_str(block);
            at = line + block.matches('\n').count();
        }
        let parsed: Batch = de(&batch, b * RULES_PER_BATCH, first)?;
        raw.rule.extend(parsed.rule);
    }
    Ok(raw)
}
