"""The login limiter hands its slow slots out by turns (docs/web.md, "Login limits"): an attacker
polling from many addresses keeps the total rate of scrypt checks bounded but cannot keep the
owner from being checked. Each test replays api.py's call order (``retry_after`` on arrival and
again before the check, ``attempt``, ``succeeded`` or ``retry_after`` for the log line) against
the real limiter on a fake clock, so nothing depends on the speed of the machine."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynexport.web.auth import LoginLimiter

OWNER = "192.168.1.20"


class Site:
    """The limiter behind a fake clock, driven the way ``post_login`` drives it."""

    def __init__(self, **limits: float) -> None:
        self.now = 0.0
        self.limiter = LoginLimiter(lambda: self.now, **limits)  # type: ignore[arg-type]
        self.checks: list[tuple[float, str]] = []

    def login(self, at: float, client: str, *, right: bool = False, check: bool = True) -> float:
        """One POST /api/login at ``at``: 0 when the password was checked, else the Retry-After
        (whole seconds, at least 1, as api.py sends). ``check=False`` is a request that passes
        the limiter but is never checked (an empty password): it takes no slot."""
        assert at >= self.now
        self.now = at
        wait = self.limiter.retry_after(client)
        if wait is not None:
            assert wait > 0
            return max(1, math.ceil(wait))
        if not check:
            return 1
        assert self.limiter.retry_after(client) is None  # _check_password asks again
        self.limiter.attempt(client)
        self.checks.append((at, client))
        if right:
            self.limiter.succeeded(client)
        else:
            self.limiter.retry_after(client)  # the "blocked for a while" log line
        return 0

    def most_in_a_window(self) -> int:
        """The most checks that started within any one window."""
        times = [t for t, _ in self.checks]
        window = self.limiter.window_s
        return max((sum(1 for u in times if t - window < u <= t) for t in times), default=0)

    def rate_bound(self) -> int:
        """The checks a window may hold: ``total`` freely, then one every ``slow_s``."""
        lim = self.limiter
        return lim.total + math.ceil(lim.window_s / lim.slow_s)


def attack(
    site: Site,
    attackers: list[str],
    *,
    until: float,
    owner_from: float,
    start: float = 0.0,
    take_turns: bool = True,
    round_trip: float = 0.2,
) -> tuple[float, float | None]:
    """Every attacker address polls every 50 ms (a refusal costs it nothing) and guesses when let
    through (or, with ``take_turns=False``, holds its turn without a check); the owner comes at
    ``owner_from`` and retries after each Retry-After plus a round trip. Returns the owner's
    first refusal and when its password was checked (None if never)."""
    first_refusal = math.inf
    owner_next = owner_from
    owner_checked: float | None = None
    tick = 0
    while (t := round(start + tick * 0.05, 3)) < until:
        for i, address in enumerate(attackers):
            at = t + i * 0.05 / len(attackers)
            while owner_checked is None and owner_next <= at:  # the owner, between two polls
                wait = site.login(owner_next, OWNER, right=True)
                if wait == 0:
                    owner_checked = owner_next
                else:
                    first_refusal = min(first_refusal, owner_next)
                    owner_next += wait + round_trip
            site.login(at, address, check=take_turns)
        tick += 1
    return first_refusal, owner_checked


def test_the_reviewers_attack_no_longer_starves_the_owner() -> None:
    """The review's replay: 60 addresses, one guess per 50 ms from the next address not blocked,
    the product's limits. Before, the owner got 201 refusals and no check in ten minutes."""
    site = Site()
    limiter = site.limiter
    attackers = [f"10.0.0.{i}" for i in range(60)]
    owner_next, owner_checked, owner_refused, i = 60.0, None, 0, 0
    for tick in range(int(660 / 0.05)):
        t = round(tick * 0.05, 3)
        while owner_checked is None and owner_next <= t:
            wait = site.login(owner_next, OWNER, right=True)
            if wait == 0:
                owner_checked = owner_next
            else:
                owner_refused += 1
                owner_next += wait + 0.2
        for _ in attackers:
            address = attackers[i % len(attackers)]
            i += 1
            if not limiter.blocked(address):
                site.login(t, address)
                break
    assert owner_checked is not None
    assert owner_checked - 60.0 <= limiter.turn_bound_s(len(attackers))
    assert site.most_in_a_window() <= site.rate_bound()


@pytest.mark.parametrize("count", [20, 25, 40])
def test_many_fast_addresses_only_delay_the_owner_by_one_turn_each(count: int) -> None:
    site = Site()  # the product's limits: 5 per address, 20 in 5 minutes, then one every 3 s
    attackers = [f"10.0.1.{i}" for i in range(count)]
    refused, checked = attack(site, attackers, until=600.0, owner_from=60.0)
    assert checked is not None
    # The guarantee, and in practice (attackers take their turns at once) one slot each.
    assert checked - refused <= site.limiter.turn_bound_s(count)
    assert checked - refused <= (count + 1) * site.limiter.slow_s + 4  # + Retry-After rounding
    # The total stays bounded all the while: about one check every 3 s beyond the first 20.
    assert site.most_in_a_window() <= site.rate_bound()
    attacker_checks = sum(1 for _, c in site.checks if c != OWNER)
    assert attacker_checks <= 2 * site.rate_bound()


def test_addresses_that_hold_their_turn_without_a_check_lose_it() -> None:
    """An attacker at the head of the queue that keeps asking but never takes the slot (an empty
    password passes the limiter unchecked) keeps it for ``patience_s`` only."""
    site = Site()
    attackers = [f"10.0.2.{i}" for i in range(24)]
    for i in range(20):  # spend the free budget
        assert site.login(float(i), attackers[i % 4]) == 0
    refused, checked = attack(
        site, attackers, until=600.0, owner_from=30.0, start=20.0, take_turns=False
    )
    assert checked is not None
    assert checked - refused <= site.limiter.turn_bound_s(len(attackers))


def test_the_head_is_told_when_its_slot_opens_and_the_others_to_ask_again_within_slow_s() -> None:
    site = Site(per_client=5, total=2, window_s=60, slow_s=3)
    limiter = site.limiter
    assert site.login(0.0, "a") == 0 and site.login(0.0, "b") == 0  # the free budget
    assert site.login(1.0, "c") == 0  # queue empty, no slow check yet: the slot is open
    site.now = 1.5
    assert limiter.retry_after("d") == pytest.approx(2.5)  # the head: its slot opens at 4
    assert limiter.retry_after("e") == pytest.approx(3)  # behind d
    site.now = 4.0
    assert limiter.retry_after("e") == pytest.approx(3)  # d's slot, held for d
    assert site.login(5.0, "d") == 0  # d comes back a second late: still its slot
    site.now = 7.5
    assert limiter.retry_after("e") == pytest.approx(0.5)  # e's turn next, at 8
    site.now = 8.0
    assert limiter.retry_after("e") is None


def test_an_address_that_stops_asking_loses_its_place() -> None:
    site = Site(per_client=5, total=1, window_s=60, slow_s=3, patience_s=7)
    limiter = site.limiter
    assert site.login(0.0, "x") == 0  # the budget: the next check opens a slow slot
    site.now = 1.0
    assert limiter.retry_after("gone") is None  # the head, slot open: never checks
    assert limiter.retry_after("owner") == 3  # waits behind it
    site.now = 7.0
    assert limiter.retry_after("owner") == 3  # gone's turn (from 1) is kept until 8
    site.now = 8.5
    assert limiter.retry_after("owner") is None  # gone dropped at 8: the owner's turn
    assert limiter.retry_after("gone") == 3  # back at the end of the queue


def test_one_address_asking_again_keeps_its_place_and_waits_its_turn() -> None:
    site = Site(per_client=5, total=1, window_s=60, slow_s=3)
    limiter = site.limiter
    assert site.login(0.0, "x") == 0
    assert site.login(0.0, "y") == 0  # first slow slot
    order = [f"q{i}" for i in range(5)]
    for i, address in enumerate(order):
        site.now = 0.1 * (i + 1)
        assert limiter.retry_after(address) is not None  # queued in this order
    served: list[str] = []
    t = 0.5
    while len(served) < len(order):
        t = round(t + 0.1, 3)
        for address in reversed(order):  # the latest comers ask first: they still wait
            if address not in served and site.login(t, address) == 0:
                served.append(address)
    assert served == order


def test_the_address_just_checked_is_not_queued_by_the_log_lines_question() -> None:
    """post_login asks the limiter again after a wrong password (to log a blocked address); that
    must not put the address ahead of the owner, who then waits one slot only."""
    site = Site(per_client=5, total=20, window_s=300, slow_s=3)
    for i in range(20):
        site.login(0.0, f"10.0.3.{i // 5}")
    assert site.login(0.0, "10.0.3.9") == 0  # one slow check, then the log line's question
    assert site.login(0.5, OWNER, right=True) == 3
    assert site.login(3.0, OWNER, right=True) == 0


def test_the_waiting_queue_is_bounded() -> None:
    site = Site(per_client=5, total=1, window_s=60, slow_s=3, max_clients=8)
    limiter = site.limiter
    site.login(0.0, "x")
    for i in range(100):
        site.now = 0.01 * i
        assert limiter.retry_after(f"10.0.4.{i}") is not None or i == 0
    assert len(limiter._queue) == 8  # the rest are told to ask again, not remembered
    site.now = 30.0  # they stopped asking: each lost its place when its turn passed unused
    limiter.retry_after("late")
    assert list(limiter._queue) == ["late"]


# -- properties ------------------------------------------------------------------------------------

LIMITS = {"per_client": 3, "total": 6, "window_s": 60.0, "slow_s": 3.0}
ATTACKERS = [f"10.9.0.{i}" for i in range(12)]
PATIENT = [f"192.168.9.{i}" for i in range(3)]

attacker_steps = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=4),  # time since the previous attacker request
        st.sampled_from(ATTACKERS),
        st.sampled_from(["guess", "right", "hold"]),  # a wrong or right password, or none
    ),
    max_size=100,
)
pollers = st.tuples(  # besides: one guess per period from the next address, for a while
    st.sampled_from([0.05, 0.1, 0.25, 1.0]), st.floats(min_value=0, max_value=150)
)
patients = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=120),  # when it first asks
        st.lists(st.floats(min_value=0, max_value=3), min_size=1, max_size=8),  # round trips
    ),
    min_size=1,
    max_size=len(PATIENT),
)


def events(
    steps: Iterable[tuple[float, str, str]], poller: tuple[float, float], starts: list[float]
) -> list[tuple[float, int, str, str]]:
    """Every request in time order (ties in a fixed order); the patient addresses' retries
    are pushed as they are told."""
    heap: list[tuple[float, int, str, str]] = []
    t = 0.0
    for n, (gap, address, action) in enumerate(steps):
        t += gap
        heap.append((t, n, address, action))
    period, duration = poller
    for n in range(int(duration / period)):
        heap.append((n * period, 1000 + n, ATTACKERS[n % len(ATTACKERS)], "guess"))
    for i, start in enumerate(starts):
        heap.append((start, -1 - i, PATIENT[i], "patient"))
    heapq.heapify(heap)
    return heap


@settings(max_examples=300, deadline=None)
@given(steps=attacker_steps, poller=pollers, patient=patients)
def test_any_interleaving_keeps_the_rate_bounded_and_checks_every_patient_address_in_time(
    steps: list[tuple[float, str, str]],
    poller: tuple[float, float],
    patient: list[tuple[float, list[float]]],
) -> None:
    site = Site(**LIMITS)
    limiter = site.limiter
    heap = events(steps, poller, [start for start, _ in patient])
    first_refusal: dict[str, float] = {}
    retries = {PATIENT[i]: iter(trips * 100) for i, (_, trips) in enumerate(patient)}
    done: dict[str, float] = {}
    last_slow: float | None = None
    forgiven: dict[str, float] = {}
    while heap:
        at, n, address, action = heapq.heappop(heap)
        before = len(site.checks)
        in_window = sum(1 for t, _ in site.checks if at - t < limiter.window_s)
        own = [
            t
            for t, c in site.checks
            if c == address and at - t < limiter.window_s and t > forgiven.get(address, -1.0)
        ]
        if action == "patient":
            wait = site.login(at, address, right=True)
            if wait:
                assert wait <= math.ceil(limiter.slow_s)  # a waiting address asks again soon
                first_refusal.setdefault(address, at)
                heapq.heappush(heap, (at + wait + next(retries[address]), n, address, action))
            else:
                done[address] = at
        else:
            site.login(at, address, right=action == "right", check=action != "hold")
        if len(site.checks) > before:
            if in_window >= limiter.total:  # beyond the total: the slow lane's pace
                assert last_slow is None or at - last_slow >= limiter.slow_s
                last_slow = at
            assert len(own) < limiter.per_client  # never more per address
            if action in ("right", "patient"):  # a success forgives the address's checks
                forgiven[address] = at
        assert len(limiter._queue) <= limiter.max_clients
    assert site.most_in_a_window() <= site.rate_bound()
    others = len(ATTACKERS) + len(patient) - 1
    for address in PATIENT[: len(patient)]:
        assert address in done  # every address that kept asking was checked ...
        if address in first_refusal:  # ... within the bound set by the addresses competing
            assert done[address] - first_refusal[address] <= limiter.turn_bound_s(others)
