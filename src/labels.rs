//! Flat reason enums whose variants double as stable counter labels, and the counter
//! table they index: an array, so counting a reason is one add, never a string lookup.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A closed set of counter labels: each value has a position below `COUNT`.
pub trait Labels: Copy {
    /// How many labels the set has.
    const COUNT: usize;
    /// This value's position, below `COUNT`.
    fn index(self) -> usize;
    /// This value's label.
    fn label(self) -> &'static str;
    /// The label at a position (None from `COUNT` on).
    fn label_at(i: usize) -> Option<&'static str>;
}

/// Define a `Copy` enum whose every variant has a stable snake_case label: `as_str`
/// gives it (counters and stats use it as their key), `Display` prints it, and `ALL`
/// lists the variants so a test can check the labels are unique and well formed.
macro_rules! labelled_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Return the stable snake_case name, usable as a counter label.
            pub const fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::error::Error for $name {}

        impl $crate::labels::Labels for $name {
            const COUNT: usize = $name::ALL.len();

            fn index(self) -> usize {
                self as usize
            }

            fn label(self) -> &'static str {
                self.as_str()
            }

            fn label_at(i: usize) -> Option<&'static str> {
                $name::ALL.get(i).map($name::as_str)
            }
        }
    };
}

pub(crate) use labelled_enum;

/// The label of a value a label set has no position for.
const UNLABELLED: &str = "unlabelled";

/// Two label sets counted in one table: the first's labels, then the second's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined<A, B> {
    First(A),
    Second(B),
}

impl<A: Labels, B: Labels> Labels for Joined<A, B> {
    const COUNT: usize = A::COUNT + B::COUNT;

    fn index(self) -> usize {
        match self {
            Joined::First(a) => a.index(),
            Joined::Second(b) => A::COUNT + b.index(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Joined::First(a) => a.label(),
            Joined::Second(b) => b.label(),
        }
    }

    fn label_at(i: usize) -> Option<&'static str> {
        match i.checked_sub(A::COUNT) {
            None => A::label_at(i),
            Some(j) => B::label_at(j),
        }
    }
}

/// Counts by label: one slot per label of the set, and one for a value whose position
/// is past the set (a label set that forgot a value: counted, never a panic). It reads
/// and serializes as a map of the labels counted so far (a label at zero is absent), as
/// operators see it.
#[derive(Clone, PartialEq, Eq)]
pub struct Tally<L> {
    counts: Box<[u64]>,
    set: PhantomData<L>,
}

impl<L: Labels> Default for Tally<L> {
    fn default() -> Self {
        Tally {
            counts: vec![0; L::COUNT + 1].into_boxed_slice(),
            set: PhantomData,
        }
    }
}

impl<L: Labels> Tally<L> {
    /// Count one.
    pub fn add(&mut self, l: impl Into<L>) {
        *self.slot(l.into()) += 1;
    }

    /// Set a count kept as a running total elsewhere.
    pub fn set(&mut self, l: impl Into<L>, n: u64) {
        *self.slot(l.into()) = n;
    }

    fn slot(&mut self, l: L) -> &mut u64 {
        let i = l.index().min(L::COUNT);
        &mut self.counts[i]
    }

    fn label_of(i: usize) -> &'static str {
        L::label_at(i).unwrap_or(UNLABELLED)
    }

    /// The labels counted so far with their counts, in the set's order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(i, &n)| (Self::label_of(i), n))
    }

    /// The count of a label, if it was counted (for readers: a scan of the labels).
    pub fn get(&self, label: &str) -> Option<&u64> {
        let i = (0..=L::COUNT).find(|&i| Self::label_of(i) == label)?;
        self.counts.get(i).filter(|n| **n > 0)
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&n| n == 0)
    }

    /// All counts together.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Add another table's counts (merging the workers' counters).
    pub fn merge(&mut self, o: &Tally<L>) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
    }
}

impl<L: Labels> std::ops::Index<&str> for Tally<L> {
    type Output = u64;

    /// The count of a label; 0 if it was never counted.
    fn index(&self, label: &str) -> &u64 {
        self.get(label).unwrap_or(&0)
    }
}

impl<L: Labels> std::fmt::Debug for Tally<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<L: Labels> Serialize for Tally<L> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de, L: Labels> Deserialize<'de> for Tally<L> {
    /// Labels this build does not know (from another version) are left out.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, u64>::deserialize(d)?;
        let mut t = Tally::default();
        for (i, slot) in t.counts.iter_mut().enumerate() {
            *slot = map.get(Self::label_of(i)).copied().unwrap_or(0);
        }
        Ok(t)
    }
}

/// Assert that a label set's labels are unique snake_case words, and that each value
/// sits at the position of its own label (for the sets' tests).
#[cfg(test)]
pub(crate) fn assert_label_set<L: Labels + std::fmt::Debug>(values: &[L]) {
    assert_labels((0..L::COUNT).map(|i| L::label_at(i).expect("a label below COUNT")));
    assert_eq!(L::label_at(L::COUNT), None);
    for v in values {
        assert_eq!(L::label_at(v.index()), Some(v.label()), "{v:?}");
    }
}

/// Assert that labels are unique snake_case words (for the enums' tests).
#[cfg(test)]
pub(crate) fn assert_labels(labels: impl IntoIterator<Item = &'static str>) {
    let mut seen = std::collections::HashSet::new();
    for l in labels {
        assert!(seen.insert(l), "{l} twice");
        assert!(
            !l.is_empty() && l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{l}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    labelled_enum! {
        enum Colour {
            Red => "red",
            Green => "green",
        }
    }

    labelled_enum! {
        enum Size {
            Small => "small",
        }
    }

    type Both = Joined<Colour, Size>;

    /// A set that forgets to give one of its values a label.
    #[derive(Debug, Clone, Copy)]
    struct Forgetful(usize);

    impl Labels for Forgetful {
        const COUNT: usize = 1;
        fn index(self) -> usize {
            self.0
        }
        fn label(self) -> &'static str {
            "only"
        }
        fn label_at(i: usize) -> Option<&'static str> {
            (i == 0).then_some("only")
        }
    }

    #[test]
    fn joined_sets_count_in_one_table_in_order() {
        let all = [
            Both::First(Colour::Red),
            Both::First(Colour::Green),
            Both::Second(Size::Small),
        ];
        assert_label_set(&all);
        assert_eq!(Both::COUNT, 3);
        assert_eq!(Both::Second(Size::Small).index(), 2);
        let mut t = Tally::<Both>::default();
        assert!(t.is_empty());
        t.add(Both::Second(Size::Small));
        t.add(Both::First(Colour::Green));
        t.add(Both::First(Colour::Green));
        assert_eq!(t.iter().collect::<Vec<_>>(), [("green", 2), ("small", 1)]);
        assert_eq!(
            (t.get("green"), t.get("red"), t["red"]),
            (Some(&2), None, 0)
        );
        assert_eq!(t.total(), 3);
        let mut sum = t.clone();
        sum.merge(&t);
        sum.set(Both::First(Colour::Red), 7);
        assert_eq!(format!("{sum:?}"), r#"{"red": 7, "green": 4, "small": 2}"#);
    }

    #[test]
    fn a_tally_reads_and_writes_as_a_map_of_what_was_counted() {
        let mut t = Tally::<Colour>::default();
        t.add(Colour::Green);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"green":1}"#);
        let back: Tally<Colour> =
            serde_json::from_str(r#"{"green":1,"from_a_newer_build":4}"#).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn a_value_without_a_label_is_counted_as_unlabelled_not_a_panic() {
        let mut t = Tally::<Forgetful>::default();
        t.add(Forgetful(0));
        t.add(Forgetful(5));
        assert_eq!(
            t.iter().collect::<Vec<_>>(),
            [("only", 1), ("unlabelled", 1)]
        );
    }
}
