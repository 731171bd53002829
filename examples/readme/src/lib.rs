//! Every ` ```rust ` block of the project README, compiled as a doc test so the README
//! cannot drift from the code.
#![doc = include_str!("../../../README.md")]
