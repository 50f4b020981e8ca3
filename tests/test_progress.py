"""Progress bars: a bar on a terminal, a plain line every N steps in logs."""

from __future__ import annotations

from ecgssl.progress import bar


def test_logs_get_a_line_every_n_steps_and_no_carriage_returns(capsys, monkeypatch):
    monkeypatch.setenv("ECGSSL_PROGRESS_EVERY", "10")
    for _ in bar(range(25), desc="ingest mitdb", unit="rec"):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert [line.split(":")[1].split()[0] for line in lines] == ["0/25", "10/25", "20/25",
                                                                  "25/25"], err
    assert all(line.startswith("ingest mitdb: ") for line in lines)


def test_default_step_is_a_tenth_and_disabled_bars_print_nothing(capsys, monkeypatch):
    monkeypatch.delenv("ECGSSL_PROGRESS_EVERY", raising=False)
    b = bar(total=100, desc="pretrain", unit="step")
    for _ in range(100):
        b.update(1)
    b.close()
    assert len(capsys.readouterr().err.splitlines()) == 11     # 0, 10, ..., 100
    for _ in bar(range(5), enabled=False):
        pass
    assert capsys.readouterr().err == ""
