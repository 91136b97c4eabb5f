//! A fast reader for a JSON tensor's `data` when it holds numbers, booleans or nulls: flat or
//! nested arrays of them, or one alone.
//!
//! The serde path ([`super::json`]'s `Flatten` visitor) reads each element through serde_json's
//! deserializer and a visitor call; this reads them in one loop over the bytes. Each number is
//! classified as serde_json classifies it (an integer that fits `u64`; a negative integer that
//! fits `i64`; anything else an `f64`, correctly rounded, as serde_json's `float_roundtrip`
//! gives it), so the caller turns it into the same value, bit for bit.
//!
//! It accepts strictly less than the serde path and decides nothing: on anything else (a string,
//! invalid JSON, a number out of `f64`'s range, an exponent of more than four digits, arrays
//! nested deeper than [`MAX_DEPTH`]) it gives up, and the caller reads the data again with
//! serde_json, which accepts or refuses it and words the error.

/// One scalar of the data, as serde_json would hand it to a visitor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scalar {
    /// An integer in `0..=u64::MAX`.
    U64(u64),
    /// A negative integer in `i64`'s range.
    I64(i64),
    /// Any other number.
    F64(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
}

/// Deeper nesting is left to serde_json (its own limit is 128).
const MAX_DEPTH: usize = 100;

/// Calls `each` with every scalar of `text`, in order, through nested arrays. `false` when
/// `text` is not such data (then nothing it reported counts) or when `each` returned `false`.
pub(crate) fn for_each_scalar(text: &[u8], mut each: impl FnMut(Scalar) -> bool) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    loop {
        // A value is expected at `i`.
        i = skip_whitespace(text, i);
        let Some(&first) = text.get(i) else {
            return false;
        };
        match first {
            b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
                i = skip_whitespace(text, i + 1);
                if text.get(i) != Some(&b']') {
                    continue;
                }
                // An empty array is a complete value.
                i += 1;
                depth -= 1;
            }
            b'-' | b'0'..=b'9' => {
                let Some((scalar, end)) = number(text, i) else {
                    return false;
                };
                if !each(scalar) {
                    return false;
                }
                i = end;
            }
            _ => {
                let (scalar, len) = match &text[i..] {
                    [b'n', b'u', b'l', b'l', ..] => (Scalar::Null, 4),
                    [b't', b'r', b'u', b'e', ..] => (Scalar::Bool(true), 4),
                    [b'f', b'a', b'l', b's', b'e', ..] => (Scalar::Bool(false), 5),
                    _ => return false,
                };
                if !each(scalar) {
                    return false;
                }
                i += len;
            }
        }
        // A value ended at `i`: a comma and the next value, or the end of arrays.
        loop {
            i = skip_whitespace(text, i);
            if depth == 0 {
                return i == text.len();
            }
            match text.get(i) {
                Some(b',') => {
                    i += 1;
                    break;
                }
                Some(b']') => {
                    i += 1;
                    depth -= 1;
                }
                _ => return false,
            }
        }
    }
}

fn skip_whitespace(text: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = text.get(i) {
        i += 1;
    }
    i
}

fn skip_digits(text: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = text.get(i) {
        i += 1;
    }
    i
}

/// Reads the digits from `i` on into `significand` (`significand * 10 + digit` for each, wrapping
/// past 19 digits); where they end. Eight at a time while it can (SWAR, as in fast_float).
fn digits_of(text: &[u8], mut i: usize, significand: &mut u64) -> usize {
    while let Some(chunk) = text.get(i..i + 8) {
        let chunk = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let values = chunk.wrapping_sub(0x3030_3030_3030_3030);
        // A byte below '0' wraps to >= 0x80; one above '9' reaches 0x80 with 0x46 added.
        if (chunk.wrapping_add(0x4646_4646_4646_4646) | values) & 0x8080_8080_8080_8080 != 0 {
            break;
        }
        // Pairs, then fours, then the eight digits' value (first digit most significant).
        let pairs = values.wrapping_mul(10).wrapping_add(values >> 8);
        const MASK: u64 = 0x0000_00FF_0000_00FF;
        let eight = ((pairs & MASK)
            .wrapping_mul(0x000F_4240_0000_0064)
            .wrapping_add(((pairs >> 16) & MASK).wrapping_mul(0x0000_2710_0000_0001)))
            >> 32;
        *significand = significand.wrapping_mul(100_000_000).wrapping_add(eight);
        i += 8;
    }
    while let Some(&d @ b'0'..=b'9') = text.get(i) {
        *significand = significand
            .wrapping_mul(10)
            .wrapping_add(u64::from(d - b'0'));
        i += 1;
    }
    i
}

/// The JSON number starting at `start` (RFC 8259's grammar) and where it ends.
fn number(text: &[u8], start: usize) -> Option<(Scalar, usize)> {
    let negative = text[start] == b'-';
    let mut i = start + usize::from(negative);
    let integer_start = i;
    // The digits of the integer and fraction parts as one integer, exact while there are at
    // most 19 of them.
    let mut significand: u64 = 0;
    let mut digits = match text.get(i) {
        Some(b'0') => {
            i += 1;
            1
        }
        Some(b'1'..=b'9') => {
            let end = digits_of(text, i, &mut significand);
            let count = end - i;
            i = end;
            count
        }
        _ => return None,
    };
    let integer_end = i;
    let mut fraction_digits = 0usize;
    if text.get(i) == Some(&b'.') {
        let end = digits_of(text, i + 1, &mut significand);
        fraction_digits = end - (i + 1);
        if fraction_digits == 0 {
            return None;
        }
        digits += fraction_digits;
        i = end;
    }
    let mut exponent: i32 = 0;
    if let Some(b'e' | b'E') = text.get(i) {
        i += 1;
        let exponent_negative = text.get(i) == Some(&b'-');
        if let Some(b'+' | b'-') = text.get(i) {
            i += 1;
        }
        let first = i;
        i = skip_digits(text, i);
        if i == first || i - first > 4 {
            return None;
        }
        exponent = text[first..i]
            .iter()
            .fold(0, |e, d| e * 10 + i32::from(d - b'0'));
        if exponent_negative {
            exponent = -exponent;
        }
    }
    let end = i;
    let exact = digits <= 19;
    if end == integer_end {
        // An integer: serde_json keeps it as one while it fits a u64.
        let value = if exact {
            Some(significand)
        } else {
            text[integer_start..end].iter().try_fold(0u64, |v, d| {
                v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
        };
        if let Some(value) = value {
            let scalar = if !negative {
                Scalar::U64(value)
            } else {
                // serde_json's rule: `-0` and integers below `i64::MIN` become floats.
                let negated = (value as i64).wrapping_neg();
                if negated >= 0 {
                    Scalar::F64(-(value as f64))
                } else {
                    Scalar::I64(negated)
                }
            };
            return Some((scalar, end));
        }
    }
    // A significand and a power of ten that doubles hold exactly: one IEEE operation, so
    // correctly rounded (Clinger's fast path), as serde_json's `float_roundtrip` rounds.
    let power = i64::from(exponent) - fraction_digits as i64;
    if exact && significand <= 1 << 53 && power.unsigned_abs() < 23 {
        let whole = significand as f64;
        let scale = EXACT_POWERS_OF_TEN[power.unsigned_abs() as usize];
        let value = if power >= 0 {
            whole * scale
        } else {
            whole / scale
        };
        return Some((Scalar::F64(if negative { -value } else { value }), end));
    }
    // Anything else by std's parser, which also rounds correctly. The token is ASCII by
    // construction. serde_json refuses a number beyond f64's range.
    let token = std::str::from_utf8(&text[start..end]).ok()?;
    let value: f64 = token.parse().ok()?;
    value.is_finite().then_some((Scalar::F64(value), end))
}

/// `10^i` for the powers a double holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn scalars(text: &str) -> Option<Vec<Scalar>> {
        let mut out = Vec::new();
        for_each_scalar(text.as_bytes(), |s| {
            out.push(s);
            true
        })
        .then_some(out)
    }

    #[test]
    fn reads_nested_arrays_scalars_and_literals() {
        use Scalar::*;
        assert_eq!(
            scalars(" [ [1, -2 ,3.5],[ ], [null,true , false,[[-0]]] ] "),
            Some(vec![
                U64(1),
                I64(-2),
                F64(3.5),
                Null,
                Bool(true),
                Bool(false),
                F64(-0.0)
            ])
        );
        assert_eq!(scalars("7"), Some(vec![U64(7)]));
        assert_eq!(scalars("[]"), Some(vec![]));
        assert_eq!(
            scalars("[18446744073709551615, 18446744073709551616, -9223372036854775808]"),
            Some(vec![
                U64(u64::MAX),
                F64(18446744073709551616.0),
                I64(i64::MIN)
            ])
        );
        assert_eq!(
            scalars("[-9223372036854775809]"),
            Some(vec![F64(-9223372036854775809.0)])
        );
        assert_eq!(scalars("[1E+2, 1e-2]"), Some(vec![F64(100.0), F64(0.01)]));
    }

    #[test]
    fn gives_up_on_anything_else() {
        for text in [
            "",
            " ",
            "[",
            "]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[1]]",
            "[[1]",
            "01",
            "[01]",
            "1.",
            ".5",
            "-",
            "+1",
            "1e",
            "1e+",
            "1.e5",
            "nul",
            "nulll",
            "[truex]",
            "\"1\"",
            "[\"a\"]",
            "NaN",
            "Infinity",
            "[-Infinity]",
            "1e400",
            "-1e400",
            "1e99999",
            "[1]x",
            "{}",
            "[1,\u{a0}2]",
        ] {
            assert_eq!(scalars(text), None, "{text:?}");
        }
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(scalars(&deep), None);
        let ok = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(scalars(&ok), Some(vec![Scalar::U64(1)]));
    }

    #[test]
    fn stops_when_told() {
        let mut seen = 0;
        assert!(!for_each_scalar(b"[1,2,3]", |_| {
            seen += 1;
            seen < 2
        }));
        assert_eq!(seen, 2);
    }
}
