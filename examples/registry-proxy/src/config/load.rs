//! Reading the file: one parse for ordinary files, the rule tables in
//! batches for huge ones, and errors that name the key's path and line.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ConfigError, RawConfig, err};

/// Files at least this large have their `[[rule]]` tables parsed in
/// batches: a TOML document in memory costs many times its text, and a
/// file with a hundred thousand rules would otherwise need hundreds of
/// megabytes for a moment.
pub(super) const BATCHED_ABOVE: usize = 1 << 20;

/// Rule tables parsed per batch.
const RULES_PER_BATCH: usize = 1000;

/// Deserialises `text`, a whole file or (`whole` false) a piece of one. An
/// error is read again with its path tracked (so tracking costs nothing
/// when the file is valid) to name the key's path (`rule[3].tag_freshness
/// = "x": ...`, the rule index shifted by `first_rule`); a syntax error
/// names the line in the file (`line` maps one of `text`).
fn de<T: DeserializeOwned>(
    text: &str,
    (whole, first_rule): (bool, usize),
    line: impl Fn(usize) -> usize,
) -> Result<T, ConfigError> {
    let plain = match toml::from_str::<T>(text) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let tracked = toml::Deserializer::parse(text).map(serde_path_to_error::deserialize::<_, T>);
    let e = match tracked {
        Ok(Err(e)) if e.path().iter().next().is_some() => e,
        _ if whole => return Err(ConfigError::new(format!("invalid configuration: {plain}"))),
        _ => {
            let n = plain
                .span()
                .map_or(0, |s| line(text[..s.start].matches('\n').count() + 1));
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
pub(super) fn section<T: DeserializeOwned>(
    section: &str,
    table: toml::Table,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let full = if path == "." {
            section.to_owned()
        } else {
            format!("{section}.{path}")
        };
        ConfigError::new(e.into_inner().message()).at(&full)
    })
}

/// Whether a line is a table header (`[name]`, `[[name]]`, `[a.b]`), as
/// opposed to a value line (an array element such as `[1, 2],`).
fn table_header(line: &str) -> Option<&str> {
    let t = line.trim();
    let t = t.split_once('#').map_or(t, |(h, _)| h).trim_end();
    let inner = t
        .strip_prefix("[[")
        .and_then(|x| x.strip_suffix("]]"))
        .or_else(|| t.strip_prefix('[').and_then(|x| x.strip_suffix(']')))?;
    inner
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | '"'))
        .then(|| inner.trim())
}

/// Parses a configuration text; a large one in pieces: everything but the
/// rule tables as one document (rule lines blanked, so its line numbers
/// stay right), then the rule tables (with their `[rule.x]` sub-tables) in
/// batches.
pub(super) fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    if text.len() < BATCHED_ABOVE {
        return de(text, (true, 0), |n| n);
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
    let mut raw: RawConfig = de(&main, (true, 0), |n| n)?;
    drop(main);
    #[derive(Deserialize)]
    struct Batch {
        #[serde(default)]
        rule: Vec<cache_core::config::RuleConfig<cache_upstream::scanner::ScanPolicy>>,
    }
    raw.rule.reserve_exact(blocks.len());
    for (b, chunk) in blocks.chunks(RULES_PER_BATCH).enumerate() {
        let mut batch = String::new();
        // (first line in the batch, first line in the file) of each block.
        let mut starts = Vec::with_capacity(chunk.len());
        let mut lines = 1;
        for (line, block) in chunk {
            starts.push((lines, *line));
            lines += block.matches('\n').count();
            batch.push_str(block);
        }
        let line = |at: usize| {
            let (offset, first) = starts
                .iter()
                .rev()
                .find(|(o, _)| *o <= at)
                .copied()
                .unwrap_or((1, chunk[0].0));
            first + at - offset
        };
        let parsed: Batch = de(&batch, (false, b * RULES_PER_BATCH), line)?;
        raw.rule.extend(parsed.rule);
    }
    Ok(raw)
}
