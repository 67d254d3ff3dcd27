//! Kubernetes `resource.Quantity`: parsing, exact values and canonical
//! printing, with the semantics of apimachinery's `pkg/api/resource`
//! (`quantity.go`, `suffix.go`, `amount.go`).
//!
//! A quantity is held as an exact count of nano-units (`i128`), because
//! apimachinery rounds every value up to 1n on parse: nothing finer can ever
//! be observed, and every realistic resource value (up to about 1.7e29
//! units) fits. Larger magnitudes saturate instead of growing a big-decimal
//! representation; `value()` saturates at `i64` anyway, so no resource
//! setting can tell the difference. The suffix family the text was written
//! in is kept only for printing, as Kubernetes does.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

const NANOS_PER_UNIT: i128 = 1_000_000_000;
const NANOS_PER_MILLI: i128 = 1_000_000;
/// apimachinery caps binary-suffixed amounts at 2^63-1 (its `maxAllowed`),
/// so `9Ei` reads as 2^63-1, not 9*2^60.
const MAX_BINARY_NANOS: i128 = i64::MAX as i128 * NANOS_PER_UNIT;
/// Characters that may start a suffix (apimachinery's scanner set).
const SUFFIX_CHARS: &str = "eEinumkKMGTP";

/// How the quantity was written, which decides how it is printed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `n u m "" k M G T P E`
    DecimalSi,
    /// `Ki Mi Gi Ti Pi Ei`
    BinarySi,
    /// `e<exp>` / `E<exp>`
    DecimalExponent,
}

/// A Kubernetes resource quantity (`500m`, `1.5Gi`, `1e3`), exact to 1n.
///
/// Equality and ordering compare amounts, like apimachinery's `Cmp`: `1k`
/// equals `1000` and `1e3`. The suffix family only affects `Display`.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

/// Which of apimachinery's three parse errors occurred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantityErrorKind {
    /// `ErrFormatWrong`: the text does not have the shape number+suffix.
    Format,
    /// `ErrNumeric`: the number part could not be read.
    Numeric,
    /// `ErrSuffix`: the suffix is not one Kubernetes knows (e.g. `K`).
    Suffix,
}

/// Why a quantity did not parse. The message is apimachinery's, word for
/// word, so it reads like what `kubectl` would print for the same manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .kind.message())]
pub struct QuantityError {
    kind: QuantityErrorKind,
}

impl QuantityError {
    fn new(kind: QuantityErrorKind) -> Self {
        Self { kind }
    }

    /// Which error this is, for callers that branch on it.
    pub fn kind(&self) -> QuantityErrorKind {
        self.kind
    }
}

impl QuantityErrorKind {
    fn message(self) -> &'static str {
        match self {
            QuantityErrorKind::Format => {
                "quantities must match the regular expression \
                 '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
            }
            QuantityErrorKind::Numeric => "unable to parse numeric part of quantity",
            QuantityErrorKind::Suffix => "unable to parse quantity's suffix",
        }
    }
}

/// The pieces apimachinery's scanner (`parseQuantityString`) splits text into.
struct Scanned<'a> {
    positive: bool,
    /// Integer digits with leading zeros stripped ("" when there were none).
    num: &'a str,
    /// Fraction digits ("" when there were none).
    denom: &'a str,
    suffix: &'a str,
}

/// Splits `text` the way apimachinery does, quirks included: the number may
/// have no digits at all (`"m"`, `"-"` and `"."` all read as zero there, so
/// they do here), and only the suffix's shape is checked at this point.
fn scan(text: &str) -> Result<Scanned<'_>, QuantityError> {
    let bytes = text.as_bytes();
    let end = bytes.len();
    let mut pos = 0;
    let mut positive = true;
    if let Some(&sign) = bytes.first() {
        if sign == b'-' {
            positive = false;
            pos += 1;
        } else if sign == b'+' {
            pos += 1;
        }
    }
    while pos < end && bytes[pos] == b'0' {
        pos += 1;
    }
    let num_start = pos;
    while pos < end && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    let num = &text[num_start..pos];
    let mut denom = "";
    if pos < end && bytes[pos] == b'.' {
        pos += 1;
        let denom_start = pos;
        while pos < end && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        denom = &text[denom_start..pos];
    }
    let suffix_start = pos;
    while pos < end && SUFFIX_CHARS.as_bytes().contains(&bytes[pos]) {
        pos += 1;
    }
    if pos < end && (bytes[pos] == b'-' || bytes[pos] == b'+') {
        pos += 1;
    }
    while pos < end && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos != end {
        return Err(QuantityError::new(QuantityErrorKind::Format));
    }
    Ok(Scanned {
        positive,
        num,
        denom,
        suffix: &text[suffix_start..end],
    })
}

/// What a suffix multiplies by: `10^exp` or `2^exp`.
enum Multiplier {
    Decimal(i64),
    Binary(u32),
}

fn interpret_suffix(suffix: &str) -> Result<(Multiplier, Format), QuantityError> {
    use Multiplier::{Binary, Decimal};
    Ok(match suffix {
        "" => (Decimal(0), Format::DecimalSi),
        "n" => (Decimal(-9), Format::DecimalSi),
        "u" => (Decimal(-6), Format::DecimalSi),
        "m" => (Decimal(-3), Format::DecimalSi),
        "k" => (Decimal(3), Format::DecimalSi),
        "M" => (Decimal(6), Format::DecimalSi),
        "G" => (Decimal(9), Format::DecimalSi),
        "T" => (Decimal(12), Format::DecimalSi),
        "P" => (Decimal(15), Format::DecimalSi),
        "E" => (Decimal(18), Format::DecimalSi),
        "Ki" => (Binary(10), Format::BinarySi),
        "Mi" => (Binary(20), Format::BinarySi),
        "Gi" => (Binary(30), Format::BinarySi),
        "Ti" => (Binary(40), Format::BinarySi),
        "Pi" => (Binary(50), Format::BinarySi),
        "Ei" => (Binary(60), Format::BinarySi),
        _ => {
            let rest = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .filter(|rest| !rest.is_empty())
                .ok_or(QuantityError::new(QuantityErrorKind::Suffix))?;
            // Same acceptance as Go's strconv.ParseInt: optional sign, digits.
            let exp = rest
                .parse::<i64>()
                .map_err(|_| QuantityError::new(QuantityErrorKind::Suffix))?;
            (Decimal(exp), Format::DecimalExponent)
        }
    })
}

/// Parses a Kubernetes quantity, exactly as apimachinery's `ParseQuantity`:
/// `<signedNumber><suffix>`, suffix one of `Ki..Ei`, `n u m "" k M G T P E`
/// or an `e`/`E` exponent. Values finer than 1n round up, away from zero;
/// binary-suffixed values are capped at 2^63-1. No whitespace is allowed
/// (trim first if the text came from a manifest, as `UnmarshalJSON` does).
///
/// Differences from Go, both for absurd input only: exponents beyond `i32`
/// are not wrapped around, and magnitudes beyond about 1.7e29 saturate.
pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
    if text.is_empty() {
        return Err(QuantityError::new(QuantityErrorKind::Format));
    }
    if text == "0" {
        return Ok(Quantity::ZERO);
    }
    let scanned = scan(text)?;
    let (multiplier, mut format) = interpret_suffix(scanned.suffix)?;
    let has_digits = !scanned.num.is_empty()
        || !scanned.denom.is_empty()
        || text.trim_start_matches(['+', '-']).starts_with('0');
    let magnitude = match multiplier {
        Multiplier::Decimal(exp) => {
            // Go takes its big-decimal path for scales below 1n and then
            // fails to read a number part without digits ("e-10", ".e-10");
            // with a larger scale the same text reads as zero.
            if !has_digits && exp < -9 {
                return Err(QuantityError::new(QuantityErrorKind::Numeric));
            }
            scaled_nanos(scanned.num, scanned.denom, exp, 0)
        }
        Multiplier::Binary(shift) => {
            scaled_nanos(scanned.num, scanned.denom, 0, shift).min(MAX_BINARY_NANOS as u128)
        }
    };
    let magnitude = i128::try_from(magnitude).unwrap_or(i128::MAX);
    if format == Format::BinarySi && magnitude > 0 && magnitude < NANOS_PER_UNIT {
        // apimachinery switches sub-unit binary amounts to decimal.
        format = Format::DecimalSi;
    }
    let nanos = if scanned.positive {
        magnitude
    } else {
        -magnitude
    };
    Ok(Quantity { nanos, format })
}

/// `ceil(int(num ++ denom) * 10^(exp - len(denom)) * 2^shift * 10^9)`, the
/// magnitude in nano-units, saturating at `u128::MAX`.
///
/// Digits above the nano position are accumulated exactly; the ones below
/// are folded from the right into a quotient plus a "not exact" flag, so an
/// arbitrarily long fraction still rounds up exactly once.
fn scaled_nanos(num: &str, denom: &str, exp: i64, shift: u32) -> u128 {
    let digit_count = num.len() + denom.len();
    let digit = |i: usize| -> u128 {
        let byte = if i < num.len() {
            num.as_bytes()[i]
        } else {
            denom.as_bytes()[i - num.len()]
        };
        u128::from(byte - b'0')
    };
    let binary = 1u128 << shift;
    // Exponent of 10 applying to the last digit, in nano-units.
    let nano_exp = i128::from(exp) - denom.len() as i128 + 9;
    if nano_exp >= 0 {
        let mut value: u128 = 0;
        for i in 0..digit_count {
            value = value.saturating_mul(10).saturating_add(digit(i));
        }
        if value == 0 {
            return 0;
        }
        return value
            .saturating_mul(binary)
            .saturating_mul(pow10_saturating(nano_exp));
    }
    // `fraction_len` digits lie below the nano position; those beyond the
    // written digits are implicit leading zeros.
    let fraction_len = nano_exp.unsigned_abs();
    let whole_len = (digit_count as u128).saturating_sub(fraction_len) as usize;
    let mut whole: u128 = 0;
    for i in 0..whole_len {
        whole = whole.saturating_mul(10).saturating_add(digit(i));
    }
    let mut fraction: u128 = 0;
    let mut inexact = false;
    for i in (whole_len..digit_count).rev() {
        let total = digit(i) * binary + fraction;
        inexact |= !total.is_multiple_of(10);
        fraction = total / 10;
    }
    let mut implicit_zeros = fraction_len.saturating_sub((digit_count - whole_len) as u128);
    while implicit_zeros > 0 && fraction > 0 {
        inexact |= !fraction.is_multiple_of(10);
        fraction /= 10;
        implicit_zeros -= 1;
    }
    whole
        .saturating_mul(binary)
        .saturating_add(fraction)
        .saturating_add(u128::from(inexact))
}

fn pow10_saturating(exp: i128) -> u128 {
    match u32::try_from(exp) {
        Ok(exp) => 10u128.checked_pow(exp).unwrap_or(u128::MAX),
        Err(_) => u128::MAX,
    }
}

/// `ceil(nanos / per)`, rounding away from zero as apimachinery's
/// `ScaledValue` does, saturated to `i64`.
fn scaled_value(nanos: i128, per: i128) -> i64 {
    let quotient = nanos / per;
    let rounded = if nanos % per == 0 {
        quotient
    } else if nanos > 0 {
        quotient + 1
    } else {
        quotient - 1
    };
    i64::try_from(rounded).unwrap_or(if rounded > 0 { i64::MAX } else { i64::MIN })
}

impl Quantity {
    const ZERO: Quantity = Quantity {
        nanos: 0,
        format: Format::DecimalSi,
    };

    /// The value in whole units (bytes for memory), rounded up away from
    /// zero like apimachinery's `Value()`, saturated to `i64`.
    pub fn value(&self) -> i64 {
        scaled_value(self.nanos, NANOS_PER_UNIT)
    }

    /// `ceil(q * 1000)` (millicores for cpu), like apimachinery's
    /// `MilliValue()`, saturated to `i64`.
    pub fn milli_value(&self) -> i64 {
        scaled_value(self.nanos, NANOS_PER_MILLI)
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Resources must not be negative; the parser itself allows a sign.
    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// Sum for aggregating requests and limits across containers; keeps the
    /// format of the first non-zero term, as apimachinery's `Add` does.
    pub(crate) fn saturating_add(self, other: Quantity) -> Quantity {
        let format = if self.nanos == 0 {
            other.format
        } else {
            self.format
        };
        Quantity {
            nanos: self.nanos.saturating_add(other.nanos),
            format,
        }
    }

    /// Prints as a decimal mantissa with an exponent that is a multiple of
    /// 3, the way apimachinery's `AsCanonicalBytes` does.
    fn fmt_decimal(&self, f: &mut fmt::Formatter<'_>, format: Format) -> fmt::Result {
        let mut mantissa = self.nanos;
        let mut exp: i32 = -9;
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exp += 1;
        }
        let down = exp.rem_euclid(3);
        // SI suffixes stop at E (10^18); Go would print no suffix at all
        // for larger exponents, which misreads, so stay at E instead.
        let down = if format == Format::DecimalSi && exp - down > 18 {
            exp - 18
        } else {
            down
        };
        match pow10_i128(down).and_then(|scale| mantissa.checked_mul(scale)) {
            Some(scaled) => {
                mantissa = scaled;
                exp -= down;
            }
            // Only for saturated amounts: print the exponent as it is.
            None => return write!(f, "{mantissa}e{exp}"),
        }
        match format {
            Format::DecimalExponent if exp == 0 => write!(f, "{mantissa}"),
            Format::DecimalExponent => write!(f, "{mantissa}e{exp}"),
            _ => {
                let suffix = match exp {
                    -9 => "n",
                    -6 => "u",
                    -3 => "m",
                    0 => "",
                    3 => "k",
                    6 => "M",
                    9 => "G",
                    12 => "T",
                    15 => "P",
                    _ => "E",
                };
                write!(f, "{mantissa}{suffix}")
            }
        }
    }
}

fn pow10_i128(exp: i32) -> Option<i128> {
    10i128.checked_pow(u32::try_from(exp).ok()?)
}

impl fmt::Display for Quantity {
    /// The canonical form Kubernetes prints (`1.5` → `1500m`, `1.5Gi` →
    /// `1536Mi`, `1000m` → `1`). Binary amounts below 1024 in magnitude, or
    /// with a fraction, print as decimal, as apimachinery's
    /// `CanonicalizeBytes` does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let binary = self.format == Format::BinarySi
            && self.nanos.abs() >= 1024 * NANOS_PER_UNIT
            && self.nanos % NANOS_PER_UNIT == 0;
        if !binary {
            let format = match self.format {
                Format::DecimalExponent => Format::DecimalExponent,
                _ => Format::DecimalSi,
            };
            return self.fmt_decimal(f, format);
        }
        let mut units = self.nanos / NANOS_PER_UNIT;
        let mut power = 0;
        while power < 6 && units.abs() >= 1024 && units % 1024 == 0 {
            units /= 1024;
            power += 1;
        }
        let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
        write!(f, "{units}{suffix}")
    }
}

impl Default for Quantity {
    /// Zero, as an absent request or limit counts.
    fn default() -> Self {
        Quantity::ZERO
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse(text)
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.nanos.hash(state);
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn values_of_common_quantities() {
        // (text, value(), milli_value())
        let cases: &[(&str, i64, i64)] = &[
            ("500m", 1, 500),
            ("0.5", 1, 500),
            ("1", 1, 1000),
            ("1.5", 2, 1500),
            ("1Gi", 1 << 30, 1000 << 30),
            ("1.5Gi", 3 << 29, 1500 << 30),
            ("1e3", 1000, 1_000_000),
            ("1E3", 1000, 1_000_000),
            ("100M", 100_000_000, 100_000_000_000),
            ("64Mi", 64 << 20, 64_000 << 20),
            ("10k", 10_000, 10_000_000),
            ("1n", 1, 1),
            ("1u", 1, 1),
            ("1m", 1, 1),
            ("1001u", 1, 2),
            ("0", 0, 0),
            ("0Mi", 0, 0),
            ("-1", -1, -1000),
            ("-1.5", -2, -1500),
            ("-1n", -1, -1),
            ("+2", 2, 2000),
            ("1E", 1_000_000_000_000_000_000, i64::MAX),
            ("9Ei", i64::MAX, i64::MAX),
            ("1e100", i64::MAX, i64::MAX),
            ("-1e100", i64::MIN, i64::MIN),
        ];
        for &(text, value, milli) in cases {
            let parsed = q(text);
            assert_eq!(parsed.value(), value, "value of {text}");
            assert_eq!(parsed.milli_value(), milli, "milli_value of {text}");
        }
    }

    #[test]
    fn parse_matches_apimachinery_amounts() {
        // Amount in nano-units, from apimachinery's TestQuantityParse table.
        let cases: &[(&str, i128)] = &[
            ("0n", 0),
            ("0Ki", 0),
            ("1Ki", 1024 * NANOS_PER_UNIT),
            ("3Ei", 3 * (1i128 << 60) * NANOS_PER_UNIT),
            ("5n", 5),
            ("50k", 50_000 * NANOS_PER_UNIT),
            ("300T", 300_000_000_000_000 * NANOS_PER_UNIT),
            ("1E-3", 1_000_000),
            ("1.3E+6", 1_300_000 * NANOS_PER_UNIT),
            ("100.035k", 100_035 * NANOS_PER_UNIT),
            ("0.0005k", 500_000_000),
            ("0.5e-2", 5_000_000),
            ("6.987654321G", 6_987_654_321 * NANOS_PER_UNIT),
            ("3.001n", 4),
            ("1.1E-9", 2),
            ("0.0000000001", 1),
            ("0.00000012345", 124),
            ("9223372036854775807Ki", MAX_BINARY_NANOS),
            ("12E", 12_000_000_000_000_000_000 * NANOS_PER_UNIT),
            ("100.035Ki", 102_435_840_000_000),
            ("0.5Mi", 524_288 * NANOS_PER_UNIT),
            ("0.05Gi", 53_687_091_200_000_000),
            ("0.000000000001Ki", 2),
            (".001", 1_000_000),
            (".0001k", 100_000_000),
            ("1.", NANOS_PER_UNIT),
            ("1.G", NANOS_PER_UNIT * 1_000_000_000),
            ("007", 7 * NANOS_PER_UNIT),
            // A fraction longer than any integer type still rounds once.
            ("0.0000000010000000000000000000000000000000000001", 2),
            ("0.0000000010000000000000000000000000000000000000", 1),
        ];
        for &(text, nanos) in cases {
            assert_eq!(q(text).nanos, nanos, "{text}");
            assert_eq!(q(&format!("-{text}")).nanos, -nanos, "-{text}");
            assert_eq!(q(&format!("+{text}")).nanos, nanos, "+{text}");
        }
    }

    #[test]
    fn parse_quirks_match_apimachinery() {
        // Go's scanner accepts a number part without digits as zero.
        for text in ["-", "+", ".", "-.", "m", "Ki", ".Ki", "00", "0.0"] {
            assert!(q(text).is_zero(), "{text}");
        }
        // ...unless the exponent forces its big-decimal path.
        let err = parse("e-10").unwrap_err();
        assert_eq!(err.kind(), QuantityErrorKind::Numeric);
        assert_eq!(err.to_string(), "unable to parse numeric part of quantity");
    }

    #[test]
    fn invalid_quantities_are_errors() {
        use QuantityErrorKind::*;
        let cases: &[(&str, QuantityErrorKind)] = &[
            ("", Format),
            ("10K", Suffix),
            ("1.5.5Gi", Format),
            ("1.1.M", Format),
            ("1+1.0M", Format),
            ("0.1mi", Suffix),
            ("0.1am", Format),
            ("aoeu", Format),
            (".5i", Suffix),
            ("1i", Suffix),
            ("-3.01i", Suffix),
            ("-3.01e-", Suffix),
            ("1e", Suffix),
            ("1EE", Suffix),
            ("1KiB", Format),
            (" 1", Format),
            ("1 ", Format),
            ("1e3.5", Format),
            ("1e99999999999999999999", Suffix),
        ];
        for &(text, kind) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.kind(), kind, "{text:?}");
        }
        assert_eq!(
            parse("").unwrap_err().to_string(),
            "quantities must match the regular expression \
             '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );
        assert_eq!(
            parse("10K").unwrap_err().to_string(),
            "unable to parse quantity's suffix"
        );
    }

    #[test]
    fn display_is_canonical() {
        let cases: &[(&str, &str)] = &[
            ("1.5", "1500m"),
            ("1.5Gi", "1536Mi"),
            ("1000m", "1"),
            ("0.5", "500m"),
            ("1Gi", "1Gi"),
            ("1024Mi", "1Gi"),
            ("300Mi", "300Mi"),
            ("1001Gi", "1001Gi"),
            ("1025", "1025"),
            ("5Ki", "5Ki"),
            ("1023Ki", "1023Ki"),
            ("0.5Ki", "512"),
            ("1000Ki", "1000Ki"),
            ("100.035Ki", "102435840m"),
            (".001Ki", "1024m"),
            (".000001Ki", "1024u"),
            (".000000001Ki", "1024n"),
            (".000000000001Ki", "2n"),
            ("1000M", "1G"),
            ("1G", "1G"),
            ("1080m", "1080m"),
            ("1.08", "1080m"),
            ("10.035M", "10035k"),
            ("100M", "100M"),
            ("0.001T", "1G"),
            ("1e3", "1e3"),
            ("1E3", "1e3"),
            ("1e9", "1e9"),
            (".001e12", "1e9"),
            ("0.001e0", "1e-3"),
            ("1000e-12", "1e-9"),
            ("80e-3", "80e-3"),
            ("12e1", "120"),
            ("00", "0"),
            ("0Ki", "0"),
            ("-0", "0"),
            ("1n", "1n"),
            ("0.00000108", "1080n"),
            ("1E", "1E"),
            ("12E", "12E"),
            ("10000000000000000000", "10E"),
            ("1000E", "1000E"),
            ("999999999999999999.1", "999999999999999999100m"),
            ("9223372036854775808", "9223372036854775808"),
            ("9Ei", "9223372036854775807"),
            ("7Ei", "7Ei"),
        ];
        for &(text, canonical) in cases {
            assert_eq!(q(text).to_string(), canonical, "{text}");
            if canonical != "0" {
                assert_eq!(q(&format!("-{text}")).to_string(), format!("-{canonical}"));
            }
            // The canonical form reads back as the same amount.
            assert_eq!(q(canonical), q(text), "{canonical} vs {text}");
        }
    }

    #[test]
    fn equality_and_order_compare_amounts() {
        assert_eq!(q("1k"), q("1000"));
        assert_eq!(q("1e3"), q("1000"));
        assert_eq!(q("1Ki"), q("1024"));
        assert!(q("999m") < q("1"));
        assert!(q("-1") < q("0"));
        assert_eq!("250m".parse::<Quantity>(), Ok(q("0.25")));
    }

    #[test]
    fn sums_are_exact() {
        let sum = q("100m").saturating_add(q("0.2")).saturating_add(q("1n"));
        assert_eq!(sum.nanos, 300_000_001);
        assert_eq!(sum.milli_value(), 301);
        assert_eq!(q("0").saturating_add(q("1Ki")).to_string(), "1Ki");
    }
}
