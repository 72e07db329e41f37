//! Money: exact amounts in the minor units of an ISO 4217 currency (feature `money`).
//!
//! A [`Money`] is a whole number of minor units (cents for EUR, yen for JPY, fils for BHD) held
//! in an `i64`, with its [`Currency`]. Arithmetic is exact and checked: an overflow is
//! [`MoneyError::Overflow`] and combining two currencies is [`MoneyError::CurrencyMismatch`],
//! never a panic. Rounding happens only where a method takes a [`Rounding`] (parsing more
//! decimals than the currency has, multiplying by a fraction), half-even by default.
//! [`Money::allocate`] and [`Money::split`] share an amount out without losing a minor unit.
//!
//! The currency table (codes, names, numeric codes and minor-unit exponents) is the
//! `iso_currency` crate's, generated from the ISO 4217 list. Currencies without a minor unit
//! (gold `XAU`, special drawing rights `XDR`, the test code `XTS`, ...) are refused.
//!
//! # Serialised form
//!
//! An object with the amount as a decimal **string**, written with exactly the currency's
//! number of decimals, and the currency code:
//!
//! ```json
//! {"amount":"12.34","currency":"EUR"}
//! {"amount":"-5","currency":"JPY"}
//! {"amount":"1.250","currency":"BHD"}
//! ```
//!
//! A string keeps every digit in consumers whose JSON numbers are floating point. Reading
//! accepts fewer decimals than the currency has (`"12.3"` is 12.30 EUR) and refuses more
//! (`"12.345"` EUR is an error, never silently rounded), as well as unknown fields.
//!
//! ```
//! use dtx::money::{Currency, Money, Rounding};
//!
//! let price = Money::parse("19.99", Currency::EUR)?;
//! let total = price.checked_mul(3)?.checked_add(Money::from_minor(500, Currency::EUR))?;
//! assert_eq!(total.to_string(), "64.97 EUR");
//!
//! // Three parts that add up to the whole: the extra cent goes to the first.
//! let parts = Money::parse("100.00", Currency::EUR)?.split(3)?;
//! assert_eq!(parts.iter().map(Money::to_string).collect::<Vec<_>>(), ["33.34 EUR", "33.33 EUR", "33.33 EUR"]);
//!
//! // 19 % tax on 10.05, half-even: 1.9095 rounds to 1.91.
//! let tax = Money::parse("10.05", Currency::EUR)?.mul_div(19, 100, Rounding::HalfEven)?;
//! assert_eq!(tax.minor(), 191);
//!
//! assert!(price.checked_add(Money::from_minor(1, Currency::USD)).is_err());
//! assert_eq!(serde_json::to_string(&price)?, r#"{"amount":"19.99","currency":"EUR"}"#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Why a money operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MoneyError {
    /// Two amounts of different currencies were combined or compared.
    #[error("cannot combine {left} with {right}: the currencies differ")]
    CurrencyMismatch {
        /// The currency of the receiver.
        left: Currency,
        /// The currency of the argument.
        right: Currency,
    },
    /// The result does not fit in `i64` minor units.
    #[error("the amount overflows the range of i64 minor units")]
    Overflow,
    /// The code is not an ISO 4217 currency.
    #[error("`{0}` is not an ISO 4217 currency code")]
    UnknownCurrency(String),
    /// The currency has no minor unit (precious metals, special drawing rights, test codes).
    #[error("currency `{0}` has no minor unit, so it cannot be an amount of money here")]
    NoMinorUnit(&'static str),
    /// The text is not a decimal amount (`-?digits(.digits)?`, at most 38 digits) or not
    /// `amount CODE`.
    #[error("`{input}` is not a decimal amount: {reason}")]
    Parse {
        /// The text.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`Rounding::Exact`] was asked for, but the value needs rounding.
    #[error("{value} has more decimals than {currency} has ({exponent}): it would be rounded")]
    Inexact {
        /// The value, as written or computed.
        value: String,
        /// The currency.
        currency: Currency,
        /// The currency's number of decimals.
        exponent: u8,
    },
    /// [`Money::allocate`] was given no ratios, or ratios that sum to zero; or
    /// [`Money::split`] zero parts.
    #[error("cannot allocate by ratios that are empty or sum to zero")]
    InvalidRatios,
    /// [`Money::mul_div`] was given a zero denominator.
    #[error("division by zero")]
    DivisionByZero,
}

/// An ISO 4217 currency with a minor unit: its code, name and number of decimals.
///
/// ```
/// use dtx::money::Currency;
///
/// let dinar: Currency = "BHD".parse()?;
/// assert_eq!(dinar.exponent(), 3);
/// assert_eq!(Currency::JPY.exponent(), 0);
/// assert_eq!(Currency::EUR.code(), "EUR");
/// assert_eq!(Currency::EUR.numeric(), 978);
/// assert!(Currency::from_code("XAU").is_err(), "gold has no minor unit");
/// assert!(Currency::from_code("eur").is_err(), "codes are upper case");
/// # Ok::<(), dtx::money::MoneyError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(iso_currency::Currency);

macro_rules! currencies {
    ($($code:ident: $name:literal),* $(,)?) => {
        impl Currency {
            $(
                #[doc = concat!("The ", $name, " (`", stringify!($code), "`).")]
                pub const $code: Currency = Currency(iso_currency::Currency::$code);
            )*
        }
    };
}

currencies! {
    AUD: "Australian dollar",
    BHD: "Bahraini dinar",
    BRL: "Brazilian real",
    CAD: "Canadian dollar",
    CHF: "Swiss franc",
    CNY: "Chinese yuan",
    CZK: "Czech koruna",
    DKK: "Danish krone",
    EUR: "euro",
    GBP: "pound sterling",
    HKD: "Hong Kong dollar",
    INR: "Indian rupee",
    JPY: "Japanese yen",
    KRW: "South Korean won",
    KWD: "Kuwaiti dinar",
    MXN: "Mexican peso",
    NOK: "Norwegian krone",
    NZD: "New Zealand dollar",
    PLN: "Polish złoty",
    SEK: "Swedish krona",
    SGD: "Singapore dollar",
    USD: "United States dollar",
    ZAR: "South African rand",
}

impl Currency {
    /// The currency with this ISO 4217 alphabetic code (upper case, e.g. `"EUR"`).
    ///
    /// ```
    /// use dtx::money::{Currency, MoneyError};
    ///
    /// assert_eq!(Currency::from_code("CLF")?.exponent(), 4);
    /// assert_eq!(Currency::from_code("ABC"), Err(MoneyError::UnknownCurrency("ABC".into())));
    /// # Ok::<(), MoneyError>(())
    /// ```
    pub fn from_code(code: &str) -> Result<Self, MoneyError> {
        let iso = iso_currency::Currency::from_code(code)
            .ok_or_else(|| MoneyError::UnknownCurrency(code.to_owned()))?;
        if iso.exponent().is_none() {
            return Err(MoneyError::NoMinorUnit(iso.code()));
        }
        Ok(Self(iso))
    }

    /// The alphabetic code, e.g. `"EUR"`.
    ///
    /// ```
    /// assert_eq!(dtx::money::Currency::GBP.code(), "GBP");
    /// ```
    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// The English name, e.g. `"Euro"`.
    ///
    /// ```
    /// assert_eq!(dtx::money::Currency::EUR.name(), "Euro");
    /// ```
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The numeric code, e.g. 978 for EUR.
    ///
    /// ```
    /// assert_eq!(dtx::money::Currency::USD.numeric(), 840);
    /// ```
    pub fn numeric(self) -> u16 {
        self.0.numeric()
    }

    /// The number of decimals of the minor unit: 2 for EUR, 0 for JPY, 3 for BHD.
    ///
    /// ```
    /// assert_eq!(dtx::money::Currency::KWD.exponent(), 3);
    /// ```
    pub fn exponent(self) -> u8 {
        // `from_code` and the constants only hold currencies with a minor unit, of at most 4
        // decimals in ISO 4217.
        self.0
            .exponent()
            .and_then(|e| u8::try_from(e).ok())
            .unwrap_or(0)
    }

    /// How many minor units make one major unit: 100 for EUR, 1 for JPY.
    fn scale(self) -> i128 {
        10_i128.pow(u32::from(self.exponent()))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;

    fn from_str(code: &str) -> Result<Self, MoneyError> {
        Self::from_code(code)
    }
}

/// Serialised as its code, `"EUR"`.
impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_code(&code).map_err(serde::de::Error::custom)
    }
}

/// How a value between two minor units is rounded to one of them.
///
/// The default, [`Rounding::HalfEven`] (banker's rounding), does not drift up or down over
/// many roundings. "Up" and "down" are away from and toward zero; "ceiling" and "floor" toward
/// positive and negative infinity.
///
/// | value (EUR)   | `HalfEven` | `HalfUp` | `HalfDown` | `Up`  | `Down` | `Ceiling` | `Floor` |
/// |---------------|-----------:|---------:|-----------:|------:|-------:|----------:|--------:|
/// | 0.125         | 0.12       | 0.13     | 0.12       | 0.13  | 0.12   | 0.13      | 0.12    |
/// | 0.135         | 0.14       | 0.14     | 0.13       | 0.14  | 0.13   | 0.14      | 0.13    |
/// | -0.125        | -0.12      | -0.13    | -0.12      | -0.13 | -0.12  | -0.12     | -0.13   |
/// | 0.1251        | 0.13       | 0.13     | 0.13       | 0.13  | 0.12   | 0.13      | 0.12    |
///
/// [`Rounding::Exact`] refuses to round: [`MoneyError::Inexact`].
///
/// ```
/// use dtx::money::{Currency, Money, Rounding};
///
/// let parse = |s, r| Money::parse_rounded(s, Currency::EUR, r).map(|m| m.minor());
/// assert_eq!(parse("0.125", Rounding::HalfEven)?, 12);
/// assert_eq!(parse("0.125", Rounding::HalfUp)?, 13);
/// assert_eq!(parse("-0.125", Rounding::Floor)?, -13);
/// assert!(parse("0.125", Rounding::Exact).is_err());
/// # Ok::<(), dtx::money::MoneyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Rounding {
    /// To the nearest; a tie to the even neighbour (banker's rounding).
    #[default]
    HalfEven,
    /// To the nearest; a tie away from zero (commercial rounding).
    HalfUp,
    /// To the nearest; a tie toward zero.
    HalfDown,
    /// Away from zero.
    Up,
    /// Toward zero (truncation).
    Down,
    /// Toward positive infinity.
    Ceiling,
    /// Toward negative infinity.
    Floor,
    /// No rounding: a value between two minor units is [`MoneyError::Inexact`].
    Exact,
}

impl Rounding {
    /// `numerator / denominator` (`denominator > 0`) rounded to an integer; `None` when
    /// [`Rounding::Exact`] meets a remainder.
    fn divide(self, numerator: i128, denominator: i128) -> Option<i128> {
        debug_assert!(denominator > 0);
        let quotient = numerator / denominator;
        let remainder = numerator % denominator;
        if remainder == 0 {
            return Some(quotient);
        }
        let away = quotient + numerator.signum();
        let twice = remainder.unsigned_abs() * 2;
        let half = twice.cmp(&denominator.unsigned_abs());
        let round_away = match self {
            Self::Exact => return None,
            Self::Down => false,
            Self::Up => true,
            Self::Ceiling => numerator > 0,
            Self::Floor => numerator < 0,
            Self::HalfUp => half.is_ge(),
            Self::HalfDown => half.is_gt(),
            Self::HalfEven => half.is_gt() || (half.is_eq() && quotient % 2 != 0),
        };
        Some(if round_away { away } else { quotient })
    }
}

/// An amount of money: a whole number of minor units of one [`Currency`].
///
/// Equal when both the amount and the currency are; ordered only within one currency
/// (`partial_cmp` of two currencies is `None`; [`Money::try_cmp`] says why). See the
/// [module](self) for the serialised form and the rounding rules.
///
/// ```
/// use dtx::money::{Currency, Money};
///
/// let a = Money::from_minor(1_050, Currency::EUR);
/// assert_eq!(a.to_string(), "10.50 EUR");
/// assert_eq!("10.50 EUR".parse::<Money>()?, a);
/// assert!(a > Money::zero(Currency::EUR));
/// assert_eq!(a.partial_cmp(&Money::zero(Currency::USD)), None);
/// # Ok::<(), dtx::money::MoneyError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    /// `minor` minor units of `currency`: `from_minor(1234, EUR)` is 12.34 EUR.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// assert_eq!(Money::from_minor(1234, Currency::EUR).to_string(), "12.34 EUR");
    /// assert_eq!(Money::from_minor(1234, Currency::JPY).to_string(), "1234 JPY");
    /// ```
    pub const fn from_minor(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    /// Nothing, in `currency`.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// assert!(Money::zero(Currency::EUR).is_zero());
    /// ```
    pub const fn zero(currency: Currency) -> Self {
        Self::from_minor(0, currency)
    }

    /// `major` whole units: `from_major(12, EUR)` is 12.00 EUR.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// assert_eq!(Money::from_major(12, Currency::EUR)?.minor(), 1200);
    /// assert!(Money::from_major(i64::MAX, Currency::EUR).is_err());
    /// # Ok::<(), dtx::money::MoneyError>(())
    /// ```
    pub fn from_major(major: i64, currency: Currency) -> Result<Self, MoneyError> {
        let minor = i128::from(major) * currency.scale();
        Ok(Self::from_minor(to_i64(minor)?, currency))
    }

    /// Parses a decimal amount (`"12.34"`, `"-0.5"`, `"7"`) in `currency`, exactly: more
    /// decimals than the currency has is [`MoneyError::Inexact`].
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// assert_eq!(Money::parse("12.3", Currency::EUR)?.minor(), 1230);
    /// assert!(Money::parse("12.345", Currency::EUR).is_err());
    /// assert!(Money::parse("1e3", Currency::EUR).is_err());
    /// # Ok::<(), dtx::money::MoneyError>(())
    /// ```
    pub fn parse(amount: &str, currency: Currency) -> Result<Self, MoneyError> {
        Self::parse_rounded(amount, currency, Rounding::Exact)
    }

    /// Parses a decimal amount in `currency`, rounding extra decimals with `rounding`.
    ///
    /// ```
    /// use dtx::money::{Currency, Money, Rounding};
    /// let m = Money::parse_rounded("2.675", Currency::EUR, Rounding::default())?;
    /// assert_eq!(m.to_string(), "2.68 EUR");
    /// let m = Money::parse_rounded("2.665", Currency::EUR, Rounding::default())?;
    /// assert_eq!(m.to_string(), "2.66 EUR");
    /// # Ok::<(), dtx::money::MoneyError>(())
    /// ```
    pub fn parse_rounded(
        amount: &str,
        currency: Currency,
        rounding: Rounding,
    ) -> Result<Self, MoneyError> {
        let (digits, scale) = parse_decimal(amount)?;
        let exponent = u32::from(currency.exponent());
        let minor = if scale <= exponent {
            digits
                .checked_mul(10_i128.pow(exponent - scale))
                .ok_or(MoneyError::Overflow)?
        } else {
            rounding
                .divide(digits, 10_i128.pow(scale - exponent))
                .ok_or_else(|| MoneyError::Inexact {
                    value: amount.to_owned(),
                    currency,
                    exponent: currency.exponent(),
                })?
        };
        Ok(Self::from_minor(to_i64(minor)?, currency))
    }

    /// The amount in minor units: 1234 for 12.34 EUR.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// assert_eq!(Money::from_minor(-5, Currency::USD).minor(), -5);
    /// ```
    pub const fn minor(self) -> i64 {
        self.minor
    }

    /// The currency.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// assert_eq!(Money::zero(Currency::CHF).currency(), Currency::CHF);
    /// ```
    pub const fn currency(self) -> Currency {
        self.currency
    }

    /// The amount as a decimal string with the currency's decimals, without the code:
    /// `"12.34"`, `"-0.05"`, `"1234"` (JPY). The `amount` of the serialised form.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// assert_eq!(Money::from_minor(-5, Currency::EUR).amount(), "-0.05");
    /// assert_eq!(Money::from_minor(1250, Currency::BHD).amount(), "1.250");
    /// ```
    pub fn amount(self) -> String {
        let exponent = usize::from(self.currency.exponent());
        let scale = 10_u64.pow(u32::from(self.currency.exponent()));
        let magnitude = self.minor.unsigned_abs();
        let sign = if self.minor < 0 { "-" } else { "" };
        let whole = magnitude / scale;
        if exponent == 0 {
            format!("{sign}{whole}")
        } else {
            let fraction = magnitude % scale;
            format!("{sign}{whole}.{fraction:0exponent$}")
        }
    }

    /// Whether the amount is zero.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// assert!(!Money::from_minor(1, Currency::EUR).is_zero());
    /// ```
    pub const fn is_zero(self) -> bool {
        self.minor == 0
    }

    /// Whether the amount is below zero.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// assert!(Money::from_minor(-1, Currency::EUR).is_negative());
    /// ```
    pub const fn is_negative(self) -> bool {
        self.minor < 0
    }

    /// `self + other`, in one currency.
    ///
    /// ```
    /// use dtx::money::{Currency, Money, MoneyError};
    /// let eur = |m| Money::from_minor(m, Currency::EUR);
    /// assert_eq!(eur(150).checked_add(eur(75))?, eur(225));
    /// assert_eq!(
    ///     eur(1).checked_add(Money::from_minor(1, Currency::USD)),
    ///     Err(MoneyError::CurrencyMismatch { left: Currency::EUR, right: Currency::USD }),
    /// );
    /// assert_eq!(eur(i64::MAX).checked_add(eur(1)), Err(MoneyError::Overflow));
    /// # Ok::<(), MoneyError>(())
    /// ```
    pub fn checked_add(self, other: Self) -> Result<Self, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Self::from_minor(minor, self.currency))
    }

    /// `self - other`, in one currency.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// let eur = |m| Money::from_minor(m, Currency::EUR);
    /// assert_eq!(eur(100).checked_sub(eur(250))?, eur(-150));
    /// # Ok::<(), dtx::money::MoneyError>(())
    /// ```
    pub fn checked_sub(self, other: Self) -> Result<Self, MoneyError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Self::from_minor(minor, self.currency))
    }

    /// `-self`.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// assert_eq!(Money::from_minor(5, Currency::EUR).checked_neg()?.minor(), -5);
    /// assert!(Money::from_minor(i64::MIN, Currency::EUR).checked_neg().is_err());
    /// # Ok::<(), dtx::money::MoneyError>(())
    /// ```
    pub fn checked_neg(self) -> Result<Self, MoneyError> {
        let minor = self.minor.checked_neg().ok_or(MoneyError::Overflow)?;
        Ok(Self::from_minor(minor, self.currency))
    }

    /// `self * factor`: a unit price times a quantity.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// assert_eq!(Money::from_minor(1999, Currency::EUR).checked_mul(3)?.minor(), 5997);
    /// # Ok::<(), dtx::money::MoneyError>(())
    /// ```
    pub fn checked_mul(self, factor: i64) -> Result<Self, MoneyError> {
        let minor = self.minor.checked_mul(factor).ok_or(MoneyError::Overflow)?;
        Ok(Self::from_minor(minor, self.currency))
    }

    /// `self * numerator / denominator`, rounded to a minor unit with `rounding`: a
    /// percentage, a rate, a pro-rata share. Computed exactly before the one rounding.
    ///
    /// ```
    /// use dtx::money::{Currency, Money, Rounding};
    /// let net = Money::from_minor(999, Currency::EUR);
    /// // 7.5 % of 9.99 is 0.74925
    /// assert_eq!(net.mul_div(75, 1000, Rounding::HalfEven)?.minor(), 75);
    /// assert_eq!(net.mul_div(75, 1000, Rounding::Down)?.minor(), 74);
    /// assert!(net.mul_div(1, 0, Rounding::HalfEven).is_err());
    /// # Ok::<(), dtx::money::MoneyError>(())
    /// ```
    pub fn mul_div(
        self,
        numerator: i64,
        denominator: i64,
        rounding: Rounding,
    ) -> Result<Self, MoneyError> {
        if denominator == 0 {
            return Err(MoneyError::DivisionByZero);
        }
        // |minor * numerator| < 2^126 and |denominator| <= 2^63: no overflow in i128.
        let mut product = i128::from(self.minor) * i128::from(numerator);
        let mut denominator = i128::from(denominator);
        if denominator < 0 {
            product = -product;
            denominator = -denominator;
        }
        let minor = rounding
            .divide(product, denominator)
            .ok_or_else(|| MoneyError::Inexact {
                value: format!("{self} * {numerator} / {denominator}"),
                currency: self.currency,
                exponent: self.currency.exponent(),
            })?;
        Ok(Self::from_minor(to_i64(minor)?, self.currency))
    }

    /// The sum of `amounts`, all in `currency` (zero when there are none).
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// let eur = |m| Money::from_minor(m, Currency::EUR);
    /// assert_eq!(Money::sum(Currency::EUR, [eur(1), eur(2), eur(3)])?, eur(6));
    /// # Ok::<(), dtx::money::MoneyError>(())
    /// ```
    pub fn sum(
        currency: Currency,
        amounts: impl IntoIterator<Item = Self>,
    ) -> Result<Self, MoneyError> {
        amounts
            .into_iter()
            .try_fold(Self::zero(currency), Self::checked_add)
    }

    /// Compares two amounts of one currency.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// use std::cmp::Ordering;
    /// let eur = Money::from_minor(1, Currency::EUR);
    /// assert_eq!(eur.try_cmp(Money::zero(Currency::EUR))?, Ordering::Greater);
    /// assert!(eur.try_cmp(Money::zero(Currency::USD)).is_err());
    /// # Ok::<(), dtx::money::MoneyError>(())
    /// ```
    pub fn try_cmp(self, other: Self) -> Result<Ordering, MoneyError> {
        self.same_currency(other)?;
        Ok(self.minor.cmp(&other.minor))
    }

    /// Shares the amount out by `ratios` without losing a minor unit: the parts always add up
    /// to `self`, and each is within one minor unit of its exact share.
    ///
    /// Largest remainder: each part first gets its exact share rounded toward zero; the minor
    /// units left over go, one each, to the parts with the largest remainders, ties to the
    /// earlier part. A zero ratio gets nothing. A negative amount is shared out like its
    /// magnitude, each part negated. The result is the same for the same input, always.
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// let total = Money::from_minor(1000, Currency::EUR);
    /// let parts = total.allocate(&[1, 1, 1])?;
    /// assert_eq!(parts.iter().map(|p| p.minor()).collect::<Vec<_>>(), [334, 333, 333]);
    /// // 70 / 30 of 0.05: 3.5 and 1.5 cents, a tie; the first part gets the left-over cent.
    /// let parts = Money::from_minor(5, Currency::EUR).allocate(&[70, 30])?;
    /// assert_eq!(parts.iter().map(|p| p.minor()).collect::<Vec<_>>(), [4, 1]);
    /// assert!(total.allocate(&[]).is_err());
    /// # Ok::<(), dtx::money::MoneyError>(())
    /// ```
    pub fn allocate(self, ratios: &[u64]) -> Result<Vec<Self>, MoneyError> {
        let total: u128 = ratios.iter().map(|&r| u128::from(r)).sum();
        if total == 0 {
            return Err(MoneyError::InvalidRatios);
        }
        let magnitude = u128::from(self.minor.unsigned_abs());
        // magnitude <= 2^63 and each ratio < 2^64: the products fit in u128.
        let mut parts: Vec<u128> = Vec::with_capacity(ratios.len());
        let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(ratios.len());
        for (index, &ratio) in ratios.iter().enumerate() {
            let exact = magnitude * u128::from(ratio);
            parts.push(exact / total);
            remainders.push((exact % total, index));
        }
        let left_over = magnitude - parts.iter().sum::<u128>();
        // Largest remainder first; among equal remainders, the earlier part first.
        remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let left_over = usize::try_from(left_over).map_err(|_| MoneyError::Overflow)?;
        for &(_, index) in remainders.iter().take(left_over) {
            parts[index] += 1;
        }
        parts
            .into_iter()
            .map(|part| {
                let part = i128::try_from(part).map_err(|_| MoneyError::Overflow)?;
                let signed = if self.minor < 0 { -part } else { part };
                Ok(Self::from_minor(to_i64(signed)?, self.currency))
            })
            .collect()
    }

    /// Splits the amount into `parts` near-equal parts that add up to it: the first ones get
    /// one minor unit more when it does not divide evenly. See [`Money::allocate`].
    ///
    /// ```
    /// use dtx::money::{Currency, Money};
    /// let parts = Money::from_minor(-10, Currency::EUR).split(3)?;
    /// assert_eq!(parts.iter().map(|p| p.minor()).collect::<Vec<_>>(), [-4, -3, -3]);
    /// assert!(Money::from_minor(10, Currency::EUR).split(0).is_err());
    /// # Ok::<(), dtx::money::MoneyError>(())
    /// ```
    pub fn split(self, parts: usize) -> Result<Vec<Self>, MoneyError> {
        self.allocate(&vec![1; parts])
    }

    fn same_currency(self, other: Self) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }
}

fn to_i64(minor: i128) -> Result<i64, MoneyError> {
    i64::try_from(minor).map_err(|_| MoneyError::Overflow)
}

/// `-?digits(.digits)?` as (all digits as one integer, number of decimals).
fn parse_decimal(input: &str) -> Result<(i128, u32), MoneyError> {
    let error = |reason| MoneyError::Parse {
        input: input.to_owned(),
        reason,
    };
    let (negative, unsigned) = match input.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, input),
    };
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (unsigned, ""),
    };
    if whole.is_empty() {
        return Err(error("expected digits before the decimal point"));
    }
    if unsigned.contains('.') && fraction.is_empty() {
        return Err(error("expected digits after the decimal point"));
    }
    if !whole
        .bytes()
        .chain(fraction.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return Err(error("expected `-`, digits and at most one `.`"));
    }
    let significant = whole.trim_start_matches('0').len() + fraction.len();
    if significant > 38 {
        return Err(error("more than 38 digits"));
    }
    let mut digits: i128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        // At most 38 significant digits: below 10^38 < i128::MAX.
        digits = digits * 10 + i128::from(b - b'0');
    }
    let scale = u32::try_from(fraction.len()).map_err(|_| error("more than 38 digits"))?;
    Ok((if negative { -digits } else { digits }, scale))
}

impl PartialOrd for Money {
    /// Amounts of one currency compare by value; of two currencies, not at all (`None`).
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.try_cmp(*other).ok()
    }
}

/// `12.34 EUR`, `-0.05 USD`, `1234 JPY`.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount(), self.currency)
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses the [`Display`](fmt::Display) form, `12.34 EUR`, exactly.
impl FromStr for Money {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, MoneyError> {
        let (amount, code) = s.split_once(' ').ok_or_else(|| MoneyError::Parse {
            input: s.to_owned(),
            reason: "expected `<amount> <currency code>`, e.g. `12.34 EUR`",
        })?;
        Self::parse(amount, Currency::from_code(code)?)
    }
}

/// `{"amount":"12.34","currency":"EUR"}`: see the [module](self).
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut state = serializer.serialize_struct("Money", 2)?;
        state.serialize_field("amount", &self.amount())?;
        state.serialize_field("currency", &self.currency)?;
        state.end()
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "Money", deny_unknown_fields)]
        struct Repr<'a> {
            #[serde(borrow)]
            amount: std::borrow::Cow<'a, str>,
            currency: Currency,
        }
        let repr = Repr::deserialize(deserializer)?;
        Self::parse(&repr.amount, repr.currency).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "schema")]
mod json_schema {
    use super::{Currency, Money};
    use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
    use std::borrow::Cow;

    /// An ISO 4217 code.
    impl JsonSchema for Currency {
        fn schema_name() -> Cow<'static, str> {
            "Currency".into()
        }

        fn schema_id() -> Cow<'static, str> {
            "dtx::money::Currency".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            json_schema!({
                "type": "string",
                "pattern": "^[A-Z]{3}$",
                "description": "An ISO 4217 alphabetic currency code.",
            })
        }
    }

    /// The serialised form: `{"amount":"12.34","currency":"EUR"}`.
    impl JsonSchema for Money {
        fn schema_name() -> Cow<'static, str> {
            "Money".into()
        }

        fn schema_id() -> Cow<'static, str> {
            "dtx::money::Money".into()
        }

        fn json_schema(generator: &mut SchemaGenerator) -> Schema {
            let currency = generator.subschema_for::<Currency>();
            json_schema!({
                "type": "object",
                "description": "An amount of money: a decimal string with the currency's number of decimals, and an ISO 4217 currency code.",
                "properties": {
                    "amount": {
                        "type": "string",
                        "pattern": "^-?[0-9]+(\\.[0-9]+)?$",
                    },
                    "currency": currency,
                },
                "required": ["amount", "currency"],
                "additionalProperties": false,
            })
        }
    }
}
