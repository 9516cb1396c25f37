//! Training progress on the console.

use delo::train::Event;
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar per task (loss, lr, samples/s, ETA) on a terminal; plain log lines every
/// 10 steps and at each task's end when stderr is not a terminal.
pub(super) fn progress_reporter() -> impl FnMut(Event) {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let mut bar: Option<(usize, ProgressBar)> = None;
    move |ev| match ev {
        Event::Step {
            task,
            step,
            total,
            loss,
            lr,
            samples_per_second,
        } if tty => {
            if bar.as_ref().is_none_or(|(t, _)| *t != task) {
                bar = Some((task, task_bar(task, total)));
            }
            let (_, b) = bar.as_ref().expect("just set");
            b.set_position(step as u64);
            b.set_message(format!(
                "loss {loss:.4} lr {lr:.2e} {samples_per_second:.1} samples/s"
            ));
            if step == total {
                b.finish();
            }
        }
        ev @ Event::Step { step, total, .. } => {
            if step % 10 == 0 || step == total {
                eprintln!("{}", ev.line());
            }
        }
        ev => match &bar {
            Some((_, b)) if !b.is_finished() => b.println(ev.line()),
            _ => eprintln!("{}", ev.line()),
        },
    }
}

/// The bar of task `task`, `total` steps long.
fn task_bar(task: usize, total: usize) -> ProgressBar {
    let b = ProgressBar::new(total as u64);
    b.set_style(
        ProgressStyle::with_template("task {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    b.set_prefix(task.to_string());
    b
}
