//! A panic inside the engine is reported as an error, never as a crash with a backtrace.
//!
//! redb panics on some damaged files (`unreachable!` in its B-tree code, issue 22) instead
//! of returning `Corrupted`. Every call into the engine on a damaged or failing file —
//! open, integrity check, load, commit, export — runs inside [`catch`]: a panic becomes
//! `Err(message)`, and the default hook's report (message and backtrace on stderr) is
//! suppressed for that call only, so the caller prints one line naming the file.
//!
//! The panic hook is process-wide; ours is installed once and stays quiet only on a thread
//! that is inside [`catch`] (a thread-local flag), handing every other panic to the hook
//! that was there before.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while this thread runs inside [`catch`].
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// The message and place of the last panic caught on this thread.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

fn install_hook() {
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let place = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                CAUGHT.with(|c| *c.borrow_mut() = Some(format!("{msg}{place}")));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside it is returned as `Err("the storage engine panicked: MSG at
/// FILE:LINE")` and prints nothing. Nested calls are fine.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let was_quiet = QUIET.with(|q| q.replace(true));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was_quiet));
    r.map_err(|_| {
        let what = CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| "unknown panic".to_owned());
        format!("the storage engine panicked: {}", one_line(&what))
    })
}

/// `s` on one line (newlines and tabs become spaces), for one-line error reports.
pub(crate) fn one_line(s: &str) -> String {
    s.split(['\n', '\r', '\t'])
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_place_and_others_are_untouched() {
        let err = catch(|| -> u32 { panic!("boom\nsecond line") }).unwrap_err();
        assert!(
            err.starts_with("the storage engine panicked: boom second line at "),
            "{err}"
        );
        assert!(err.contains("guard.rs"), "{err}");
        assert_eq!(catch(|| 7), Ok(7));
        // Nested: the outer call stays quiet after the inner one returns.
        let outer = catch(|| {
            let _ = catch(|| panic!("inner"));
            panic!("outer")
        })
        .unwrap_err();
        assert!(outer.contains("outer"), "{outer}");
        // Outside `catch`, a panic is still a panic (caught here by the test only).
        assert!(std::panic::catch_unwind(|| panic!("loud")).is_err());
    }
}
