//! How a session learns that it must stop or move: one registration per
//! session, and nothing per frame.
//!
//! A [`Beacon`] is shared by the sessions of one server; the gateway has one
//! of its own, above every server's. It *drains* (the server drains or a
//! reload removed it; for the gateway's, the gateway shuts down), which
//! every session under it hears, and it *sheds* sessions it chooses
//! (rebalance), which only those hear. A session holds one [`Watch`] on its
//! server's beacon: one slot in the beacon's list, taken when the session
//! starts, where its first poll leaves its waker. Each time the session is
//! polled the watch costs one atomic load; the beacon's lock is taken again
//! only when something happened since (a drain, an undrain, a shed round),
//! once per session per event.
//!
//! This replaced a `CancellationToken` future per signal. A session needed
//! two of them (the gateway's drain and its server's), each a boxed future
//! (the second cost 0.4 KiB per idle session, measured), each locking its
//! token's mutex whenever the session was woken, and a cancellation cannot
//! be aimed at a few sessions, as a shed must be.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, Weak,
    },
    task::{Context, Poll, Waker},
};

/// Bit 0 of [`Beacon::state`]: draining.
const DRAINING: u64 = 1;
/// Added to [`Beacon::state`] for every event, so that a session that has
/// seen a state tells "nothing new" from one load.
const EVENT: u64 = 2;

/// The signal shared by one server's sessions, or by the gateway's.
#[derive(Debug)]
pub struct Beacon {
    /// [`DRAINING`] and the count of events; written under `inner`'s lock,
    /// read without it by every poll of a [`Watch`].
    state: AtomicU64,
    /// The gateway's beacon, above a server's: its drain reaches the
    /// sessions of this one too.
    parent: Option<Arc<Beacon>>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// One per registered session; vacant ones are reused (`free`), and
    /// the list is let go of when no session is left, so it is bounded by
    /// the sessions open at once.
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots [`Stand::Watching`]: the sessions that stay (for rebalance).
    watching: usize,
    /// Where the next shed round starts looking, so that rounds take the
    /// sessions in turn rather than the first slots every time.
    cursor: usize,
    /// The beacons under this one (the gateway's: every server's), told
    /// when it drains.
    children: Vec<Weak<Beacon>>,
}

#[derive(Debug, Default)]
struct Slot {
    waker: Option<Waker>,
    /// The key the session was balanced on, for [`Beacon::shed`].
    key: Option<u64>,
    stand: Stand,
}

/// Where one registered session stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Stand {
    #[default]
    Vacant,
    /// Stays on its server.
    Watching,
    /// Chosen by [`Beacon::shed`], and not yet told.
    Shed,
    /// Told to move (shed, or its server drains): no longer counted.
    Moving,
}

/// What a [`Watch`] heard, each at most once per session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct News {
    /// The gateway is shutting down.
    pub gateway: bool,
    /// The session's server drains (or was removed by a reload).
    pub drained: bool,
    /// The session was chosen to move to another server (rebalance).
    pub shed: bool,
}

impl Beacon {
    /// A beacon of its own: the gateway's, or a server's outside a gateway.
    pub fn new() -> Arc<Beacon> {
        Arc::new(Beacon {
            state: AtomicU64::new(0),
            parent: None,
            inner: Mutex::default(),
        })
    }

    /// A server's beacon under the gateway's `parent`: the gateway's drain
    /// reaches its sessions too.
    pub fn under(parent: &Arc<Beacon>) -> Arc<Beacon> {
        let beacon = Arc::new(Beacon {
            state: AtomicU64::new(0),
            parent: Some(parent.clone()),
            inner: Mutex::default(),
        });
        let mut p = parent.lock();
        // Bounded by the servers that still have sessions or a config.
        p.children.retain(|c| c.strong_count() > 0);
        p.children.push(Arc::downgrade(&beacon));
        beacon
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_draining(&self) -> bool {
        self.state.load(Ordering::Acquire) & DRAINING != 0
    }

    /// Starts or stops draining; returns whether that changed anything.
    /// Every session under it (under its children too, for the gateway's)
    /// is woken to look; one that was told to move keeps moving after an
    /// undrain.
    pub fn set_draining(&self, on: bool) -> bool {
        let mut inner = self.lock();
        let old = self.state.load(Ordering::Relaxed);
        if (old & DRAINING != 0) == on {
            return false;
        }
        self.state
            .store((old ^ DRAINING) + EVENT, Ordering::Release);
        let wakers = inner.wakers();
        let children: Vec<Arc<Beacon>> = inner.children.iter().filter_map(Weak::upgrade).collect();
        inner.children.retain(|c| c.strong_count() > 0);
        drop(inner);
        wakers.into_iter().for_each(Waker::wake);
        for child in children {
            child.event();
        }
        true
    }

    /// Something above changed: every session looks again.
    fn event(&self) {
        let wakers = {
            let inner = self.lock();
            self.state.fetch_add(EVENT, Ordering::Release);
            inner.wakers()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Sessions registered and not told to move: the ones that stay.
    pub fn watching(&self) -> usize {
        self.lock().watching
    }

    /// Tells up to `n` of the sessions that stay to move, taking only those
    /// whose balancing key `eligible` accepts, in turn from where the last
    /// round stopped; returns how many were told. Only they are woken.
    pub fn shed(&self, n: usize, mut eligible: impl FnMut(Option<u64>) -> bool) -> usize {
        let mut inner = self.lock();
        let len = inner.slots.len();
        let mut wakers = Vec::new();
        let start = inner.cursor;
        for k in 0..len {
            if wakers.len() == n {
                break;
            }
            let i = (start + k) % len;
            let slot = &mut inner.slots[i];
            if slot.stand == Stand::Watching && eligible(slot.key) {
                slot.stand = Stand::Shed;
                wakers.extend(slot.waker.clone());
                inner.cursor = i + 1;
            }
        }
        let told = wakers.len();
        if told > 0 {
            inner.watching -= told;
            self.state.fetch_add(EVENT, Ordering::Release);
        }
        drop(inner);
        wakers.into_iter().for_each(Waker::wake);
        told
    }
}

impl Inner {
    fn wakers(&self) -> Vec<Waker> {
        self.slots.iter().filter_map(|s| s.waker.clone()).collect()
    }
}

/// One session's registration on its server's beacon (or the gateway's):
/// poll it whenever the session is polled; it is ready when there is news.
/// It is part of every session, so it is kept small.
#[derive(Debug)]
pub struct Watch {
    beacon: Arc<Beacon>,
    /// The beacon's state when last looked at (none yet: never looked).
    seen: Option<u64>,
    /// The waker in the slot, to tell without the lock that it still
    /// wakes this task.
    waker: Option<Waker>,
    /// Its slot in the beacon's list.
    slot: u32,
    /// The gateway's drain was reported.
    told_gateway: bool,
}

impl Watch {
    /// A watch on `beacon` for a session balanced on `key`.
    pub fn new(beacon: Arc<Beacon>, key: Option<u64>) -> Self {
        let mut inner = beacon.lock();
        let slot = Slot {
            waker: None,
            key,
            stand: Stand::Watching,
        };
        let i = match inner.free.pop() {
            Some(i) => {
                inner.slots[i as usize] = slot;
                i
            }
            None => {
                inner.slots.push(slot);
                // Bounded by the sessions open at once.
                (inner.slots.len() - 1) as u32
            }
        };
        inner.watching += 1;
        drop(inner);
        Watch {
            beacon,
            seen: None,
            waker: None,
            slot: i,
            told_gateway: false,
        }
    }

    /// Ready with what is new since the last time it was ready; stays
    /// registered for more.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<News> {
        let current = self.seen == Some(self.beacon.state.load(Ordering::Acquire))
            && self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if current {
            return Poll::Pending;
        }
        let news = self.look(cx);
        match news == News::default() {
            true => Poll::Pending,
            false => Poll::Ready(news),
        }
    }

    /// Leaves the waker (if it changed), then reads the state under the
    /// lock: an event after this finds the waker, one before it is read.
    fn look(&mut self, cx: &mut Context<'_>) -> News {
        let beacon = &*self.beacon;
        let mut inner = beacon.lock();
        let i = self.slot as usize;
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            inner.slots[i].waker = Some(waker.clone());
            self.waker = Some(waker);
        }
        let seen = beacon.state.load(Ordering::Acquire);
        self.seen = Some(seen);
        let own = seen & DRAINING != 0;
        let (gateway, drained) = match &beacon.parent {
            Some(p) => (p.is_draining(), own),
            None => (own, false),
        };
        let mut news = News {
            gateway: gateway && !self.told_gateway,
            ..News::default()
        };
        self.told_gateway |= gateway;
        let slot = &mut inner.slots[i];
        match slot.stand {
            Stand::Shed => {
                slot.stand = Stand::Moving;
                news.shed = true;
            }
            Stand::Watching if drained => {
                slot.stand = Stand::Moving;
                inner.watching -= 1;
                news.drained = true;
            }
            _ => {}
        }
        news
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut inner = self.beacon.lock();
        let slot = std::mem::take(&mut inner.slots[self.slot as usize]);
        if slot.stand == Stand::Watching {
            inner.watching -= 1;
        }
        inner.free.push(self.slot);
        if inner.free.len() == inner.slots.len() {
            // The last session left: give the lists' memory back.
            inner.slots = Vec::new();
            inner.free = Vec::new();
            inner.cursor = 0;
        }
        drop(inner);
        // A waker is dropped outside the lock (it may run arbitrary code).
        drop(slot);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::AtomicUsize,
        task::{Wake, Waker},
    };

    use super::*;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A session's watch and the wake-ups of its task.
    struct Session {
        watch: Watch,
        woken: Arc<Count>,
        waker: Waker,
    }

    impl Session {
        fn on(beacon: &Arc<Beacon>, key: Option<u64>) -> Self {
            let woken = Arc::new(Count::default());
            let mut s = Session {
                watch: Watch::new(beacon.clone(), key),
                waker: Waker::from(woken.clone()),
                woken,
            };
            assert_eq!(s.poll(), None, "nothing to hear yet");
            s
        }

        fn poll(&mut self) -> Option<News> {
            match self.watch.poll(&mut Context::from_waker(&self.waker)) {
                Poll::Ready(n) => Some(n),
                Poll::Pending => None,
            }
        }

        fn woken(&self) -> usize {
            self.woken.0.load(Ordering::SeqCst)
        }
    }

    const DRAINED: News = News {
        gateway: false,
        drained: true,
        shed: false,
    };
    const SHED: News = News {
        gateway: false,
        drained: false,
        shed: true,
    };
    const GATEWAY: News = News {
        gateway: true,
        drained: false,
        shed: false,
    };

    #[test]
    fn a_drain_wakes_every_session_once_and_is_heard_once() {
        let gateway = Beacon::new();
        let server = Beacon::under(&gateway);
        let mut a = Session::on(&server, None);
        let mut b = Session::on(&server, None);
        assert_eq!(server.watching(), 2);
        assert!(server.set_draining(true));
        assert!(!server.set_draining(true), "already draining");
        assert_eq!((a.woken(), b.woken()), (1, 1));
        assert_eq!(a.poll(), Some(DRAINED));
        assert_eq!(a.poll(), None, "heard once");
        assert_eq!(b.poll(), Some(DRAINED));
        assert_eq!(server.watching(), 0, "moving sessions do not stay");
        // Undrained: a session told to move keeps moving, and is not told again.
        assert!(server.set_draining(false));
        assert_eq!(a.poll(), None);
        assert!(server.set_draining(true));
        assert_eq!(a.poll(), None);
    }

    #[test]
    fn the_gateway_drain_reaches_the_sessions_of_every_server() {
        let gateway = Beacon::new();
        let (one, two) = (Beacon::under(&gateway), Beacon::under(&gateway));
        let mut a = Session::on(&one, None);
        let mut b = Session::on(&two, None);
        let mut own = Session::on(&gateway, None);
        gateway.set_draining(true);
        assert_eq!((a.woken(), b.woken(), own.woken()), (1, 1, 1));
        assert_eq!(a.poll(), Some(GATEWAY));
        assert_eq!(b.poll(), Some(GATEWAY));
        assert_eq!(own.poll(), Some(GATEWAY));
        assert_eq!(a.poll(), None);
        // Its server draining after that is news of its own.
        one.set_draining(true);
        assert_eq!(a.poll(), Some(DRAINED));
    }

    #[test]
    fn a_session_that_registers_late_hears_what_happened_before() {
        let gateway = Beacon::new();
        let server = Beacon::under(&gateway);
        gateway.set_draining(true);
        server.set_draining(true);
        let woken = Arc::new(Count::default());
        let waker = Waker::from(woken);
        let mut w = Watch::new(server, None);
        assert_eq!(
            w.poll(&mut Context::from_waker(&waker)),
            Poll::Ready(News {
                gateway: true,
                drained: true,
                shed: false
            })
        );
    }

    #[test]
    fn a_shed_wakes_only_the_sessions_it_takes_and_only_eligible_ones() {
        let gateway = Beacon::new();
        let server = Beacon::under(&gateway);
        let mut sessions: Vec<Session> = (0..6).map(|k| Session::on(&server, Some(k))).collect();
        // Odd keys only, two of them.
        assert_eq!(server.shed(2, |k| k.is_some_and(|k| k % 2 == 1)), 2);
        let woken: Vec<usize> = sessions.iter().map(Session::woken).collect();
        assert_eq!(woken, [0, 1, 0, 1, 0, 0]);
        assert_eq!(server.watching(), 4);
        let news: Vec<Option<News>> = sessions.iter_mut().map(Session::poll).collect();
        assert_eq!(news, [None, Some(SHED), None, Some(SHED), None, None]);
        // The next round goes on from there: the last odd one, then none left.
        assert_eq!(server.shed(5, |k| k.is_some_and(|k| k % 2 == 1)), 1);
        assert_eq!(sessions[5].poll(), Some(SHED));
        assert_eq!(server.shed(5, |k| k.is_some_and(|k| k % 2 == 1)), 0);
        assert_eq!(server.watching(), 3);
        // A shed session that then sees its server drain is not told twice.
        server.set_draining(true);
        assert_eq!(sessions[1].poll(), None);
        assert_eq!(sessions[0].poll(), Some(DRAINED));
    }

    #[test]
    fn sessions_leaving_free_their_slots() {
        let server = Beacon::new();
        let a = Session::on(&server, None);
        let b = Session::on(&server, None);
        drop(a);
        assert_eq!(server.watching(), 1);
        assert_eq!(server.lock().free.len(), 1);
        let c = Session::on(&server, None);
        assert_eq!(server.lock().slots.len(), 2, "the free slot was reused");
        drop((b, c));
        assert_eq!(server.watching(), 0);
        assert!(server.lock().slots.is_empty(), "memory given back");
    }

    #[test]
    fn a_new_waker_is_registered() {
        let server = Beacon::new();
        let mut s = Session::on(&server, None);
        let other = Arc::new(Count::default());
        s.woken = other.clone();
        s.waker = Waker::from(other);
        assert_eq!(s.poll(), None);
        server.shed(1, |_| true);
        assert_eq!(s.woken(), 1, "the second waker was woken");
    }
}
