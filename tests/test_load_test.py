"""bench/load_test.py on a short run: concurrent clients against the bundled demo app on loopback."""
import pytest

from bench import load_test

pytest.importorskip("gradio_client")


@pytest.mark.slow
def test_short_load_run_reports_throughput_latency_and_memory(capsys):
    result = load_test.main(["--clients", "2", "--requests", "6", "--warmup", "1", "--rss-every", "3", "--json"])
    assert result["ok"] == result["requests"] == 6 and not result["errors"]
    assert 0 < result["p50_s"] <= result["p95_s"] <= result["max_s"] and result["throughput_rps"] > 0
    assert [n for n, _ in result["rss_mb"]][0] == 0 and result["rss_mb"][-1][0] == 6
    assert result["within_bound"] and not result["time_limited"]
    assert '"ok": 6' in capsys.readouterr().out


def test_the_app_is_served_on_loopback_only():
    assert load_test.HOST == "127.0.0.1"
    args = load_test.build_parser().parse_args([])
    assert (args.clients, args.requests, args.max_rss_growth_mb) == (4, 200, 150.0)

