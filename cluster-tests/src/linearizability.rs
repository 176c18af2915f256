//! A linearizability checker for histories of a register (a tag: written with a value, read as
//! a value or as absent), by Wing and Gong's search with Lowe's memoization, the algorithm
//! Porcupine and Knossos use.
//!
//! A history is the operations concurrent clients made, each with the interval from its
//! invocation to its response, on one clock. A write whose answer was lost (a timeout, a `5xx`)
//! is *indeterminate*: it may take effect at any time after its invocation, or never; it has no
//! response time. A read whose answer was lost tells nothing and is left out by the caller.
//!
//! The search: walk the operations in invocation order; try to linearize the first one whose
//! invocation precedes every pending response (apply it to the model; keep going if the model
//! accepts it); when a response is reached whose operation is not linearized yet, undo the
//! last choice and try the next candidate. Lowe's addition: remember every (set of linearized
//! operations, model state) pair reached, and never explore one twice. Registers are checked
//! one at a time (linearizability is compositional: a history is linearizable iff each
//! object's sub-history is).
//!
//! Only test code calls this module (the Jepsen-style test and the bench that runs it longer).

use std::collections::HashSet;
use std::fmt;

/// Time in nanoseconds on the history's one clock.
pub type Nanos = u64;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Set the register to this value.
    Write(String),
    /// Read the register: this value, or `None` when it was absent (never written).
    Read(Option<String>),
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that made it (for messages only).
    pub client: usize,
    /// What it did and, for a read, what it returned.
    pub op: Op,
    /// When it was invoked.
    pub call: Nanos,
    /// When its response arrived; `None` for an indeterminate write.
    pub ret: Option<Nanos>,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |t: Nanos| t as f64 / 1e9;
        let what = match &self.op {
            Op::Write(v) => format!("write {}", short(v)),
            Op::Read(Some(v)) => format!("read -> {}", short(v)),
            Op::Read(None) => "read -> absent".to_string(),
        };
        match self.ret {
            Some(r) => write!(
                f,
                "client {} {what} over [{:.6} s, {:.6} s]",
                self.client,
                secs(self.call),
                secs(r)
            ),
            None => write!(
                f,
                "client {} {what} from {:.6} s, answer lost",
                self.client,
                secs(self.call)
            ),
        }
    }
}

/// The tail of a long value (digests), enough to tell values apart in a message.
fn short(v: &str) -> &str {
    let n = v.len();
    if n > 12 { &v[n - 12..] } else { v }
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// How many operations the deepest attempt managed to linearize.
    pub linearized: usize,
    /// Of how many (after dropping indeterminate writes nobody read).
    pub total: usize,
    /// The operation whose response came while no linearization could include it, in the
    /// deepest attempt.
    pub stuck_at: Operation,
    /// The operations concurrent with it (their intervals overlap), for the report.
    pub concurrent: Vec<Operation>,
    /// The register's value in the deepest attempt, just before it got stuck.
    pub state: Option<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "not linearizable: the deepest attempt linearized {} of {} operations, with the \
             register at {}, and could not place: {}",
            self.linearized,
            self.total,
            self.state.as_deref().map(short).unwrap_or("absent"),
            self.stuck_at
        )?;
        writeln!(f, "operations concurrent with it:")?;
        for op in &self.concurrent {
            writeln!(f, "  {op}")?;
        }
        Ok(())
    }
}

/// One event of the search's list: an invocation or a response of operation `op`.
#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// Index of the matching event (the response of a call, the call of a response).
    other: usize,
    prev: usize,
    next: usize,
}

/// A set of operation indexes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// The register's value as an index into the history's distinct written values.
type State = Option<u32>;

/// Check one register's history, starting absent. `Ok` when some linearization exists.
pub fn check(history: &[Operation]) -> Result<(), Box<Violation>> {
    // Indeterminate writes that no read observed can always be linearized as never having
    // happened (or last of all): dropping them removes no constraint and shrinks the search.
    let read_values: HashSet<&str> = history
        .iter()
        .filter_map(|o| match &o.op {
            Op::Read(Some(v)) => Some(v.as_str()),
            _ => None,
        })
        .collect();
    let ops: Vec<&Operation> = history
        .iter()
        .filter(|o| match (&o.op, o.ret) {
            (Op::Write(v), None) => read_values.contains(v.as_str()),
            _ => true,
        })
        .collect();
    let n = ops.len();
    if n == 0 {
        return Ok(());
    }
    // Values as small integers; a read of a value nobody wrote gets one of its own, which no
    // state ever holds.
    let mut values: Vec<String> = Vec::new();
    let mut index: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut intern = |v: &str| -> u32 {
        *index.entry(v.to_string()).or_insert_with(|| {
            values.push(v.to_string());
            (values.len() - 1) as u32
        })
    };
    let model: Vec<(bool, State)> = ops
        .iter()
        .map(|o| match &o.op {
            Op::Write(v) => (true, Some(intern(v))),
            Op::Read(v) => (false, v.as_deref().map(&mut intern)),
        })
        .collect();

    // The event list, sorted by time; at equal times invocations come first, so that two
    // operations touching the same instant count as concurrent. Event 0 is the list's head.
    let mut order: Vec<(Nanos, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        order.push((o.call, true, i));
        order.push((o.ret.unwrap_or(Nanos::MAX), false, i));
    }
    order.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    let mut events = Vec::with_capacity(2 * n + 1);
    events.push(Event {
        op: usize::MAX,
        is_call: false,
        other: 0,
        prev: 0,
        next: 1,
    });
    let mut call_at = vec![0; n];
    let mut ret_at = vec![0; n];
    for (k, &(_, is_call, i)) in order.iter().enumerate() {
        let at = k + 1;
        if is_call {
            call_at[i] = at;
        } else {
            ret_at[i] = at;
        }
        events.push(Event {
            op: i,
            is_call,
            other: 0,
            prev: at - 1,
            next: if at == 2 * n { usize::MAX } else { at + 1 },
        });
    }
    for i in 0..n {
        events[call_at[i]].other = ret_at[i];
        events[ret_at[i]].other = call_at[i];
    }

    // Remove an operation's two events from the list, and put them back.
    fn lift(events: &mut [Event], call: usize) {
        let ret = events[call].other;
        let (p, nx) = (events[call].prev, events[call].next);
        events[p].next = nx;
        if nx != usize::MAX {
            events[nx].prev = p;
        }
        let (p, nx) = (events[ret].prev, events[ret].next);
        events[p].next = nx;
        if nx != usize::MAX {
            events[nx].prev = p;
        }
    }
    fn unlift(events: &mut [Event], call: usize) {
        let ret = events[call].other;
        let (p, nx) = (events[ret].prev, events[ret].next);
        events[p].next = ret;
        if nx != usize::MAX {
            events[nx].prev = ret;
        }
        let (p, nx) = (events[call].prev, events[call].next);
        events[p].next = call;
        if nx != usize::MAX {
            events[nx].prev = call;
        }
    }

    let mut linearized = Bits::new(n);
    let mut seen: HashSet<(Bits, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut cursor = events[0].next;
    let mut deepest: Option<(usize, usize, State)> = None;
    while events[0].next != usize::MAX {
        let e = events[cursor];
        if e.is_call {
            let (is_write, value) = model[e.op];
            let next_state = if is_write {
                Some(value)
            } else {
                (value == state).then_some(state)
            };
            if let Some(next_state) = next_state {
                let mut with = linearized.clone();
                with.set(e.op);
                if seen.insert((with.clone(), next_state)) {
                    stack.push((cursor, state));
                    linearized = with;
                    state = next_state;
                    lift(&mut events, cursor);
                    cursor = events[0].next;
                    continue;
                }
            }
            cursor = e.next;
        } else {
            // A response whose operation is not linearized: this branch is dead.
            let depth = stack.len();
            if deepest.is_none_or(|(d, _, _)| depth > d) {
                deepest = Some((depth, e.op, state));
            }
            let Some((call, previous)) = stack.pop() else {
                let (depth, op, st) = deepest.expect("recorded just above");
                return Err(Box::new(violation(
                    &ops,
                    depth,
                    op,
                    st.map(|i| values[i as usize].clone()),
                )));
            };
            state = previous;
            linearized.clear(events[call].op);
            unlift(&mut events, call);
            cursor = events[call].next;
        }
    }
    debug_assert_eq!(linearized.count(), n);
    Ok(())
}

fn violation(ops: &[&Operation], depth: usize, stuck: usize, state: Option<String>) -> Violation {
    let at = ops[stuck];
    let end = |o: &Operation| o.ret.unwrap_or(Nanos::MAX);
    let concurrent = ops
        .iter()
        .enumerate()
        .filter(|(i, o)| *i != stuck && o.call <= end(at) && at.call <= end(o))
        .map(|(_, o)| (*o).clone())
        .collect();
    Violation {
        linearized: depth,
        total: ops.len(),
        stuck_at: at.clone(),
        concurrent,
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: usize, v: &str, call: Nanos, ret: Option<Nanos>) -> Operation {
        Operation {
            client,
            op: Op::Write(v.to_string()),
            call,
            ret,
        }
    }

    fn r(client: usize, v: Option<&str>, call: Nanos, ret: Nanos) -> Operation {
        Operation {
            client,
            op: Op::Read(v.map(str::to_string)),
            call,
            ret: Some(ret),
        }
    }

    /// Seconds with millisecond digits, as the issue reports them, in nanoseconds.
    fn s(ms: u64) -> Nanos {
        ms * 1_000_000
    }

    #[test]
    fn the_reported_stale_read_is_caught() {
        // Issue 9's history: once a client has seen B, no later read may return A.
        let h = [
            w(0, "A", s(80_961), Some(s(81_127))),
            w(1, "B", s(80_983), Some(s(81_214))),
            r(2, Some("B"), s(81_145), s(81_147)),
            r(3, Some("A"), s(81_194), s(81_195)),
        ];
        let v = check(&h).expect_err("a stale read");
        assert_eq!(v.total, 4);
        // Either order of the two reads is fine: without the last read, it is linearizable.
        assert!(check(&h[..3]).is_ok());
        let text = v.to_string();
        assert!(text.contains("not linearizable"), "{text}");
    }

    #[test]
    fn known_bad_histories_fail() {
        let bad: Vec<(&str, Vec<Operation>)> = vec![
            (
                "stale read after a completed newer write",
                vec![
                    w(0, "A", 0, Some(10)),
                    w(0, "B", 20, Some(30)),
                    r(1, Some("A"), 40, 50),
                ],
            ),
            (
                "read of a value never written",
                vec![w(0, "A", 0, Some(10)), r(1, Some("X"), 20, 30)],
            ),
            (
                "read of a value before its write was invoked",
                vec![r(1, Some("A"), 0, 10), w(0, "A", 20, Some(30))],
            ),
            (
                "absent after a completed write",
                vec![w(0, "A", 0, Some(10)), r(1, None, 20, 30)],
            ),
            (
                "new then old while the newer write is still running",
                vec![
                    w(0, "A", 0, Some(10)),
                    w(1, "B", 20, Some(100)),
                    r(2, Some("B"), 30, 40),
                    r(3, Some("A"), 50, 60),
                ],
            ),
            (
                "an indeterminate write seen, then the older value again",
                vec![
                    w(0, "A", 0, Some(10)),
                    w(1, "B", 20, None),
                    r(2, Some("B"), 30, 40),
                    r(2, Some("A"), 50, 60),
                ],
            ),
            (
                "two readers disagree on the order of two sequential writes",
                vec![
                    w(0, "A", 0, Some(10)),
                    w(0, "B", 11, Some(20)),
                    r(1, Some("B"), 21, 30),
                    r(2, Some("A"), 31, 40),
                ],
            ),
            (
                "flip-flop: A, B, A with one write of each",
                vec![
                    w(0, "A", 0, Some(100)),
                    w(1, "B", 0, Some(100)),
                    r(2, Some("A"), 10, 20),
                    r(2, Some("B"), 30, 40),
                    r(2, Some("A"), 50, 60),
                ],
            ),
        ];
        for (name, h) in bad {
            assert!(check(&h).is_err(), "{name}: accepted");
        }
    }

    #[test]
    fn known_good_histories_pass() {
        let good: Vec<(&str, Vec<Operation>)> = vec![
            ("empty", vec![]),
            (
                "absent before any write",
                vec![r(0, None, 0, 10), w(1, "A", 20, Some(30))],
            ),
            (
                "reads of both sides of a running write",
                vec![
                    w(0, "A", 0, Some(10)),
                    w(1, "B", 20, Some(100)),
                    r(2, Some("A"), 30, 40),
                    r(3, Some("B"), 50, 60),
                ],
            ),
            (
                "concurrent writes in either order",
                vec![
                    w(0, "A", 0, Some(50)),
                    w(1, "B", 0, Some(50)),
                    r(2, Some("B"), 60, 70),
                    r(2, Some("B"), 80, 90),
                ],
            ),
            (
                "an indeterminate write seen long after",
                vec![
                    w(0, "A", 0, Some(10)),
                    w(1, "B", 20, None),
                    r(2, Some("A"), 30, 40),
                    r(2, Some("B"), 500, 510),
                ],
            ),
            (
                "an indeterminate write never seen",
                vec![
                    w(0, "A", 0, Some(10)),
                    w(1, "B", 20, None),
                    r(2, Some("A"), 30, 40),
                    r(2, Some("A"), 500, 510),
                ],
            ),
            (
                "touching intervals are concurrent",
                vec![w(0, "A", 0, Some(10)), r(1, None, 10, 20)],
            ),
        ];
        for (name, h) in good {
            assert!(check(&h).is_ok(), "{name}: refused: {}", check(&h).unwrap_err());
        }
    }

    /// A small deterministic generator (xorshift), so the test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A history of `clients` clients on a real atomic register: each operation takes effect at
    /// one instant inside its interval, and reads return what the register held then.
    fn atomic_history(seed: u64, clients: usize, per_client: usize) -> Vec<Operation> {
        let mut rng = Rng(seed | 1);
        // (effect time, client, is_write, call, ret)
        let mut planned = Vec::new();
        for c in 0..clients {
            let mut t = rng.below(50);
            for _ in 0..per_client {
                let call = t;
                let effect = call + rng.below(40);
                let ret = effect + rng.below(40);
                planned.push((effect, c, rng.below(2) == 0, call, ret));
                t = ret + rng.below(20);
            }
        }
        planned.sort();
        let mut value: Option<String> = None;
        let mut out = Vec::new();
        for (k, (_, client, is_write, call, ret)) in planned.into_iter().enumerate() {
            let op = if is_write {
                let v = format!("v{k}");
                value = Some(v.clone());
                Op::Write(v)
            } else {
                Op::Read(value.clone())
            };
            out.push(Operation {
                client,
                op,
                call,
                ret: Some(ret),
            });
        }
        out
    }

    #[test]
    fn histories_of_an_atomic_register_pass() {
        for seed in 1..40 {
            let h = atomic_history(seed * 7919, 6, 60);
            if let Err(v) = check(&h) {
                panic!("seed {seed}: {v}");
            }
        }
    }

    #[test]
    fn a_large_history_is_checked_quickly() {
        // About the size of a long run's busiest tag.
        let h = atomic_history(42, 6, 2000);
        let started = std::time::Instant::now();
        assert!(check(&h).is_ok());
        eprintln!("12000 operations checked in {:?}", started.elapsed());
    }

    #[test]
    fn a_stale_read_planted_in_a_long_history_is_found() {
        // Take an atomic history, then make one late read return the value of the first
        // write, long overwritten: the checker must notice among thousands of operations.
        let mut h = atomic_history(4242, 6, 400);
        let first = h
            .iter()
            .find_map(|o| match &o.op {
                Op::Write(v) => Some((v.clone(), o.ret.expect("determinate"))),
                _ => None,
            })
            .expect("a write");
        // A later write that completed before some read began makes the first value stale.
        let (later_ret, _) = h
            .iter()
            .filter_map(|o| match &o.op {
                Op::Write(v) if *v != first.0 && o.call > first.1 => {
                    Some((o.ret.expect("determinate"), v.clone()))
                }
                _ => None,
            })
            .min()
            .expect("a later write");
        let victim = h
            .iter()
            .rposition(|o| matches!(o.op, Op::Read(_)) && o.call > later_ret)
            .expect("a read after it");
        h[victim].op = Op::Read(Some(first.0));
        assert!(check(&h).is_err());
    }
}
