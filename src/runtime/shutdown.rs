//! Graceful shutdown as a small reusable type: one side says "stop", any
//! number of tasks learn of it, whether they were waiting already or look
//! later.

use tokio::sync::watch;

/// The stages of stopping. Each task reacts to the stage that concerns it:
/// the accept loop to `Draining`, sessions to `Closing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Running,
    /// No new connections; running sessions may finish on their own.
    Draining,
    /// The grace period is over: remaining sessions are closed with 57P01.
    Closing,
}

/// The sending side, held by whoever decides to stop.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    tx: watch::Sender<Stage>,
}

/// The receiving side; cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Stage>,
}

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(Stage::Running);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Moves to `stage` unless already further along.
    pub fn advance(&self, stage: Stage) {
        self.tx.send_if_modified(|current| {
            if stage > *current {
                *current = stage;
                true
            } else {
                false
            }
        });
    }

    pub fn stage(&self) -> Stage {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    pub fn stage(&self) -> Stage {
        *self.rx.borrow()
    }

    /// Resolves once the stage is `stage` or later. Cancel-safe.
    pub async fn reached(&mut self, stage: Stage) {
        // An error means every trigger is gone, which only happens when the
        // proxy itself is dropped: treat it as the end.
        let _ = self.rx.wait_for(|s| *s >= stage).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_only_move_forward_and_late_subscribers_see_them() {
        let (trigger, mut early) = channel();
        trigger.advance(Stage::Closing);
        trigger.advance(Stage::Draining);
        assert_eq!(trigger.stage(), Stage::Closing);
        early.reached(Stage::Draining).await;
        let mut late = trigger.subscribe();
        late.reached(Stage::Closing).await;
        assert_eq!(late.stage(), Stage::Closing);
    }
}
