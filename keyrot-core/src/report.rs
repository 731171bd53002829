//! Showing an error with its causes.

use std::error::Error;
use std::fmt;

/// Displays an error followed by every cause in its [`Error::source`] chain, each once:
/// `outer: cause: root cause`. keyrot's errors print only their own message and return
/// their cause from `source()`, so a reporter (this one, `anyhow`, `tracing`'s error
/// formatting) shows each cause exactly once.
///
/// ```
/// # use keyrot_core::{ErrorChain, Policy};
/// let e = Policy::builder().with_lock_ttl(std::time::Duration::ZERO).build().unwrap_err();
/// assert_eq!(ErrorChain(&e).to_string(), e.to_string()); // no causes below a policy error
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}
