//! Progress bars (indicatif) for runs; drawn on stderr when it is a terminal.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting `total` in milliseconds, labelled `prefix`; hidden unless
/// `visible` (indicatif also draws nothing when stderr is not a terminal).
pub fn progress_bar(total: Duration, prefix: &str, visible: bool) -> ProgressBar {
    let len = u64::try_from(total.as_millis()).unwrap_or(u64::MAX);
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:>16} [{elapsed_precise}] {bar:30} {percent:>3}% eta {eta:>4} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(prefix.to_owned());
    bar
}
