//! Value parsers shared by the commands' flags: bad numbers are usage errors naming the flag.

/// A count flag: 0 would draw nothing (or, for steps, not integrate at all).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a whole number: {e}")),
    }
}

/// A scale flag: NaN or infinity would turn every sample into NaN.
pub fn finite(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("must be a finite number, got {v}")),
        Err(e) => Err(format!("not a number: {e}")),
    }
}

/// A count flag with an upper bound, checked before anything is allocated from it (a typo such
/// as `--per-digit 1000000000` would otherwise abort the process on the allocation).
pub fn count(max: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s| match at_least_one(s)? {
        n if n > max => Err(format!("{n} is more than the {max} this command allows")),
        n => Ok(n),
    }
}

/// A rate, tolerance or size that must be a positive finite number.
pub fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(v) => Err(format!("must be a positive finite number, got {v}")),
        Err(e) => Err(format!("not a number: {e}")),
    }
}

/// As [`positive`], for the f32 flags.
pub fn positive_f32(s: &str) -> Result<f32, String> {
    positive(s).map(|v| v as f32).and_then(|v| if v > 0.0 && v.is_finite() { Ok(v) } else { Err(format!("{s} is out of range")) })
}

/// A finite number that may be 0 (a weight decay, a noise level), not negative.
pub fn non_negative(s: &str) -> Result<f32, String> {
    match finite(s)? {
        v if v < 0.0 => Err(format!("must not be negative, got {v}")),
        v => Ok(v),
    }
}

/// A guidance scale: finite and in [0, 100] (the course uses 5 and 7; beyond 100 every sample
/// saturates, so such a value is a typo).
pub fn guidance(s: &str) -> Result<f32, String> {
    match finite(s)? {
        v if !(0.0..=100.0).contains(&v) => Err(format!("must be in [0, 100], got {v}")),
        v => Ok(v),
    }
}

/// A probability in [0, 1].
pub fn probability(s: &str) -> Result<f32, String> {
    match finite(s)? {
        v if !(0.0..=1.0).contains(&v) => Err(format!("must be in [0, 1], got {v}")),
        v => Ok(v),
    }
}

/// A Gaussian kernel size: odd (centred on the pixel), 1..=127 (the image is 64 wide).
pub fn odd_kernel(s: &str) -> Result<usize, String> {
    match count(127)(s)? {
        k if k % 2 == 0 => Err(format!("must be odd, got {k}")),
        k => Ok(k),
    }
}

/// A duration in seconds: positive, at most an hour (a benchmark, not a soak test).
pub fn seconds(s: &str) -> Result<f64, String> {
    match positive(s)? {
        v if v > 3600.0 => Err(format!("{v} is more than an hour (3600)")),
        v => Ok(v),
    }
}

/// One of the library's named choices (solver, recipe, storage type, device, ...): clap lists
/// the names in --help and refuses any other.
pub fn choice<T: diffusion_playground::named::Named + Send + Sync>() -> impl clap::builder::TypedValueParser<Value = T> {
    choice_of(T::ALL)
}

/// A flag naming one of `values` (a subset of a library choice: the dtypes a command takes).
pub fn choice_of<T: diffusion_playground::named::Named + Send + Sync>(values: &'static [T]) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(values.iter().map(|v| v.name())).map(|s| T::from_name(&s).expect("clap only passes listed names"))
}
