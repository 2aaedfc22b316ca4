from benchmarks import report


def _run(variant, seed, device, speed, threads=1):
    return {"variant": variant, "dropout": 0.2, "seed": seed, "provenance": {"device": device},
            "details": {"decode_sent_s": speed, "threads": threads, "decode": {"beam": 12}}}


def test_decoding_speeds_of_different_machines_are_never_averaged():
    runs = [_run("none", 1, "cuda", 900.0), _run("none", 2, "cuda", 1000.0),
            _run("naive", 1, "cpu", 40.0, threads=2), _run("naive", 2, "cuda", 1000.0)]
    line = report._decoding_speed(runs)[-1]
    assert "none p=0.2 950.0 sentences/s" in line
    assert "naive p=0.2 40.0 sentences/s (beam 12, 2 threads on cpu)" in line
    assert "naive p=0.2 1000.0 sentences/s" in line and "520.0" not in line
    assert "1 thread on cuda" in line
