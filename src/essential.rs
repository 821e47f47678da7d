//! The server's essential threads (the timeline writer, the finisher, the checkpointer):
//! if one of them dies, nothing more can be stored, so its death must stop the server
//! with a clear message instead of leaving a process that silently acknowledges nothing.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle;

/// Spawns the thread `name` running `body`. If `body` panics, `on_death` runs on that
/// thread with the panic's message (after an error is logged), and the thread ends.
///
/// # Errors
/// The OS refused to create the thread.
pub fn spawn(
    name: &str,
    on_death: impl FnOnce(&str) + Send + 'static,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let thread_name = name.to_owned();
    std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        // Whatever state `body` left is abandoned with the thread: nothing reads it after.
        if let Err(panic) = catch_unwind(AssertUnwindSafe(body)) {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            tracing::error!(thread = %thread_name, panic = %message, "an essential thread died; stopping the server");
            on_death(&message);
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    #[test]
    fn a_panic_runs_on_death_with_its_message_and_a_normal_end_does_not() {
        let (sender, deaths) = channel();
        let on_death = move |message: &str| sender.send(message.to_owned()).expect("send");
        super::spawn("doomed", on_death.clone(), || panic!("injected")).expect("spawn").join().expect("joins");
        super::spawn("fine", on_death, || {}).expect("spawn").join().expect("joins");
        assert_eq!(deaths.try_iter().collect::<Vec<_>>(), vec!["injected".to_owned()]);
    }
}
