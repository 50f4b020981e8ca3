import numpy as np
import pytest

from ecgssl.data.signal import LEADS, cut_windows, flat_leads, lead_index, resample, window_starts
from ecgssl.errors import RecordError


def test_lead_aliases_map_to_canonical_positions():
    assert lead_index("MLII") == LEADS.index("II")
    assert lead_index("AVR") == LEADS.index("aVR")
    assert lead_index(" v5 ") == LEADS.index("V5")
    assert lead_index("ECG") == LEADS.index("I")
    with pytest.raises(RecordError, match="unknown lead name 'V7'"):
        lead_index("V7")


def test_window_starts_drop_the_tail_and_pad_short_records_by_rule():
    assert window_starts(2500, 1000, 0.5) == [0, 1000]
    assert window_starts(1000, 1000, 0.5) == [0]
    assert window_starts(600, 1000, 0.5) == [0]      # >= half a window: padded
    assert window_starts(400, 1000, 0.5) == []       # too short: quarantined by the caller


def test_cut_windows_zero_pads_past_the_end():
    x = np.arange(2 * 15, dtype=np.float32).reshape(2, 15)
    w = cut_windows(x, [0, 10], 10)
    assert w.shape == (2, 2, 10)
    np.testing.assert_array_equal(w[1, 0, :5], x[0, 10:])
    assert not w[1, :, 5:].any()


def test_resample_keeps_a_sine_and_its_phase():
    fs_in, fs_out, f = 360, 100, 1.0
    t_in = np.arange(3600) / fs_in
    y = resample(np.sin(2 * np.pi * f * t_in)[None].astype(np.float32), fs_in, fs_out)
    t_out = np.arange(y.shape[1]) / fs_out
    assert y.shape == (1, 1000)
    np.testing.assert_allclose(y[0, 50:-50], np.sin(2 * np.pi * f * t_out)[50:-50], atol=2e-3)


def test_flat_leads():
    w = np.zeros((1, 2, 100), dtype=np.float32)
    w[0, 1] = np.sin(np.linspace(0, 6, 100))
    np.testing.assert_array_equal(flat_leads(w, 0.01), [[True, False]])
