//! One definition for each list of named choices (CAM methods, layers, colour maps): the
//! `named_enum!` macro writes the variant list, the names, `Display`, `FromStr` (case-insensitive,
//! with a message that lists what is allowed) and the serde names from a single table.

/// Declares a fieldless enum whose variants each have one wire name, and optionally aliases
/// that are accepted too (`Variant => "name" | "alias"`). Names are matched ignoring ASCII case,
/// and nothing else: no trimming.
///
/// ```ignore
/// named_enum! {
///     /// Doc of the enum.
///     pub enum Colormap("colormap") {
///         #[default] Jet => "jet",
///         Gray => "gray",
///     }
/// }
/// ```
///
/// The string after the enum's name is the noun used in error messages ("unknown colormap ...").
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($noun:literal) {
            $( $(#[$vmeta:meta])* $variant:ident => $wire:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];

            /// The name clients send and answers carry.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $wire),+
                }
            }

            /// Further names a variant is accepted under (never given in answers).
            pub fn aliases(self) -> &'static [&'static str] {
                match self {
                    $($name::$variant => &[$($alias),*]),+
                }
            }

            /// Whether `s` names this variant, ignoring ASCII case.
            fn is_named(self, s: &str) -> bool {
                self.name().eq_ignore_ascii_case(s)
                    || self.aliases().iter().any(|a| a.eq_ignore_ascii_case(s))
            }

            /// The names of [`Self::ALL`], comma-separated, for messages.
            pub fn allowed() -> String {
                Self::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.is_named(s))
                    .ok_or_else(|| {
                        format!(concat!("unknown ", $noun, " {:?}; allowed: {}"), s, Self::allowed())
                    })
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.name() == s || v.aliases().contains(&&*s))
                    .ok_or_else(|| ::serde::de::Error::unknown_variant(&s, &[$($wire),+]))
            }
        }
    };
}

pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    named_enum! {
        /// A test enum.
        pub enum Fruit("fruit") {
            #[default]
            Apple => "apple",
            StarFruit => "star++" | "starpp",
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_allowed_ones() {
        assert_eq!(Fruit::ALL, [Fruit::Apple, Fruit::StarFruit]);
        assert_eq!(Fruit::default(), Fruit::Apple);
        assert_eq!("STAR++".parse::<Fruit>(), Ok(Fruit::StarFruit));
        assert_eq!("StarPP".parse::<Fruit>(), Ok(Fruit::StarFruit));
        assert!("star  ".parse::<Fruit>().is_err());
        assert!(" apple".parse::<Fruit>().is_err());
        assert_eq!(Fruit::StarFruit.aliases(), &["starpp"]);
        assert_eq!(Fruit::StarFruit.to_string(), "star++");
        let e = "pear".parse::<Fruit>().unwrap_err();
        assert_eq!(e, "unknown fruit \"pear\"; allowed: apple, star++");
        assert_eq!(
            serde_json::to_string(&Fruit::StarFruit).unwrap(),
            "\"star++\""
        );
        assert_eq!(
            serde_json::from_str::<Fruit>("\"apple\"").unwrap(),
            Fruit::Apple
        );
        assert!(serde_json::from_str::<Fruit>("\"Apple\"").is_err());
    }
}
