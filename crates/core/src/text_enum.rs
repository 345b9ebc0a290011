//! States stored as text: one enum per column, whose variants are exactly
//! the values the column may hold. The text is the wire format too, so it
//! never changes once released.

/// Parses a state stored as text; the error names what was found.
pub(crate) fn parse_state<T: Copy>(what: &str, s: &str, all: &[(T, &str)]) -> Result<T, String> {
    all.iter().find(|(_, name)| *name == s).map(|(v, _)| *v).ok_or_else(|| format!("unknown {what} {s:?}"))
}

/// Declares an enum stored as text: `as_str`, `FromStr`, `Display`, `ALL`,
/// `NAMES`, and comparisons with `str`/`String` both ways, so a row's
/// `String` field compares with a variant directly.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            pub const ALL: &'static [($name, &'static str)] = &[$(($name::$variant, $text)),+];
            /// Every value's text, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];
            /// The text stored in the database and shown to clients.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $crate::text_enum::parse_state($what, s, Self::ALL)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool { self.as_str() == other }
        }
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool { self.as_str() == *other }
        }
        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool { self == other.as_str() }
        }
        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool { self == other.as_str() }
        }
        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool { *self == other.as_str() }
        }
    };
}
pub(crate) use text_enum;
