//! Intentionally empty: this package only pins a source download.
