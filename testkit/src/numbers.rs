//! Hostile and careless values for numeric flags and variables, for property tests of their
//! parsers: every parser must answer each of them with an error or a value in its documented
//! range, never a panic.

use std::ops::RangeInclusive;

use proptest::prelude::*;

/// Text a person, a script or a model might put where a number is expected: numbers of every
/// size and sign (beyond `u64` too), floats, blanks and padding, other digit systems, and
/// arbitrary text.
pub fn hostile_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<u128>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        prop::sample::select(SPECIALS.to_vec()).prop_map(str::to_owned),
        "[ \t]{0,2}[+-]?[0-9]{1,25}[ \t]{0,2}",
        "[0-9\u{660}-\u{669}\u{ff10}-\u{ff19}]{1,6}",
        "\\PC{0,12}",
    ]
}

const SPECIALS: &[&str] = &[
    "",
    " ",
    "\t",
    "0",
    "-0",
    "+0",
    "+1",
    "-1",
    "1.0",
    "1e3",
    "0x10",
    "1_000",
    "1,000",
    "\u{661}\u{662}",
    "\u{ff11}\u{ff12}",
    "abc",
    "NaN",
    "inf",
    "-inf",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "4294967296",
    "65536",
];

/// The values on and just beyond each end of `range`, as text.
pub fn boundaries(range: &RangeInclusive<u64>) -> Vec<String> {
    let (start, end) = (*range.start(), *range.end());
    let mut values = vec![start.to_string(), end.to_string()];
    values.push(match start.checked_sub(1) {
        Some(below) => below.to_string(),
        None => "-1".to_string(),
    });
    values.push(match end.checked_add(1) {
        Some(above) => above.to_string(),
        None => "18446744073709551616".to_string(),
    });
    values
}

/// What a parser of `range` must answer for `raw`: the number when `raw` is a plain decimal
/// integer within the range, else `None` (an error).
pub fn expected(raw: &str, range: &RangeInclusive<u64>) -> Option<u64> {
    raw.parse::<u64>().ok().filter(|n| range.contains(n))
}
