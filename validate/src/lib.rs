//! standin-validate
