//! The `Range` request header (RFC 9110 §14.2), single byte ranges only.

use std::ops::Range;

/// What a `Range` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Requested {
    /// No header, or one the server may ignore (another unit, several
    /// ranges, bad syntax): the whole file, 200.
    Whole,
    /// `bytes=a-b` / `bytes=a-`: bytes `a..=b` (`end` is exclusive and may
    /// pass the end of the file).
    From(Range<u64>),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub(super) fn parse(header: Option<&str>) -> Requested {
    let Some(value) = header else {
        return Requested::Whole;
    };
    let value = value.trim();
    let Some((unit, spec)) = value.split_once('=') else {
        return Requested::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return Requested::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Requested::Whole;
    };
    match (first.trim(), last.trim()) {
        ("", last) => number(last).map_or(Requested::Whole, Requested::Suffix),
        (first, "") => number(first).map_or(Requested::Whole, |a| Requested::From(a..u64::MAX)),
        (first, last) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a <= b => Requested::From(a..b.saturating_add(1)),
            _ => Requested::Whole,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_byte_ranges_and_ignores_the_rest() {
        assert_eq!(parse(None), Requested::Whole);
        assert_eq!(parse(Some("bytes=0-9")), Requested::From(0..10));
        assert_eq!(parse(Some("Bytes = 5-")), Requested::From(5..u64::MAX));
        assert_eq!(parse(Some("bytes=-3")), Requested::Suffix(3));
        assert_eq!(parse(Some("bytes=-0")), Requested::Suffix(0));
        for ignored in [
            "bytes=9-5",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
            "",
        ] {
            assert_eq!(parse(Some(ignored)), Requested::Whole, "{ignored:?}");
        }
        assert_eq!(
            parse(Some("bytes=0-18446744073709551615")),
            Requested::From(0..u64::MAX)
        );
    }
}
