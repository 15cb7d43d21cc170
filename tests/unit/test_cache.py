"""LookupCache (LRU, race-free fills) and FeedState (seq/boot/silence rules), no sockets."""

from __future__ import annotations

import threading

from bazaar.frontend.cache import FeedState, LookupCache


def live_cache(capacity: int = 3) -> LookupCache:
    cache = LookupCache(capacity)
    cache.set_live(True)
    return cache


def put(cache: LookupCache, name: str, value) -> bool:
    return cache.fill(name, value, cache.begin())


def test_lru_evicts_least_recently_used_and_counts():
    cache = live_cache(2)
    assert cache.get("a") is None
    put(cache, "a", 1)
    put(cache, "b", 2)
    assert cache.get("a") == 1  # a is now most recent
    put(cache, "c", 3)  # evicts b
    assert cache.get("b") is None
    assert cache.get("c") == 3
    stats = cache.stats()
    assert (stats["size"], stats["hits"], stats["misses"], stats["capacity"]) == (2, 2, 2, 2)


def test_capacity_zero_is_off():
    cache = live_cache(0)
    assert not put(cache, "a", 1)
    assert cache.get("a") is None
    assert cache.stats()["size"] == 0


def test_not_live_means_no_fill_and_no_hits():
    cache = LookupCache(10)
    assert cache.begin() is None
    assert not cache.fill("a", 1, 0)
    cache.set_live(True)
    put(cache, "a", 1)
    cache.set_live(False)  # silence: flushed and off
    assert cache.get("a") is None
    assert len(cache) == 0


def test_invalidation_during_lookup_blocks_the_stale_fill():
    cache = live_cache()
    token = cache.begin()  # lookup starts, asks the catalog...
    cache.invalidate("GameStart")  # ...a trade's invalidation arrives meanwhile
    assert not cache.fill("GameStart", "old", token)
    assert cache.get("GameStart") is None
    assert put(cache, "GameStart", "new")  # a later lookup fills normally
    assert cache.get("GameStart") == "new"


def test_invalidation_of_another_name_does_not_block_fill():
    cache = live_cache()
    token = cache.begin()
    cache.invalidate("b")
    assert cache.fill("a", 1, token)


def test_flush_during_lookup_blocks_the_fill():
    cache = live_cache()
    token = cache.begin()
    cache.flush()
    assert not cache.fill("a", 1, token)


def test_invalidate_drops_entry():
    cache = live_cache()
    put(cache, "a", 1)
    cache.invalidate("a")
    assert cache.get("a") is None


def test_concurrent_use_is_consistent():
    cache = live_cache(50)
    errors = []

    def worker(seed: int):
        try:
            for i in range(2000):
                name = f"s{(seed * 7 + i) % 80}"
                if cache.get(name) is None:
                    put(cache, name, i)
                if i % 13 == 0:
                    cache.invalidate(name)
        except Exception as exc:  # pragma: no cover - the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) <= 50


# ---- feed rules -------------------------------------------------------------
def feed(capacity: int = 10) -> tuple[LookupCache, FeedState]:
    cache = LookupCache(capacity)
    return cache, FeedState(cache, silence=3.0)


def test_first_message_turns_cache_on():
    cache, state = feed()
    assert not cache.live
    state.handle(b"heartbeat", {"seq": 5, "boot": "x"}, now=0.0)
    assert cache.live
    assert put(cache, "a", 1)


def test_invalidate_in_sequence_drops_only_that_entry():
    cache, state = feed()
    state.handle(b"heartbeat", {"seq": 0, "boot": "x"}, now=0.0)
    put(cache, "a", 1)
    put(cache, "b", 2)
    state.handle(b"invalidate", {"seq": 1, "name": "a", "boot": "x"}, now=0.1)
    assert cache.get("a") is None
    assert cache.get("b") == 2
    state.handle(b"heartbeat", {"seq": 1, "boot": "x"}, now=1.0)
    assert cache.get("b") == 2


def test_seq_gap_flushes_everything():
    cache, state = feed()
    state.handle(b"invalidate", {"seq": 1, "name": "a", "boot": "x"}, now=0.0)
    put(cache, "b", 2)
    state.handle(b"invalidate", {"seq": 3, "name": "a", "boot": "x"}, now=0.1)  # 2 was lost
    assert cache.get("b") is None


def test_heartbeat_ahead_of_last_invalidation_flushes():
    cache, state = feed()
    state.handle(b"heartbeat", {"seq": 4, "boot": "x"}, now=0.0)
    put(cache, "b", 2)
    state.handle(b"heartbeat", {"seq": 5, "boot": "x"}, now=1.0)  # invalidation 5 lost
    assert cache.get("b") is None


def test_seq_backwards_flushes():
    cache, state = feed()
    state.handle(b"heartbeat", {"seq": 9, "boot": "x"}, now=0.0)
    put(cache, "b", 2)
    state.handle(b"heartbeat", {"seq": 2, "boot": "x"}, now=1.0)
    assert cache.get("b") is None


def test_new_boot_id_flushes_even_with_matching_seq():
    cache, state = feed()
    state.handle(b"heartbeat", {"seq": 0, "boot": "x"}, now=0.0)
    put(cache, "b", 2)
    state.handle(b"heartbeat", {"seq": 0, "boot": "y"}, now=1.0)
    assert cache.get("b") is None
    assert cache.live


def test_silence_flushes_and_turns_off_until_next_message():
    cache, state = feed()
    state.handle(b"heartbeat", {"seq": 0, "boot": "x"}, now=0.0)
    put(cache, "b", 2)
    state.tick(2.9)
    assert cache.get("b") == 2
    state.tick(3.1)
    assert cache.get("b") is None
    assert not cache.live
    assert cache.begin() is None
    state.handle(b"heartbeat", {"seq": 0, "boot": "x"}, now=5.0)
    assert cache.live


def test_garbled_message_flushes():
    cache, state = feed()
    state.handle(b"heartbeat", {"seq": 0, "boot": "x"}, now=0.0)
    put(cache, "b", 2)
    state.handle(b"invalidate", None, now=0.5)
    assert cache.get("b") is None
    state.handle(b"invalidate", {"seq": True, "name": "b"}, now=0.6)  # bool is not a seq
    assert len(cache) == 0


def test_unknown_topic_is_ignored():
    cache, state = feed()
    state.handle(b"heartbeat", {"seq": 0, "boot": "x"}, now=0.0)
    put(cache, "b", 2)
    state.handle(b"other", {"seq": 99}, now=0.5)
    assert cache.get("b") == 2
