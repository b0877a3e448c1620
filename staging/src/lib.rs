//! standin-staging
