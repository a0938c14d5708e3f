//! Text for messages.

/// Characters of a caller's input an error message repeats at most.
pub const QUOTED_MAX: usize = 100;

/// `s` quoted for an error message (as `{:?}` would), cut after
/// [`QUOTED_MAX`] characters with its length, so that a refused 100 KiB
/// name or parameter is not sent back whole.
pub fn quoted(s: &str) -> String {
    if s.chars().count() <= QUOTED_MAX {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(QUOTED_MAX).collect();
    format!("{head:?}… ({} bytes)", s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole_and_long_input_is_cut_with_its_length() {
        assert_eq!(quoted("bad name"), r#""bad name""#);
        assert_eq!(quoted("a\"b"), r#""a\"b""#);
        let at_limit = "é".repeat(QUOTED_MAX);
        assert_eq!(quoted(&at_limit), format!("{at_limit:?}"));
        let long = "é".repeat(QUOTED_MAX + 1);
        let shown = quoted(&long);
        assert_eq!(
            shown,
            format!("{:?}… ({} bytes)", "é".repeat(QUOTED_MAX), long.len())
        );
    }
}
