//! Fixed sets of choices (solvers, recipes, storage types, devices, data sets) with the names
//! files and command lines spell them by. The library names its choices; a front end (the CLI's
//! flags, the page's menus) turns names into values through [`Named::from_name`], so the library
//! knows no command-line parser.

pub trait Named: Copy + 'static {
    /// Every value, in the order a front end lists them.
    const ALL: &'static [Self];

    fn name(self) -> &'static str;

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == name)
    }
}

/// Implements [`Named`] for a fieldless enum from `Variant => "name"` pairs.
#[macro_export]
macro_rules! named {
    ($t:ty { $($v:ident => $n:literal),+ $(,)? }) => {
        impl $crate::named::Named for $t {
            const ALL: &'static [Self] = &[$(<$t>::$v),+];
            fn name(self) -> &'static str {
                match self { $(<$t>::$v => $n),+ }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Named;

    #[test]
    fn every_choice_round_trips_by_name() {
        fn check<T: Named + PartialEq + std::fmt::Debug>() {
            for &v in T::ALL {
                assert_eq!(T::from_name(v.name()), Some(v));
            }
            assert_eq!(T::from_name("no such choice"), None);
        }
        check::<crate::mnist::flow::Solver>();
        check::<crate::mnist::data::DatasetKind>();
        check::<crate::artifact::Dtype>();
        check::<crate::device::DeviceChoice>();
        #[cfg(not(target_arch = "wasm32"))]
        check::<crate::mnist::train::Recipe>();
    }
}
