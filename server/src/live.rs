//! Live model text for `SubscribeLive` (local mode; cloud mode carries it on the events stream,
//! see `cloud`).
//!
//! Text deltas are not stored: the runner's cumulative status, coalesced for storage, carries
//! the same text. One bounded `broadcast` channel per execution somebody follows live: a
//! publish never waits, and a subscriber that falls more than [`TEXT_BUFFER`] deltas behind
//! is told so with a gap marker; the next cumulative state then gives it the whole text.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::Stream;
use stigmer_proto::agentexecution::v1::{
    AgentExecution, ExecutionEvent, LiveGap, MessageType, TextDelta, execution_event,
};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::broadcast::Snapshot;

/// Deltas one subscriber may fall behind before it gets a gap marker instead. A delta is a few
/// tokens, so this is seconds of text at model speed, and the slots exist only for
/// executions that somebody follows live.
pub const TEXT_BUFFER: usize = 256;

pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<ExecutionEvent, tonic::Status>> + Send + 'static>>;

type Sender = broadcast::Sender<Arc<TextDelta>>;

#[derive(Default)]
pub struct LiveText {
    channels: Mutex<HashMap<String, Sender>>,
}

impl LiveText {
    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sender>> {
        // Every change is one call: the map stays consistent if a holder panicked.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn subscribe(&self, id: &str) -> broadcast::Receiver<Arc<TextDelta>> {
        self.channels()
            .entry(id.to_string())
            .or_insert_with(|| broadcast::channel(TEXT_BUFFER).0)
            .subscribe()
    }

    /// Hands the delta to the execution's live subscribers, if any; never waits.
    pub fn publish(&self, delta: TextDelta) {
        let Some(sender) = self.channels().get(&delta.execution_id).cloned() else {
            return;
        };
        // An error only means every subscriber just left; `prune` removes the channel.
        let _ = sender.send(Arc::new(delta));
    }

    /// The execution ended: its subscribers end with the terminal state, which holds all text.
    pub fn end(&self, id: &str) {
        self.channels().remove(id);
    }

    /// Drops channels whose subscribers all went away.
    pub fn prune(&self) {
        self.channels()
            .retain(|_, sender| sender.receiver_count() > 0);
    }

    #[cfg(test)]
    pub fn channel_count(&self) -> usize {
        self.channels().len()
    }
}

/// Notices text missing between two deltas a subscriber received: both modes, whatever hop
/// lost it (a runner shedding load, a trimmed events stream, a lagging channel).
#[derive(Default)]
pub struct GapCheck {
    /// Message index and end offset of the last delta passed on.
    last: Option<(u32, u64)>,
}

impl GapCheck {
    /// True when text is missing right before `delta`.
    pub fn before(&mut self, delta: &TextDelta) -> bool {
        let end = delta.offset + delta.text.len() as u64;
        let gap = match self.last {
            Some((index, last_end)) if index == delta.message_index => delta.offset > last_end,
            _ => false,
        };
        if self.last.is_none_or(|(index, last_end)| {
            delta.message_index > index || (delta.message_index == index && end > last_end)
        }) {
            self.last = Some((delta.message_index, end));
        }
        gap
    }

    /// After a known loss: the next delta starts a new run.
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// The text of the terminal state `execution` that the subscriber has not had as deltas,
    /// as deltas to send before that state: from the end of the last delta passed on, the rest
    /// of its message and every later AI message. The runner sends live text and its terminal
    /// status on separate calls, so the last pieces can arrive after the stream has ended;
    /// the terminal state holds all of the text, so the stream completes it itself. Nothing
    /// when no delta was passed on (a subscriber that only follows states).
    pub fn tail(&mut self, execution: &AgentExecution) -> Vec<TextDelta> {
        let Some((index, end)) = self.last else {
            return Vec::new();
        };
        let messages = execution.status.iter().flat_map(|s| s.messages.iter());
        let mut tail = Vec::new();
        for (i, message) in messages.enumerate() {
            let Ok(i) = u32::try_from(i) else { break };
            if i < index || message.r#type() != MessageType::MessageAi {
                continue;
            }
            let from = if i == index { end } else { 0 };
            let rest = usize::try_from(from)
                .ok()
                .and_then(|from| message.content.get(from..))
                .unwrap_or_default();
            if !rest.is_empty() {
                tail.push(TextDelta {
                    execution_id: String::new(),
                    message_index: i,
                    offset: from,
                    text: rest.to_owned(),
                });
                self.last = Some((i, message.content.len() as u64));
            }
        }
        tail
    }
}

/// The delta as a subscriber gets it: without the execution id, which its stream already names
/// (most of a short delta's bytes).
pub fn text_event(mut delta: TextDelta) -> ExecutionEvent {
    delta.execution_id.clear();
    ExecutionEvent {
        event: Some(execution_event::Event::Text(delta)),
    }
}

pub fn gap_event(skipped: u64) -> ExecutionEvent {
    ExecutionEvent {
        event: Some(execution_event::Event::Gap(LiveGap { skipped })),
    }
}

/// Local mode's `SubscribeLive`: the current state first, then newer states and the text
/// deltas between them, ending after a terminal state (or UNAVAILABLE at shutdown).
pub fn stream(
    mut states: watch::Receiver<Snapshot>,
    text: broadcast::Receiver<Arc<TextDelta>>,
    shutdown: CancellationToken,
) -> EventStream {
    states.mark_changed();
    let follow = Follow {
        states,
        text: Some(text),
        gaps: GapCheck::default(),
        pending: VecDeque::new(),
        started: false,
        done: false,
        shutdown,
    };
    Box::pin(futures_util::stream::unfold(
        follow,
        |mut follow| async move {
            let item = follow.next().await?;
            Some((item, follow))
        },
    ))
}

struct Follow {
    states: watch::Receiver<Snapshot>,
    /// `None` once the channel closed (the execution ended); states still follow.
    text: Option<broadcast::Receiver<Arc<TextDelta>>>,
    gaps: GapCheck,
    pending: VecDeque<ExecutionEvent>,
    /// The first state went out: text may follow (a subscriber always starts with a state).
    started: bool,
    done: bool,
    shutdown: CancellationToken,
}

impl Follow {
    async fn next(&mut self) -> Option<Result<ExecutionEvent, tonic::Status>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let text_open = self.started && self.text.is_some();
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    self.done = true;
                    return Some(Err(tonic::Status::unavailable("server is shutting down")));
                }
                received = recv(self.text.as_mut()), if text_open => match received {
                    Ok(delta) => {
                        if self.gaps.before(&delta) {
                            self.pending.push_back(gap_event(0));
                        }
                        self.pending.push_back(text_event(Arc::unwrap_or_clone(delta)));
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        self.gaps.reset();
                        self.pending.push_back(gap_event(skipped));
                    }
                    Err(broadcast::error::RecvError::Closed) => self.text = None,
                },
                changed = self.states.changed() => {
                    // The channel closes only after its last state was seen, or at shutdown.
                    changed.ok()?;
                    let Some(execution) = self.states.borrow_and_update().execution() else {
                        continue;
                    };
                    self.started = true;
                    self.done = execution
                        .status
                        .as_ref()
                        .is_some_and(|status| status.phase().is_terminal());
                    if self.done {
                        let tail = self.gaps.tail(&execution);
                        self.pending.extend(tail.into_iter().map(text_event));
                    }
                    self.pending.push_back(ExecutionEvent {
                        event: Some(execution_event::Event::Execution(Arc::unwrap_or_clone(
                            execution,
                        ))),
                    });
                }
            }
        }
    }
}

async fn recv(
    text: Option<&mut broadcast::Receiver<Arc<TextDelta>>>,
) -> Result<Arc<TextDelta>, broadcast::error::RecvError> {
    match text {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn delta(index: u32, offset: u64, text: &str) -> TextDelta {
        TextDelta {
            execution_id: "e".into(),
            message_index: index,
            offset,
            text: text.into(),
        }
    }

    #[test]
    fn gaps_are_text_missing_between_deltas_of_one_message() {
        let mut check = GapCheck::default();
        assert!(!check.before(&delta(1, 40, "ab")), "a late start is no gap");
        assert!(!check.before(&delta(1, 42, "cd")));
        assert!(check.before(&delta(1, 50, "ef")), "44..50 is missing");
        assert!(!check.before(&delta(1, 48, "xx")), "overlap is no gap");
        assert!(!check.before(&delta(3, 0, "next")), "a new message");
        check.reset();
        assert!(!check.before(&delta(3, 90, "after a reset")));
    }

    fn state(version: i64, phase: stigmer_proto::ExecutionPhase) -> Snapshot {
        use stigmer_proto::agentexecution::v1::{AgentExecution, AgentExecutionStatus};
        Snapshot::new(
            version,
            AgentExecution {
                status: Some(AgentExecutionStatus {
                    phase: phase.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    fn kind(event: &ExecutionEvent) -> &'static str {
        match event.event {
            Some(execution_event::Event::Execution(_)) => "state",
            Some(execution_event::Event::Text(_)) => "text",
            Some(execution_event::Event::Gap(_)) => "gap",
            None => "none",
        }
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_gets_a_gap_then_the_next_state() {
        use futures_util::StreamExt;
        use stigmer_proto::ExecutionPhase;
        let live = LiveText::default();
        let (states, receiver) = watch::channel(state(1, ExecutionPhase::ExecutionInProgress));
        let mut stream = stream(receiver, live.subscribe("e"), CancellationToken::new());
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(kind(&first), "state", "a subscriber starts with a state");
        // The publisher never waits: far more deltas than the buffer holds.
        for i in 0..(TEXT_BUFFER as u64 + 10) {
            live.publish(delta(1, i, "x"));
        }
        let next = stream.next().await.unwrap().unwrap();
        assert_eq!(kind(&next), "gap");
        assert!(matches!(
            next.event,
            Some(execution_event::Event::Gap(LiveGap { skipped: 10 }))
        ));
        let text = stream.next().await.unwrap().unwrap();
        assert_eq!(kind(&text), "text", "then the newest deltas, in order");
        states.send_replace(state(2, ExecutionPhase::ExecutionCompleted));
        let mut rest = Vec::new();
        while let Some(event) = stream.next().await {
            rest.push(kind(&event.unwrap()));
        }
        assert_eq!(rest.last(), Some(&"state"), "ends with the terminal state");
        assert_eq!(
            rest.iter().filter(|k| **k == "text").count(),
            TEXT_BUFFER - 1
        );
    }

    #[test]
    fn channels_exist_only_while_followed() {
        let live = LiveText::default();
        live.publish(delta(1, 0, "nobody listens"));
        assert_eq!(live.channel_count(), 0);
        let receiver = live.subscribe("e");
        assert_eq!(live.channel_count(), 1);
        drop(receiver);
        live.prune();
        assert_eq!(live.channel_count(), 0);
        let _receiver = live.subscribe("e");
        live.end("e");
        assert_eq!(live.channel_count(), 0);
    }

    fn terminal_with(messages: &[(MessageType, &str)]) -> AgentExecution {
        use stigmer_proto::agentexecution::v1::{AgentExecutionStatus, AgentMessage};
        AgentExecution {
            status: Some(AgentExecutionStatus {
                phase: stigmer_proto::ExecutionPhase::ExecutionCompleted.into(),
                messages: messages
                    .iter()
                    .map(|(t, c)| AgentMessage {
                        r#type: (*t).into(),
                        content: (*c).into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_tail_is_the_text_after_the_last_delta() {
        let done = terminal_with(&[
            (MessageType::MessageHuman, "hi"),
            (MessageType::MessageAi, "Hello world"),
            (MessageType::MessageSystem, "tool ran"),
            (MessageType::MessageAi, "Done."),
        ]);
        let mut follows_states_only = GapCheck::default();
        assert!(follows_states_only.tail(&done).is_empty());
        let mut check = GapCheck::default();
        check.before(&delta(1, 0, "Hel"));
        let tail: Vec<_> = check
            .tail(&done)
            .into_iter()
            .map(|d| (d.message_index, d.offset, d.text))
            .collect();
        assert_eq!(
            tail,
            [(1, 3, "lo world".to_owned()), (3, 0, "Done.".to_owned())]
        );
        assert!(check.tail(&done).is_empty(), "sent once");
    }

    #[tokio::test]
    async fn text_the_terminal_state_overtook_is_sent_before_it() {
        use futures_util::StreamExt;
        use stigmer_proto::ExecutionPhase;
        let live = LiveText::default();
        let (states, receiver) = watch::channel(state(1, ExecutionPhase::ExecutionInProgress));
        let mut stream = stream(receiver, live.subscribe("e"), CancellationToken::new());
        assert_eq!(kind(&stream.next().await.unwrap().unwrap()), "state");
        live.publish(delta(1, 0, "Hel"));
        assert_eq!(kind(&stream.next().await.unwrap().unwrap()), "text");
        // The runner's last delta ("lo world") is still on its way when the end arrives.
        let done = terminal_with(&[
            (MessageType::MessageHuman, "hi"),
            (MessageType::MessageAi, "Hello world"),
        ]);
        states.send_replace(Snapshot::new(2, done));
        let mut rest = Vec::new();
        while let Some(event) = stream.next().await {
            rest.push(event.unwrap());
        }
        let kinds: Vec<_> = rest.iter().map(kind).collect();
        assert_eq!(kinds, ["text", "state"]);
        let Some(execution_event::Event::Text(tail)) = &rest[0].event else {
            panic!("text first");
        };
        assert_eq!((tail.offset, tail.text.as_str()), (3, "lo world"));
    }
}
