"""The under-load signal: a backlog in one drain, or a paced flood over one second."""

from tunkit.wireguard.load import LoadDetector


def test_quiet_device_is_not_under_load():
    load = LoadDetector()
    assert [load.observe(1, t * 10.0) for t in range(20)] == [False] * 20
    assert load.observe(0, 1000.0) is False


def test_a_backlog_in_one_drain_turns_load_on_for_the_hold_time():
    load = LoadDetector(burst=8, hold=1.0)
    assert load.observe(7, 0.0) is False
    assert load.observe(8, 5.0) is True
    assert load.observe(0, 5.9) is True
    assert load.observe(0, 6.0) is False


def test_a_paced_flood_turns_load_on_without_any_backlog():
    load = LoadDetector(burst=8, rate=64, hold=1.0)
    results = [load.observe(1, i * 0.005) for i in range(100)]  # 200 per second, one per drain
    assert results[:64] == [False] * 64
    assert results[64] is True and all(results[64:])
    assert load.observe(0, 100 * 0.005 + 1.0) is False


def test_the_rate_window_restarts_each_second():
    load = LoadDetector(rate=64)
    for second in range(5):  # 60 per second: never more than 64 in one window
        for i in range(60):
            assert load.observe(1, second + i / 100) is False
