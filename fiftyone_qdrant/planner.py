"""How a query restricted to a view is answered: an id filter, or
oversampling.

A small view goes to Qdrant as an id filter. A large one is answered by
asking for more neighbours than ``k`` (in proportion to how much of the
index the view covers) and dropping those outside the view, growing the
request until ``k`` in-view hits are found: what is sent to Qdrant never
grows with the view's size.

A view never seen before is listed while Qdrant already searches for
candidates, so a large one costs about what it does once seen.

Functions over a few callables, so they are tested without MongoDB or
Qdrant (``tests/unit/test_planner.py``):

- ``run(limit, restriction=None)``: the top ``limit`` hits of every query
  vector (a list per query, best first), within ``restriction`` if given;
- ``members(keys)``: which of ``keys`` are in the view.

Hits are any objects; ``hit_key(hit)`` gives the FiftyOne id they stand for.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

Hits = List[List[Any]]  # per query vector, best first
Run = Callable[..., Hits]  # run(limit, restriction=None)
Members = Callable[[List[str]], Set[str]]
HitKey = Callable[[Any], str]
Restrict = Callable[[List[str]], Any]  # ids -> the store's restriction

#: A view this small is sent to Qdrant as an id filter (or 6 * sqrt(index
#: size), see max_filter_ids())
MAX_FILTER_IDS = 2000
#: ... or total / this, while every query scans the whole collection anyway
EXHAUSTIVE_FILTER_DIVISOR = 40
#: ... and never more than MongoDB lists in one document (views.collect_view_ids)
MAX_LISTED_IDS = 200_000
#: first-search candidates per hit wanted for a view too large to filter by
CANDIDATES_PER_HIT = 20
#: seconds a new view's listing runs alone before the candidates' search
#: starts beside it: a view listed this fast (~300 ids through an index) is
#: filtered without waiting behind that search, which the store cannot
#: interrupt (a whole-collection scan while searches are exhaustive: a new
#: 1% view of 100k, listed in ~4 ms, then cost 1.5-1.8x the whole-dataset
#: query instead of 0.8x, and a new 10% view 1.3-1.8x instead of 1.7-1.9x)
LISTING_HEAD_START_S = 0.002

# listings of new views run here while the caller searches: one pool per
# process, as a forked child has none of its parent's threads
_listings: Optional[concurrent.futures.ThreadPoolExecutor] = None
_listings_pid: Optional[int] = None


def _listing_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _listings, _listings_pid
    if _listings is None or _listings_pid != os.getpid():
        _listings = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="fiftyone-qdrant-listing")
        _listings_pid = os.getpid()
    return _listings


def max_filter_ids(total: int, exhaustive: bool) -> int:
    """The largest view sent to Qdrant as an id filter.

    Filtering costs ~0.5 ms plus ~4 us per id of the view (listed in one
    MongoDB document, converted, matched). Oversampling costs one search of
    the index plus a MongoDB round trip or two (~3 ms each) to check
    candidates (~2 k * total / view size of them). With an HNSW index the
    search is cheap and the two break even near max(2000, 6 * sqrt(total))
    ids; while the collection is searched exhaustively (``exhaustive``:
    ~75 ns per point at 512-d) the search dominates, and listing wins up to
    ~total / 40."""
    bound = max(MAX_FILTER_IDS, int(6 * math.sqrt(total)))
    if exhaustive:
        bound = max(bound, total // EXHAUSTIVE_FILTER_DIVISOR)
    return min(bound, MAX_LISTED_IDS)


def unique_hits(hits: Sequence[Any], hit_key: HitKey) -> List[Any]:
    """``hits`` without repeats of a FiftyOne id (each keeps its best)."""
    seen: Set[str] = set()
    unique = []
    for hit in hits:
        key = hit_key(hit)
        if key not in seen:
            seen.add(key)
            unique.append(hit)
    return unique


def deduplicated(run: Run, points: int, hit_key: HitKey) -> Run:
    """``run`` for a collection where several points may carry one FiftyOne
    id (points written by a pipeline): asks for more until ``limit``
    distinct ids are found, so repeats never take the place of other ids."""

    def run_unique(limit: int, restriction=None) -> Hits:
        asked = limit
        while True:
            hits = run(asked, restriction)
            unique = [unique_hits(h, hit_key) for h in hits]
            if asked >= points or all(len(u) >= limit or len(h) < asked for u, h in zip(unique, hits)):
                return [u[:limit] for u in unique]
            asked = min(points, max(2 * asked, asked + 16))

    return run_unique


def search_listed(
    run: Run,
    want: int,
    k: Optional[int],
    total: int,
    allowed: Optional[Sequence[str]],
    bound: int,
    restrict: Restrict,
    hit_key: HitKey,
    num_queries: int,
) -> Hits:
    """Top-``want`` hits per query among the ``allowed`` ids (None: all),
    ``k`` being what was asked (None: every neighbour)."""
    if allowed is None:
        return run(want)
    if len(allowed) == 0:
        return [[] for _ in range(num_queries)]
    if len(allowed) <= bound:
        return run(min(want, len(allowed)), restrict(list(allowed)))
    allowed_set = set(allowed)
    want = min(want, len(allowed))
    limit = want if k is None else min(total, math.ceil(want * total / len(allowed) * 2) + 16)
    return oversample(run, want, total, limit, allowed_set.intersection, hit_key)


def search_unlisted(
    run: Run,
    want: int,
    total: int,
    bound: int,
    list_ids: Callable[[int], List[str]],
    members: Members,
    restrict: Restrict,
    hit_key: HitKey,
    num_queries: int,
    last_size: Optional[int] = None,
    listing_head_start: Optional[float] = None,
) -> Optional[Hits]:
    """Top-``want`` hits per query within a view whose ids are not listed.

    A view of at most ``bound`` ids (``list_ids(limit)`` lists up to
    ``limit`` of them) goes to Qdrant as an id filter. For a larger view
    Qdrant returns more neighbours than ``want`` (enough for a view of 5%,
    4x more each time that is not enough), and ``members`` tells which are
    in the view: the work follows ``k`` and the index size, never the
    view's size. Returns None if three searches are not enough (a view
    mostly outside the index), for the caller to list the view's ids.

    ``last_size`` is how many ids the view listed last time (None: never
    listed). A view that was too large to filter (the App sorts one view
    again and again) is not listed at all: oversampling is exact for a view
    of any size, and listing cost a 10% view of 100k ~15-20 ms of a ~35 ms
    query. Should it have shrunk so that three searches find too few, it is
    listed as a new view is. A view never listed is listed while Qdrant
    searches for its candidates if ``listing_head_start`` is given (seconds
    the listing runs alone first): whichever answers first decides, and the
    listing, finishing in the background, records the view's size. Without
    it the view is listed first."""
    # candidates enough for a view of 5% or more in one search (a 10% view
    # was 2.6x the whole-dataset query with 816 candidates at 100k: each
    # costs ~20 us to send and read, and an HNSW search's ef grows with
    # them); a smaller view takes a search or two more, each 4x larger
    limit = min(total, math.ceil(want * total / bound * 2) + 16, CANDIDATES_PER_HIT * want + 16)
    rounds = 0
    if last_size is not None and last_size > bound:
        hits = oversample(run, want, total, limit, members, hit_key, max_rounds=3)
        if hits is not None:
            return hits
        listed = list_ids(bound + 1)
    elif last_size is None and listing_head_start is not None:
        listing = _listing_pool().submit(list_ids, bound + 1)
        try:
            listed = listing.result(timeout=listing_head_start)
        except concurrent.futures.TimeoutError:
            run = _reusing_first(run, limit)
            run(limit)
            # listed meanwhile: a small view is filtered, its candidates not tested
            if not listing.done():
                hits = oversample(run, want, total, limit, members, hit_key, max_rounds=1)
                if hits is not None:
                    return hits
                rounds = 1
            listed = listing.result()
    else:
        listed = list_ids(bound + 1)
    if not listed:
        return [[] for _ in range(num_queries)]
    if len(listed) <= bound:
        return run(min(want, len(listed)), restrict(listed))
    return oversample(run, want, total, min(total, limit * 4**rounds), members, hit_key, max_rounds=3 - rounds)


def _reusing_first(run: Run, limit: int) -> Run:
    """``run`` that answers its first unrestricted search of ``limit``
    again without asking the store again."""
    first: Dict[str, Hits] = {}

    def run_once(asked: int, restriction=None) -> Hits:
        if asked != limit or restriction is not None:
            return run(asked, restriction)
        if "hits" not in first:
            first["hits"] = run(asked)
        return first["hits"]

    return run_once


def oversample(
    run: Run,
    want: int,
    total: int,
    limit: int,
    members: Members,
    hit_key: HitKey,
    max_rounds: Optional[int] = None,
) -> Optional[Hits]:
    """Top-``want`` in-view hits per query from ``run(limit)`` hits.

    Candidates are checked best first and a few at a time (a check may be a
    MongoDB round trip), about as many as the in-view rate seen so far
    needs; ``limit`` grows 4x while that is not enough. Returns None after
    ``max_rounds`` searches without enough hits."""
    in_view: Dict[str, bool] = {}
    rounds = 0
    while True:
        all_hits = run(limit)
        longest = max((len(hits) for hits in all_hits), default=0)
        checked, step = 0, 16 * want + 16  # enough for views over ~10%
        while True:
            upto = min(longest, checked + step)
            new = list({hit_key(h) for hits in all_hits for h in hits[checked:upto]} - in_view.keys())
            if new:
                found_in = members(new)
                in_view.update((key, key in found_in) for key in new)
            checked = upto
            results = [[h for h in hits[:checked] if in_view[hit_key(h)]] for hits in all_hits]
            found = min((len(r) for r in results), default=want)
            if found >= want:
                return [r[:want] for r in results]
            if checked >= longest:
                break
            step = 4 * checked if found == 0 else max(16, math.ceil(checked * (want / found * 1.25 - 1)))
        if limit >= total:
            return [r[:want] for r in results]
        rounds += 1
        if max_rounds is not None and rounds >= max_rounds:
            return None
        limit = min(total, limit * 4)
