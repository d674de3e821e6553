//! Flat reason enums whose variants double as stable counter labels.

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
    };
}

pub(crate) use labelled_enum;

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
