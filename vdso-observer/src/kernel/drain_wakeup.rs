//! The programs' wake-up (`DRAIN_WAKEUP_MAP`): once the counter maps gained
//! the keys [`Observer::arm_drain_trigger`](super::Observer::arm_drain_trigger)
//! asked for, a program writes one record, and a session sleeping on the ring
//! looks at the maps. Idle, nothing wakes it; under churn, once per drain.

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

pub struct DrainWakeup {
    state: State,
}

enum State {
    /// Not yet registered with the runtime (the session starts outside it).
    Ring(RingBuf<MapData>),
    Polled(AsyncFd<RingBuf<MapData>>),
    /// No ring, or it failed: the session polls the fill level instead.
    Off,
}

impl DrainWakeup {
    pub fn new(ring: Option<RingBuf<MapData>>) -> DrainWakeup {
        DrainWakeup {
            state: ring.map_or(State::Off, State::Ring),
        }
    }

    /// Whether wake-ups come (else the caller polls).
    pub fn works(&self) -> bool {
        !matches!(self.state, State::Off)
    }

    /// Waits for the programs' next wake-up; how many records it read (one
    /// per program that woke). None when waiting failed (the caller polls
    /// from then on); pending for ever when wake-ups do not work.
    pub async fn woken(&mut self) -> Option<usize> {
        self.register();
        let State::Polled(fd) = &mut self.state else {
            return std::future::pending().await;
        };
        match fd.readable_mut().await {
            Ok(mut guard) => {
                let ring = guard.get_inner_mut();
                let mut records = 0;
                while ring.next().is_some() {
                    records += 1;
                }
                guard.clear_ready();
                Some(records)
            }
            Err(err) => {
                log::warn!(
                    "waiting on the programs' drain wake-up failed ({err}): polling the maps instead"
                );
                self.state = State::Off;
                None
            }
        }
    }

    /// Registers the ring with the runtime, the first time inside it.
    fn register(&mut self) {
        self.state = match std::mem::replace(&mut self.state, State::Off) {
            // SAFETY: the ring owns its map's descriptor, open and the same
            // for as long as the ring lives, which the AsyncFd owns.
            State::Ring(ring) => {
                match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
                    Ok(fd) => State::Polled(fd),
                    Err(err) => {
                        log::debug!(
                            "the programs' drain wake-up cannot be waited on ({err}): polling the maps instead"
                        );
                        State::Off
                    }
                }
            }
            other => other,
        };
    }
}
