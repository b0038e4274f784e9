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
