//! Shared by the ordinary test files.

use std::sync::Once;

/// The payload of the panics tests inject into cycles on purpose.
pub(crate) const INJECTED: &str = "injected test panic";

/// A panic payload whose own `Drop` panics (with `INJECTED`): whoever
/// disposes of it must contain that second panic too.
#[allow(
    dead_code,
    reason = "not every test binary raises it; every one's hook knows it"
)]
pub(crate) struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        std::panic::panic_any(INJECTED);
    }
}

/// Keeps the std panic hook from printing the panics tests inject on purpose
/// (`INJECTED`, the `u32` payloads of the non-string-payload test and
/// `PanicsWhenDropped`); every other panic (a failed assertion) is printed as
/// usual.
pub(crate) fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info.payload().downcast_ref::<&str>() == Some(&INJECTED)
                || info.payload().downcast_ref::<u32>().is_some()
                || info.payload().is::<PanicsWhenDropped>();
            if !injected {
                previous(info);
            }
        }));
    });
}
