//! standin-agent
