//! The merge's SQL: the files of `sql/merge/`, numbered in the order a run
//! uses them (see `sql/README.md`), and the one small renderer that fills
//! their placeholders. No statement of the merge is written in Rust.
//!
//! A placeholder is `{name}` or `{name:arg}` (lowercase letters and `_`;
//! the argument letters, digits and `_`). Its value may itself hold
//! placeholders (a shared fragment such as `{ranked}`), which are rendered
//! in turn. Anything else in braces (`'{}'`, JSON) is left as it is, and so
//! are line comments (`-- …`), which may name placeholders. A
//! placeholder the caller has no value for is an error, never an empty
//! string: a typo in a file fails the merge's unit tests, not a query.

use thiserror::Error;

macro_rules! merge_sql {
    ($($(#[$doc:meta])* $name:ident = $file:literal;)*) => {
        $($(#[$doc])* pub(super) const $name: &str =
            include_str!(concat!("../../sql/merge/", $file));)*
        /// Every file, with its name (for the tests).
        #[cfg(test)]
        pub(super) const ALL: &[(&str, &str)] = &[$(($file, $name)),*];
    };
}

merge_sql! {
    RUN_SNAPSHOT = "00_run_snapshot.sql";
    RUN_WATERMARK = "00_run_watermark.sql";
    RUN_START = "00_run_start.sql";
    RUN_ADVANCE = "00_run_advance.sql";
    RUN_OK = "00_run_ok.sql";
    RUN_FAILED = "00_run_failed.sql";
    PENDING_HOURS = "01_pending_hours.sql";
    HOUR_LOAD = "02_hour_load.sql";
    HOUR_LOCK_DROP = "02_hour_lock_drop.sql";
    HOUR_LOCK = "02_hour_lock.sql";
    HOUR_SYMBOLS = "02_hour_symbols.sql";
    SETUP_SESSION = "03_setup_session.sql";
    SETUP_TEMP_TABLES = "03_setup_temp_tables.sql";
    SETUP_PARTITIONS = "03_setup_partitions.sql";
    SETUP_VIEW = "03_setup_view.sql";
    SETUP_VIEW_FOLDED = "03_setup_view_folded.sql";
    RANGE_IS_EMPTY = "03_range_is_empty.sql";
    TOUCHED = "04_touched.sql";
    TOUCHED_ANALYZE = "04_touched_analyze.sql";
    SILVER = "05_silver.sql";
    SILVER_FRESH = "05_silver_fresh.sql";
    SILVER_FRESH_PAIRS = "05_silver_fresh_pairs.sql";
    SILVER_RANKED = "05_silver_ranked.sql";
    SILVER_INSERT = "05_silver_insert.sql";
    FILLED = "06_filled.sql";
    MISMATCH = "07_source_mismatch.sql";
    COMPLETENESS = "08_completeness.sql";
    GOLD_SEQSCAN_OFF = "09_gold_seqscan_off.sql";
    GOLD_DAY_LOCK = "09_gold_day_lock.sql";
    GOLD_REFRESH = "09_gold_refresh.sql";
    GOLD_AGG_CHANGED = "09_gold_agg_changed.sql";
    GOLD_AGG_HOUR = "09_gold_agg_hour.sql";
    GOLD_AGGREGATES = "09_gold_aggregates.sql";
    GOLD_SOURCE_SILVER = "09_gold_source_silver.sql";
    GOLD_SOURCE_LEVEL = "09_gold_source_level.sql";
    GOLD_CHANGED_SILVER = "09_gold_changed_silver.sql";
    GOLD_CHANGED_LEVEL = "09_gold_changed_level.sql";
    TEARDOWN_VIEWS = "10_teardown_views.sql";
    ANALYZE = "10_analyze.sql";
}

/// A template that could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RenderError {
    #[error("no value for the SQL placeholder `{{{0}}}`")]
    Unknown(String),
    #[error("SQL fragments nested more than {MAX_DEPTH} deep at `{{{0}}}`")]
    TooDeep(String),
}

/// How deep fragments may include fragments (the merge needs two).
const MAX_DEPTH: usize = 4;

/// `template` with every placeholder replaced by `value(name, arg)`,
/// rendered in turn.
pub fn render(
    template: &str,
    value: &dyn Fn(&str, Option<&str>) -> Option<String>,
) -> Result<String, RenderError> {
    render_at(template, value, 0)
}

fn render_at(
    template: &str,
    value: &dyn Fn(&str, Option<&str>) -> Option<String>,
    depth: usize,
) -> Result<String, RenderError> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find(['{', '-']) {
        out.push_str(&rest[..open]);
        if rest[open..].starts_with("--") {
            // A comment is documentation: copied as it is, to its line's end.
            let end = rest[open..].find('\n').map_or(rest.len(), |n| open + n);
            out.push_str(&rest[open..end]);
            rest = &rest[end..];
            continue;
        }
        if !rest[open..].starts_with('{') {
            out.push('-');
            rest = &rest[open + 1..];
            continue;
        }
        let after = &rest[open + 1..];
        match placeholder(after) {
            Some((name, arg, len)) => {
                let key = arg.map_or_else(|| name.to_owned(), |a| format!("{name}:{a}"));
                let text = value(name, arg).ok_or_else(|| RenderError::Unknown(key.clone()))?;
                if text.contains('{') {
                    if depth + 1 >= MAX_DEPTH {
                        return Err(RenderError::TooDeep(key));
                    }
                    out.push_str(&render_at(&text, value, depth + 1)?);
                } else {
                    out.push_str(&text);
                }
                rest = &after[len + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The `name`, `arg` and length up to the closing brace of a placeholder at
/// the start of `s` (just after its `{`), if it is one.
fn placeholder(s: &str) -> Option<(&str, Option<&str>, usize)> {
    let close = s.find('}')?;
    let inner = &s[..close];
    let (name, arg) = match inner.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (inner, None),
    };
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    let arg_ok = arg
        .is_none_or(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    (name_ok && arg_ok).then_some((name, arg, close))
}

/// `sql` without the lines tagged `@tag` (in a comment): the merge of every
/// key of an hour drops the lines marked `@only-touched`, which restrict
/// the touched-keys merge to `merge_touched`.
pub fn without_tagged(sql: &str, tag: &str) -> String {
    sql.lines()
        .filter(|l| !l.contains(tag))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The statements of a file that holds several (`;` at the end of a line
/// ends one; none of the merge's statements has one inside), without those
/// that are only comments. Each runs as its own prepared statement.
pub fn statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (at, _) in sql
        .match_indices(";\n")
        .chain(std::iter::once((sql.len(), "")))
    {
        let chunk = sql[start..at].trim().trim_end_matches(';');
        start = (at + 2).min(sql.len());
        let code = chunk
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"));
        if code {
            out.push(chunk);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(name: &str, arg: Option<&str>) -> Option<String> {
        Some(match (name, arg) {
            ("bronze", None) => "bronze.ohlcv_native_p2024030405".into(),
            ("shard", Some(alias)) => format!("AND {alias}.symbol >= $3"),
            ("fragment", None) => "(SELECT 1 FROM {bronze} b WHERE true {shard:b})".into(),
            ("loop", None) => "{loop}".into(),
            _ => return None,
        })
    }

    #[test]
    fn placeholders_and_their_arguments_are_filled() {
        assert_eq!(
            render("SELECT * FROM {bronze} b WHERE x {shard:b}", &values).unwrap(),
            "SELECT * FROM bronze.ohlcv_native_p2024030405 b WHERE x AND b.symbol >= $3"
        );
    }

    #[test]
    fn a_fragment_is_rendered_where_it_is_included() {
        assert_eq!(
            render("WITH f AS {fragment} SELECT 2", &values).unwrap(),
            "WITH f AS (SELECT 1 FROM bronze.ohlcv_native_p2024030405 b WHERE true \
             AND b.symbol >= $3) SELECT 2"
        );
    }

    #[test]
    fn braces_that_are_not_placeholders_stay() {
        for text in [
            "SELECT '{}'::text[]",
            "SELECT '{\"a\": 1}'::jsonb",
            "SELECT '{1,2}'::int[] {",
            "{Bronze} {a b} {x:} {:y} {x:a-b}",
        ] {
            assert_eq!(render(text, &values).unwrap(), text);
        }
    }

    #[test]
    fn comments_are_left_as_they_are() {
        assert_eq!(
            render("-- reads {fragment}\nSELECT 1 - 2 FROM {bronze} -- {nothing}\n-", &values)
                .unwrap(),
            "-- reads {fragment}\nSELECT 1 - 2 FROM bronze.ohlcv_native_p2024030405 -- {nothing}\n-"
        );
    }

    #[test]
    fn an_unknown_placeholder_is_an_error_naming_it() {
        assert_eq!(
            render("SELECT {silvr}", &values),
            Err(RenderError::Unknown("silvr".into()))
        );
        assert_eq!(
            render("x {shard}", &values),
            Err(RenderError::Unknown("shard".into()))
        );
        assert_eq!(
            render("{loop}", &values),
            Err(RenderError::TooDeep("loop".into()))
        );
    }

    #[test]
    fn a_file_of_several_statements_is_cut_at_line_ending_semicolons() {
        let sql =
            "-- settings\nSET LOCAL a = 1;\n-- why b\nSET LOCAL b = 'x;y';\nSELECT 1;\n-- end\n";
        assert_eq!(
            statements(sql),
            vec![
                "-- settings\nSET LOCAL a = 1",
                "-- why b\nSET LOCAL b = 'x;y'",
                "SELECT 1"
            ]
        );
        assert_eq!(statements("SELECT 1"), vec!["SELECT 1"]);
        assert_eq!(statements(SETUP_SESSION).len(), 3);
        assert_eq!(statements(SETUP_TEMP_TABLES).len(), 4);
    }

    #[test]
    fn tagged_lines_are_dropped() {
        let sql = "SELECT 1\nJOIN merge_touched t USING (k) -- @only-touched\nWHERE true";
        assert_eq!(without_tagged(sql, "@only-touched"), "SELECT 1\nWHERE true");
        assert_eq!(without_tagged("SELECT 1", "@only-touched"), "SELECT 1");
    }

    #[test]
    fn every_file_is_numbered_and_named_once() {
        let mut names: Vec<&str> = ALL.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        for (name, text) in ALL {
            assert!(
                name.as_bytes()[..2].iter().all(u8::is_ascii_digit),
                "{name}"
            );
            assert!(!text.trim().is_empty(), "{name}");
        }
        // And every file of sql/merge/ is one of them.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/merge");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        on_disk.sort();
        assert_eq!(on_disk, names);
    }
}
