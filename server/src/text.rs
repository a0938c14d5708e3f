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

/// `n` and a noun that takes an `s` when `n` is not 1: `1 key`, `2 keys`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A size in the largest binary unit that holds it exactly, as the byte
/// options take it back: `64Mi`, `16Gi`, `1000` (no unit divides it).
pub fn bytes(n: u64) -> String {
    for (unit, size) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_the_largest_unit_that_holds_them_exactly() {
        assert_eq!(bytes(64 << 20), "64Mi");
        assert_eq!(bytes(16 << 30), "16Gi");
        assert_eq!(bytes(1536), "1536");
        assert_eq!(bytes(1000), "1000");
        assert_eq!(bytes(0), "0");
    }

    #[test]
    fn counts_take_the_plural_unless_one() {
        assert_eq!(count(0, "key"), "0 keys");
        assert_eq!(count(1, "key"), "1 key");
        assert_eq!(count(1000, "key"), "1000 keys");
    }

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
