"""The search planner against brute force over a numpy corpus: no MongoDB,
no Qdrant. ``run`` is an exact search with an optional id restriction, as
the store's query is; ``members`` is a set's membership, as MongoDB's is."""

import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

from fiftyone_qdrant import planner

N, DIM, K = 600, 8, 10
FIRST = planner.CANDIDATES_PER_HIT * K + 16  # the first search of a view too large to filter


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    keys = ["%024x" % i for i in range(N)]
    return keys, rng.normal(size=(N, DIM)), rng.normal(size=(3, DIM))


class Engine:
    """Exact dot-product search, counting what the planner asks of it."""

    def __init__(self, keys, vectors, queries):
        self.keys, self.vectors, self.queries = keys, vectors, queries
        self.calls = []

    def run(self, limit, restriction=None):
        self.calls.append((limit, None if restriction is None else len(restriction)))
        scores = self.queries @ self.vectors.T
        if restriction is not None:
            allowed = np.array([k in restriction for k in self.keys])
            scores = np.where(allowed, scores, -np.inf)
        out = []
        for row in scores:
            order = [i for i in np.argsort(-row, kind="stable") if np.isfinite(row[i])][:limit]
            out.append([(self.keys[i], row[i]) for i in order])
        return out


def hit_key(hit):
    return hit[0]


def expected(engine, view, k):
    return [[key for key, _ in hits] for hits in engine.run(k, set(view))]


def keys_of(results):
    return [[key for key, _ in hits] for hits in results]


def test_max_filter_ids_follows_the_index_size_and_how_it_is_searched():
    assert planner.max_filter_ids(100, exhaustive=False) == planner.MAX_FILTER_IDS
    assert planner.max_filter_ids(10**6, exhaustive=False) == 6000  # 6 * sqrt(total)
    assert planner.max_filter_ids(10**6, exhaustive=True) == 25000  # total / 40
    assert planner.max_filter_ids(10**12, exhaustive=True) == planner.MAX_LISTED_IDS


def test_no_view_is_one_search_of_k(corpus):
    engine = Engine(*corpus)
    results = planner.search_listed(engine.run, K, K, N, None, 50, set, hit_key, 3)
    assert engine.calls == [(K, None)]
    assert keys_of(results) == keys_of(engine.run(K))


def test_empty_view_asks_nothing(corpus):
    engine = Engine(*corpus)
    assert planner.search_listed(engine.run, K, K, N, [], 50, set, hit_key, 3) == [[], [], []]
    assert engine.calls == []


def test_a_small_view_is_sent_as_a_filter(corpus):
    engine = Engine(*corpus)
    view = corpus[0][::20]  # 30 ids, under the bound of 50
    results = planner.search_listed(engine.run, K, K, N, view, 50, set, hit_key, 3)
    assert engine.calls == [(K, 30)]
    assert keys_of(results) == expected(engine, view, K)


@pytest.mark.parametrize("step", [2, 5, 9])
def test_a_large_view_is_oversampled_to_the_exact_top_k(corpus, step):
    engine = Engine(*corpus)
    view = corpus[0][::step]
    results = planner.search_listed(engine.run, K, K, N, view, 20, set, hit_key, 3)
    assert all(restriction is None for _, restriction in engine.calls)  # never ships the view
    assert engine.calls[0][0] < N  # asked for fewer than everything
    assert keys_of(results) == expected(engine, view, K)


def test_oversampling_grows_until_enough_and_stops_at_the_index(corpus):
    engine = Engine(*corpus)
    view = corpus[0][-3:]  # 3 ids, probably far down every ranking
    results = planner.oversample(engine.run, 3, N, 16, set(view).intersection, hit_key)
    limits = [limit for limit, _ in engine.calls]
    assert limits == sorted(limits) and limits[-1] <= N
    assert keys_of(results) == expected(engine, view, 3)


def test_oversampling_gives_up_after_max_rounds(corpus):
    engine = Engine(*corpus)
    results = planner.oversample(engine.run, 5, N, 16, lambda keys: set(), hit_key, max_rounds=2)
    assert results is None and len(engine.calls) == 2


def test_members_are_asked_about_each_candidate_once(corpus):
    engine = Engine(*corpus)
    view = set(corpus[0][::3])
    asked = []

    def members(keys):
        asked.extend(keys)
        return view.intersection(keys)

    planner.oversample(engine.run, K, N, 40, members, hit_key)
    assert len(asked) == len(set(asked))


def test_an_unlisted_view_under_the_bound_is_listed_and_filtered(corpus):
    engine = Engine(*corpus)
    view = corpus[0][:15]
    listed_limits = []

    def list_ids(limit):
        listed_limits.append(limit)
        return view[:limit]

    results = planner.search_unlisted(engine.run, K, N, 20, list_ids, set(view).intersection, set, hit_key, 3)
    assert listed_limits == [21] and engine.calls == [(K, 15)]
    assert keys_of(results) == expected(engine, view, K)

    # told it was large (it has shrunk since), it is not listed: oversampling
    # grows until the whole index is searched, still exact
    engine.calls.clear()
    listed_limits.clear()
    again = planner.search_unlisted(engine.run, K, N, 20, list_ids, set(view).intersection, set, hit_key, 3,
                                    last_size=21)
    assert engine.calls == [(FIRST, None), (N, None)] and listed_limits == [] and again == results

    # where three searches cannot find k of it (5 ids, in an index they do
    # not cover), it is listed after all
    engine.calls.clear()
    few = view[:5]
    again = planner.search_unlisted(engine.run, K, 100 * N, 20, lambda limit: few[:limit], set(few).intersection,
                                    set, hit_key, 3, last_size=21)
    assert [limit for limit, _ in engine.calls] == [FIRST, 4 * FIRST, 16 * FIRST, 5]
    assert engine.calls[-1] == (5, 5) and keys_of(again) == expected(engine, few, K)


def test_an_unlisted_large_view_is_tested_not_listed(corpus):
    engine = Engine(*corpus)
    view = corpus[0][::2]
    results = planner.search_unlisted(
        engine.run, K, N, 20, lambda limit: view[:limit], set(view).intersection, set, hit_key, 3
    )
    assert all(restriction is None for _, restriction in engine.calls)
    assert keys_of(results) == expected(engine, view, K)


def test_an_unlisted_empty_view_has_no_hits(corpus):
    engine = Engine(*corpus)
    assert planner.search_unlisted(engine.run, K, N, 20, lambda limit: [], set, set, hit_key, 2) == [[], []]
    assert engine.calls == []


def test_repeated_ids_never_take_the_place_of_others(corpus):
    keys, vectors, queries = corpus
    repeated = [keys[i // 3] for i in range(N)]  # every id on three points, nearly the same vector
    near = vectors[np.arange(N) // 3] + 1e-6 * vectors
    engine = Engine(repeated, near, queries)
    run = planner.deduplicated(engine.run, N, hit_key)
    results = keys_of(run(K))
    calls = list(engine.calls)
    for got, hits in zip(results, engine.run(N)):
        assert got == list(dict.fromkeys(key for key, _ in hits))[:K]
        assert len(set(got)) == K
    assert calls[0] == (K, None) and len(calls) > 1  # it asked again, for more


def test_unique_hits_keep_the_best_of_each_id():
    hits = [("a", 3), ("b", 2), ("a", 1), ("c", 0)]
    assert planner.unique_hits(hits, hit_key) == [("a", 3), ("b", 2), ("c", 0)]


@pytest.mark.parametrize("seen_large", [False, True])
def test_a_tenth_of_the_index_takes_one_small_search(corpus, seen_large):
    engine = Engine(*corpus)
    view = corpus[0][::10]  # 10%: over the bound, so it is not listed in full
    listed_limits = []

    def list_ids(limit):
        listed_limits.append(limit)
        return view[:limit]

    results = planner.search_unlisted(
        engine.run, K, N, 20, list_ids, set(view).intersection, set, hit_key, 3,
        last_size=21 if seen_large else None,
    )
    assert engine.calls == [(FIRST, None)]
    assert listed_limits == ([] if seen_large else [21])  # a view seen large is not listed again
    assert keys_of(results) == expected(engine, view, K)


def test_a_view_just_over_the_bound_takes_more_searches_and_is_still_exact(corpus):
    engine = Engine(*corpus)
    view = corpus[0][::25]  # 24 ids, bound 20: 4% of the index
    results = planner.search_unlisted(
        engine.run, K, N, 20, lambda limit: view[:limit], set(view).intersection, set, hit_key, 3
    )
    limits = [limit for limit, _ in engine.calls]
    assert len(limits) >= 2 and limits == sorted(limits)
    assert keys_of(results) == expected(engine, view, K)


class SlowListing:
    """``list_ids`` of a view that finishes only once ``release`` is set
    (by the test, or by the first search: ``release_on_search``)."""

    def __init__(self, view, engine=None):
        self.view, self.limits = view, []
        self.release, self.done = threading.Event(), threading.Event()
        if engine is not None:
            run = engine.run

            def release_on_search(limit, restriction=None):
                hits = run(limit, restriction)
                self.release.set()
                return hits

            engine.run = release_on_search

    def __call__(self, limit):
        assert self.release.wait(10)
        self.limits.append(limit)
        self.done.set()
        return self.view[:limit]


def test_a_new_large_view_is_answered_without_waiting_for_its_listing(corpus):
    engine = Engine(*corpus)
    view = corpus[0][::10]
    listing = SlowListing(view)
    results = planner.search_unlisted(
        engine.run, K, N, 20, listing, set(view).intersection, set, hit_key, 3, listing_head_start=0.0
    )
    assert not listing.done.is_set()  # answered while the listing still ran
    assert engine.calls == [(FIRST, None)] and keys_of(results) == expected(engine, view, K)
    listing.release.set()
    assert listing.done.wait(10) and listing.limits == [21]  # it finishes, to record the view's size


def test_a_new_view_listed_within_its_head_start_is_only_filtered(corpus):
    engine = Engine(*corpus)
    view = corpus[0][:15]
    results = planner.search_unlisted(
        engine.run, K, N, 20, lambda limit: view[:limit], set(view).intersection, set, hit_key, 3,
        listing_head_start=10.0,
    )
    assert engine.calls == [(K, 15)] and keys_of(results) == expected(engine, view, K)


def test_a_new_small_view_listed_after_the_search_is_filtered(corpus):
    # 5 ids in an index 100x larger than the corpus: the first search finds
    # too few of them, and the listing, done by then, says filter
    engine = Engine(*corpus)
    few = corpus[0][:5]
    listing = SlowListing(few, engine)
    results = planner.search_unlisted(
        engine.run, K, 100 * N, 20, listing, set(few).intersection, set, hit_key, 3, listing_head_start=0.0
    )
    assert engine.calls == [(FIRST, None), (5, 5)] and keys_of(results) == expected(engine, few, K)


def test_a_new_view_just_over_the_bound_goes_on_searching_after_its_listing(corpus):
    engine = Engine(*corpus)
    view = corpus[0][::25]  # 24 ids, bound 20: one search of FIRST finds too few
    listing = SlowListing(view, engine)
    results = planner.search_unlisted(
        engine.run, K, N, 20, listing, set(view).intersection, set, hit_key, 3, listing_head_start=0.0
    )
    assert listing.limits == [21]
    assert engine.calls == [(FIRST, None), (min(N, 4 * FIRST), None)]
    assert keys_of(results) == expected(engine, view, K)


def test_a_view_known_small_is_listed_first_in_the_callers_thread(corpus):
    engine = Engine(*corpus)
    view = corpus[0][:15]

    def list_ids(limit):
        assert threading.current_thread() is threading.main_thread()
        return view[:limit]

    results = planner.search_unlisted(
        engine.run, K, N, 20, list_ids, set(view).intersection, set, hit_key, 3, last_size=15,
        listing_head_start=0.0,
    )
    assert engine.calls == [(K, 15)] and keys_of(results) == expected(engine, view, K)


def _search_new_view_in_child(corpus, view):
    engine = Engine(*corpus)
    listing = SlowListing(view, engine)  # released by the first search, so the pool must run it
    results = planner.search_unlisted(
        engine.run, K, 100 * N, 20, listing, set(view).intersection, set, hit_key, 3, listing_head_start=0.0
    )
    os._exit(0 if keys_of(results) == expected(engine, view, K) else 1)


def test_a_forked_child_lists_new_views_in_threads_of_its_own(corpus):
    # the parent's pool has idle threads now; a child forked from it has
    # none of them, and must not wait on them
    few = corpus[0][:5]
    test_a_new_small_view_listed_after_the_search_is_filtered(corpus)
    child = multiprocessing.get_context("fork").Process(target=_search_new_view_in_child, args=(corpus, few))
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0


def test_a_new_small_view_listed_during_the_search_is_filtered_untested(corpus):
    engine = Engine(*corpus)
    view = corpus[0][:15]
    listing = SlowListing(view)
    search = engine.run

    def search_while_listing_ends(limit, restriction=None):
        listing.release.set()
        assert listing.done.wait(10)
        time.sleep(0.05)  # the listing's future completes just after its function returns
        return search(limit, restriction)

    def members(keys):
        raise AssertionError("a view listed small is filtered, its candidates not tested")

    engine.run = search_while_listing_ends
    results = planner.search_unlisted(
        engine.run, K, N, 20, listing, members, set, hit_key, 3, listing_head_start=0.0
    )
    assert engine.calls == [(FIRST, None), (K, 15)] and keys_of(results) == expected(engine, view, K)
