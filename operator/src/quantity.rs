//! Kubernetes quantities (`20Gi`, `500m`, `1e3`), checked by the grammar of
//! `resource.Quantity`, for the fields that hold one.
//!
//! k8s-openapi's `Quantity` is an unchecked string, so `"ten gigs"` would otherwise reach the
//! apiserver inside a PersistentVolumeClaim or a Deployment and fail there, long after the
//! AgentRunner was accepted. The grammar (the one the CRD's CEL rules enforce with
//! `isQuantity`):
//!
//! ```text
//! quantity  ::= [sign] number [suffix]
//! number    ::= digits | digits "." | digits "." digits | "." digits
//! suffix    ::= Ki | Mi | Gi | Ti | Pi | Ei            (binary)
//!             | n | u | m | k | M | G | T | P | E      (decimal)
//!             | ("e" | "E") [sign] digits              (exponent, a 64-bit integer)
//! ```
//!
//! No whitespace, no other digits than ASCII. Go's parser also accepts a few digit-less
//! spellings of zero (`"."`, `"Ki"`); they mean nothing useful here and are refused.

use std::cmp::Ordering;

/// The sign of `raw` (`Less` for a negative quantity), or `None` when it is not a quantity.
pub fn sign(raw: &str) -> Option<Ordering> {
    let bytes = raw.as_bytes();
    let (negative, mut i) = match bytes.first()? {
        b'-' => (true, 1),
        b'+' => (false, 1),
        _ => (false, 0),
    };
    let digits_from = |i: usize| {
        bytes[i..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(bytes.len(), |n| i + n)
    };
    let int_end = digits_from(i);
    let whole = &bytes[i..int_end];
    i = int_end;
    let mut fraction: &[u8] = &[];
    if bytes.get(i) == Some(&b'.') {
        let end = digits_from(i + 1);
        fraction = &bytes[i + 1..end];
        i = end;
    }
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !is_suffix(&raw[i..]) {
        return None;
    }
    let zero = whole.iter().chain(fraction).all(|d| *d == b'0');
    Some(match (zero, negative) {
        (true, _) => Ordering::Equal,
        (false, true) => Ordering::Less,
        (false, false) => Ordering::Greater,
    })
}

fn is_suffix(suffix: &str) -> bool {
    match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        // Rust's i64 parsing takes what Go's strconv.ParseInt(s, 10, 64) takes: an optional
        // sign, then ASCII digits, within range.
        _ => suffix
            .strip_prefix(['e', 'E'])
            .is_some_and(|exponent| exponent.parse::<i64>().is_ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_accepted_with_their_sign() {
        for q in [
            "1",
            "20Gi",
            "500m",
            "1.5Gi",
            "1.",
            ".5",
            "+1k",
            "1e3",
            "1E-3",
            "1e+3",
            "100n",
            "3u",
            "2Ei",
            "1E",
            "0.1",
            "123456789012345678901234567890",
        ] {
            assert_eq!(sign(q), Some(Ordering::Greater), "{q}");
        }
        for q in ["0", "0Gi", "-0", "0.000", "+0e9"] {
            assert_eq!(sign(q), Some(Ordering::Equal), "{q}");
        }
        for q in ["-1", "-1Gi", "-.5m"] {
            assert_eq!(sign(q), Some(Ordering::Less), "{q}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for q in [
            "",
            "ten gigs",
            "10GB",
            "10gi",
            "1K",
            "1.5.5Gi",
            " 1Gi",
            "1Gi ",
            "1 Gi",
            "Gi",
            ".",
            "-",
            "+",
            "1e",
            "1e+",
            "1e1.5",
            "1e3Gi",
            "1Gi3",
            "1e99999999999999999999",
            "١",
            "1\n",
            "--1",
            "0x10",
            "1_000",
            "NaN",
            "inf",
        ] {
            assert_eq!(sign(q), None, "{q:?}");
        }
    }
}
